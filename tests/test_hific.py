"""The HiFiC adapter: TFC's metagraphs run in an isolated TensorFlow env through the external-program base.

Without the env (no TensorFlow needed): weight table, env-missing and weights-missing
errors, command lines, fingerprint, env reuse and cleanup. With the env (CI creates it
with ``python -m bench.codecs.hific.env``; elsewhere these tests skip, and that skip is
not allowed on CI): a tiny model written in the released metagraphs' format by the env's
TensorFlow (tests/hific_tiny_metagraph.py) is put where bench keeps hific-lo/-mi/-hi,
and real .tfci bytes round-trip through fresh adapter instances. With the real
metagraphs in the cache, the needs_weights test runs them on a Kodak image.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from bench import cards, registry, weights
from bench.codecs.base import CodecError
from bench.codecs.hific import env as hific_env
from bench.codecs.hific.adapter import HiFiC
from bench.codecs.hific.weights import POINTS, URL_PREFIX, WEIGHTS
from bench.weights import WeightsError

TINY_BUILDER = Path(__file__).with_name("hific_tiny_metagraph.py")
TINY_STEPS = {"lo": 16.0, "mi": 8.0}  # two tiny "models" under the names of the real ones


def fake_env(root: Path, lock_sha256: str | None = None) -> Path:
    """A directory that looks like a complete env (its python is this interpreter)."""
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "python").symlink_to(sys.executable)
    info = {"lock_sha256": lock_sha256 or hific_env.lock_sha256(), "python": "3.11.7", "tensorflow": "2.14.1",
            "tensorflow_compression": "2.14.1", "numpy": "1.26.4"}
    (root / hific_env.MARKER).write_text(json.dumps(info))
    return root


@pytest.fixture
def fake(tmp_path, monkeypatch, cache):
    root = fake_env(tmp_path / "env")
    monkeypatch.setenv("BENCH_HIFIC_ENV", str(root))
    return root


# ---------------------------------------------------------------------------- no TensorFlow needed
def test_weight_table_lists_the_three_official_metagraphs():
    assert [w.id for w in WEIGHTS] == ["hific-lo", "hific-mi", "hific-hi"]
    tab = weights.table()
    for w in WEIGHTS:
        assert tab[w.id] is w and w.dest == "bench" and "Apache-2.0" in w.licence
        assert w.url == f"{URL_PREFIX}{w.filename}" and w.filename == f"{w.id}.metagraph"
        assert URL_PREFIX == "https://storage.googleapis.com/tensorflow_compression/metagraphs/"
        # TFC publishes no digest: the entry says so instead of inventing one
        assert w.sha256 == "" and w.sha256_prefix == "" and w.verified_by == "unverified"
        assert "unknown" in w.expected and "not verified" in w.expected
        weights._check_entry(w)


def test_unverified_entries_import_by_file_name_only(cache, tmp_path):
    src = tmp_path / "dl" / "hific-mi.metagraph"
    src.parent.mkdir()
    src.write_bytes(b"any bytes: no digest to check")
    assert weights.status("hific-mi") == "missing"
    placed = weights.import_file(src)
    assert placed == cache / "bench" / "hific-mi.metagraph" and placed.read_bytes() == src.read_bytes()
    assert weights.status("hific-mi") == "ok"
    other = tmp_path / "dl" / "model.bin"  # a name no entry has, and no digest can identify it
    other.write_bytes(b"any bytes: no digest to check")
    with pytest.raises(WeightsError, match="matches no entry"):
        weights.import_file(other)
    # the real sha256 is what provenance records
    prov = weights.provenance(["hific-mi"])["hific-mi"]
    assert prov["sha256"] == weights.sha256_file(placed) and prov["expected_sha256"] == ""


def test_card_names_the_paper_points_licence_and_published_rates():
    card = cards.get("codec", "hific")
    assert card.target == "hific" and card.get("points") == list(POINTS) and card.get("point_name") == "model"
    assert "NeurIPS 2020" in card.get("description") and "Apache-2.0" in card.get("licence")
    nominal = card.get("nominal_bpp")
    for dataset in ("kodak", "clic2020"):
        rates = [nominal[dataset][p] for p in POINTS]
        assert rates == sorted(rates)
    assert registry.get("codec", "hific").obj is HiFiC


def test_missing_env_is_a_clear_error_with_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_HIFIC_ENV", str(tmp_path / "nowhere"))
    with pytest.raises(CodecError) as info:
        HiFiC()
    msg = str(info.value)
    assert "python -m bench.codecs.hific.env" in msg and str(tmp_path / "nowhere") in msg and "not set up" in msg
    ok, why = HiFiC.available()
    assert not ok and "python -m bench.codecs.hific.env" in why
    # half-made (no marker) and made from another lock: both say so and name the command
    half = tmp_path / "half"
    (half / "bin").mkdir(parents=True)
    monkeypatch.setenv("BENCH_HIFIC_ENV", str(half))
    assert "incomplete" in HiFiC.available()[1]
    stale = fake_env(tmp_path / "stale", lock_sha256="0" * 64)
    monkeypatch.setenv("BENCH_HIFIC_ENV", str(stale))
    why = HiFiC.available()[1]
    assert "another requirements.lock" in why and "python -m bench.codecs.hific.env" in why


def test_command_lines_use_the_env_python_the_runner_and_the_cached_metagraph(fake, cache):
    codec = HiFiC()
    assert codec.paths == {"encoder": str(fake / "bin" / "python"), "decoder": str(fake / "bin" / "python")}
    for p in POINTS:
        weights.path(f"hific-{p}").parent.mkdir(parents=True, exist_ok=True)
        weights.path(f"hific-{p}").write_bytes(p.encode())
    enc = codec.encode_args("in.png", "out.tfci", "mi")
    assert enc == [str(hific_env.RUNNER), "encode", "in.png", "out.tfci", "--model", "hific-mi",
                   "--metagraph", str(cache / "bench" / "hific-mi.metagraph"), "--device", "cpu"]
    dec = codec.decode_args("in.tfci", "out.png")
    assert dec[:6] == [str(hific_env.RUNNER), "decode", "in.tfci", "out.png", "--device", "cpu"]
    # the decoder does not know the point: it offers every model and the bitstream picks one
    assert dec[6:] == [a for p in POINTS for a in ("--metagraph", f"hific-{p}={cache / 'bench' / f'hific-{p}.metagraph'}")]
    with pytest.raises(CodecError, match="valid points: lo, mi, hi"):
        codec.encode_args("in.png", "out.tfci", 3)
    assert codec.required_weights() == ["hific-lo", "hific-mi", "hific-hi"]
    assert codec.required_weights(["hi"]) == ["hific-hi"] and codec.weight_ids("lo") == ("hific-lo",)
    with pytest.raises(CodecError, match="no --init random"):
        HiFiC(init="random")


def test_missing_metagraph_names_file_url_place_and_import(fake, cache):
    codec = HiFiC()
    with pytest.raises(WeightsError) as info:
        codec.encode(np.zeros((8, 8, 3), np.uint8), "hi")
    msg = str(info.value)
    assert "hific-hi.metagraph" in msg and f"{URL_PREFIX}hific-hi.metagraph" in msg
    assert str(cache / "bench" / "hific-hi.metagraph") in msg and "bench weights import" in msg
    assert info.value.missing == ["hific-hi"]


def test_fingerprint_covers_env_runner_and_that_points_metagraph(fake, cache):
    codec = HiFiC()
    mg = weights.path("hific-lo")
    mg.parent.mkdir(parents=True)
    mg.write_bytes(b"model one")
    fp = codec.fingerprint("lo")
    assert fp["env"]["lock_sha256"] == hific_env.lock_sha256()
    assert fp["env"]["tensorflow"] == "2.14.1" and fp["env"]["tensorflow_compression"] == "2.14.1"
    assert fp["runner_sha256"] == weights.sha256_file(hific_env.RUNNER)
    assert fp["metagraph"] == {"file": "hific-lo.metagraph", "sha256": weights.sha256_file(mg)}
    assert fp["tf_device"] == "cpu" and HiFiC(device="cuda:0").fingerprint("lo")["tf_device"] == "gpu"
    assert HiFiC(device="cuda").encode_args("a", "b", "lo")[-2:] == ["--device", "gpu"]
    assert codec.fingerprint("mi")["metagraph"] == {"file": "hific-mi.metagraph", "sha256": None}
    os.utime(mg, ns=(1, 1))  # a new file (other mtime for the hash cache) with other bytes
    mg.write_bytes(b"model two")
    assert codec.fingerprint("lo")["metagraph"]["sha256"] != fp["metagraph"]["sha256"]
    assert "path" not in json.dumps(fp)  # a moved env/cache gives the same key
    json.dumps(codec.provenance())


def test_ensure_env_reuses_a_complete_env_and_cleans_up_a_failed_build(tmp_path, monkeypatch):
    done = fake_env(tmp_path / "done")

    def no_run(*a, **k):
        raise AssertionError("a complete env must be reused without running anything")

    monkeypatch.setattr(hific_env, "_run", no_run)
    assert hific_env.ensure_env(root=done, log=lambda s: None)["lock_sha256"] == hific_env.lock_sha256()

    calls = []

    def failing(cmd, what, log):
        calls.append(what)
        if what == "creating the venv":
            Path(cmd[-1]).mkdir(parents=True)
            return ""
        raise hific_env.EnvError(f"{what} failed (exit 1)")

    monkeypatch.setattr(hific_env, "_run", failing)
    target = tmp_path / "new" / "hific-tf2.14"
    with pytest.raises(hific_env.EnvError, match="installing requirements.lock failed"):
        hific_env.ensure_env(root=target, python=sys.executable, log=lambda s: None)
    assert calls == ["creating the venv", "installing requirements.lock"]
    assert not target.exists() and list(target.parent.iterdir()) == []  # no half-made env left anywhere
    with pytest.raises(hific_env.EnvError, match="CPython 3.9, 3.10 or 3.11"):
        hific_env.find_base_python(str(tmp_path / "no-python"))


def test_lock_pins_every_package_with_the_versions_tfc_needs():
    pins = {}
    for line in hific_env.LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"unpinned line {line!r}"
            pins[name.lower().replace("_", "-")] = version
    assert pins["tensorflow-compression"] == "2.14.1" and pins["tensorflow"].startswith("2.14.")
    assert pins["scipy"].startswith("1.11.") and pins["numpy"].startswith("1.")
    assert pins["tensorflow-probability"].startswith("0.22.")


# ---------------------------------------------------------------------------- with the isolated env
def _env_or_skip() -> None:
    info, why = hific_env.state()
    if info is None:
        pytest.skip(f"{why} (CI creates it; this skip is not allowed there)")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """bench's weight cache holding tiny models as hific-lo and hific-mi (hific-hi absent)."""
    _env_or_skip()
    cache = tmp_path_factory.mktemp("hific-cache")
    (cache / "bench").mkdir()
    for point, step in TINY_STEPS.items():
        proc = subprocess.run([str(hific_env.env_python()), str(TINY_BUILDER),
                               str(cache / "bench" / f"hific-{point}.metagraph"), str(step)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return cache


@pytest.fixture
def tiny_cache(tiny, monkeypatch):
    monkeypatch.setenv("BENCH_WEIGHTS", str(tiny / "bench"))
    return tiny


def expected_tiny(rgb: np.ndarray, step: float) -> np.ndarray:
    """What the tiny model computes, in numpy: means over 4x4 windows placed as TF's "SAME"
    pooling places them (padding split before/after, smaller half before; a window averages
    its pixels inside the image), quantized with step ``step`` (round half to even), each
    latent repeated over the 4x4 block at its position, cropped, rounded and saturated."""
    h, w, _ = rgb.shape
    oh, ow = -(-h // 4), -(-w // 4)
    top, left = ((oh - 1) * 4 + 4 - h) // 2, ((ow - 1) * 4 + 4 - w) // 2
    out = np.empty((oh * 4, ow * 4, 3), np.float32)
    for i in range(oh):
        for j in range(ow):
            r0, c0 = max(i * 4 - top, 0), max(j * 4 - left, 0)
            block = rgb[r0:i * 4 - top + 4, c0:j * 4 - left + 4].astype(np.float32)
            q = np.round(block.mean(axis=(0, 1), dtype=np.float32) / np.float32(step)) * np.float32(step)
            out[i * 4:i * 4 + 4, j * 4:j * 4 + 4] = q
    return np.clip(np.round(out[:h, :w]), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", [(7, 5), (65, 97)])
def test_tfci_bytes_round_trip_in_a_fresh_instance(tiny_cache, kodim01, size):
    h, w = size
    rgb = np.ascontiguousarray(kodim01[100:100 + h, 200:200 + w])
    data = HiFiC().encode(rgb, "lo")
    assert isinstance(data, bytes) and b"hific-lo" in data  # the official .tfci packing names its model
    recon = HiFiC().decode(data)  # a fresh instance: nothing but the bytes
    assert recon.shape == rgb.shape and recon.dtype == np.uint8
    bpp = 8 * len(data) / (h * w)
    assert bpp == 8 * len(data) / rgb[..., 0].size
    want = expected_tiny(rgb, TINY_STEPS["lo"])
    same = np.mean(recon == want)
    assert same > 0.99 and np.abs(recon.astype(int) - want.astype(int)).max() <= TINY_STEPS["lo"], (same, bpp)


def test_the_bitstream_picks_its_model_and_coding_is_deterministic(tiny_cache, kodim01):
    rgb = np.ascontiguousarray(kodim01[:64, :96])
    lo, mi = HiFiC().encode(rgb, "lo"), HiFiC().encode(rgb, "mi")
    assert b"hific-mi" in mi and len(mi) > len(lo)  # the finer step costs more bits
    assert HiFiC().encode(rgb, "mi") == mi  # same bytes every time
    rec_lo, rec_mi = HiFiC().decode(lo), HiFiC().decode(mi)
    assert np.array_equal(HiFiC().decode(mi), rec_mi)
    err = [np.abs(r.astype(float) - rgb).mean() for r in (rec_lo, rec_mi)]
    assert err[1] < err[0]
    assert np.mean(rec_mi == expected_tiny(rgb, TINY_STEPS["mi"])) > 0.99


def test_bad_bytes_and_a_missing_model_are_clear_errors(tiny_cache, kodim01, tmp_path):
    rgb = np.ascontiguousarray(kodim01[:16, :16])
    data = HiFiC().encode(rgb, "lo")
    with pytest.raises(CodecError, match="not a .tfci bitstream"):
        HiFiC().decode(b"\xff\x00garbage" + data[:5])
    # a bitstream naming hific-hi, whose metagraph is not in the cache
    hi = data.replace(b"hific-lo", b"hific-hi")
    with pytest.raises(CodecError) as info:
        HiFiC().decode(hi)
    assert "'hific-hi'" in str(info.value) and "hific-hi.metagraph" in str(info.value)


def test_codecs_check_passes_on_the_tiny_model(tiny_cache):
    """`bench codecs check` on the hific card, with the tiny model as hific-lo: fingerprint in a
    fresh process, decoding in a separate process from the bytes alone, corrupt bytes."""
    from bench.codecs.check import run_checks

    report = run_checks("hific", points=["lo"], images=0, sizes=[(48, 64), (7, 5)])
    assert not report.failed, [(c.name, c.detail) for c in report.checks if c.status == "fail"]
    status = {c.name: c.status for c in report.checks}
    for name in ("fingerprint", "encode", "rate", "decode", "fresh-process", "deterministic",
                 "empty-bytes", "truncated-bytes"):
        assert status[name] == "pass", (name, status[name])
    # allowed but said: TFC publishes no digest for its metagraphs
    assert status["weights"] == "warn" and "UNVERIFIED" in report.check("weights").detail


def test_runner_reports_the_env_versions():
    _env_or_skip()
    out = subprocess.run([str(hific_env.env_python()), str(hific_env.RUNNER), "version"], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    info = json.loads(out)
    assert info["tensorflow"].startswith("2.14.") and info["tensorflow_compression"] == "2.14.1"
    assert info == {**info, **{k: v for k, v in hific_env.marker().items() if k in info}}


# ---------------------------------------------------------------------------- the released models
@pytest.mark.needs_weights("hific-lo", "hific-mi", "hific-hi")
def test_released_models_on_kodak(kodim01):
    _env_or_skip()
    nominal = yaml.safe_load(Path(cards.get("codec", "hific").path).read_text())["nominal_bpp"]["kodak"]
    h, w, _ = kodim01.shape
    bpp, err = {}, {}
    for p in POINTS:
        data = HiFiC().encode(kodim01, p)
        recon = HiFiC().decode(data)
        assert recon.shape == kodim01.shape and f"hific-{p}".encode() in data
        bpp[p] = 8 * len(data) / (h * w)
        err[p] = np.mean((recon.astype(float) - kodim01) ** 2)
        # one image is not the 24-image mean, but a released model lands near its published rate
        assert nominal[p] / 2 < bpp[p] < nominal[p] * 2, (p, bpp[p], nominal[p])
    assert bpp["lo"] < bpp["mi"] < bpp["hi"] and err["lo"] > err["hi"]


def test_published_references_and_the_cards_nominal_rates_agree():
    from bench import reference

    nominal = cards.get("codec", "hific").get("nominal_bpp")
    for dataset in ("kodak", "clic2020"):
        ref = reference.load(f"{dataset}/hific")
        assert ref.codec == "hific" and ref.dataset == dataset and list(ref.rows) == list(POINTS)
        meta = ref.meta
        assert meta["source"] == f"https://github.com/{meta['repository']}/blob/{meta['commit']}/{meta['path']}"
        assert meta["path"] == "models/hific/data.csv" and "NOT measured" in meta["notes"]
        bpp = [ref.rows[p]["bpp"] for p in POINTS]
        assert bpp == sorted(bpp)
        assert all(abs(ref.rows[p]["bpp"] - nominal[dataset][p]) < 1e-4 for p in POINTS)
        for q in ("bpp", *ref.metrics):
            assert ref.tolerance(q)[1] > 0
    assert cards.get("codec", "hific").get("reference") == "results/reference/kodak/hific.csv"
