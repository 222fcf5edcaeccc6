"""CI regression on metric curves: recompute part of the golden Kodak table and compare.

The full table (results/golden) was computed with `make golden`; this recomputes
two images (one landscape, one portrait) for JPEG and WebP at all golden points
with eight metrics, plus MAD on one pair per codec (MAD costs ~20 s per pair).
"""
import pandas as pd
import pytest

from bench import golden
from bench.runner import Experiment
from bench.store import read_table

IMAGES = ["kodim01", "kodim19"]


@pytest.fixture(scope="module")
def recomputed(kodak_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("golden")
    main = golden.compute(str(kodak_dir), str(out), images=IMAGES, mad=False)
    exp = Experiment(dataset="kodak", data_dir=str(kodak_dir), codecs=["jpeg", "webp"], points=[50], metrics=["mad"],
                     out=str(out))
    golden._run_on(exp, {"kodim19"})  # the tables now hold this (MAD) experiment only
    mad = read_table(out, "per_image")[["image_id", "codec", "point", "bits", "bpp", "metric", "value"]]
    return pd.concat([main, mad], ignore_index=True)


def test_golden_table_is_complete_and_consistent():
    g = golden.load()
    assert set(g.codec) == set(golden.CODECS)
    for codec, points in golden.CODEC_POINTS.items():
        assert set(g[g.codec == codec].point.astype(int)) == set(points), codec
    assert g.image_id.nunique() == 24
    n_points = sum(map(len, golden.CODEC_POINTS.values()))
    for metric in golden.METRICS:
        assert (g.metric == metric).sum() == 24 * n_points, metric
    assert set(g[g.metric == "mad"].image_id) == set(golden.MAD_IMAGES)
    points = pd.read_csv(golden.GOLDEN_DIR / "kodak_per_point.csv", dtype={"point": str})
    again = golden.per_point(g)
    merged = points.merge(again, on=["codec", "point", "metric"], suffixes=("", "_again"))
    assert len(merged) == len(points) == len(again)
    assert (merged.value - merged.value_again).abs().max() < 1e-6
    # the curves go the right way: more bits, better quality
    psnr = points[(points.metric == "psnr") & (points.codec == "jpeg")].sort_values("mean_bpp")
    assert psnr.value.is_monotonic_increasing and psnr.point.astype(int).is_monotonic_increasing


def test_recomputed_values_match_golden(recomputed):
    n_points = sum(map(len, golden.CODEC_POINTS.values()))
    assert len(recomputed) == len(IMAGES) * n_points * len(golden.METRICS) + 2
    problems = golden.compare(recomputed)
    assert problems == [], "\n".join(problems[:20])


def test_compare_catches_a_moved_curve(recomputed):
    moved = recomputed.copy()
    moved.loc[moved.metric == "psnr", "value"] += 0.01
    problems = golden.compare(moved)
    assert len(problems) == (moved.metric == "psnr").sum() and "golden" in problems[0]
    fewer_bits = recomputed.copy()
    fewer_bits["bits"] -= 8
    assert golden.compare(fewer_bits)
