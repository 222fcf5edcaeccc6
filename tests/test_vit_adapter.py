"""ViT-Adapter port (bench.metrics.vit_adapter): deformable attention against a per-point reference,
a tiny random model (shapes, determinism, official key names), checkpoint reading and strict
loading, the released test pipeline's geometry, a CPU run on coco-mini, and the vit-adapter
backend of miou / miou_cocostuff end to end. Random weights throughout: no quality is checked."""
from __future__ import annotations

import io
import tarfile
import zipfile

import numpy as np
import pytest
import torch

from bench.metrics.vit_adapter import checkpoint, configs
from bench.metrics.vit_adapter import model as M
from bench.metrics.vit_adapter.msda import MSDeformAttn, ms_deform_attn_core

TINY = configs.get("tiny")


# ---------------------------------------------------------------------------- deformable attention
def naive_core(value, shapes, locations, weights):
    """Per sampling point: bilinear interpolation at (x*w - 0.5, y*h - 0.5), zero outside the map."""
    n, _, m, d = value.shape
    _, q, _, _, p, _ = locations.shape
    out = torch.zeros(n, q, m, d, dtype=torch.float64)
    starts = np.cumsum([0] + [h * w for h, w in shapes])
    for b in range(n):
        for i in range(q):
            for head in range(m):
                for lv, (h, w) in enumerate(shapes):
                    vmap = value[b, starts[lv]:starts[lv + 1], head].double().reshape(h, w, d)
                    for pt in range(p):
                        x = float(locations[b, i, head, lv, pt, 0]) * w - 0.5
                        y = float(locations[b, i, head, lv, pt, 1]) * h - 0.5
                        x0, y0 = int(np.floor(x)), int(np.floor(y))
                        acc = torch.zeros(d, dtype=torch.float64)
                        for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                            for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                                if 0 <= yy < h and 0 <= xx < w:
                                    acc += wy * wx * vmap[yy, xx]
                        out[b, i, head] += float(weights[b, i, head, lv, pt]) * acc
    return out.reshape(n, q, m * d)


def test_ms_deform_attn_core_matches_per_point_reference():
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 5), (2, 4), (1, 1)]
    n, q, m, d, p = 2, 4, 2, 3, 3
    value = torch.randn(n, sum(h * w for h, w in shapes), m, d, generator=g)
    # locations spill outside [0, 1] on purpose: zero padding must match too
    loc = torch.rand(n, q, m, len(shapes), p, 2, generator=g) * 1.4 - 0.2
    wts = torch.rand(n, q, m, len(shapes), p, generator=g)
    got = ms_deform_attn_core(value, shapes, loc, wts)
    want = naive_core(value, shapes, loc, wts)
    assert got.shape == (n, q, m * d)
    assert torch.allclose(got.double(), want, atol=1e-5), (got.double() - want).abs().max()
    assert want.abs().max() > 0.1  # a real comparison, not zeros against zeros
    with pytest.raises(ValueError, match="positions"):
        ms_deform_attn_core(value[:, :-1], shapes, loc, wts)


def test_ms_deform_attn_module_is_offsets_plus_softmax_plus_core():
    torch.manual_seed(1)
    attn = MSDeformAttn(d_model=8, n_levels=2, n_heads=2, n_points=2, ratio=0.5)
    for lin in (attn.sampling_offsets, attn.attention_weights):  # non-trivial offsets and weights
        torch.nn.init.normal_(lin.weight, std=0.5)
    shapes = [(4, 3), (2, 2)]
    query, feat = torch.randn(1, 5, 8), torch.randn(1, 16, 8)
    ref = torch.rand(1, 5, 1, 2)
    out = attn(query, ref, feat, shapes)
    value = attn.value_proj(feat).view(1, 16, 2, 2)
    off = attn.sampling_offsets(query).view(1, 5, 2, 2, 2, 2)
    w = attn.attention_weights(query).view(1, 5, 2, 4).softmax(-1).view(1, 5, 2, 2, 2)
    loc = ref[:, :, None, :, None, :] + off / torch.tensor([[3.0, 4.0], [2.0, 2.0]])[None, None, None, :, None, :]
    want = attn.output_proj(naive_core(value.detach(), shapes, loc.detach(), w.detach()).float())
    assert out.shape == (1, 5, 8) and torch.allclose(out, want, atol=1e-5)


# ---------------------------------------------------------------------------- tiny random model
@pytest.fixture(scope="module")
def tiny():
    return M.build(TINY, seed=0)


def test_tiny_keys_are_the_official_layout(tiny):
    ours, official = M.model_keys(tiny), M.official_keys(TINY)
    assert set(ours) == set(official)
    assert {k: ours[k] for k in ours} == official  # shapes too
    for key in ("backbone.blocks.0.attn.relative_position_bias_table", "backbone.spm.stem.7.running_var",
                "backbone.interactions.3.extra_extractors.1.ffn.dwconv.dwconv.weight",
                "backbone.interactions.0.injector.attn.sampling_offsets.weight", "backbone.level_embed",
                "decode_head.psp_modules.3.1.conv.weight", "decode_head.fpn_bottleneck.bn.running_mean",
                "auxiliary_head.convs.0.conv.weight"):
        assert key in official
    assert not any("extra_extractors" in k for k in official if k.startswith("backbone.interactions.2."))


def test_full_size_layout_and_parameter_count():
    cfg = configs.get(configs.DEFAULT)
    with torch.device("meta"):
        big = M.ViTAdapterSegmentor(cfg)
    assert M.model_keys(big) == M.official_keys(cfg)
    n = sum(p.numel() for p in big.parameters())
    assert 451e6 <= n < 452e6  # the README's "#Param 451M"
    assert M.official_keys(cfg)["backbone.blocks.23.attn.relative_position_bias_table"] == (79 * 79 + 3, 16)
    # the Mask2Former variants: tests/test_vit_adapter_m2f.py


def test_tiny_forward_shapes_and_determinism(tiny):
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        feats = tiny.backbone(x)
        assert [tuple(f.shape) for f in feats] == [(1, 32, 16, 16), (1, 32, 8, 8), (1, 32, 4, 4), (1, 32, 2, 2)]
        logits = tiny.encode_decode(x)
        assert logits.shape == (1, 171, 64, 64) and torch.isfinite(logits).all()
        assert torch.equal(logits, tiny.encode_decode(x))
    other = M.build(TINY, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(tiny.state_dict().values(), other.state_dict().values()))
    assert not torch.equal(M.build(TINY, seed=1).decode_head.conv_seg.weight, tiny.decode_head.conv_seg.weight)
    with pytest.raises(ValueError, match="multiple of 32"):
        tiny.backbone(torch.zeros(1, 3, 64, 80))
    with pytest.raises(ValueError, match="relative position bias"):
        tiny.backbone(torch.zeros(1, 3, 96, 64))


def test_pipeline_geometry():
    cfg = configs.get(configs.DEFAULT)
    assert M.pipeline_sizes(512, 512, cfg) == ((640, 640), (640, 640))  # PerCo's 512x512 images
    assert M.pipeline_sizes(480, 640, cfg) == ((640, 853), (640, 864))
    assert M.pipeline_sizes(427, 640, cfg) == ((640, 959), (640, 960))
    assert M.windows(640, 640, 640, 426) == [(0, 640, 0, 640)]
    assert M.windows(640, 864, 640, 426) == [(0, 640, 0, 640), (0, 640, 224, 864)]
    assert M.windows(640, 1500, 640, 426) == [(0, 640, 0, 640), (0, 640, 426, 1066), (0, 640, 852, 1492),
                                              (0, 640, 860, 1500)]


def test_slide_averages_overlapping_windows(tiny, monkeypatch):
    seen = []

    def fake(x):
        seen.append(tuple(x.shape[2:]))
        return torch.full((1, 171, *x.shape[2:]), float(len(seen)))

    monkeypatch.setattr(tiny, "encode_decode", fake)
    out = tiny.slide_logits(torch.zeros(1, 3, 64, 96))  # windows x 0..64 (1) and 32..96 (2)
    assert seen == [(64, 64), (64, 64)]
    assert out[0, 0, 0, 0] == 1 and out[0, 0, 0, 95] == 2 and out[0, 0, 0, 40] == 1.5


def test_predict_on_coco_mini_cpu(tiny, coco_mini_dir):
    from bench.data.images import read_rgb

    paths = sorted((coco_mini_dir / "images").glob("*.jpg"))[:2]
    for p in paths:
        rgb = read_rgb(p)[0]
        pred = tiny.predict(rgb)
        assert pred.shape == rgb.shape[:2] and pred.dtype == np.uint8 and pred.max() < 171
        assert np.array_equal(pred, tiny.predict(rgb))
    with pytest.raises(ValueError, match="uint8"):
        tiny.predict(np.zeros((64, 64, 3), np.float32))


# ---------------------------------------------------------------------------- checkpoints
def _official_sd(model) -> dict:
    sd = dict(model.state_dict())
    for name, buf in model.named_buffers():
        if name.endswith("attn.relative_position_index"):
            sd[name] = buf.clone()
    return sd


@pytest.fixture(scope="module")
def released(tmp_path_factory, tiny):
    """The tiny model saved as mmcv does ({"meta", "state_dict"}), in every release format."""
    d = tmp_path_factory.mktemp("ckpt")
    obj = {"meta": {"mmseg_version": "0.20.2", "CLASSES": tuple(configs.class_names()), "PALETTE": [[0, 192, 64]],
                    "hook_msgs": {"best_score": np.round(np.float64(0.505), 4), "best_ckpt": "iter_80000.pth"},
                    "seed": np.int64(0), "iters": np.array([80000])},  # numpy data, as mmcv's save_best stores
           "state_dict": _official_sd(tiny)}
    pth = d / "model.pth"
    torch.save(obj, pth)
    pthtar = d / "model.pth.tar"
    torch.save(obj, pthtar)  # a torch file named .pth.tar (the UperNet release)
    zpath = d / "release.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.write(pth, "release/model.pth")
    tpath = d / "release.tar"
    with tarfile.open(tpath, "w") as tf:
        tf.add(pth, "model.pth")
    return {"pth": pth, "pth.tar": pthtar, "zip": zpath, "tar": tpath}


@pytest.mark.parametrize("fmt", ["pth", "pth.tar", "zip", "tar"])
def test_checkpoint_round_trip(released, fmt, tiny):
    fresh = M.build(TINY, seed=5)
    checkpoint.load(fresh, checkpoint.read_state_dict(released[fmt]))
    for (k, a), b in zip(tiny.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    rgb = (np.random.default_rng(3).random((64, 80, 3)) * 255).astype(np.uint8)
    assert np.array_equal(fresh.predict(rgb), tiny.predict(rgb))
    f = checkpoint.torch_file(released[fmt])
    assert (f == released[fmt]) == (fmt in ("pth", "pth.tar"))
    if fmt in ("zip", "tar"):
        assert f.parent.name.endswith(".unpacked") and checkpoint.torch_file(released[fmt]) == f  # once


def test_checkpoint_errors(tiny, tmp_path):
    sd = _official_sd(tiny)
    bad = dict(sd)
    del bad["decode_head.conv_seg.bias"]
    bad["backbone.extra.weight"] = torch.zeros(1)
    bad["backbone.level_embed"] = torch.zeros(2, 32)
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load(M.build(TINY), bad)
    msg = str(err.value)
    assert "decode_head.conv_seg.bias" in msg and "backbone.extra.weight" in msg and "backbone.level_embed" in msg
    wrong = dict(sd)
    wrong["backbone.blocks.0.attn.relative_position_index"] = torch.zeros_like(
        sd["backbone.blocks.0.attn.relative_position_index"])
    with pytest.raises(checkpoint.CheckpointError, match="relative position index"):
        checkpoint.load(M.build(TINY), wrong)
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="junk.pth.tar"):
        checkpoint.read_state_dict(junk)
    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as zf:
        zf.writestr("a.pth", b"x")
        zf.writestr("b.pth", b"y")
    with pytest.raises(checkpoint.CheckpointError, match="2 checkpoint files"):
        checkpoint.torch_file(two)
    with pytest.raises(checkpoint.CheckpointError, match="no such"):
        checkpoint.torch_file(tmp_path / "absent.pth")


# ---------------------------------------------------------------------------- backend and weights
def test_weight_entries():
    from bench import weights

    for cfg in configs.VARIANTS.values():
        if cfg.random_only:
            continue
        w = weights.entry(cfg.weight_id)
        assert w.url.startswith("https://github.com/czczup/ViT-Adapter/releases/download/")
        assert w.url.endswith(w.filename) and "Apache-2.0" in w.licence and "BEiT" in w.licence
        assert w.verified_by == "unverified"  # no digest published
    up = weights.entry(configs.get(configs.DEFAULT).weight_id)
    assert up.filename.endswith(".pth.tar") and "miou_cocostuff" in up.used_by


def test_segmenter_offline_message_and_random(monkeypatch, tmp_path):
    from bench.metrics import segmenters
    from bench.metrics.vit_adapter.segmenter import ViTAdapterSegmenter

    monkeypatch.setenv("BENCH_WEIGHTS", str(tmp_path))
    monkeypatch.delenv("BENCH_VIT_ADAPTER_WEIGHTS", raising=False)
    monkeypatch.delenv("BENCH_VIT_ADAPTER_MODEL", raising=False)
    with pytest.raises(segmenters.SegmenterError) as err:
        ViTAdapterSegmenter()
    msg = str(err.value)
    assert "upernet_beit_adapter_large_640_80k_cocostuff164k.pth.tar" in msg and "bench weights fetch" in msg
    with pytest.raises(ValueError, match="no released weights"):
        ViTAdapterSegmenter("tiny")
    seg = ViTAdapterSegmenter("tiny", "random")
    rgb = np.full((64, 64, 3), 128, np.uint8)
    ids = seg.predict_trainid(rgb)
    things = seg.predict(rgb)
    from bench.data.prepare import STUFF_IDS

    want = np.where(ids < 80, np.array(STUFF_IDS)[np.minimum(ids, 170)], 0)
    assert np.array_equal(things, want)  # the 80 thing classes to their COCO ids, stuff to 0
    assert seg.mapping["things_matched"] == 80
    d = seg.describe()
    assert d["weights"] == "random-seed0" and "NOT a trained segmenter" in d["checkpoint"]


def test_backend_selection(monkeypatch, tmp_path, released):
    from bench import registry
    from bench.metrics import segmenters

    monkeypatch.setenv("BENCH_WEIGHTS", str(tmp_path))
    monkeypatch.delenv("BENCH_MIOU_BACKEND", raising=False)
    monkeypatch.delenv("BENCH_VIT_ADAPTER_WEIGHTS", raising=False)
    monkeypatch.delenv("BENCH_VIT_ADAPTER_MODEL", raising=False)
    assert segmenters.resolve_backend("auto") != "vit-adapter"  # no checkpoint in the cache
    spec = registry.get("metric", "miou_cocostuff").obj
    assert spec.weights == ("vit-adapter-upernet-beit-l-cocostuff164k",)
    v_registry = spec.version()
    monkeypatch.setenv("BENCH_VIT_ADAPTER_WEIGHTS", "random")
    assert spec.weights == () and spec.version() != v_registry and "random-seed0" in spec.version()
    monkeypatch.setenv("BENCH_VIT_ADAPTER_MODEL", "mask2former-beit-l-cocostuff164k")
    ok, why = spec.available()
    assert ok, why  # implemented (random weights here)
    assert "mask2former-beit-l-cocostuff164k+random-seed0" in spec.version()
    monkeypatch.delenv("BENCH_VIT_ADAPTER_WEIGHTS")
    assert spec.weights == ("vit-adapter-mask2former-beit-l-cocostuff164k",)
    monkeypatch.setenv("BENCH_VIT_ADAPTER_WEIGHTS", "random")
    monkeypatch.setenv("BENCH_VIT_ADAPTER_MODEL", "tiny")
    monkeypatch.setenv("BENCH_VIT_ADAPTER_WEIGHTS", str(released["pth"]))
    assert segmenters.resolve_backend("auto") == "vit-adapter"  # a checkpoint in place wins
    assert "file:model.pth" in spec.version()


def test_reproduce_check_runs_on_archives(tmp_path, coco_mini_dir, capsys):
    """The published-mIoU check, on two real coco-mini images + hand-made stuffthingmaps in the
    official archive layout, with the tiny random model: the number is the accumulator's."""
    from PIL import Image

    from bench.data.prepare import STUFF_LUT
    from bench.metrics.miou import IoUAccumulator
    from bench.metrics.vit_adapter import reproduce
    from bench.metrics.vit_adapter.segmenter import ViTAdapterSegmenter

    stems = ["000000000139", "000000000802"]
    rng = np.random.default_rng(1)
    raws = {}
    with zipfile.ZipFile(tmp_path / "val2017.zip", "w") as zi, zipfile.ZipFile(tmp_path / "stuff.zip", "w") as zl:
        for s in stems:
            jpg = coco_mini_dir / "images" / f"{s}.jpg"
            zi.write(jpg, f"val2017/{s}.jpg")
            with Image.open(jpg) as im:
                w, h = im.size
            raws[s] = rng.choice([0, 1, 91, 181, 255], (h, w)).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(raws[s]).save(buf, format="PNG")
            zl.writestr(f"val2017/{s}.png", buf.getvalue())
    out = reproduce.run(tmp_path / "val2017.zip", tmp_path / "stuff.zip", model="tiny", weights="random")
    seg = ViTAdapterSegmenter("tiny", "random")
    acc = IoUAccumulator(256, 255)
    from bench.data.images import read_rgb

    for s in stems:
        acc.update(seg.predict_trainid(read_rgb(coco_mini_dir / "images" / f"{s}.jpg")[0]), STUFF_LUT[raws[s]])
    assert out["n_images"] == 2 and out["miou"] == pytest.approx(100 * acc.compute()["miou"])
    assert reproduce.main(["--images", str(tmp_path / "val2017.zip"), "--labels", str(tmp_path / "stuff.zip"),
                           "--model", "tiny", "--weights", "random"]) == 2  # partial: not the 5000 images
    assert "partial check" in capsys.readouterr().out


def test_unknown_variant_is_a_clear_error(monkeypatch):
    from bench import registry
    from bench.metrics.segmenters import SegmenterError

    monkeypatch.setenv("BENCH_VIT_ADAPTER_MODEL", "vit-adapter-xxl")
    spec = registry.get("metric", "miou_cocostuff").obj
    with pytest.raises(SegmenterError, match="unknown ViT-Adapter variant 'vit-adapter-xxl'.*BENCH_VIT_ADAPTER_MODEL"):
        spec.version()
    ok, why = spec.available()
    assert not ok and "upernet-beit-l-cocostuff164k" in why  # names the known ones


def test_uperhead_matches_transformers_upernet_head():
    """Our mmseg-layout UPerHead against transformers' UperNetHead (an independent implementation of
    the same head), weights copied across by renaming bn -> batch_norm, conv_seg -> classifier."""
    from transformers import UperNetConfig
    from transformers.models.upernet.modeling_upernet import UperNetHead

    from bench.metrics.vit_adapter.heads import UPerHead

    torch.manual_seed(0)
    ours = UPerHead([6, 6, 6, 6], 8, 5).eval()
    for mod in ours.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):  # non-trivial running statistics and affine
            mod.running_mean.normal_()
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.normal_()
            mod.bias.data.normal_()
    cfg = UperNetConfig(hidden_size=8, pool_scales=[1, 2, 3, 6], num_labels=5, backbone_config={"model_type": "resnet"})
    theirs = UperNetHead(cfg, in_channels=[6, 6, 6, 6]).eval()
    renamed = {k.replace(".bn.", ".batch_norm.").replace("conv_seg.", "classifier."): v
               for k, v in ours.state_dict().items()}
    theirs.load_state_dict(renamed, strict=True)
    feats = [torch.randn(2, 6, s, s + 2) for s in (16, 8, 4, 2)]
    with torch.inference_mode():
        a, b = ours(feats), theirs(feats)
    assert a.shape == (2, 5, 16, 18) and torch.allclose(a, b, atol=1e-5)


def test_relative_position_index_is_beits_formula(tiny):
    """timm computes the (non-persistent) index the official checkpoints store: for patches i, j of a
    Wh x Ww window, (dy + Wh - 1) * (2Ww - 1) + (dx + Ww - 1); cls->token, token->cls and cls->cls
    take the last three table rows."""
    wh, ww = TINY.window
    ys, xs = np.divmod(np.arange(wh * ww), ww)
    idx = (ys[:, None] - ys[None, :] + wh - 1) * (2 * ww - 1) + (xs[:, None] - xs[None, :] + ww - 1)
    n = (2 * wh - 1) * (2 * ww - 1) + 3
    want = np.zeros((wh * ww + 1,) * 2, np.int64)
    want[1:, 1:] = idx
    want[0, :] = n - 3
    want[:, 0] = n - 2
    want[0, 0] = n - 1
    for blk in tiny.backbone.blocks:
        assert np.array_equal(blk.attn.relative_position_index.numpy(), want)


def test_checkpoint_class_order_check(released):
    sd, meta = checkpoint.read_checkpoint(released["pth"])
    assert meta["mmseg_version"] == "0.20.2" and len(sd) == len(M.official_keys(TINY))
    checkpoint.check_classes(meta, configs.class_names())  # same order: fine
    checkpoint.check_classes({}, configs.class_names())  # no list: nothing to check
    respelt = [n.replace(" ", "_").upper() for n in configs.class_names()]
    checkpoint.check_classes({"CLASSES": respelt}, configs.class_names())  # spelling is not the point
    with pytest.raises(checkpoint.CheckpointError, match="index 171"):
        checkpoint.check_classes({"CLASSES": [*configs.class_names(), "extra"]}, configs.class_names())
    swapped = list(configs.class_names())
    swapped[0], swapped[1] = swapped[1], swapped[0]
    with pytest.raises(checkpoint.CheckpointError, match="index 0"):
        checkpoint.check_classes({"CLASSES": swapped}, configs.class_names())


RELEASED = ("upernet-beit-l-cocostuff164k", "mask2former-beit-l-cocostuff164k", "mask2former-beitv2-l-cocostuff164k")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.needs_weights(f"vit-adapter-{n}")) for n in RELEASED])
def test_released_checkpoint_loads_and_sees_people(name, coco_mini_dir):
    """With a released checkpoint (as published: .pth.tar or .zip): strict loading (keys, shapes, class
    order) and, on coco-mini images annotated with people, most person pixels predicted as person
    (train id 0)."""
    from bench import cards
    from bench.data.loaders import open_dataset
    from bench.metrics.vit_adapter.segmenter import ViTAdapterSegmenter

    seg = ViTAdapterSegmenter(name, "registry", device="cuda" if torch.cuda.is_available() else "cpu")
    assert seg.meta.get("CLASSES") is None or len(seg.meta["CLASSES"]) == 171
    ld = open_dataset(cards.get("dataset", "coco-mini"), coco_mini_dir)
    people = [s for s in (ld.load(it) for it in ld.items()[:20]) if s.label_map is not None
              and (s.label_map == 1).sum() > 5000][:2]
    assert people, "coco-mini has images with people"
    for s in people:
        pred = seg.predict_trainid(s.rgb)
        on_person = np.bincount(pred[s.label_map == 1], minlength=171)
        assert on_person.argmax() == 0, (s.id, on_person.argmax())
