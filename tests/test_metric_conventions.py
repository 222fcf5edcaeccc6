"""Metric metadata in one place, the two SSIM conventions, and the set-metric update/compute split."""
import importlib.metadata as md
import io

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from bench import registry
from bench.data.images import pixel_sha256
from bench.data.loaders import Sample
from bench.metrics import fid
from bench.metrics.base import META_KEYS, PerImageMetric, SetMetric
from bench.metrics.engine import MetricEngine

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def kodim01_q10(kodim01):
    """kodim01 through JPEG q10 with Pillow's defaults (4:2:0)."""
    buf = io.BytesIO()
    Image.fromarray(kodim01).save(buf, format="JPEG", quality=10)
    return np.asarray(Image.open(buf).convert("RGB"))


def _t(a):
    return torch.from_numpy(a.copy()).permute(2, 0, 1)[None].double() / 255


# ---------------------------------------------------------------------------- metadata
def test_every_metric_states_its_conventions():
    for name, entry in registry.entries("metric").items():
        m = entry.obj
        base = SetMetric if m.kind == "per_set" else PerImageMetric
        assert isinstance(m, base), name
        meta = m.meta()
        assert set(meta) == set(META_KEYS) and meta["name"] == name
        assert m.mode in ("FR", "NR") and isinstance(m.higher_better, bool), name
        for key in ("value_range", "colour_space", "licence", "convention"):
            assert isinstance(meta[key], str) and meta[key], (name, key)
        assert isinstance(m.unit, str) and isinstance(m.learned, bool)
    units = {n: e.obj.unit for n, e in registry.entries("metric").items() if e.obj.unit}
    assert units == {"psnr": "dB", "miou": "%", "miou_cocostuff": "%"}
    psnr = registry.get("metric", "psnr").obj
    assert psnr.axis_label() == "psnr (dB), higher is better"
    assert registry.get("metric", "gmsd").obj.axis_label() == "gmsd, lower is better"


def test_version_strings_of_existing_metrics_are_unchanged():
    """Versions key the resume of stored values: the metadata refactor must not move them."""
    v = md.version("pyiqa")
    expected = {"psnr": f"pyiqa-{v}:psnr:[]", "ssim": f"pyiqa-{v}:ssim:[]", "ms_ssim": f"pyiqa-{v}:ms_ssim:[]",
                "mad": f"pyiqa-{v}:mad:[]:tile=768"}
    for name, version in expected.items():
        assert registry.get("metric", name).obj.version() == version
    assert registry.get("metric", "fid_patch").obj.version().startswith(f"clean-fid-{md.version('clean-fid')}:fid:")


def test_metrics_list_shows_colour_space_range_direction_and_licence():
    from bench.cli import app

    out = CliRunner().invoke(app, ["metrics", "list"])
    assert out.exit_code == 0, out.output
    text = " ".join(out.stdout.split())
    for needle in ("ms_ssim_rgb", "colour space", "range", "better", "licence", "0.299R", "dB", "lower", "higher",
                   "PolyForm Noncommercial", "pytorch_msssim: MIT", "[1]"):
        assert needle in text, needle


# ---------------------------------------------------------------------------- SSIM on RGB vs on Y
def test_rgb_and_y_conventions_differ_on_kodim01_jpeg_q10(kodim01, kodim01_q10):
    s = MetricEngine(["ssim", "ms_ssim", "ssim_rgb", "ms_ssim_rgb"]).score(kodim01, kodim01_q10)
    assert s["ms_ssim_rgb"] == pytest.approx(0.91776, abs=1e-5)  # CompressAI / PerCo
    assert s["ms_ssim"] == pytest.approx(0.93565, abs=1e-5)  # pyiqa / CDC
    assert s["ssim_rgb"] == pytest.approx(0.69426, abs=1e-5) and s["ssim"] == pytest.approx(0.70976, abs=1e-5)


def test_rgb_metrics_through_the_engine_equal_pytorch_msssim(kodim01, kodim01_q10):
    import pytorch_msssim as msssim

    x, y = _t(kodim01_q10), _t(kodim01)
    # the engine's float32 path vs pytorch_msssim in float32 (CompressAI's numbers)
    s = MetricEngine(["ssim_rgb", "ms_ssim_rgb"]).score(kodim01, kodim01_q10)
    assert s["ms_ssim_rgb"] == pytest.approx(msssim.ms_ssim(x.float(), y.float(), data_range=1.0).item(), abs=1e-6)
    assert s["ssim_rgb"] == pytest.approx(msssim.ssim(x.float(), y.float(), data_range=1.0).item(), abs=1e-6)
    same = MetricEngine(["ssim_rgb", "ms_ssim_rgb"]).score(kodim01, kodim01.copy())
    assert same["ssim_rgb"] == pytest.approx(1.0, abs=1e-12) and same["ms_ssim_rgb"] == pytest.approx(1.0, abs=1e-12)


def test_pyiqa_y_is_full_range_bt601_luma_rounded(kodim01, kodim01_q10):
    """What pyiqa's ms_ssim looks at: Y = 0.299R + 0.587G + 0.114B of RGB in [0, 1] (YIQ's Y, full
    range), ×255, rounded — not the studio-range (16–235) Y of its rgb2ycbcr."""
    msssim = pytest.importorskip("pytorch_msssim")
    from pyiqa.utils.color_util import rgb2ycbcr

    x, y = _t(kodim01_q10), _t(kodim01)
    w = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(1, 3, 1, 1)
    full = lambda a: ((a * w).sum(1, keepdim=True) * 255).round()
    studio = lambda a: (rgb2ycbcr(a)[:, :1] * 255).round()
    pyiqa_value = MetricEngine(["ms_ssim"]).score(kodim01, kodim01_q10)["ms_ssim"]
    assert msssim.ms_ssim(full(x), full(y), data_range=255.0).item() == pytest.approx(pyiqa_value, abs=1e-6)
    assert abs(msssim.ms_ssim(studio(x), studio(y), data_range=255.0).item() - pyiqa_value) > 1e-3


def test_rgb_ssim_sizes_and_batches(kodim01, kodim01_q10):
    from bench.metrics.base import MetricError

    engine = MetricEngine(["ssim_rgb", "ms_ssim_rgb"])
    small = engine.score(kodim01[:100, :150], kodim01_q10[:100, :150])
    assert isinstance(small["ms_ssim_rgb"], MetricError) and "161×161" in str(small["ms_ssim_rgb"])
    assert isinstance(small["ssim_rgb"], float)
    crops = [(kodim01[i:i + 200, :300], kodim01_q10[i:i + 200, :300]) for i in (0, 100)]
    batch = engine.score_batch([r for r, _ in crops], [q for _, q in crops])
    for (ref, rec), got in zip(crops, batch):
        assert got == pytest.approx(engine.score(ref, rec), abs=1e-7)


# ---------------------------------------------------------------------------- set metrics: update / compute
class _Extractor:
    id = "test-mean-colour"
    weights = ()

    def __call__(self, x):  # (N, 3, 299, 299) -> (N, 6): channel means and stds
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)


def test_fid_update_compute_equals_compute_set(kodim01, kodim01_q10, monkeypatch, tmp_path):
    monkeypatch.setattr(fid, "feature_extractor", lambda device="cpu": _Extractor())
    rng = np.random.default_rng(0)
    crops = [kodim01[:256, i:i + 256].copy() for i in range(0, 512, 64)]  # 8 "images"
    samples = [Sample(f"c{i}", c, pixel_sha256(c)) for i, c in enumerate(crops)]
    recons = [np.clip(c + rng.integers(-20, 20, c.shape), 0, 255).astype(np.uint8) for c in crops]
    whole = fid.CleanFIDMetric("fid_test", "fid", "full").compute_set(list(zip(samples, recons)), "cpu", None)
    m = fid.CleanFIDMetric("fid_test", "fid", "full", batch_size=3)  # embeds every 3 images
    m.configure("cpu", tmp_path)
    m.reset()
    for s, r in zip(samples, recons):
        m.update(s, r)
    stepwise = m.compute()
    assert stepwise["n_images"] == whole["n_images"] == 8
    assert stepwise["value"] == pytest.approx(whole["value"], rel=1e-6)
    m.reset()
    with pytest.raises(ValueError, match="at least 2"):
        m.compute()
    with pytest.raises(ValueError, match="differ in shape"):
        m.update(samples[0], recons[1][:128])


def test_miou_update_compute(monkeypatch):
    from bench.metrics import segmenters
    from bench.metrics.miou import MIoU

    class Oracle:
        def predict(self, rgb):
            return (rgb[..., 0] > 127).astype(np.uint8)

        def describe(self):
            return {"backend": "oracle"}

    monkeypatch.setattr(segmenters, "build_segmenter", lambda *a, **k: Oracle())
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[:2, :, 0] = 255
    gt = (rgb[..., 0] > 127).astype(np.uint8)
    m = MIoU()
    m.configure("cpu")
    m.reset()
    m.update(Sample("a", rgb, "x", label_map=gt), rgb)
    m.update(Sample("b", rgb, "y"), rgb)  # no label map: counted, skipped
    res = m.compute()
    assert res["value"] == pytest.approx(100.0) and res["n_images"] == 1 and res["extra"]["skipped"] == ["b"]
    assert m.compute_set([(Sample("a", rgb, "x", label_map=gt), rgb)], "cpu")["extra"]["skipped"] == []
