"""Learned metrics (pyiqa) with random backbones, offline: the real scoring code (batching,
tiling, PieAPP chunking, weight loading) on networks built without any download."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import registry, weights
from bench.metrics.iqa import tiles
from bench.weights import WeightsError



def spec(name):
    return registry.get("metric", name).obj


@pytest.fixture(scope="session")
def dists_file(shared_weights) -> Path:
    """DISTS alpha/beta from ../shared/weights (or $BENCH_SHARED/weights), listed in its SHA256SUMS."""
    path = shared_weights / "DISTS_weights-f5e65c96.pth"
    if not path.is_file():
        pytest.fail(f"{path} is missing from the shared weights", pytrace=False)
    return path


@pytest.fixture
def random_backbones(monkeypatch):
    """torchvision ImageNet backbones and pyiqa's unconditional extra loads, made random and offline."""
    import torchvision

    for name in ("alexnet", "vgg16"):
        build = getattr(torchvision.models, name)
        monkeypatch.setattr(torchvision.models, name, lambda *a, _b=build, **k: _b(weights=None))
    import pyiqa.archs.ckdn_arch as ckdn_arch
    import pyiqa.archs.dbcnn_arch as dbcnn_arch

    monkeypatch.setattr(ckdn_arch, "load_state_dict_from_url", lambda *a, **k: {})  # ResNet-50 backbone
    monkeypatch.setattr(dbcnn_arch, "load_pretrained_network", lambda *a, **k: None)  # SCNN branch
    torch.manual_seed(0)


def images(b=2, h=48, w=56, seed=1):
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(b, 3, h, w, generator=g)
    recon = (ref + 0.1 * torch.randn(b, 3, h, w, generator=g)).clamp(0, 1)
    return recon, ref


def lpips_alex():
    from pyiqa.archs.arch_util import load_pretrained_network
    from pyiqa.archs.lpips_arch import LPIPS
    import lpips

    net = LPIPS(pretrained=False, net="alex", version="0.1").eval()
    # the real LPIPS v0.1 calibration (same bytes as the table's file, shipped in the lpips wheel)
    load_pretrained_network(net, str(Path(lpips.__file__).parent / "weights/v0.1/alex.pth"), False)
    return net


def check_batched(score, recon, ref):
    out = score(recon, ref)
    assert out.shape == (recon.shape[0],) and out.dtype == torch.float32 and torch.isfinite(out).all()
    again = score(recon, ref)
    assert torch.equal(out, again), "not deterministic"
    singles = torch.cat([score(recon[i:i + 1], ref[i:i + 1]) for i in range(recon.shape[0])])
    torch.testing.assert_close(out, singles, rtol=1e-4, atol=1e-5)
    return out


# ---------------------------------------------------------------------------- FR distances
def test_lpips_shapes_identity_determinism_batching(random_backbones):
    net = lpips_alex()
    lin = net.lin0.model[1].weight
    assert (lin >= 0).all() and lin.abs().sum() > 0  # the real calibration was loaded (LPIPS weights are ≥ 0)
    score = spec("lpips").scorer(net)
    recon, ref = images()
    out = check_batched(score, recon, ref)
    assert (out > 0).all()
    assert score(ref, ref).abs().max() < 1e-6  # identical images: distance 0
    # the same network weights in the LPIPS authors' own implementation (lpips package) give the same distances
    import lpips

    reference = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
    reference.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(out, reference(recon, ref, normalize=True).reshape(-1), rtol=1e-5, atol=1e-6)


def test_dists_real_alpha_beta_random_vgg(random_backbones, dists_file):
    from pyiqa.archs.dists_arch import DISTS

    net = DISTS(pretrained_model_path=str(dists_file)).eval()
    real = torch.load(dists_file, map_location="cpu", weights_only=False)
    torch.testing.assert_close(net.alpha.data, real["alpha"])
    score = spec("dists").scorer(net)
    recon, ref = images()
    out = check_batched(score, recon, ref)
    assert (out > 0).all()
    assert score(ref, ref).abs().max() < 1e-5


def test_pieapp_chunked_equals_pyiqa_one_pass(random_backbones):
    from pyiqa.archs.pieapp_arch import PieAPP
    from bench.metrics.learned import pieapp_chunked

    net = PieAPP(pretrained=False).eval()
    recon, ref = images(b=2, h=64, w=91)  # 1 × 2 patches of 64 at stride 27 per image
    with torch.inference_mode():
        one_pass = net(recon, ref).reshape(-1)
        for chunk in (2, 1000):  # 2 passes of 1 patch per image; 1 pass
            torch.testing.assert_close(pieapp_chunked(net, recon, ref, chunk), one_pass, rtol=1e-4, atol=1e-5)
    out = check_batched(spec("pieapp").scorer(net), recon, ref)
    torch.testing.assert_close(out, one_pass, rtol=1e-4, atol=1e-5)


def test_ckdn_shapes_and_batching(random_backbones):
    from pyiqa.archs.ckdn_arch import CKDN

    net = CKDN(pretrained=False).eval()
    out = check_batched(spec("ckdn").scorer(net), *images(b=2, h=64, w=80))
    assert ((out >= 0) & (out <= 1)).all()  # sigmoid output


# ---------------------------------------------------------------------------- NR
def test_musiq_and_dbcnn_no_reference(random_backbones):
    from pyiqa.archs.dbcnn_arch import DBCNN
    from pyiqa.archs.musiq_arch import MUSIQ

    recon, ref = images(b=2, h=64, w=64)
    # MUSIQ kept small for speed (2 layers, scales 48 and 64 px): same input pipeline and head as pyiqa's
    musiq = MUSIQ(pretrained=False, num_layers=2, longer_side_lengths=[48, 64])
    for name, net in (("musiq", musiq), ("dbcnn", DBCNN(pretrained=False))):
        score = spec(name).scorer(net.eval())
        out = check_batched(score, recon, ref)
        torch.testing.assert_close(out, score(recon, torch.zeros_like(ref)))  # the reference is ignored
        assert not torch.equal(out, score(ref, ref)), name


# ---------------------------------------------------------------------------- tiling rule
@pytest.mark.parametrize("h,w,tile", [(512, 768, 1024), (768, 768, 768), (1365, 2048, 1024), (100, 300, 64),
                                      (2000, 3000, 768)])
def test_tiles_cover_the_image_once_in_near_equal_parts(h, w, tile):
    boxes = tiles(h, w, tile)
    cover = np.zeros((h, w), np.int32)
    for t, b, l, r in boxes:
        cover[t:b, l:r] += 1
        assert 0 < b - t <= tile and 0 < r - l <= tile
        if h > tile:
            assert b - t >= tile // 2
        if w > tile:
            assert r - l >= tile // 2
    assert (cover == 1).all()
    assert (len(boxes) == 1) == (h <= tile and w <= tile)


def test_tiled_mean_is_weighted_by_tile_area():
    from bench.metrics.iqa import tiled

    x = torch.rand(3, 3, 10, 7, generator=torch.Generator().manual_seed(3))
    x[..., :, 4:] *= 5  # make tiles differ a lot: a plain mean of tile scores would be off
    assert sorted({r - l for _, _, l, r in tiles(10, 7, 5)}) == [3, 4]
    calls = []

    def mean_fn(a, b):
        calls.append(a.shape[-2:])
        return a.mean(dim=(1, 2, 3))

    # the area-weighted mean of tile means is the image mean, exactly
    torch.testing.assert_close(tiled(mean_fn, x, x, 5), x.mean(dim=(1, 2, 3)))
    assert len(calls) == 4
    torch.testing.assert_close(tiled(mean_fn, x, x, None), x.mean(dim=(1, 2, 3)))


def test_tiling_is_area_weighted_and_a_single_tile_is_the_untiled_value(random_backbones):
    net = lpips_alex()
    base = spec("lpips")
    recon, ref = images(b=2, h=64, w=100)
    whole = base.scorer(net)(recon, ref)
    assert torch.equal(dataclasses.replace(base, tile=100).scorer(net)(recon, ref), whole)  # one tile
    tiled = dataclasses.replace(base, tile=48).scorer(net)(recon, ref)  # 2 rows × 3 columns (33, 34, 33 px)
    assert tiled.shape == (2,) and torch.isfinite(tiled).all()
    boxes = tiles(64, 100, 48)
    assert len(boxes) == 6 and {r - l for _, _, l, r in boxes} == {33, 34}
    parts = [(base.scorer(net)(recon[..., t:b, l:r], ref[..., t:b, l:r]), (b - t) * (r - l)) for t, b, l, r in boxes]
    torch.testing.assert_close(tiled, sum(s * a for s, a in parts) / (64 * 100))
    assert not torch.allclose(tiled, whole)  # the rule changes values, hence it is in version()


def test_rules_are_in_version_and_convention():
    for name in ("lpips_vgg", "dists", "dbcnn", "mad"):
        s = spec(name)
        assert s.tile and f":tile={s.tile}" in s.version() and "tiles" in s.convention
    for name in ("lpips", "pieapp", "ckdn", "musiq"):
        assert spec(name).tile is None and ":tile=" not in spec(name).version()
    assert "one pass" in spec("pieapp").convention
    v = spec("lpips").version()
    assert "pyiqa-0.1.16:lpips" in v and "df73285e" in v and "7be5be79" in v  # weights are part of the key
    assert spec("psnr").version() == "pyiqa-0.1.16:psnr:[]"  # metrics without a rule keep their versions
    for name in ("lpips", "lpips_vgg", "dists", "pieapp", "ckdn", "musiq", "dbcnn"):
        assert spec(name).learned


# ---------------------------------------------------------------------------- build(): weights, no downloads
def test_build_refuses_before_anything_when_weights_are_missing(cache):
    with pytest.raises(WeightsError) as info:
        spec("lpips").build("cpu")
    msg = str(info.value)
    assert weights.entry("lpips-alex-v0.1").url in msg and weights.entry("torchvision-alexnet").url in msg
    assert str(weights.path("torchvision-alexnet")) in msg
    ok, why = registry.get("metric", "lpips").available()
    assert not ok and "lpips-alex-v0.1" in why


def test_build_loads_the_checkpoint_from_the_weights_cache(cache, random_backbones, monkeypatch, dists_file):
    """dists: the real alpha/beta file imported into a temp TORCH_HOME; the VGG backbone is random
    (its ImageNet file is not here, so require() is told to skip torchvision files)."""
    from pyiqa.archs.dists_arch import DISTS

    weights.import_file(dists_file)
    real_require = weights.require
    monkeypatch.setattr(weights, "require",
                        lambda ids: real_require([i for i in ids if not i.startswith("torchvision-")]))
    torch.manual_seed(5)
    score = spec("dists").build("cpu")
    torch.manual_seed(5)
    direct = spec("dists").scorer(DISTS(pretrained_model_path=str(dists_file)).eval())
    recon, ref = images(b=2)
    torch.testing.assert_close(score(recon, ref), direct(recon, ref))
    assert score(ref, ref).abs().max() < 1e-5


def test_run_with_missing_weights_fails_before_any_work(cache):
    from bench.runner import Experiment, run

    out = cache / "run"
    with pytest.raises(WeightsError) as info:
        run(Experiment(dataset="samples", codecs=["jpeg"], points=[50], metrics=["psnr", "lpips"], out=str(out),
                       limit=1))
    msg = str(info.value)
    for wid in ("lpips-alex-v0.1", "torchvision-alexnet"):
        w = weights.entry(wid)
        assert w.url in msg and w.sha256 in msg and str(weights.path(wid)) in msg
    assert "bench weights import" in msg
    assert not out.exists(), "work started although weights were missing"
