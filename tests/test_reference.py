"""An external reference in CI: bench reproduces CompressAI's published Kodak JPEG and WebP curves.

The golden table (results/golden) is bench checking itself; this checks bench against numbers
someone else published (results/reference/kodak/compressai-*.csv, sources in the .yaml
sidecars), through the one way to run work, on the 24 Kodak images: mean bpp and PSNR at all
19 published qualities, MS-SSIM (RGB, ``ms_ssim_rgb``) at ``MS_SSIM_POINTS`` (it costs
~0.2-0.5 s per pair on 2 cores; the full grid is measured in the sidecars' notes).
"""
import io
import math
import shutil
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench import cards, reference
from bench.codecs.classical import PillowJPEG, PillowWebP
from bench.runner import Experiment, build_codec, run

QUALITIES = list(range(5, 100, 5))  # CompressAI's examples/run-benchmarks.sh: seq 5 5 95
MS_SSIM_POINTS = [10, 90]


def _codecs(points):
    return [{"name": "jpeg", "points": points}, {"name": "webp", "points": points}]


@pytest.fixture(scope="module")
def kodak_run(kodak_dir, tmp_path_factory):
    """Two runs (the tables of a run describe its own experiment): bpp and PSNR at every
    published quality, and a copy of it resumed with RGB MS-SSIM at two qualities."""
    out = tmp_path_factory.mktemp("reference")
    full, ms = out / "full", out / "ms"
    first = run(Experiment(dataset="kodak", data_dir=str(kodak_dir), codecs=_codecs(QUALITIES), metrics=["psnr"],
                           out=str(full)))
    assert first.units_coded == 2 * 19 * 24 and not [p for p in first.problems if not p.startswith("note:")]
    shutil.copytree(full, ms)
    more = run(Experiment(dataset="kodak", data_dir=str(kodak_dir), codecs=_codecs(MS_SSIM_POINTS),
                          metrics=["psnr", "ms_ssim_rgb"], out=str(ms)))
    assert more.units_coded == 0 and more.metric_values == 2 * len(MS_SSIM_POINTS) * 24  # resumed
    return full, ms


# ---------------------------------------------------------------------------- the published files
@pytest.mark.parametrize("codec", ["jpeg", "webp"])
def test_published_curve_and_its_source(codec):
    ref = reference.load(f"compressai-{codec}")
    assert ref.codec == codec and ref.dataset == "kodak" and ref.meta["n_images"] == 24
    cards.get("codec", ref.codec)
    cards.get("dataset", ref.dataset)
    assert list(ref.rows) == [str(q) for q in QUALITIES] and ref.metrics == ["psnr", "ms_ssim_rgb"]
    meta = ref.meta
    assert meta["source"] == (f"https://github.com/{meta['repository']}/blob/{meta['commit']}/{meta['path']}")
    bpp = [r["bpp"] for r in ref.rows.values()]
    assert bpp == sorted(bpp) and all(0.1 < b < 4 for b in bpp)
    for q in ("bpp", "psnr", "ms_ssim_rgb"):
        kind, tol = ref.tolerance(q)
        assert tol > 0 and kind == ("rel" if q == "bpp" else "abs")
    assert "tolerance" in meta["notes"].lower()
    assert f"kodak/compressai-{codec}" in reference.available("kodak")


def test_the_numbers_the_issue_quotes():
    q50 = reference.load("compressai-webp").rows["50"]
    assert q50["psnr"] == pytest.approx(33.2376, abs=1e-4) and q50["bpp"] == pytest.approx(0.72182, abs=1e-5)


def test_cards_use_the_published_settings(kodim01):
    """CompressAI's bench calls Image.save(buf, format=fmt, quality=q) and nothing else: the jpeg and
    webp cards (and the adapters' defaults) must write the very same bytes."""
    for card, fmt, adapter in (("jpeg", "JPEG", PillowJPEG), ("webp", "WEBP", PillowWebP)):
        codec = build_codec(cards.get("codec", card))
        for q in (10, 75):
            buf = io.BytesIO()
            Image.fromarray(kodim01).save(buf, format=fmt, quality=q)
            assert codec.encode(kodim01, q) == buf.getvalue() == adapter().encode(kodim01, q), (card, q)
    m6 = build_codec(cards.get("codec", "webp-m6"))
    assert m6.method == 6 and m6.encode(kodim01, 50) != PillowWebP().encode(kodim01, 50)


def test_provenance_names_libraries_and_chroma_and_nothing_volatile():
    jpeg, webp = PillowJPEG().provenance(), PillowWebP().provenance()
    assert jpeg["subsampling"] == "4:2:0" and jpeg["optimize"] is False and jpeg["jpg"]
    assert "libjpeg_turbo" in jpeg  # its version, or None for IJG libjpeg
    assert webp["subsampling"] == "4:2:0" and webp["method"] == 4 and webp["webp"].count(".") == 2
    assert PillowWebP(method=6).fingerprint(50) != PillowWebP().fingerprint(50)
    assert PillowJPEG(subsampling="4:4:4").provenance()["subsampling"] == "4:4:4"
    assert jpeg == PillowJPEG().provenance()  # stable: no time, no path
    for prov in (jpeg, webp):
        assert not any(isinstance(v, str) and "/" in v for v in prov.values())


# ---------------------------------------------------------------------------- bench vs the published curves
@pytest.mark.parametrize("codec", ["jpeg", "webp"])
def test_bench_reproduces_compressai(kodak_run, codec):
    full, ms = kodak_run
    res = reference.compare(full, f"compressai-{codec}")
    assert res.passed, res.report()
    assert Counter(c.quantity for c in res.checks) == {"bpp": 19, "psnr": 19}
    assert all(c.n_images == 24 for c in res.checks) and res.refused == 0
    res = reference.compare(ms, f"compressai-{codec}")
    assert res.passed, res.report()
    n = len(MS_SSIM_POINTS)
    assert Counter(c.quantity for c in res.checks) == {"bpp": n, "psnr": n, "ms_ssim_rgb": n}


def test_webp_method_4_is_the_published_curve_exactly(kodak_run):
    full, ms = kodak_run
    res = reference.compare(full, "compressai-webp")
    assert res.max_deviation("bpp") < 1e-9  # the same bytes
    assert res.max_deviation("psnr") < 1e-3
    assert reference.compare(ms, "compressai-webp").max_deviation("ms_ssim_rgb") < 1e-5


def test_webp_method_6_is_not(kodak_dir, tmp_path):
    """The tolerance tells settings apart: method 6 fails the published webp curve."""
    run(Experiment(dataset="kodak", data_dir=str(kodak_dir), codecs=[{"name": "webp-m6", "points": [50]}],
                   metrics=["psnr"], out=str(tmp_path)))
    res = reference.compare(tmp_path, "compressai-webp", codec="webp-m6")
    assert not res.passed and {c.quantity for c in res.failures} == {"bpp", "psnr"}
    assert len(res.checks) == 2 and "50 ms_ssim_rgb" in res.not_in_run
    with pytest.raises(reference.ReferenceError, match="no webp rows"):
        reference.compare(tmp_path, "compressai-webp")


# ---------------------------------------------------------------------------- comparison rules (synthetic runs)
def _run_dir(tmp_path, ref, **columns):
    """A run directory whose per_set table holds exactly the reference's numbers."""
    rows = [dict(run_id="r", dataset=ref.dataset, codec=ref.codec, point=p, seed=0, metric=m, value=v[m],
                 n_images=24, n_patches=None, aggregate="mean", mean_bpp=v["bpp"])
            for p, v in ref.rows.items() for m in ref.metrics]
    df = pd.DataFrame(rows).assign(**columns)
    tmp_path.mkdir(parents=True, exist_ok=True)
    df.to_parquet(tmp_path / "per_set.parquet")
    return df


def test_compare_point_by_point_with_the_sidecar_tolerance(tmp_path):
    ref = reference.load("compressai-jpeg")
    df = _run_dir(tmp_path, ref)
    same = reference.compare(tmp_path, ref)
    assert same.passed and len(same.checks) == 19 * 3 and same.max_deviation("psnr") == 0
    assert "PASS" in same.report()
    moved = df.copy()
    moved.loc[(moved.point == "50") & (moved.metric == "psnr"), "value"] += 0.2  # tolerance 0.15 dB
    moved.loc[moved.point == "90", "mean_bpp"] *= 1.01  # tolerance 0.5 %
    moved.to_parquet(tmp_path / "per_set.parquet")
    res = reference.compare(tmp_path, ref)
    assert sorted((c.point, c.quantity) for c in res.failures) == [("50", "psnr"), ("90", "bpp")]
    fail = {c.quantity: c for c in res.failures}
    assert fail["psnr"].deviation == pytest.approx(0.2) and fail["bpp"].deviation == pytest.approx(0.01)
    assert "FAIL" in res.report()
    only = reference.compare(tmp_path, ref, points=[10, 50], metrics=["psnr"])
    assert len(only.checks) == 4 and len(only.failures) == 1


def test_partial_runs_never_pass(tmp_path):
    ref = reference.load("compressai-webp")
    _run_dir(tmp_path, ref, n_images=2)  # e.g. --limit 2
    res = reference.compare(tmp_path, ref)
    assert not res.passed and len(res.failures) == len(res.checks)
    assert "over 2 images" in res.failures[0].why


def test_random_weight_rows_are_refused(tmp_path):
    ref = reference.load("compressai-webp")
    _run_dir(tmp_path / "none", ref)  # no weights column: "none"
    assert reference.compare(tmp_path / "none", ref).passed
    _run_dir(tmp_path / "pretrained", ref, weights="pretrained")
    assert reference.compare(tmp_path / "pretrained", ref).passed
    _run_dir(tmp_path / "random", ref, weights="random")
    with pytest.raises(reference.ReferenceError, match="random weights"):
        reference.compare(tmp_path / "random", ref)
    df = _run_dir(tmp_path / "mixed", ref, weights="pretrained")
    df.loc[df.point.isin(["5", "10"]), "weights"] = "random"
    df.loc[df.point.isin(["5", "10"]), "value"] = 0.0  # would fail if compared
    df.to_parquet(tmp_path / "mixed" / "per_set.parquet")
    res = reference.compare(tmp_path / "mixed", ref)
    assert res.passed and res.refused == 4 and "5 bpp" in res.not_in_run and len(res.checks) == 17 * 3


def test_command_line(tmp_path, capsys):
    ref = reference.load("compressai-webp")
    _run_dir(tmp_path, ref)
    with pytest.raises(SystemExit) as exit_:
        reference.main([str(tmp_path)])
    assert exit_.value.code == 0 and "compressai-webp" in capsys.readouterr().out


def test_a_sidecar_must_state_source_and_tolerance(tmp_path):
    src = reference.load("compressai-webp").path
    shutil.copy(src, tmp_path / "x.csv")
    (tmp_path / "x.yaml").write_text("codec: webp\ndataset: kodak\n")
    with pytest.raises(reference.ReferenceError, match="missing keys"):
        reference.load(tmp_path / "x.csv")
    text = src.with_suffix(".yaml").read_text().replace("ms_ssim_rgb_abs", "lpips_abs")
    (tmp_path / "x.yaml").write_text(text)
    with pytest.raises(reference.ReferenceError, match="no tolerance for 'ms_ssim_rgb'"):
        reference.load(tmp_path / "x.csv")
    with pytest.raises(reference.ReferenceError, match="no single reference"):
        reference.load("compressai-avif")


def test_ms_ssim_rgb_is_compressais_ms_ssim(kodim01):
    """The published MS-SSIM column is pytorch_msssim.ms_ssim(data_range=255) on RGB; bench's
    ms_ssim_rgb computes that number (both float32; data range 1 vs 255: ~1e-7)."""
    torch = pytest.importorskip("torch")
    msssim = pytest.importorskip("pytorch_msssim")
    from bench.metrics.engine import MetricEngine

    buf = io.BytesIO()
    Image.fromarray(kodim01).save(buf, format="JPEG", quality=10)
    rec = np.asarray(Image.open(buf).convert("RGB"))
    t = lambda a: torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float()
    theirs = msssim.ms_ssim(t(rec), t(kodim01), data_range=255.0).item()
    assert MetricEngine(["ms_ssim_rgb"]).score(kodim01, rec)["ms_ssim_rgb"] == pytest.approx(theirs, abs=1e-6)


# ---------------------------------------------------------------------------- a paper's own table
def test_a_paper_table_row_is_a_reference_with_its_columns_on_their_sets(tmp_path):
    """PerCo Table 1 (paper-sourced: paper + where instead of repository/path/commit): mIoU and CLIP
    score were measured on COCO at 512, the rest on MS-COCO 30k; each column is compared with the
    run's rows of its own set and image count."""
    ref = reference.load("coco30k/perco-table1")
    assert ref.codec == "perco" and ref.meta["paper"] == "perco-iclr2024" and "Table 1" in ref.meta["where"]
    assert ref.rows == {"0.0098": {"bpp": 0.0112, "fid": 4.42, "lpips": 0.39, "ssim_rgb": 0.58, "miou_cocostuff": 46.64,
                                   "clip_score": 29.05}}
    assert (ref.dataset_of("miou_cocostuff"), ref.n_images("miou_cocostuff")) == ("coco2017-val512", 5000)
    assert (ref.dataset_of("fid"), ref.n_images("fid")) == ("coco30k", 30000)
    rows = [dict(run_id="r", dataset=ref.dataset_of(m), codec="perco", point="0.0098", seed=0, metric=m, value=v,
                 n_images=ref.n_images(m), n_patches=None, aggregate="mean", weights="pretrained",
                 mean_bpp=0.0112 if ref.dataset_of(m) == "coco30k" else 0.0150)
            for m, v in ref.rows["0.0098"].items() if m != "bpp"]
    pd.DataFrame(rows).to_parquet(tmp_path / "per_set.parquet")
    res = reference.compare(tmp_path, ref)
    assert res.passed and {c.quantity for c in res.checks} == {"bpp", "fid", "lpips", "ssim_rgb", "miou_cocostuff",
                                                                "clip_score"}
    # the mIoU row at the wrong set (COCO 30k) is not the published mIoU: moved there, it is not found
    moved = pd.DataFrame(rows)
    moved.loc[moved.metric == "miou_cocostuff", "dataset"] = "coco30k"
    moved.to_parquet(tmp_path / "per_set.parquet")
    assert "0.0098 miou_cocostuff" in reference.compare(tmp_path, ref).not_in_run


def test_a_published_method_that_is_not_a_bench_codec(tmp_path):
    ref = reference.load("perco-table1-ldm-autoencoder")
    assert ref.codec is None and ref.label == "LDM autoencoder" and math.isnan(ref.rows["table1"]["bpp"])
    with pytest.raises(reference.ReferenceError, match="not a bench codec"):
        reference.compare(tmp_path, ref)
    src = ref.path
    shutil.copy(src, tmp_path / "x.csv")
    text = src.with_suffix(".yaml").read_text()
    (tmp_path / "x.yaml").write_text(text.replace("method:", "# method:"))
    with pytest.raises(reference.ReferenceError, match="method"):
        reference.load(tmp_path / "x.csv")
    (tmp_path / "x.yaml").write_text(text.replace("paper:", "# paper:"))
    with pytest.raises(reference.ReferenceError, match="repository\\+path\\+commit or paper\\+where"):
        reference.load(tmp_path / "x.csv")
