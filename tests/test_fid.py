"""FID / KID set metrics (bench.metrics.fid): patch protocols, clean-fid distances, feature cache, runner.

No weights exist on the test machines: a small random-weight torch model replaces
the Inception extractor through the ``feature_extractor`` hook, and the real
TorchScript loading code runs on a tiny scripted stand-in saved to disk.
"""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import scipy.linalg
import torch

from bench import registry
from bench.data.images import pixel_sha256, read_rgb
from bench.data.loaders import Sample
from bench.metrics import fid


class RandomExtractor:
    """Random-weight conv net standing in for Inception; counts what it is fed."""

    weights = ()

    def __init__(self, dim: int = 8, seed: int = 0, id: str = "test-random-conv") -> None:
        g = torch.Generator().manual_seed(seed)
        self.id = id
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 8, stride=8), torch.nn.ReLU(),
                                       torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(32, dim))
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self.net.eval()
        self.calls = 0
        self.rows = 0
        self.inputs: list = []
        self.devices: set[str] = set()

    def __call__(self, x):
        assert x.dtype == torch.float32 and tuple(x.shape[1:]) == (3, 299, 299)
        self.calls += 1
        self.rows += x.shape[0]
        self.devices.add(x.device.type)
        if len(self.inputs) < 1:
            self.inputs.append(x[:1].detach().cpu().clone())
        self.net.to(x.device)
        return self.net(x / 255.0)


@pytest.fixture
def extractor(monkeypatch):
    ext = RandomExtractor()
    monkeypatch.setattr(fid, "feature_extractor", lambda device="cpu": ext)
    return ext


@pytest.fixture(scope="module")
def kodak(kodak_dir):
    """Four Kodak images (kodim01, 02: landscape 768×512; kodim04, 09: portrait 512×768) as Samples."""
    out = []
    for name in ("kodim01", "kodim02", "kodim04", "kodim09"):
        rgb, _ = read_rgb(kodak_dir / f"{name}.png")
        out.append(Sample(name, rgb, pixel_sha256(rgb)))
    return out


def degrade(rgb: np.ndarray, seed: int = 1, sigma: float = 40.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rgb.astype(np.float64) + rng.normal(0, sigma, rgb.shape), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------- independent references
# Written from the definitions with numpy/scipy, without bench.metrics.fid: the values the metric must reproduce.
def features_by_hand(ext: RandomExtractor, images, grid: bool = True) -> np.ndarray:
    """CDC patches (non-overlapping 256² grid from the top left) or whole images, clean-resized,
    through ``ext.net``."""
    from cleanfid.resize import build_resizer

    resize = build_resizer("clean")
    crops = []
    for rgb in images:
        h, w = rgb.shape[:2]
        if not grid:
            crops.append(rgb)
            continue
        crops += [rgb[t:t + 256, l:l + 256] for t in range(0, h - 255, 256) for l in range(0, w - 255, 256)]
    x = torch.from_numpy(np.stack([resize(np.ascontiguousarray(c)).transpose(2, 0, 1) for c in crops]))
    with torch.no_grad():
        return ext.net.cpu()(x.float() / 255.0).numpy().astype(np.float64)


def fid_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    """|mu_a - mu_b|² + Tr(S_a + S_b - 2 (S_a S_b)^½)."""
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(sa @ sb).real
    d = a.mean(0) - b.mean(0)
    return float(d @ d + np.trace(sa) + np.trace(sb) - 2 * np.trace(covmean))


def kid_by_hand(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with the cubic polynomial kernel k(p, q) = (p·q / d + 1)³, equal-size sets."""
    m, d = x.shape
    k = lambda p, q: (p @ q.T / d + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2 * kxy.sum() / m ** 2)


# ---------------------------------------------------------------------------- registry and contract
def test_registered_as_set_metrics(extractor):
    metrics = registry.entries("metric")
    expected = {"fid": "full", "kid": "full", "fid_patch": "cdc-256", "kid_patch": "cdc-256",
                "fid_patch_hific": "hific-256", "kid_patch_hific": "hific-256"}
    for name, protocol in expected.items():
        m = metrics[name].obj
        assert m.kind == "per_set" and m.name == name and m.higher_better is False
        assert m.protocol == protocol and m.statistic == name.split("_")[0]
        assert f":{m.statistic}:{protocol}:" in m.version()


def test_version_names_backend_protocol_and_extractor(extractor):
    import importlib.metadata as md

    v = registry.get("metric", "kid_patch_hific").obj.version()
    assert f"clean-fid-{md.version('clean-fid')}" in v and "hific-256" in v and extractor.id in v and "kid" in v
    assert registry.get("metric", "fid_patch").obj.version() != registry.get("metric", "fid_patch_hific").obj.version()


def test_weights_follow_the_extractor(monkeypatch):
    m = registry.get("metric", "fid").obj
    assert m.weights == (fid.INCEPTION_WEIGHTS,)  # default: clean-fid's Inception TorchScript
    monkeypatch.setattr(fid, "feature_extractor", lambda device="cpu": RandomExtractor())
    assert m.weights == ()  # the runner then requires no weight file


# ---------------------------------------------------------------------------- patch protocols
@pytest.mark.parametrize("h,w,cdc,hific", [
    (512, 768, 6, 6 + 2 * 1),   # Kodak landscape: 2×3 grid; shifted grid (384//256)×(640//256) = 1×2
    (768, 512, 6, 6 + 2 * 1),   # Kodak portrait
    (600, 600, 4, 4 + 1 * 1),   # Tecnick-size: 2×2 + 1×1
    (384, 384, 1, 1 + 1),       # 1.5·256: the smallest side with a shifted patch
    (383, 1000, 3, 3 + 0),      # 383 < 384: no shifted row
    (256, 256, 1, 1),
    (255, 900, 0, 0),
])
def test_patch_counts(h, w, cdc, hific):
    assert len(fid.patch_boxes(h, w, "cdc-256")) == cdc
    assert len(fid.patch_boxes(h, w, "hific-256")) == hific
    assert fid.patch_boxes(h, w, "full") == [(0, 0, h, w)]
    for t, l, ph, pw in fid.patch_boxes(h, w, "hific-256"):
        assert (ph, pw) == (256, 256) and 0 <= t and t + 256 <= h and 0 <= l and l + 256 <= w


def test_kodak_patch_totals(kodak_dir):
    from PIL import Image

    sizes = [Image.open(p).size for p in sorted(kodak_dir.glob("kodim*.png"))]
    assert len(sizes) == 24 and set(sizes) <= {(768, 512), (512, 768)}
    assert sum(len(fid.patch_boxes(h, w, "cdc-256")) for w, h in sizes) == 144  # CDC paper: 144 patches
    assert sum(len(fid.patch_boxes(h, w, "hific-256")) for w, h in sizes) == 24 * 8


def test_unknown_protocol_is_refused():
    with pytest.raises(ValueError, match="unknown FID protocol"):
        fid.patch_boxes(512, 512, "cdc-128")


def test_patch_pixels_equal_source_crops(kodak):
    for s in kodak[:2]:
        rgb = s.rgb
        h, w = rgb.shape[:2]
        cdc = fid.extract_patches(rgb, "cdc-256")
        rows, cols = h // 256, w // 256
        assert len(cdc) == rows * cols == 6
        # Kodak sides are multiples of 256: the grid tiles the whole image back exactly
        tiled = np.concatenate([np.concatenate(cdc[r * cols:(r + 1) * cols], axis=1) for r in range(rows)], axis=0)
        np.testing.assert_array_equal(tiled, rgb)
        hific = fid.extract_patches(rgb, "hific-256")
        assert len(hific) == 8
        for a, b in zip(hific[:6], cdc):
            np.testing.assert_array_equal(a, b)
        shifted = hific[6:]
        srows, scols = (h - 128) // 256, (w - 128) // 256
        for k, patch in enumerate(shifted):
            i, j = divmod(k, scols)
            np.testing.assert_array_equal(patch, rgb[128 + 256 * i:384 + 256 * i, 128 + 256 * j:384 + 256 * j])
        assert srows * scols == 2


# ---------------------------------------------------------------------------- distances
def test_fid_of_a_set_with_itself_is_zero_and_degradation_raises_it(kodak, extractor, tmp_path):
    m = registry.get("metric", "fid_patch").obj
    same = m.compute_set([(s, s.rgb.copy()) for s in kodak], "cpu", tmp_path)
    worse = m.compute_set([(s, degrade(s.rgb)) for s in kodak], "cpu", tmp_path)
    assert abs(same["value"]) < 1e-6
    refs = features_by_hand(extractor, [s.rgb for s in kodak])
    assert worse["value"] == pytest.approx(fid_by_hand(refs, features_by_hand(
        extractor, [degrade(s.rgb) for s in kodak])), rel=1e-5)
    assert worse["value"] > 1e-3
    assert same["n_images"] == 4
    extra = worse["extra"]
    assert extra["protocol"] == "cdc-256" and extra["n_patches"] == 24 and extra["n_images"] == 4
    assert extra["feature_extractor"] == extractor.id and extra["feature_dim"] == 8


def test_hific_protocol_uses_more_patches(kodak, extractor, tmp_path):
    res = registry.get("metric", "fid_patch_hific").obj.compute_set([(s, degrade(s.rgb)) for s in kodak[:2]],
                                                                    "cpu", tmp_path)
    assert res["extra"]["n_patches"] == 16 and res["extra"]["protocol"] == "hific-256"


def test_full_image_fid_counts_images(kodak, extractor):
    res = registry.get("metric", "fid").obj.compute_set([(s, degrade(s.rgb)) for s in kodak], "cpu", None)
    assert res["n_images"] == 4 and res["extra"]["protocol"] == "full" and "n_patches" not in res["extra"]
    assert extractor.rows == 8  # 4 references + 4 reconstructions, one crop each
    # 4 samples in 8 dims make FID's covariances singular; KID of the whole images checks the full protocol's values
    kid = registry.get("metric", "kid").obj.compute_set([(s, degrade(s.rgb)) for s in kodak], "cpu", None)
    refs = features_by_hand(extractor, [s.rgb for s in kodak], grid=False)
    worse = features_by_hand(extractor, [degrade(s.rgb) for s in kodak], grid=False)
    assert kid["value"] == pytest.approx(kid_by_hand(refs, worse), rel=1e-5)


def test_kid_small_set_adapts_subset_size(kodak, extractor, tmp_path):
    m = registry.get("metric", "kid_patch").obj
    worse = m.compute_set([(s, degrade(s.rgb)) for s in kodak], "cpu", tmp_path)
    same = m.compute_set([(s, s.rgb) for s in kodak], "cpu", tmp_path)
    extra = worse["extra"]
    assert extra["kid_subset_size"] == 24 < fid.KID_SUBSET_SIZE  # 4 images × 6 patches
    assert extra["kid_num_subsets"] == 1  # subset = whole set: one evaluation, not 100 identical ones
    refs = features_by_hand(extractor, [s.rgb for s in kodak])
    assert worse["value"] == pytest.approx(kid_by_hand(refs, features_by_hand(
        extractor, [degrade(s.rgb) for s in kodak])), rel=1e-5)
    assert same["value"] == pytest.approx(kid_by_hand(refs, refs), rel=1e-5)
    assert worse["value"] > same["value"]


def test_kernel_distance_subsets_std_and_reproducibility():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 16)), rng.normal(0.5, 1.0, size=(60, 16))
    before = np.random.get_state()[1].copy()
    v1, info = fid.kernel_distance(a, b)
    v2, _ = fid.kernel_distance(a, b)
    assert v1 == v2  # seeded
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # global RNG restored
    assert info["kid_subset_size"] == 50 and info["kid_num_subsets"] == 100
    assert info["kid_std"] is not None and info["kid_std"] > 0
    v_same, _ = fid.kernel_distance(a, a)
    # clean-fid's estimator keeps the diagonal in the cross term, so a set against itself is slightly negative
    assert v1 > 0 and v1 > v_same
    with pytest.raises(ValueError, match="at least 2"):
        fid.kernel_distance(a[:1], b[:1])


def test_frechet_distance_closed_forms():
    """Equal covariances: FID = |shift|². Scaled about the mean by s: the trace term is (1 - s)² Tr(S)."""
    rng = np.random.default_rng(7)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))  # correlated features
    cov = np.cov(a, rowvar=False)
    assert abs(fid.frechet_distance(a, a.copy())[0]) < 1e-8 * np.trace(cov)
    assert abs(fid.frechet_distance(a, a[rng.permutation(len(a))])[0]) < 1e-8 * np.trace(cov)  # order-free
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0, -1.0])
    assert fid.frechet_distance(a, a + shift)[0] == pytest.approx(15.25, rel=1e-7)  # 1 + 4 + .25 + 9 + 1
    s = 1.5
    scaled = a.mean(0) + s * (a - a.mean(0))
    assert fid.frechet_distance(a, scaled)[0] == pytest.approx((1 - s) ** 2 * np.trace(cov), rel=1e-7)
    both, _ = fid.frechet_distance(a, scaled + shift)
    assert both == pytest.approx(15.25 + (1 - s) ** 2 * np.trace(cov), rel=1e-7)
    b = rng.normal(0.3, 0.7, size=(300, 6))
    assert fid.frechet_distance(a, b)[0] == pytest.approx(fid_by_hand(a, b), rel=1e-7)


def test_kid_equals_unbiased_mmd_on_whole_sets():
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(30, 5)), rng.normal(0.4, 1.3, size=(30, 5))
    assert fid.kernel_distance(a, b)[0] == pytest.approx(kid_by_hand(a, b), rel=1e-9)
    assert fid.kernel_distance(a, a)[0] == pytest.approx(kid_by_hand(a, a), rel=1e-9)


def test_kid_matches_cleanfid_on_whole_sets():
    from cleanfid.fid import kernel_distance as cf_kid

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(40, 12)), rng.normal(0.3, 1.2, size=(40, 12))
    ours, info = fid.kernel_distance(a, b)
    assert info["kid_num_subsets"] == 1
    assert ours == pytest.approx(cf_kid(a, b, num_subsets=5, max_subset_size=1000), rel=1e-9)


def test_fid_matches_cleanfid_fid_from_feats():
    from cleanfid.fid import fid_from_feats

    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(200, 10)), rng.normal(0.2, 1.1, size=(200, 10))
    ours, _ = fid.frechet_distance(a, b)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert ours == pytest.approx(fid_from_feats(a, b), rel=1e-9)


def test_sqrtm_without_disp_fallback(monkeypatch):
    """SciPy >= 1.18 removed sqrtm(disp=...): clean-fid's call raises TypeError; we compute it ourselves."""
    import scipy.linalg
    from cleanfid import fid as cfid

    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(100, 6)), rng.normal(0.4, 0.8, size=(100, 6))
    reference, info = fid.frechet_distance(a, b)
    assert "sqrtm" not in info

    def sqrtm_new(A, **kw):
        if kw:
            raise TypeError(f"sqrtm() got an unexpected keyword argument {next(iter(kw))!r}")
        return scipy.linalg.sqrtm(A)

    monkeypatch.setattr(cfid, "linalg", types.SimpleNamespace(sqrtm=sqrtm_new))
    value, info = fid.frechet_distance(a, b)
    assert "without disp" in info["sqrtm"] and info["sqrtm_residual"] < 1e-8
    assert value == pytest.approx(reference, rel=1e-9)
    same, _ = fid.frechet_distance(a, a)
    assert abs(same) < 1e-8


# ---------------------------------------------------------------------------- cache
def test_reference_features_are_cached_and_reused(kodak, extractor, tmp_path):
    m = registry.get("metric", "fid_patch").obj
    first = m.compute_set([(s, degrade(s.rgb, seed=1)) for s in kodak[:3]], "cpu", tmp_path)
    assert extractor.rows == 2 * 18  # 3 references + 3 reconstructions, 6 patches each
    # another codec point: only its reconstructions go through the extractor
    m.compute_set([(s, degrade(s.rgb, seed=2)) for s in kodak[:3]], "cpu", tmp_path)
    assert extractor.rows == 2 * 18 + 18
    # the same set again: nothing is extracted, same value
    rows_before, calls_before = extractor.rows, extractor.calls
    again = m.compute_set([(s, degrade(s.rgb, seed=1)) for s in kodak[:3]], "cpu", tmp_path)
    assert (extractor.rows, extractor.calls) == (rows_before, calls_before)
    assert again["value"] == pytest.approx(first["value"], rel=1e-12, abs=1e-12)
    # kid_patch shares the cdc-256 features of fid_patch
    registry.get("metric", "kid_patch").obj.compute_set([(s, degrade(s.rgb, seed=1)) for s in kodak[:3]], "cpu",
                                                        tmp_path)
    assert extractor.rows == rows_before
    # layout: features/<extractor id>/<resizer id>/<protocol>/<pixel sha256>.npy, one (n_patches, D) file per image
    d = tmp_path / "features" / extractor.id / fid.resizer_id() / "cdc-256"
    f = np.load(d / f"{kodak[0].sha256}.npy")
    assert f.shape == (6, 8) and f.dtype == np.float32
    assert len(list(d.glob("*.npy"))) == 3 + 3 + 3
    assert not list(d.glob(".*"))  # no temp files left behind


def test_corrupt_cache_file_is_recomputed(kodak, extractor, tmp_path):
    m = registry.get("metric", "fid_patch").obj
    pairs = [(s, degrade(s.rgb)) for s in kodak[:2]]
    first = m.compute_set(pairs, "cpu", tmp_path)
    path = tmp_path / "features" / extractor.id / fid.resizer_id() / "cdc-256" / f"{kodak[0].sha256}.npy"
    path.write_bytes(b"not an npy file")
    rows = extractor.rows
    again = m.compute_set(pairs, "cpu", tmp_path)
    assert extractor.rows == rows + 6 and again["value"] == pytest.approx(first["value"], rel=1e-9)


def test_extractor_input_is_cleanfid_clean_resize(kodak, extractor):
    from cleanfid.resize import build_resizer

    fid.compute_features([(kodak[0].sha256, kodak[0].rgb)], "cdc-256", extractor, "cpu", None)
    expected = build_resizer("clean")(kodak[0].rgb[:256, :256]).transpose(2, 0, 1)
    np.testing.assert_array_equal(extractor.inputs[0][0].numpy(), expected)


def test_too_small_for_patches_is_a_clear_error(extractor):
    rgb = np.zeros((200, 300, 3), np.uint8)
    s = Sample("tiny", rgb, pixel_sha256(rgb))
    with pytest.raises(ValueError, match="at least 256"):
        registry.get("metric", "fid_patch").obj.compute_set([(s, rgb)], "cpu", None)


# ---------------------------------------------------------------------------- devices and the default extractor
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.needs_gpu)])
def test_device(kodak, extractor, device):
    pairs = [(s, degrade(s.rgb)) for s in kodak[:3]]
    res = registry.get("metric", "fid_patch").obj.compute_set(pairs, device, None)
    assert extractor.devices == {device}
    expected = fid_by_hand(features_by_hand(extractor, [s.rgb for s, _ in pairs]),
                           features_by_hand(extractor, [r for _, r in pairs]))
    assert res["value"] == pytest.approx(expected, rel=1e-5 if device == "cpu" else 1e-2)  # cuda: TF32 convolutions


class _FakeInceptionLayers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Conv2d(3, 2048, 1, bias=False)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.proj(x))


class _FakeInception(torch.nn.Module):
    """Same interface as clean-fid's TorchScript file: a ``layers`` submodule mapping (N,3,299,299) -> (N,2048,1,1)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = _FakeInceptionLayers()

    def forward(self, x):
        return self.layers(x)


@pytest.fixture
def weights_module(monkeypatch):
    """bench.weights (real if present) with ``path`` redirected; a stand-in module if it does not exist yet."""
    try:
        from bench import weights as mod
    except ImportError:
        mod = types.ModuleType("bench.weights")
        mod.require = lambda ids: None
        monkeypatch.setitem(sys.modules, "bench.weights", mod)
        import bench

        monkeypatch.setattr(bench, "weights", mod, raising=False)
    return mod


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_default_extractor_loads_torchscript_from_weights_path(tmp_path, monkeypatch, weights_module):
    torch.manual_seed(0)
    model = _FakeInception().eval()
    path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.script(model).save(str(path))
    monkeypatch.setattr(weights_module, "path", lambda wid: path if wid == fid.INCEPTION_WEIGHTS else None,
                        raising=False)
    monkeypatch.setattr(fid, "_MODELS", {})
    ext = fid.feature_extractor("cpu")
    assert ext.id == fid.INCEPTION_WEIGHTS and ext.weights == (fid.INCEPTION_WEIGHTS,)
    x = torch.rand(3, 3, 299, 299) * 255
    with torch.inference_mode():
        got = ext(x)
        want = model.layers((x - 128) / 128).reshape(3, 2048)
    assert got.shape == (3, 2048)
    torch.testing.assert_close(got, want)
    ok, why = registry.get("metric", "fid").obj.available()
    assert ok, why
    monkeypatch.setattr(weights_module, "path", lambda wid: tmp_path / "absent.pt", raising=False)
    ok, why = registry.get("metric", "fid").obj.available()
    assert not ok and "absent.pt" in why


# ---------------------------------------------------------------------------- end to end through the runner
def test_runner_writes_fid_patch_set_row(tmp_path, extractor, kodak_dir):
    import pandas as pd
    from PIL import Image

    from bench.runner import Experiment, run

    res = run(Experiment(dataset="kodak", data_dir=str(kodak_dir), codecs=["jpeg"], points=[30],
                         metrics=["psnr", "fid_patch"], out=str(tmp_path / "run"), limit=2))
    assert not [p for p in res.problems if "fid" in p], res.problems
    df = pd.read_parquet(tmp_path / "run" / "per_set.parquet")
    row = df[(df["metric"] == "fid_patch") & (df["aggregate"] == "set")]
    assert len(row) == 1
    assert int(row["n_images"].iloc[0]) == 2
    # the value is FID between the Kodak originals and the reconstructions stored in the run directory
    names = ["kodim01", "kodim02"]
    refs = [np.asarray(Image.open(kodak_dir / f"{n}.png").convert("RGB")) for n in names]
    recons = [np.asarray(Image.open(tmp_path / "run" / "recon" / "kodak" / "jpeg" / "30" / "s0" / f"{n}.png"))
              for n in names]
    assert not np.array_equal(refs[0], recons[0])
    expected = fid_by_hand(features_by_hand(extractor, refs), features_by_hand(extractor, recons))
    assert row["value"].iloc[0] == pytest.approx(expected, rel=1e-5) and expected > 0
    import json

    extra = json.loads(row["extra"].iloc[0])
    assert extra["n_patches"] == 12 and extra["protocol"] == "cdc-256"
    assert int(row["n_patches"].iloc[0]) == 12  # lifted into its own per_set column
    rows = extractor.rows
    assert rows == 24  # 2 references + 2 reconstructions, 6 patches each
    # resume: a second run computes nothing new
    run(Experiment(dataset="kodak", data_dir=str(kodak_dir), codecs=["jpeg"], points=[30],
                   metrics=["psnr", "fid_patch"], out=str(tmp_path / "run"), limit=2))
    assert extractor.rows == rows
    assert len(pd.read_parquet(tmp_path / "run" / "per_set.parquet").query("metric == 'fid_patch'")) == 1
