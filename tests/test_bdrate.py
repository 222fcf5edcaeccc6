"""BD-rate / BD-metric: hand-computable synthetic curves, refusals, the image bootstrap, per-point
intervals and ``bench bdrate`` on a synthetic run directory (parquet tables written here)."""
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from bench import bdrate
from bench.bdrate import BDError, Curve, bd, bd_rate

RATES = np.array([0.12, 0.25, 0.5, 0.9, 1.6])
PSNR = 24 + 6 * np.log2(RATES / 0.1) ** 0.8  # concave, increasing: a plausible PSNR curve
LPIPS = 0.5 * np.exp(-1.3 * RATES)  # decreasing with rate: lower is better


@pytest.mark.parametrize("method", bdrate.METHODS)
def test_rate_shift_of_ten_percent(method):
    anchor = Curve.of("anchor", RATES, PSNR)
    # the same quality at 1.1x the rate: +10 %; the anchor seen from the test: 1/1.1 - 1 = -9.0909 %
    assert bd(anchor, Curve.of("more", RATES * 1.1, PSNR), method).bd_rate == pytest.approx(10.0, abs=1e-9)
    assert bd(anchor, Curve.of("less", RATES / 1.1, PSNR), method).bd_rate == pytest.approx(-100 / 11, abs=1e-9)


@pytest.mark.parametrize("method", bdrate.METHODS)
def test_quality_shift_gives_bd_metric(method):
    r = bd(Curve.of("a", RATES, PSNR), Curve.of("b", RATES, PSNR + 1.0), method)
    assert r.bd_metric == pytest.approx(1.0, abs=1e-9)
    assert r.bd_rate < 0 and r.overlap_rate == pytest.approx(1.0)


def test_lower_is_better_metric():
    assert bdrate.higher_better("psnr") is True
    assert bdrate.higher_better("lpips") is False
    anchor = Curve.of("a", RATES, LPIPS)
    worse = bd(anchor, Curve.of("b", RATES * 1.1, LPIPS), higher_better=False)
    assert worse.bd_rate == pytest.approx(10.0, abs=1e-9)
    better = bd(anchor, Curve.of("c", RATES, LPIPS - 0.01), higher_better=False)
    assert better.bd_metric == pytest.approx(-0.01, abs=1e-12) and better.bd_rate < 0
    with pytest.raises(BDError, match="must rise with rate"):  # the wrong direction is refused, not inverted
        bd(anchor, Curve.of("b", RATES, LPIPS))


def test_points_order_does_not_matter():
    a, b = Curve.of("a", RATES, PSNR), Curve.of("b", RATES * 0.93, PSNR + 0.05)
    rev = Curve.of("b", b.rate[::-1], b.quality[::-1])
    assert bd(a, b).bd_rate == bd(a, rev).bd_rate


@pytest.mark.parametrize("method,n_ok", [("pchip", 2), ("akima", 3), ("cubic", 4)])
def test_too_few_points(method, n_ok):
    a = Curve.of("a", RATES[:n_ok], PSNR[:n_ok])
    assert math.isfinite(bd(a, Curve.of("b", RATES[:n_ok] * 1.05, PSNR[:n_ok]), method).bd_rate)
    few = Curve.of("few", RATES[:n_ok - 1], PSNR[:n_ok - 1])
    with pytest.raises(BDError, match=f"few: {n_ok - 1} rate point.*{method} needs at least {n_ok}"):
        bd(a, few, method)


def test_refusals():
    a = Curve.of("a", RATES, PSNR)
    bumpy = PSNR.copy()
    bumpy[2] = bumpy[3] + 0.1
    with pytest.raises(BDError, match="bumpy: not monotonic"):
        bd(a, Curve.of("bumpy", RATES, bumpy))
    with pytest.raises(BDError, match="same rate"):
        bd(a, Curve.of("dup", [0.1, 0.1, 0.3], [30, 31, 32]))
    with pytest.raises(BDError, match="no overlap"):
        bd(a, Curve.of("far", RATES, PSNR + 40))
    with pytest.raises(BDError, match="rates must be > 0"):
        bd(a, Curve.of("zero", [0, 0.2, 0.4], [30, 31, 32]))
    with pytest.raises(BDError, match="unknown method"):
        bd(a, a, "linear")


def _per_image(n_images: int, codecs: dict[str, tuple[float, float]], seed: int = 1, metric: str = "psnr"):
    """Synthetic per_image rows: per image a content factor k (bits scale with it) and noise; codec
    ``(rate_factor, quality_offset)``."""
    rng = np.random.default_rng(seed)
    k = rng.lognormal(0, 0.35, n_images)
    rows = []
    for codec, (rate_factor, dq) in codecs.items():
        for p, r in enumerate(RATES):
            for i in range(n_images):
                bpp = r * k[i] * rate_factor * rng.lognormal(0, 0.03)
                q = 24 + 6 * np.log2(r / 0.1) ** 0.8 + dq + rng.normal(0, 0.3)
                rows.append({"dataset": "synthetic", "image_id": f"img{i:03d}", "codec": codec, "point": str(p),
                             "seed": 0,
                                 "bpp": bpp, "bits": int(bpp * 1000), "metric": metric, "value": q, "weights": "none"})
    return pd.DataFrame(rows)


def _boot(df, n_resamples=300, seed=0):
    a = ("anchor", *bdrate.image_matrix(df, "anchor", "psnr"))
    t = ("test", *bdrate.image_matrix(df, "test", "psnr"))
    return bdrate.bootstrap_bd(a, t, n_resamples=n_resamples, seed=seed)


def test_bootstrap_reproducible_contains_estimate_and_shrinks():
    small = _per_image(8, {"anchor": (1.0, 0.0), "test": (0.9, 0.0)})
    one, again, other = _boot(small, seed=3), _boot(small, seed=3), _boot(small, seed=4)
    assert one.rate_ci == again.rate_ci and one.metric_ci == again.metric_ci
    assert one.rate_ci != other.rate_ci
    assert one.rate_ci[0] <= one.estimate.bd_rate <= one.rate_ci[1]
    assert one.metric_ci[0] <= one.estimate.bd_metric <= one.metric_ci[1]
    assert one.n_valid == one.n_resamples == 300 and one.n_images == 8
    large = _boot(_per_image(128, {"anchor": (1.0, 0.0), "test": (0.9, 0.0)}))
    assert large.rate_ci[1] - large.rate_ci[0] < 0.5 * (one.rate_ci[1] - one.rate_ci[0])
    assert large.rate_ci[0] <= large.estimate.bd_rate <= large.rate_ci[1]


def test_bootstrap_pairs_images():
    """Anchor and test on the same images with the same per-image content: the paired interval is
    far narrower than the spread of image content would give unpaired."""
    df = _per_image(24, {"anchor": (1.0, 0.0), "test": (0.9, 0.0)})
    ci = _boot(df).rate_ci
    assert ci[1] - ci[0] < 5  # content factor sd 35 % in rate; pairing cancels it (measured width ~2.5)


def test_point_intervals_t():
    from scipy import stats

    df = _per_image(6, {"anchor": (1.0, 0.0)})
    out = bdrate.point_intervals(df)
    row = out[(out.point == "2")].iloc[0]
    values = df[df.point == "2"].value.to_numpy()
    half = stats.t.ppf(0.975, 5) * values.std(ddof=1) / math.sqrt(6)
    assert row.n == 6 and row["mean"] == pytest.approx(values.mean())
    assert (row.low, row.high) == pytest.approx((values.mean() - half, values.mean() + half))
    single = bdrate.point_intervals(_per_image(1, {"anchor": (1.0, 0.0)}))
    assert (single["low"] == single["mean"]).all() and (single["high"] == single["mean"]).all()


def _write_run(tmp_path, df):
    per_set = (df.groupby(["dataset", "codec", "point", "seed", "metric", "weights"], as_index=False)
               .agg(value=("value", "mean"), mean_bpp=("bpp", "mean"), n_images=("image_id", "nunique")))
    df.to_parquet(tmp_path / "per_image.parquet")
    per_set.to_parquet(tmp_path / "per_set.parquet")
    return tmp_path


def test_compare_run_and_cli(tmp_path):
    from bench.cli import app

    run = _write_run(tmp_path, _per_image(12, {"anchor": (1.0, 0.0), "test": (0.8, 0.0), "same": (1.0, 0.0)}))
    rows = bdrate.compare_run(run, anchor="anchor", n_resamples=200)
    by = {r.codec: r for r in rows}
    assert set(by) == {"test", "same"} and all(r.error == "" for r in rows)
    assert -25 < by["test"].result.bd_rate < -15  # 0.8x the rate: -20 % up to the per-image rate noise
    assert by["test"].ci.rate_ci[0] < by["test"].result.bd_rate < by["test"].ci.rate_ci[1]
    assert by["same"].ci.rate_ci[0] < by["same"].result.bd_rate < by["same"].ci.rate_ci[1]
    result = CliRunner().invoke(app, ["bdrate", str(run), "--anchor", "anchor", "--bootstrap", "100"])
    assert result.exit_code == 0, result.output
    assert "test" in result.output and "95 % CI" in result.output
    bad = CliRunner().invoke(app, ["bdrate", str(run), "--anchor", "nope"])
    assert bad.exit_code == 2 and "not in this run" in bad.output


def test_cli_exits_nonzero_on_refusal(tmp_path):
    from bench.cli import app

    df = _per_image(4, {"anchor": (1.0, 0.0), "far": (1.0, 40.0)})
    run = _write_run(tmp_path, df)
    result = CliRunner().invoke(app, ["bdrate", str(run), "--anchor", "anchor", "--bootstrap", "50"])
    assert result.exit_code == 1 and "no overlap" in result.output


def test_reference_anchor_has_no_ci(tmp_path):
    from bench import reference

    ref = reference.load("compressai-bpg")
    pts = sorted(ref.rows.values(), key=lambda v: v["bpp"])
    # a "run" whose jpeg curve is the published BPG curve at 1.25x the rate: +25 % against it
    rows = [{"dataset": "kodak", "image_id": "x", "codec": "jpeg", "point": str(i), "seed": 0,
             "bpp": v["bpp"] * 1.25, "bits": 1,
                 "metric": "psnr", "value": v["psnr"], "weights": "none"} for i, v in enumerate(pts)]
    run = _write_run(tmp_path, pd.DataFrame(rows))
    (row,) = bdrate.compare_run(run, reference="compressai-bpg", metrics=["psnr"])
    assert row.result.bd_rate == pytest.approx(25.0, abs=1e-9) and row.ci is None
    assert "no CI" in row.note and "over 1 images, the published over 24" in row.note


# ---------------------------------------------------------------------------- a published BD-rate, recomputed
PUBLISHED_BD = Path(__file__).parent / "data" / "published_bd"  # sources: SOURCE.md there


def _coolchic_curve(version: str) -> Curve:
    """Cool-chic's dataset curve from its released per-image Kodak results: per lambda, mean rate
    and the PSNR of the mean MSE over the 24 images (how Cool-chic aggregates)."""
    import pandas as pd

    d = pd.read_csv(PUBLISHED_BD / f"coolchic-{version}-kodak.tsv", sep="\t")
    assert d.groupby("lmbda").size().tolist() == [24] * 5
    d = d.assign(mse=10 ** (-d["psnr_db"] / 10)).groupby("lmbda")
    return Curve.of(version, d["rate_bpp"].mean(), -10 * np.log10(d["mse"].mean()))


@pytest.mark.parametrize("anchor, test, published", [("v3.1", "v3.2", -1.9), ("v3.3", "v3.4", -0.9)])
@pytest.mark.parametrize("method", ["cubic", "pchip", "akima"])
def test_a_published_bd_rate_recomputed_from_the_published_points(anchor, test, published, method):
    """Cool-chic prints BD-rates between its versions (one decimal) and releases the per-image points
    they come from: recomputed here they round to the printed number, with the tool it names (the
    VCEG-M33 cubic fit) and with PCHIP and Akima (which agree with it to < 0.03 points here)."""
    value = bd_rate(_coolchic_curve(anchor), _coolchic_curve(test), method)
    assert abs(value - published) <= 0.05, f"{test} vs {anchor} ({method}): {value:.3f} %, published {published} %"
