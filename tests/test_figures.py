"""Rate–metric figures checked by content: labels and units, one line per codec (and seed),
legend, and line data equal to rate and quality computed by hand from the stored files."""
from __future__ import annotations

import re
import types

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.figures import FigureError, plot_run, points_frame, rate_figure

CODECS = ["jpeg", "webp"]
POINTS = [10, 50, 90]
IMAGES = ["kodim01", "kodim02"]


@pytest.fixture(scope="module")
def run_dir(kodak_dir, tmp_path_factory):
    from bench.runner import Experiment, run

    out = tmp_path_factory.mktemp("fig") / "run"
    res = run(Experiment(dataset="kodak", data_dir=str(kodak_dir), codecs=CODECS, points=POINTS,
                         metrics=["psnr", "gmsd"], out=str(out), limit=len(IMAGES)))
    assert not [p for p in res.problems if not p.startswith("note:")], res.problems
    return out


def truth_by_hand(run_dir, kodak_dir) -> dict[str, list[tuple[float, float]]]:
    """Per codec, (mean bpp, mean PSNR) of each point in bpp order: bpp = 8·bytes/(H·W) of the stored
    bitstream, PSNR with numpy on the stored reconstruction, averaged over the images."""
    truth = {}
    for codec in CODECS:
        pts = []
        for point in POINTS:
            bpps, psnrs = [], []
            for name in IMAGES:
                ref = np.asarray(Image.open(kodak_dir / f"{name}.png").convert("RGB"), np.float64) / 255
                unit = f"kodak/{codec}/{point}/s0/{name}"
                rec = np.asarray(Image.open(run_dir / "recon" / f"{unit}.png"), np.float64) / 255
                nbytes = (run_dir / "bitstreams" / f"{unit}.bin").stat().st_size
                bpps.append(8 * nbytes / (ref.shape[0] * ref.shape[1]))
                psnrs.append(10 * np.log10(1 / np.mean((ref - rec) ** 2)))
            pts.append((np.mean(bpps), np.mean(psnrs)))
        truth[codec] = sorted(pts)
    return truth


def axis(fig):
    assert len(fig.axes) == 1
    return fig.axes[0]


def test_lines_equal_rate_and_psnr_computed_by_hand(run_dir, kodak_dir):
    ax = axis(rate_figure(points_frame(run_dir), "psnr"))
    lines = ax.get_lines()
    assert len(lines) == len(CODECS)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == CODECS == [ln.get_label() for ln in lines]
    truth = truth_by_hand(run_dir, kodak_dir)
    for line in lines:
        x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
        assert len(x) == len(POINTS) and np.all(np.diff(x) > 0), "points not in bpp order"
        want = np.array(truth[line.get_label()])
        np.testing.assert_allclose(x, want[:, 0], rtol=1e-9)
        np.testing.assert_allclose(y, want[:, 1], rtol=1e-5)


def test_lines_equal_the_per_image_table_means(run_dir):
    per_image = pd.read_parquet(run_dir / "per_image.parquet")
    ax = axis(rate_figure(points_frame(run_dir), "gmsd"))
    for line in ax.get_lines():
        rows = per_image[(per_image.codec == line.get_label()) & (per_image.metric == "gmsd")]
        means = rows.groupby("point")[["bpp", "value"]].mean().sort_values("bpp")
        np.testing.assert_allclose(line.get_xdata(), means["bpp"], rtol=1e-9)
        np.testing.assert_allclose(line.get_ydata(), means["value"], rtol=1e-9)


def test_labels_carry_units_and_direction(run_dir):
    df = points_frame(run_dir)
    psnr, gmsd = axis(rate_figure(df, "psnr")), axis(rate_figure(df, "gmsd"))
    for ax in (psnr, gmsd):
        assert "bits per pixel (bpp)" in ax.get_xlabel()
        assert "kodak" in ax.get_title() and f"n={len(IMAGES)} images" in ax.get_title()
    assert psnr.get_ylabel().startswith("psnr (dB)") and "↑ higher is better" in psnr.get_ylabel()
    assert gmsd.get_ylabel().startswith("gmsd") and "↓ lower is better" in gmsd.get_ylabel()


def table(rows, weights=None):
    """A per_set-like frame: rows of (codec, point, seed, mean_bpp, value)."""
    df = pd.DataFrame(rows, columns=["codec", "point", "seed", "mean_bpp", "value"])
    df["metric"], df["dataset"], df["n_images"] = "m", "toy", 3
    if weights is not None:
        df["weights"] = weights
    return df


def test_one_line_per_seed_only_for_codecs_with_several_seeds():
    df = table([("diff", "a", 1, 0.4, 2.0), ("diff", "a", 0, 0.4, 1.0), ("diff", "b", 0, 0.1, 3.0),
                ("diff", "b", 1, 0.1, 4.0), ("jpeg", "90", 0, 2.0, 5.0), ("jpeg", "10", 0, 0.2, 6.0)])
    ax = axis(rate_figure(df, "m", spec=types.SimpleNamespace(unit="bits", higher_better=False)))
    got = {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.get_lines()}
    assert got == {"diff (seed 0)": ([0.1, 0.4], [3.0, 1.0]), "diff (seed 1)": ([0.1, 0.4], [4.0, 2.0]),
                   "jpeg": ([0.2, 2.0], [6.0, 5.0])}
    assert ax.get_ylabel() == "m (bits), ↓ lower is better"


def test_unit_from_the_metric_spec_psnr_fallback_and_unknown_metrics():
    df = table([("jpeg", "10", 0, 0.2, 30.0), ("jpeg", "90", 0, 2.0, 40.0)]).assign(metric="psnr")
    no_unit = types.SimpleNamespace(higher_better=True)  # a metric class that predates ``unit``
    assert axis(rate_figure(df, "psnr", spec=no_unit)).get_ylabel() == "psnr (dB), ↑ higher is better"
    unitless = types.SimpleNamespace(higher_better=True, unit="")
    assert axis(rate_figure(df, "psnr", spec=unitless)).get_ylabel() == "psnr, ↑ higher is better"
    other = df.assign(metric="plugin_metric")  # not registered: no unit, no direction claimed
    assert axis(rate_figure(other, "plugin_metric")).get_ylabel() == "plugin_metric"
    with pytest.raises(FigureError, match="no rows for metric 'ssim'"):
        rate_figure(df, "ssim")


def test_random_weight_rows_are_refused_missing_column_is_none():
    rows = [("jpeg", "10", 0, 0.2, 30.0), ("zoo-mbt", "1", 0, 0.3, 31.0)]
    with pytest.raises(FigureError, match=r"random weights \(codec zoo-mbt\).*smoke tests, not results"):
        rate_figure(table(rows, weights=["none", "random"]), "m")
    for weights in (None, ["none", "pretrained"], ["none", None]):
        assert len(axis(rate_figure(table(rows, weights), "m")).get_lines()) == 2


def test_plot_run_writes_each_metric_as_png_and_svg(run_dir, tmp_path):
    files = plot_run(run_dir, tmp_path)
    assert sorted(f.name for f in files) == ["gmsd.png", "gmsd.svg", "psnr.png", "psnr.svg"]
    assert Image.open(tmp_path / "psnr.png").size == (660, 480)  # 5.5 × 4 in at 120 dpi
    texts = re.findall(r"<!-- (.*?) -->", (tmp_path / "psnr.svg").read_text())  # matplotlib keeps text as comments
    assert {"psnr (dB), ↑ higher is better", "rate: bits per pixel (bpp), mean over images", *CODECS} <= set(texts)
    assert [f.name for f in plot_run(run_dir, tmp_path / "one", ["gmsd"], formats=("svg",))] == ["gmsd.svg"]


def test_plot_run_refuses_a_run_with_random_weights(run_dir, tmp_path):
    df = pd.read_parquet(run_dir / "per_set.parquet")
    (tmp_path / "r").mkdir()
    df.assign(weights=np.where(df.codec == "webp", "random", "none")).to_parquet(tmp_path / "r" / "per_set.parquet")
    with pytest.raises(FigureError, match="codec webp"):
        plot_run(tmp_path / "r")
    assert not (tmp_path / "r" / "plots").exists()


def test_bands_are_the_95_percent_interval_of_the_mean_over_images():
    """with_intervals: half-width t(0.975, n-1)·sd/√n of the per-image values of each point, by hand
    for values 1, 2, 3 (sd 1); one image or a set metric: no band. The plot shades it."""
    from bench.figures import with_intervals

    per_set = table([("c", "a", 0, 0.2, 2.0), ("c", "b", 0, 0.4, 5.0)])
    per_image = pd.DataFrame({"dataset": "toy", "codec": "c", "point": ["a"] * 3 + ["b"], "seed": 0, "metric": "m",
                              "value": [1.0, 2.0, 3.0, 5.0], "image_id": ["i1", "i2", "i3", "i1"]})
    df = with_intervals(per_set, per_image)
    assert df.loc[df.point == "a", "half"].item() == pytest.approx(4.302652729911275 / np.sqrt(3))
    assert np.isnan(df.loc[df.point == "b", "half"].item())  # one image: no interval
    ax = axis(rate_figure(df.assign(n_images=3), "m", spec=types.SimpleNamespace(higher_better=True)))
    assert len(ax.get_lines()) == 1 and len(ax.collections) == 1  # the line and its band
    (band,) = ax.collections
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(2.0 - 4.302652729911275 / np.sqrt(3))
    assert "band: 95 % interval of the mean over images" in ax.get_ylabel()
    assert not axis(rate_figure(per_set, "m")).collections  # no per-image values: no band


def test_a_run_plot_has_bands_from_its_per_image_table(run_dir):
    ax = axis(rate_figure(points_frame(run_dir), "psnr"))
    assert len(ax.collections) == len(CODECS) and "band: 95 %" in ax.get_ylabel()
