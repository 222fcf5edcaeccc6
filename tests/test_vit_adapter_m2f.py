"""ViT-Adapter's Mask2Former variants (bench.metrics.vit_adapter.mask2former): semantic inference and
the attention mask on hand-made tensors with known answers, the sine encoding against transformers',
the official key layout (full size: 571M parameters), a tiny random model (shapes, determinism,
strict loading of a saved state dict through the checkpoint loader), and miou_cocostuff end to end
with the tiny Mask2Former under BENCH_VIT_ADAPTER_WEIGHTS=random. Random weights: no quality checked."""
from __future__ import annotations

import math
import zipfile

import numpy as np
import pytest
import torch

from bench.metrics.vit_adapter import checkpoint, configs
from bench.metrics.vit_adapter import model as M
from test_vit_adapter import _official_sd  # the state dict as the release stores it (with the index buffers)
from bench.metrics.vit_adapter.mask2former import (
    attention_mask,
    semantic_inference,
    sine_position_encoding,
)

TINY = configs.get("tiny-mask2former")
RELEASED = ("mask2former-beit-l-cocostuff164k", "mask2former-beitv2-l-cocostuff164k")


# ---------------------------------------------------------------------------- known answers
def test_semantic_inference_known_answer():
    """2 queries, 2 classes + "no object", 2 pixels: scores = sum_q p(class | q) * sigmoid(mask_q)."""
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.5, 0.3]])  # last column: no object
    cls = probs.log()[None]  # softmax(log p) = p
    # sigmoid(0) = 0.5, sigmoid(ln 3) = 0.75, sigmoid(-ln 3) = 0.25, sigmoid(ln 9) = 0.9
    masks = torch.tensor([[[0.0, math.log(3)]], [[-math.log(3), math.log(9)]]])[None]  # (1, 2, 1, 2)
    got = semantic_inference(cls, masks)
    want = torch.tensor([[[0.5 * 0.5 + 0.2 * 0.25, 0.5 * 0.75 + 0.2 * 0.9]],
                         [[0.25 * 0.5 + 0.5 * 0.25, 0.25 * 0.75 + 0.5 * 0.9]]])[None]  # (1, 2, 1, 2)
    assert got.shape == (1, 2, 1, 2)
    assert torch.allclose(got, want, atol=1e-6)
    assert got[0, :, 0, 0].argmax() == 0 and got[0, :, 0, 1].argmax() == 1  # 0.300 > 0.250; 0.555 < 0.6375


def test_attention_mask_known_answer():
    """Blocked where sigmoid(mask) < 0.5 at the target size; a query blocked everywhere is unblocked."""
    logits = torch.tensor([[[[1.0, -1.0], [-2.0, 0.0]],  # q0: blocked at (0,1), (1,0); 0 -> 0.5 not blocked
                            [[-1.0, -1.0], [-1.0, -1.0]]]])  # q1: blocked everywhere -> nowhere
    m = attention_mask(logits, (2, 2), heads=3)
    assert m.shape == (3, 2, 4) and m.dtype == torch.bool
    assert m[0, 0].tolist() == [False, True, True, False]
    assert not m[:, 1].any()
    assert all(torch.equal(m[h], m[0]) for h in range(3))
    two = attention_mask(torch.cat([logits, -logits]), (2, 2), heads=2)  # batch-major, head-minor
    assert torch.equal(two[0], two[1]) and torch.equal(two[2], two[3]) and not torch.equal(two[0], two[2])
    up = attention_mask(torch.full((1, 1, 2, 2), -1.0), (4, 4), heads=1)  # resized, then all blocked -> none
    assert up.shape == (1, 1, 16) and not up.any()


def test_sine_encoding_matches_transformers():
    from transformers.models.mask2former.modeling_mask2former import (
        Mask2FormerSinePositionEmbedding,
    )

    ours = sine_position_encoding(2, 5, 7, 16)
    theirs = Mask2FormerSinePositionEmbedding(16, normalize=True)(torch.Size([2, 32, 5, 7]), "cpu", torch.float32)
    assert ours.shape == (2, 32, 5, 7) and torch.allclose(ours, theirs, atol=1e-6)
    # by hand: channel 1 = cos(y), y = row / (h + eps) * 2pi with 1-based rows; x half starts at channel 16
    assert ours[0, 1, 4, 0] == pytest.approx(math.cos(5 / (5 + 1e-6) * 2 * math.pi), abs=1e-6)
    assert ours[0, 16, 0, 2] == pytest.approx(math.sin(3 / (7 + 1e-6) * 2 * math.pi), abs=1e-6)


# ---------------------------------------------------------------------------- layout
@pytest.mark.parametrize("name", RELEASED)
def test_full_size_layout_and_parameter_count(name):
    cfg = configs.get(name)
    assert cfg.implemented and cfg.head == "mask2former" and (cfg.crop, cfg.stride) == (896, 512)
    with torch.device("meta"):
        big = M.ViTAdapterSegmentor(cfg)
    keys = M.official_keys(cfg)
    assert M.model_keys(big) == keys
    n = sum(p.numel() for p in big.parameters())
    assert 570e6 <= n < 572e6  # the README's "#Param 571M"
    assert keys["backbone.blocks.0.attn.relative_position_bias_table"] == (111 * 111 + 3, 16)  # 56x56 window
    assert keys["decode_head.cls_embed.weight"] == (172, 1024)  # 171 classes + no object
    assert keys["decode_head.query_feat.weight"] == (200, 1024)
    assert keys["decode_head.pixel_decoder.encoder.layers.5.attentions.0.sampling_offsets.weight"] == (
        32 * 3 * 4 * 2, 1024)
    assert keys["decode_head.transformer_decoder.layers.8.attentions.1.attn.in_proj_weight"] == (3072, 1024)
    assert keys["decode_head.transformer_decoder.layers.8.ffns.0.layers.0.0.weight"] == (4096, 1024)
    assert "decode_head.pixel_decoder.encoder.layers.6.norms.0.weight" not in keys
    assert "decode_head.transformer_decoder.layers.9.norms.0.weight" not in keys
    assert not [k for k in keys if k.startswith("auxiliary_head") or "conv_seg" in k]
    assert "decode_head.pixel_decoder.lateral_convs.0.conv.bias" not in keys  # GN: no conv bias
    assert "decode_head.pixel_decoder.input_convs.2.conv.bias" in keys  # ... except input_convs (bias=True)


# ---------------------------------------------------------------------------- tiny random model
@pytest.fixture(scope="module")
def tiny():
    return M.build(TINY, seed=0)


def test_tiny_keys_are_the_official_layout(tiny):
    assert M.model_keys(tiny) == M.official_keys(TINY)
    assert M.official_keys(TINY) != M.official_keys(configs.get("tiny"))  # another head


def test_tiny_forward_shapes_and_determinism(tiny):
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        feats = tiny.backbone(x)
        cls, masks = tiny.decode_head(feats)
        assert cls.shape == (1, 8, 172) and masks.shape == (1, 8, 16, 16)
        mask_features, levels = tiny.decode_head.pixel_decoder(feats)
        assert mask_features.shape == (1, 32, 16, 16)
        assert [tuple(m.shape) for m in levels] == [(1, 32, 2, 2), (1, 32, 4, 4), (1, 32, 8, 8)]
        scores = tiny.encode_decode(x)
        assert scores.shape == (1, 171, 64, 64) and torch.isfinite(scores).all()
        assert scores.min() >= 0 and scores.sum(1).max() <= TINY.num_queries  # sum over classes <= Q
        assert torch.equal(scores, tiny.encode_decode(x))
        assert torch.allclose(_up64(semantic_inference(cls, masks)), scores, atol=1e-6)
    other = M.build(TINY, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(tiny.state_dict().values(), other.state_dict().values()))
    assert not torch.equal(M.build(TINY, seed=1).decode_head.cls_embed.weight, tiny.decode_head.cls_embed.weight)


def _up64(s):
    """Bilinear to the tiny window (as encode_decode resizes)."""
    return torch.nn.functional.interpolate(s, size=(64, 64), mode="bilinear", align_corners=False)


def test_predict_runs_the_pipeline(tiny):
    rgb = (np.random.default_rng(0).random((48, 80, 3)) * 255).astype(np.uint8)  # -> 64x107 -> 64x128: 2 windows
    assert M.windows(*M.pipeline_sizes(48, 80, TINY)[1], TINY.crop, TINY.stride) == [(0, 64, 0, 64), (0, 64, 48, 112),
                                                                                     (0, 64, 64, 128)]
    pred = tiny.predict(rgb)
    assert pred.shape == (48, 80) and pred.dtype == np.uint8 and pred.max() < 171
    assert np.array_equal(pred, tiny.predict(rgb))
    big = configs.get(RELEASED[0])
    assert M.pipeline_sizes(512, 512, big) == ((896, 896), (896, 896))  # PerCo's images: one window




def test_checkpoint_round_trip_through_the_release_format(tiny, tmp_path):
    """Saved as mmcv does ({"meta", "state_dict"}) and zipped as the Mask2Former releases are."""
    pth = tmp_path / "mask2former_tiny.pth"
    torch.save({"meta": {"CLASSES": tuple(configs.class_names())}, "state_dict": _official_sd(tiny)}, pth)
    zpath = tmp_path / "mask2former_tiny.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.write(pth, "mask2former_tiny/mask2former_tiny.pth")
    sd, meta = checkpoint.read_checkpoint(zpath)
    fresh = M.build(TINY, seed=5)
    checkpoint.load(fresh, sd, where=str(zpath))
    checkpoint.check_classes(meta, configs.class_names())
    for (k, a), b in zip(tiny.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    rgb = (np.random.default_rng(3).random((64, 80, 3)) * 255).astype(np.uint8)
    assert np.array_equal(fresh.predict(rgb), tiny.predict(rgb))
    # the UperNet layout is refused with the keys that differ
    upernet = _official_sd(M.build(configs.get("tiny"), seed=0))
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load(M.build(TINY), upernet)
    msg = str(err.value)
    n_missing = len(set(M.official_keys(TINY)) - set(upernet))
    assert f"{n_missing} missing (first: decode_head.cls_embed.bias" in msg and "unexpected" in msg
    assert "auxiliary_head" in msg  # the UperNet-only keys are listed as unexpected
    bad = dict(sd)
    bad["decode_head.query_feat.weight"] = torch.zeros(9, 32)
    with pytest.raises(checkpoint.CheckpointError, match="query_feat.weight: \\(9, 32\\) != \\(8, 32\\)"):
        checkpoint.load(M.build(TINY), bad)


# ---------------------------------------------------------------------------- backend and metric
def test_segmenter_describes_the_head(monkeypatch):
    from bench.metrics.vit_adapter.segmenter import ViTAdapterSegmenter

    with pytest.raises(ValueError, match="no released weights"):
        ViTAdapterSegmenter("tiny-mask2former")
    seg = ViTAdapterSegmenter("tiny-mask2former", "random")
    d = seg.describe()
    assert d["model"] == "tiny-mask2former" and d["head"] == "mask2former" and "softmax(class)" in d["inference"]
    assert seg.predict_trainid(np.full((64, 64, 3), 128, np.uint8)).shape == (64, 64)


def test_head_matches_transformers_mask2former():
    """Our mmcv-layout head against transformers' Mask2Former pixel decoder and masked-attention decoder
    (an independent port of the same architecture, another key layout), weights copied across by
    renaming; GroupNorm 32 and 4 sampling points, which transformers fixes."""
    import dataclasses

    from transformers import Mask2FormerConfig
    from transformers.models.mask2former import modeling_mask2former as hf

    from bench.metrics.vit_adapter.mask2former import Mask2FormerHead

    cfg = dataclasses.replace(TINY, m2f_gn_groups=32, m2f_enc_points=4)
    torch.manual_seed(0)
    ours = Mask2FormerHead(32, 5, cfg).eval()
    with torch.no_grad():
        for name, p in ours.named_parameters():  # non-trivial everywhere (MSDA starts with zero offsets, weights)
            norm_weight = p.dim() == 1 and name.endswith("weight")
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() > 1 else 0.1) + (1.0 if norm_weight else 0.0))
    hcfg = Mask2FormerConfig(hidden_dim=32, mask_feature_size=32, feature_size=32, encoder_feedforward_dim=64,
                             dim_feedforward=64, encoder_layers=2, decoder_layers=5, num_attention_heads=4,
                             num_queries=8, num_labels=5, backbone_config={"model_type": "swin"})
    # transformers builds decoder_layers - 1 layers (its count includes the prediction before the first)
    pix = hf.Mask2FormerPixelDecoder(hcfg, feature_channels=[32] * 4).eval()
    dec = hf.Mask2FormerTransformerModule(32, hcfg).eval()
    sd = ours.state_dict()
    pd = {k[len("pixel_decoder."):]: v for k, v in sd.items() if k.startswith("pixel_decoder.")}
    pix_sd = {"level_embed": pd["level_encoding.weight"], "mask_projection.weight": pd["mask_feature.weight"],
              "mask_projection.bias": pd["mask_feature.bias"]}
    for i in range(3):
        for a, b in (("0.weight", "conv.weight"), ("0.bias", "conv.bias"), ("1.weight", "gn.weight"),
                     ("1.bias", "gn.bias")):
            pix_sd[f"input_projections.{i}.{a}"] = pd[f"input_convs.{i}.{b}"]
    for name, src in (("adapter_1", "lateral_convs.0"), ("layer_1", "output_convs.0")):
        pix_sd.update({f"{name}.0.weight": pd[f"{src}.conv.weight"], f"{name}.1.weight": pd[f"{src}.gn.weight"],
                       f"{name}.1.bias": pd[f"{src}.gn.bias"]})
    ren = {"attentions.0.": "self_attn.", "norms.0.": "self_attn_layer_norm.", "ffns.0.layers.0.0.": "fc1.",
           "ffns.0.layers.1.": "fc2.", "norms.1.": "final_layer_norm."}
    for k, v in pd.items():
        if k.startswith("encoder."):
            for a, b in ren.items():
                k = k.replace(a, b)
            pix_sd[k] = v
    pix.load_state_dict(pix_sd, strict=True)
    td = {k[len("transformer_decoder."):]: v for k, v in sd.items() if k.startswith("transformer_decoder.")}
    dec_sd = {"queries_embedder.weight": sd["query_embed.weight"], "queries_features.weight": sd["query_feat.weight"],
              "level_embed.weight": sd["level_embed.weight"], "decoder.layernorm.weight": td["post_norm.weight"],
              "decoder.layernorm.bias": td["post_norm.bias"]}
    for j, src in enumerate((0, 2, 4)):
        for t in ("weight", "bias"):
            dec_sd[f"decoder.mask_predictor.mask_embedder.{j}.0.{t}"] = sd[f"mask_embed.{src}.{t}"]
    for k in range(4):
        q, o = f"layers.{k}.", f"decoder.layers.{k}."
        for t in ("weight", "bias"):
            dec_sd[f"{o}cross_attn.in_proj_{t}"] = td[f"{q}attentions.0.attn.in_proj_{t}"]
            dec_sd[f"{o}cross_attn.out_proj.{t}"] = td[f"{q}attentions.0.attn.out_proj.{t}"]
            for part, chunk in zip("qkv", td[f"{q}attentions.1.attn.in_proj_{t}"].chunk(3)):
                dec_sd[f"{o}self_attn.{part}_proj.{t}"] = chunk
            dec_sd[f"{o}self_attn.out_proj.{t}"] = td[f"{q}attentions.1.attn.out_proj.{t}"]
            for n, name in enumerate(("cross_attn_layer_norm", "self_attn_layer_norm", "final_layer_norm")):
                dec_sd[f"{o}{name}.{t}"] = td[f"{q}norms.{n}.{t}"]
            dec_sd[f"{o}fc1.{t}"] = td[f"{q}ffns.0.layers.0.0.{t}"]
            dec_sd[f"{o}fc2.{t}"] = td[f"{q}ffns.0.layers.1.{t}"]
    dec.load_state_dict(dec_sd, strict=True)

    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(2, 32, s, s, generator=g) for s in (16, 8, 4, 2)]
    with torch.inference_mode():
        mask_features, levels = ours.pixel_decoder(feats)
        cls, masks = ours(feats)
        p_out = pix(feats)
        d_out = dec(list(p_out.multi_scale_features), p_out.mask_features)
    assert torch.allclose(mask_features, p_out.mask_features, atol=1e-4)
    for a, b in zip(levels, p_out.multi_scale_features):
        assert torch.allclose(a, b, atol=1e-4)
    assert len(d_out.masks_queries_logits) == 5  # before the first layer + after each of 4
    assert torch.allclose(masks, d_out.masks_queries_logits[-1], atol=1e-3), (masks - d_out.masks_queries_logits[-1]).abs().max()
    theirs_cls = ours.cls_embed(d_out.intermediate_hidden_states[-1].transpose(0, 1))
    assert torch.allclose(cls, theirs_cls, atol=1e-4)
    frac = [(m < 0).float().mean().item() for m in d_out.masks_queries_logits[:-1]]
    assert all(0.05 < f < 0.95 for f in frac), frac  # the attention masks did block something, not all
