"""Mask2Former head (Cheng et al., CVPR 2022) with the parameter layout of ViT-Adapter's checkpoints.

The released Mask2Former COCO-Stuff models use ViT-Adapter's ``mmseg_custom`` ``Mask2FormerHead``
built from mmcv 1.x transformer bricks; module names here are theirs, so ``decode_head.*`` of the
released state dict loads unchanged (:func:`~.model.official_keys` lists them):

* ``pixel_decoder`` (``MSDeformAttnPixelDecoder``): ``input_convs.i`` (1x1 conv + bias + GroupNorm
  ``gn``) on the backbone maps 1/32, 1/16, 1/8 (i = 0, 1, 2), ``level_encoding`` (3, C), an
  ``encoder`` of ``layers.j`` = deformable self-attention over the three levels (``attentions.0``:
  :class:`~.msda.MSDeformAttn`, value = the tokens without position, residual) -> ``norms.0`` ->
  FFN (``ffns.0.layers.0.0`` Linear+ReLU, ``ffns.0.layers.1`` Linear, residual) -> ``norms.1``
  (post-norm, no final norm); then an FPN step on the 1/4 map (``lateral_convs.0`` 1x1 conv+GN,
  no bias; ``output_convs.0`` 3x3 conv+GN+ReLU, no bias) and ``mask_feature`` (1x1 conv);
* ``transformer_decoder``: ``layers.k`` = masked cross-attention to one level (``attentions.0``,
  ``nn.MultiheadAttention`` as ``attn``) -> ``norms.0`` -> self-attention (``attentions.1``) ->
  ``norms.1`` -> FFN -> ``norms.2``; ``post_norm`` LayerNorm before every prediction;
* ``query_embed`` (positions), ``query_feat`` (initial content), ``level_embed`` (3, C),
  ``cls_embed`` (C -> K + 1, the last = "no object"), ``mask_embed`` (3-layer MLP).

Decoder layer k attends to level k mod 3 (1/32, 1/16, 1/8), masked where the previous prediction's
mask (bilinear to that level's size) has sigmoid < 0.5 (a query whose mask is empty attends
everywhere). Positional encodings: DETR's normalised sine encoding (:func:`sine_position_encoding`).
Inference (``forward_test`` of the head): the last layer's predictions through
:func:`semantic_inference`, at 1/4 of the input.

Hand-written: transformers' Mask2Former has another key layout (``self_attn``/``fc1``/
``self_attn_layer_norm`` ..., a separate ``level_embed`` parameter, no ``input_convs.i.gn``), and
mmcv/mmdet need compiled ops. The deformable attention is bench's own (:mod:`.msda`), whose
parameter names are those of mmcv's ``MultiScaleDeformableAttention``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bench.metrics.vit_adapter.adapter import reference_points
from bench.metrics.vit_adapter.msda import MSDeformAttn


def semantic_inference(cls_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """Per-class scores from query predictions: sum over queries of softmax(class)[:K] * sigmoid(mask).

    cls_logits (N, Q, K + 1) (the last class = "no object", dropped after the softmax), mask_logits
    (N, Q, H, W) -> (N, K, H, W), each value in [0, Q]."""
    probs = cls_logits.softmax(-1)[..., :-1]
    return torch.einsum("nqk,nqhw->nkhw", probs, mask_logits.sigmoid())


def attention_mask(mask_logits: torch.Tensor, size, heads: int) -> torch.Tensor:
    """Masked attention's mask from the current mask predictions (N, Q, H, W): resized bilinearly to
    ``size`` (h, w) of the level attended next, blocked (True) where sigmoid < 0.5, except that a query
    blocked everywhere is blocked nowhere; repeated per head -> bool (N * heads, Q, h * w), the
    ``attn_mask`` layout of ``nn.MultiheadAttention`` (batch-major, head-minor)."""
    m = F.interpolate(mask_logits, size=tuple(size), mode="bilinear", align_corners=False)
    blocked = m.flatten(2).sigmoid() < 0.5
    blocked = blocked & ~blocked.all(-1, keepdim=True)
    return blocked.repeat_interleave(heads, 0)


def sine_position_encoding(n: int, h: int, w: int, num_feats: int, device=None, dtype=torch.float32,
                           temperature: float = 10000.0, scale: float = 2 * math.pi,
                           eps: float = 1e-6) -> torch.Tensor:
    """DETR's normalised sine encoding of an unpadded h x w map -> (n, 2 * num_feats, h, w).

    Row/column index r (1-based) -> r / (size + eps) * 2pi, divided by temperature^(2 floor(i/2) / F)
    for i < F; channel pairs (sin, cos); the y half first, then the x half (mmcv's
    ``SinePositionalEncoding(normalize=True)``; hand-written: 10 lines, no mmcv)."""
    y = torch.arange(1, h + 1, dtype=torch.float32, device=device) / (h + eps) * scale
    x = torch.arange(1, w + 1, dtype=torch.float32, device=device) / (w + eps) * scale
    i = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / num_feats)

    def enc(v: torch.Tensor) -> torch.Tensor:  # (L,) -> (L, F)
        p = v[:, None] / dim_t
        return torch.stack((p[:, 0::2].sin(), p[:, 1::2].cos()), -1).flatten(1)

    ey = enc(y)[:, None, :].expand(h, w, num_feats)
    ex = enc(x)[None, :, :].expand(h, w, num_feats)
    pos = torch.cat((ey, ex), -1).permute(2, 0, 1)
    return pos[None].expand(n, -1, -1, -1).to(dtype)


class ConvGN(nn.Module):
    """mmcv ``ConvModule`` with GroupNorm: ``conv`` -> ``gn`` (-> ReLU)."""

    def __init__(self, cin: int, cout: int, k: int, groups: int, bias: bool, relu: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)
        self.gn = nn.GroupNorm(groups, cout)
        self.activate = nn.ReLU(inplace=True) if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.gn(self.conv(x)))


class FFN(nn.Module):
    """mmcv ``FFN`` (2 fcs, ReLU, identity added): x + fc2(relu(fc1(x)))."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Dropout(0.0)),
                                    nn.Linear(hidden, dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


class MHA(nn.Module):
    """mmcv ``MultiheadAttention``: q + attn(q + q_pos, k + k_pos, v) (positions on query and key only)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, q, k, v, q_pos, k_pos, mask=None):
        return q + self.attn(q + q_pos, k + k_pos, v, attn_mask=mask, need_weights=False)[0]


class EncoderLayer(nn.Module):
    """Deformable self-attention over the concatenated levels -> norm -> FFN -> norm."""

    def __init__(self, dim: int, heads: int, levels: int, points: int, ffn: int) -> None:
        super().__init__()
        self.attentions = nn.ModuleList([MSDeformAttn(dim, levels, heads, points, 1.0)])
        self.ffns = nn.ModuleList([FFN(dim, ffn)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim), nn.LayerNorm(dim)])

    def forward(self, x, pos, ref, shapes):
        x = self.norms[0](x + self.attentions[0](x + pos, ref, x, shapes))
        return self.norms[1](self.ffns[0](x))


class Encoder(nn.Module):
    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class PixelDecoder(nn.Module):
    """``MSDeformAttnPixelDecoder``: 4 backbone maps (1/4..1/32, ``in_channels`` each) -> (mask
    features (N, out, H/4, W/4), [encoder maps at 1/32, 1/16, 1/8] (N, C, h, w))."""

    def __init__(self, in_channels: int, cfg) -> None:
        super().__init__()
        c, g, self.levels = cfg.m2f_channels, cfg.m2f_gn_groups, 3
        self.input_convs = nn.ModuleList([ConvGN(in_channels, c, 1, g, bias=True, relu=False)
                                          for _ in range(self.levels)])
        self.encoder = Encoder([EncoderLayer(c, cfg.m2f_enc_heads, self.levels, cfg.m2f_enc_points, cfg.m2f_ffn)
                                for _ in range(cfg.m2f_enc_layers)])
        self.level_encoding = nn.Embedding(self.levels, c)
        self.lateral_convs = nn.ModuleList([ConvGN(in_channels, c, 1, g, bias=False, relu=False)])
        self.output_convs = nn.ModuleList([ConvGN(c, c, 3, g, bias=False, relu=True)])
        self.mask_feature = nn.Conv2d(c, c, 1)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        n = feats[0].shape[0]
        tokens, pos, shapes = [], [], []
        for i in range(self.levels):  # 1/32, 1/16, 1/8
            f = self.input_convs[i](feats[len(feats) - 1 - i])
            h, w = f.shape[2:]
            p = sine_position_encoding(n, h, w, f.shape[1] // 2, f.device, f.dtype)
            p = p + self.level_encoding.weight[i].view(1, -1, 1, 1)
            tokens.append(f.flatten(2).transpose(1, 2))
            pos.append(p.flatten(2).transpose(1, 2))
            shapes.append((h, w))
        x, pos = torch.cat(tokens, 1), torch.cat(pos, 1)
        ref = reference_points(shapes, x.device).to(x.dtype)  # (1, S, 1, 2): one point for all levels
        for layer in self.encoder.layers:
            x = layer(x, pos, ref, shapes)
        outs, start = [], 0
        for h, w in shapes:
            outs.append(x[:, start:start + h * w].transpose(1, 2).reshape(n, -1, h, w))
            start += h * w
        y = self.lateral_convs[0](feats[0])
        y = y + F.interpolate(outs[-1], size=y.shape[2:], mode="bilinear", align_corners=False)
        y = self.output_convs[0](y)
        return self.mask_feature(y), outs


class DecoderLayer(nn.Module):
    """Masked cross-attention -> norm -> self-attention -> norm -> FFN -> norm."""

    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.attentions = nn.ModuleList([MHA(dim, heads), MHA(dim, heads)])
        self.ffns = nn.ModuleList([FFN(dim, ffn)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(3)])

    def forward(self, q, q_pos, mem, mem_pos, mask):
        q = self.norms[0](self.attentions[0](q, mem, mem, q_pos, mem_pos, mask))
        q = self.norms[1](self.attentions[1](q, q, q, q_pos, q_pos))
        return self.norms[2](self.ffns[0](q))


class TransformerDecoder(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([DecoderLayer(dim, heads, ffn) for _ in range(layers)])
        self.post_norm = nn.LayerNorm(dim)


class Mask2FormerHead(nn.Module):
    """``forward(feats)`` -> (class logits (N, Q, K + 1), mask logits (N, Q, H/4, W/4)) of the last
    decoder layer; ``forward_test(feats)`` -> semantic scores (N, K, H/4, W/4)."""

    def __init__(self, in_channels: int, num_classes: int, cfg) -> None:
        super().__init__()
        c = cfg.m2f_channels
        self.num_heads = cfg.m2f_dec_heads
        self.pixel_decoder = PixelDecoder(in_channels, cfg)
        self.transformer_decoder = TransformerDecoder(c, cfg.m2f_dec_heads, cfg.m2f_ffn, cfg.m2f_dec_layers)
        self.query_embed = nn.Embedding(cfg.num_queries, c)
        self.query_feat = nn.Embedding(cfg.num_queries, c)
        self.level_embed = nn.Embedding(3, c)
        self.cls_embed = nn.Linear(c, num_classes + 1)
        self.mask_embed = nn.Sequential(nn.Linear(c, c), nn.ReLU(inplace=True), nn.Linear(c, c),
                                        nn.ReLU(inplace=True), nn.Linear(c, c))

    def _predict(self, q, mask_features, size, with_class: bool):
        """(class logits or None, mask logits, attention mask for the next layer)."""
        q = self.transformer_decoder.post_norm(q)
        masks = torch.einsum("nqc,nchw->nqhw", self.mask_embed(q), mask_features)
        return (self.cls_embed(q) if with_class else None), masks, attention_mask(masks, size, self.num_heads)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        mask_features, levels = self.pixel_decoder(feats)
        n = mask_features.shape[0]
        mems, poss = [], []
        for i, m in enumerate(levels):
            mems.append(m.flatten(2).transpose(1, 2) + self.level_embed.weight[i])
            p = sine_position_encoding(n, *m.shape[2:], m.shape[1] // 2, m.device, m.dtype)
            poss.append(p.flatten(2).transpose(1, 2))
        q = self.query_feat.weight[None].expand(n, -1, -1)
        q_pos = self.query_embed.weight[None].expand(n, -1, -1)
        layers = self.transformer_decoder.layers
        _, _, attn = self._predict(q, mask_features, levels[0].shape[2:], False)
        for k, layer in enumerate(layers):
            lvl = k % len(levels)
            q = layer(q, q_pos, mems[lvl], poss[lvl], attn)
            last = k == len(layers) - 1
            cls, masks, attn = self._predict(q, mask_features, levels[(k + 1) % len(levels)].shape[2:], last)
        return cls, masks

    def forward_test(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return semantic_inference(*self(feats))
