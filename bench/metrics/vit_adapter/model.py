"""The ViT-Adapter encoder-decoder, its released test pipeline, and its official key list.

:class:`ViTAdapterSegmentor` = ``backbone`` (:class:`~.adapter.BEiTAdapter`) + ``decode_head``
(:class:`~.heads.UPerHead`) + ``auxiliary_head`` (:class:`~.heads.FCNHead`), the module names of
mmseg's ``EncoderDecoder`` so that the released ``state_dict`` loads unchanged; for the Mask2Former
variants ``decode_head`` is :class:`~.mask2former.Mask2FormerHead` and there is no auxiliary head
(ViT-Adapter's ``EncoderDecoderMask2Former``).

:meth:`ViTAdapterSegmentor.predict` runs the test pipeline of the released config (see
:mod:`.configs`): keep-ratio resize to ``img_scale`` (bilinear, rounded back to 0..255 as
mmcv's uint8 resize does), resize up to a multiple of 32, ImageNet normalisation, slide-window
inference (``crop`` x ``crop`` windows every ``stride`` pixels, the last one flush with the
border, logits summed and divided by the number of windows covering each pixel), logits resized
bilinearly to the original size, argmax -> train ids 0..170. Mask2Former: the same with its
semantic scores in place of logits.

:func:`official_keys` lists the parameter and buffer names *and shapes* of the official model for
a config, written from the official module definitions (BEiT, adapter modules, mmseg's UPerHead
and FCNHead; ViT-Adapter's Mask2FormerHead, MSDeformAttnPixelDecoder and mmcv 1.x's transformer
bricks) independently of the modules here; tests compare it with a built instance, and
:mod:`.checkpoint` checks a checkpoint against it before loading.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.metrics.vit_adapter.adapter import BEiTAdapter
from bench.metrics.vit_adapter.configs import MEAN, STD, ViTAdapterConfig
from bench.metrics.vit_adapter.heads import FCNHead, UPerHead
from bench.metrics.vit_adapter.mask2former import Mask2FormerHead


def pipeline_sizes(h: int, w: int, cfg: ViTAdapterConfig) -> tuple[tuple[int, int], tuple[int, int]]:
    """(size after the keep-ratio ``Resize``, size after ``ResizeToMultiple``) for an h x w image:
    mmcv's rescale rule, scale = min(long/max(h, w), short/min(h, w)), sizes int(x*scale + 0.5),
    then each side rounded up to a multiple of ``size_divisor``."""
    long_, short = max(cfg.img_scale), min(cfg.img_scale)
    scale = min(long_ / max(h, w), short / min(h, w))
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    d = cfg.size_divisor
    return (nh, nw), (math.ceil(nh / d) * d, math.ceil(nw / d) * d)


def windows(h: int, w: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """mmseg's slide windows (y1, y2, x1, x2) over an h x w image: every ``stride`` pixels, the last
    one moved back to end at the border; one window per axis if the image is no larger than ``crop``."""
    rows = max(h - crop + stride - 1, 0) // stride + 1
    cols = max(w - crop + stride - 1, 0) // stride + 1
    out = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + crop, h), min(c * stride + crop, w)
            out.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return out


class NotImplementedVariant(NotImplementedError):
    """A variant whose head is not implemented here (``implemented=False`` or an unknown head)."""


HEADS = ("upernet", "mask2former")


class ViTAdapterSegmentor(nn.Module):
    def __init__(self, cfg: ViTAdapterConfig) -> None:
        super().__init__()
        if not cfg.implemented or cfg.head not in HEADS:
            raise NotImplementedVariant(
                f"ViT-Adapter variant {cfg.name} ({cfg.head} head) is not implemented in bench; "
                "use upernet-beit-l-cocostuff164k (BENCH_VIT_ADAPTER_MODEL)")
        self.cfg = cfg
        self.backbone = BEiTAdapter(cfg)
        c = cfg.embed_dim
        if cfg.head == "upernet":
            self.decode_head = UPerHead([c] * 4, cfg.head_channels, cfg.num_classes, cfg.pool_scales)
            self.auxiliary_head = FCNHead(c, cfg.aux_channels, cfg.num_classes, cfg.aux_in_index)
        else:  # EncoderDecoderMask2Former: no auxiliary head
            self.decode_head = Mask2FormerHead(c, cfg.num_classes, cfg)

    def encode_decode(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (N, 3, crop, crop) -> scores (N, K, crop, crop): UperNet's logits, or
        Mask2Former's semantic scores (:func:`~.mask2former.semantic_inference`); resized bilinearly
        from 1/4 of the window, as the official ``encode_decode``."""
        feats = self.backbone(x)
        if self.cfg.head == "mask2former":
            scores = self.decode_head.forward_test(feats)
        else:
            scores = self.decode_head(feats)
        return F.interpolate(scores, size=x.shape[2:], mode="bilinear", align_corners=False)

    def slide_logits(self, x: torch.Tensor) -> torch.Tensor:
        """mmseg's ``slide_inference`` on a normalised (1, 3, H, W) image -> (1, K, H, W) scores
        (logits for UperNet, semantic scores for Mask2Former: see :meth:`encode_decode`)."""
        crop, stride = self.cfg.crop, self.cfg.stride
        _, _, h, w = x.shape
        if h < crop or w < crop:
            raise ValueError(f"image {h}x{w} is smaller than the {crop}x{crop} window after the test resize")
        out = x.new_zeros((x.shape[0], self.cfg.num_classes, h, w))
        count = x.new_zeros((1, 1, h, w))
        for y1, y2, x1, x2 in windows(h, w, crop, stride):
            out[:, :, y1:y2, x1:x2] += self.encode_decode(x[:, :, y1:y2, x1:x2])
            count[:, :, y1:y2, x1:x2] += 1
        return out / count

    def preprocess(self, rgb: np.ndarray, device, dtype=torch.float32) -> torch.Tensor:
        """uint8 (H, W, 3) RGB -> normalised (1, 3, H', W') at the test pipeline's size."""
        x = torch.tensor(rgb, dtype=torch.float32, device=device).permute(2, 0, 1)[None]
        for size in pipeline_sizes(*rgb.shape[:2], self.cfg):
            if tuple(x.shape[2:]) != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).round().clamp(0, 255)
        mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
        return ((x - mean) / std).to(dtype)

    @torch.inference_mode()
    def predict_logits(self, rgb: np.ndarray) -> torch.Tensor:
        """uint8 (H, W, 3) RGB -> float32 scores (K, H, W) at the image's own size (their argmax is the
        prediction; the official segmentor's final softmax would not change it)."""
        p = next(self.parameters())
        logits = self.slide_logits(self.preprocess(rgb, p.device, p.dtype)).float()
        return F.interpolate(logits, size=rgb.shape[:2], mode="bilinear", align_corners=False)[0]

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) RGB -> uint8 (H, W) train ids 0..num_classes-1."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected uint8 (H, W, 3) RGB, got {rgb.dtype} {rgb.shape}")
        return self.predict_logits(rgb).argmax(0).to(torch.uint8).cpu().numpy()


def build(cfg: ViTAdapterConfig, seed: int | None = 0, device: str | torch.device = "cpu") -> ViTAdapterSegmentor:
    """A model in eval mode, randomly initialised (deterministic for a given ``seed``)."""
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = ViTAdapterSegmentor(cfg)
    else:
        model = ViTAdapterSegmentor(cfg)
    return model.to(device).eval()


# ---------------------------------------------------------------------------- official key list
def _bn(prefix: str, c: int) -> dict[str, tuple]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def _lin(prefix: str, cin: int, cout: int) -> dict[str, tuple]:
    return {f"{prefix}.weight": (cout, cin), f"{prefix}.bias": (cout,)}


def _ln(prefix: str, c: int) -> dict[str, tuple]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,)}


def _msda(prefix: str, c: int, heads: int, levels: int, points: int, ratio: float) -> dict[str, tuple]:
    v = int(c * ratio)
    return {**_lin(f"{prefix}.sampling_offsets", c, heads * levels * points * 2),
            **_lin(f"{prefix}.attention_weights", c, heads * levels * points),
            **_lin(f"{prefix}.value_proj", c, v), **_lin(f"{prefix}.output_proj", v, c)}


def _convmodule(prefix: str, cin: int, cout: int, k: int) -> dict[str, tuple]:
    return {f"{prefix}.conv.weight": (cout, cin, k, k), **_bn(f"{prefix}.bn", cout)}


def official_keys(cfg: ViTAdapterConfig) -> dict[str, tuple]:
    """{state-dict key: shape} of the official mmseg model for a config: the backbone's keys
    (:func:`backbone_keys`) and the head's (:func:`upernet_keys` or :func:`mask2former_keys`)."""
    if cfg.head == "upernet":
        return {**backbone_keys(cfg), **upernet_keys(cfg)}
    if cfg.head == "mask2former":
        return {**backbone_keys(cfg), **mask2former_keys(cfg)}
    raise NotImplementedVariant(f"no key list for the {cfg.head} head ({cfg.name})")


def backbone_keys(cfg: ViTAdapterConfig) -> dict[str, tuple]:
    """``backbone.*`` of the official BEiTAdapter. BEiT (``use_abs_pos_emb=False,
    use_rel_pos_bias=True, qkv_bias=True``, layer scale): per block ``attn.relative_position_index``
    is a persistent buffer of the official code; the tables are sized for the crop's window."""
    c, p = cfg.embed_dim, cfg.patch_size
    wh, ww = cfg.window
    n_rel = (2 * wh - 1) * (2 * ww - 1) + 3
    hidden = int(c * cfg.mlp_ratio)
    b = "backbone"
    keys: dict[str, tuple] = {f"{b}.cls_token": (1, 1, c), f"{b}.patch_embed.proj.weight": (c, 3, p, p),
                              f"{b}.patch_embed.proj.bias": (c,)}
    for i in range(cfg.depth):
        q = f"{b}.blocks.{i}"
        keys.update({f"{q}.gamma_1": (c,), f"{q}.gamma_2": (c,), **_ln(f"{q}.norm1", c),
                     f"{q}.attn.q_bias": (c,), f"{q}.attn.v_bias": (c,), f"{q}.attn.qkv.weight": (3 * c, c),
                     f"{q}.attn.relative_position_bias_table": (n_rel, cfg.num_heads),
                     f"{q}.attn.relative_position_index": (wh * ww + 1, wh * ww + 1),
                     **_lin(f"{q}.attn.proj", c, c), **_ln(f"{q}.norm2", c),
                     **_lin(f"{q}.mlp.fc1", c, hidden), **_lin(f"{q}.mlp.fc2", hidden, c)})
    keys[f"{b}.level_embed"] = (3, c)
    i0 = cfg.conv_inplane
    stem = [(0, 3, i0), (3, i0, i0), (6, i0, i0)]
    for idx, cin, cout in stem:
        keys[f"{b}.spm.stem.{idx}.weight"] = (cout, cin, 3, 3)
        keys.update(_bn(f"{b}.spm.stem.{idx + 1}", cout))
    for name, cin, cout in (("conv2", i0, 2 * i0), ("conv3", 2 * i0, 4 * i0), ("conv4", 4 * i0, 4 * i0)):
        keys[f"{b}.spm.{name}.0.weight"] = (cout, cin, 3, 3)
        keys.update(_bn(f"{b}.spm.{name}.1", cout))
    for j, cin in enumerate((i0, 2 * i0, 4 * i0, 4 * i0), 1):
        keys[f"{b}.spm.fc{j}.weight"] = (c, cin, 1, 1)
        keys[f"{b}.spm.fc{j}.bias"] = (c,)
    hid = int(c * cfg.cffn_ratio)
    dh, npt, r = cfg.deform_num_heads, cfg.n_points, cfg.deform_ratio

    def extractor(q: str) -> dict[str, tuple]:
        return {**_ln(f"{q}.query_norm", c), **_ln(f"{q}.feat_norm", c), **_msda(f"{q}.attn", c, dh, 1, npt, r),
                **_lin(f"{q}.ffn.fc1", c, hid), f"{q}.ffn.dwconv.dwconv.weight": (hid, 1, 3, 3),
                f"{q}.ffn.dwconv.dwconv.bias": (hid,), **_lin(f"{q}.ffn.fc2", hid, c), **_ln(f"{q}.ffn_norm", c)}

    n_int = len(cfg.interaction_indexes)
    for i in range(n_int):
        q = f"{b}.interactions.{i}"
        keys.update({f"{q}.injector.gamma": (c,), **_ln(f"{q}.injector.query_norm", c),
                     **_ln(f"{q}.injector.feat_norm", c), **_msda(f"{q}.injector.attn", c, dh, 3, npt, r),
                     **extractor(f"{q}.extractor")})
        if i == n_int - 1:
            for e in range(2):
                keys.update(extractor(f"{q}.extra_extractors.{e}"))
    keys[f"{b}.up.weight"] = (c, c, 2, 2)
    keys[f"{b}.up.bias"] = (c,)
    for j in range(1, 5):
        keys.update(_bn(f"{b}.norm{j}", c))
    return keys


def upernet_keys(cfg: ViTAdapterConfig) -> dict[str, tuple]:
    """``decode_head.*`` (mmseg UPerHead) and ``auxiliary_head.*`` (FCNHead, one conv)."""
    c, k = cfg.embed_dim, cfg.num_classes
    keys: dict[str, tuple] = {}
    ch, d = cfg.head_channels, "decode_head"
    keys.update({f"{d}.conv_seg.weight": (k, ch, 1, 1), f"{d}.conv_seg.bias": (k,)})
    for j in range(len(cfg.pool_scales)):
        keys.update(_convmodule(f"{d}.psp_modules.{j}.1", c, ch, 1))
    keys.update(_convmodule(f"{d}.bottleneck", c + len(cfg.pool_scales) * ch, ch, 3))
    for j in range(3):
        keys.update(_convmodule(f"{d}.lateral_convs.{j}", c, ch, 1))
        keys.update(_convmodule(f"{d}.fpn_convs.{j}", ch, ch, 3))
    keys.update(_convmodule(f"{d}.fpn_bottleneck", 4 * ch, ch, 3))
    a = "auxiliary_head"
    keys.update({f"{a}.conv_seg.weight": (k, cfg.aux_channels, 1, 1), f"{a}.conv_seg.bias": (k,),
                 **_convmodule(f"{a}.convs.0", c, cfg.aux_channels, 3)})
    return keys


def _convgn(prefix: str, cin: int, cout: int, k: int, bias: bool) -> dict[str, tuple]:
    out = {f"{prefix}.conv.weight": (cout, cin, k, k), **_ln(f"{prefix}.gn", cout)}
    if bias:
        out[f"{prefix}.conv.bias"] = (cout,)
    return out


def _ffn(prefix: str, c: int, hidden: int) -> dict[str, tuple]:  # mmcv FFN, num_fcs=2
    return {**_lin(f"{prefix}.layers.0.0", c, hidden), **_lin(f"{prefix}.layers.1", hidden, c)}


def mask2former_keys(cfg: ViTAdapterConfig) -> dict[str, tuple]:
    """``decode_head.*`` of ViT-Adapter's Mask2FormerHead (no auxiliary head).

    ``in_channels=[C]*4``, ``feat_channels = out_channels = m2f_channels`` (so no
    ``decoder_input_projs`` parameters: Identity), ``conv_seg`` set to None (no keys).
    ``pixel_decoder``: ``input_convs.0..2`` ConvModule(1x1, bias=True, GN), ``encoder.layers.j``
    (BaseTransformerLayer: ``attentions.0`` MultiScaleDeformableAttention, ``ffns.0``,
    ``norms.0..1``; post-norm order, so no ``encoder.post_norm``), ``level_encoding`` (3, C),
    ``lateral_convs.0`` (1x1, GN, no bias), ``output_convs.0`` (3x3, GN, no bias), ``mask_feature``.
    ``transformer_decoder``: ``layers.k`` (``attentions.0..1`` mmcv MultiheadAttention wrapping
    ``nn.MultiheadAttention`` as ``attn``, ``ffns.0``, ``norms.0..2``), ``post_norm``. Then
    ``query_embed``, ``query_feat`` (Q, C), ``level_embed`` (3, C), ``cls_embed`` (K + 1),
    ``mask_embed.{0,2,4}``."""
    c, k, e, f = cfg.embed_dim, cfg.num_classes, cfg.m2f_channels, cfg.m2f_ffn
    pd, td = "decode_head.pixel_decoder", "decode_head.transformer_decoder"
    keys: dict[str, tuple] = {}
    for i in range(3):
        keys.update(_convgn(f"{pd}.input_convs.{i}", c, e, 1, bias=True))
    for j in range(cfg.m2f_enc_layers):
        q = f"{pd}.encoder.layers.{j}"
        keys.update({**_msda(f"{q}.attentions.0", e, cfg.m2f_enc_heads, 3, cfg.m2f_enc_points, 1.0),
                     **_ffn(f"{q}.ffns.0", e, f), **_ln(f"{q}.norms.0", e), **_ln(f"{q}.norms.1", e)})
    keys[f"{pd}.level_encoding.weight"] = (3, e)
    keys.update(_convgn(f"{pd}.lateral_convs.0", c, e, 1, bias=False))
    keys.update(_convgn(f"{pd}.output_convs.0", e, e, 3, bias=False))
    keys.update({f"{pd}.mask_feature.weight": (e, e, 1, 1), f"{pd}.mask_feature.bias": (e,)})
    for j in range(cfg.m2f_dec_layers):
        q = f"{td}.layers.{j}"
        for a in range(2):
            keys.update({f"{q}.attentions.{a}.attn.in_proj_weight": (3 * e, e),
                         f"{q}.attentions.{a}.attn.in_proj_bias": (3 * e,),
                         **_lin(f"{q}.attentions.{a}.attn.out_proj", e, e)})
        keys.update(_ffn(f"{q}.ffns.0", e, f))
        for n in range(3):
            keys.update(_ln(f"{q}.norms.{n}", e))
    keys.update(_ln(f"{td}.post_norm", e))
    d = "decode_head"
    keys.update({f"{d}.query_embed.weight": (cfg.num_queries, e), f"{d}.query_feat.weight": (cfg.num_queries, e),
                 f"{d}.level_embed.weight": (3, e), **_lin(f"{d}.cls_embed", e, k + 1)})
    for j in (0, 2, 4):
        keys.update(_lin(f"{d}.mask_embed.{j}", e, e))
    return keys


def model_keys(model: nn.Module) -> dict[str, tuple]:
    """{key: shape} of a built model's state dict plus timm's non-persistent relative_position_index
    buffers (persistent in the official code, so present in its checkpoints)."""
    out = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for name, buf in model.named_buffers():
        if name.endswith("attn.relative_position_index"):
            out[name] = tuple(buf.shape)
    return out
