"""Non-learned full-reference metrics through the engine: sanity, direction, sizes."""
import io

import numpy as np
import pytest
from PIL import Image

from bench import registry
from bench.metrics.engine import MetricEngine, resolve, split_kinds
from bench.metrics.iqa import MetricError, non_learned_names

FAST = ["psnr", "ssim", "ms_ssim", "cw_ssim", "fsim", "gmsd", "nlpd", "vsi"]


@pytest.fixture(scope="module")
def engine():
    return MetricEngine(FAST + ["mad"])


def jpeg(rgb, q):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=q)
    return np.asarray(Image.open(buf).convert("RGB"))


def psnr_by_hand(ref: np.ndarray, rec: np.ndarray) -> float:
    """PSNR in dB of 8-bit RGB images scaled to [0, 1], MSE over all pixels and channels (numpy)."""
    mse = np.mean((ref.astype(np.float64) / 255 - rec.astype(np.float64) / 255) ** 2)
    return float(10 * np.log10(1.0 / mse))


def test_identical_images_score_perfectly(engine, kodim01):
    ref = kodim01[:192, :192]
    s = engine.score(ref, ref.copy())
    for name in ("ssim", "ms_ssim", "cw_ssim", "fsim", "vsi"):
        assert s[name] == pytest.approx(1.0, abs=1e-5), name
    for name in ("gmsd", "nlpd", "mad"):
        assert s[name] == pytest.approx(0.0, abs=1e-6), name
    assert s["psnr"] >= 60


def test_stronger_jpeg_scores_worse_on_every_metric(engine, kodim01):
    ref = kodim01[:256, :256]
    rec90, rec10 = jpeg(ref, 90), jpeg(ref, 10)
    good, bad = engine.score(ref, rec90), engine.score(ref, rec10)
    assert good["psnr"] == pytest.approx(psnr_by_hand(ref, rec90), rel=1e-5)
    assert bad["psnr"] == pytest.approx(psnr_by_hand(ref, rec10), rel=1e-5)
    for name in FAST + ["mad"]:
        better = registry.get("metric", name).obj.higher_better
        assert (good[name] > bad[name]) == better, f"{name}: q90 {good[name]} vs q10 {bad[name]}"


def test_each_pair_scored_in_one_call_and_deterministic(engine, kodim01):
    ref = kodim01[:200, :300]
    rec = jpeg(ref, 40)
    first = engine.score(ref, rec, FAST)
    assert sorted(first) == sorted(FAST) and all(isinstance(v, float) for v in first.values())
    assert first == engine.score(ref, rec, FAST)
    assert first["psnr"] == pytest.approx(psnr_by_hand(ref, rec), rel=1e-5)


def test_too_small_images_give_clear_errors_not_crashes(engine, kodim01):
    ref = kodim01[:100, :150]
    rec = jpeg(ref, 50)
    s = engine.score(ref, rec, ["psnr", "ms_ssim", "cw_ssim"])
    assert s["psnr"] == pytest.approx(psnr_by_hand(ref, rec), rel=1e-5)  # the other metrics still score
    assert isinstance(s["ms_ssim"], MetricError) and "161×161" in str(s["ms_ssim"])
    tiny = kodim01[:40, :40]
    assert isinstance(engine.score(tiny, tiny, ["cw_ssim"])["cw_ssim"], MetricError)
    with pytest.raises(MetricError, match="differ in shape"):
        engine.score(ref, ref[:50])


def test_names_resolve_with_all_and_conventions_are_stated():
    names = resolve("psnr, ms_ssim")
    assert names == ["psnr", "ms_ssim"]
    assert set(non_learned_names()) <= set(resolve("all"))
    per_image, per_set = split_kinds(non_learned_names())
    assert per_image == non_learned_names() and per_set == []
    for name in non_learned_names():
        spec = registry.get("metric", name).obj
        assert spec.convention and spec.mode == "FR" and "pyiqa" in spec.version()
