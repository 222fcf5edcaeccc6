"""ViT-Adapter's backbone: a BEiT ViT plus the adapter (Chen et al., ICLR 2023, Sec. 3).

Layout (module names = the released state dict's ``backbone.*`` keys):

* ``patch_embed.proj`` (conv 16x16/16), ``cls_token``; no absolute position embedding;
  ``blocks.i``: timm's BEiT block (``norm1``, ``attn.qkv`` + ``q_bias``/``v_bias``,
  ``attn.relative_position_bias_table`` for a fixed ``window`` of patches + cls, ``attn.proj``,
  ``norm2``, ``mlp.fc1/fc2``, layer scale ``gamma_1/gamma_2``): the same parameters as BEiT's own
  code, so timm's block is reused rather than rewritten;
* ``spm``: spatial prior module, a conv stem (BN+ReLU) giving maps at 1/4, 1/8, 1/16, 1/32,
  projected to ``embed_dim`` by 1x1 convs ``fc1..fc4``;
* ``level_embed`` (3, C) added to the 1/8, 1/16, 1/32 tokens;
* ``interactions.k``: injector (deformable cross-attention from ViT tokens to the 3 SPM levels,
  scaled by ``gamma``) before a group of blocks, extractor (deformable cross-attention from the
  SPM tokens to the ViT tokens, then a conv-FFN) after it; the last group has two extra extractors;
* ``up`` (2x2 transposed conv 1/8 -> 1/4) and ``norm1..norm4`` (BatchNorm) on the 4 outputs.

``forward(x (N, 3, H, W))`` with H, W multiples of 32 and H/16 x W/16 = the relative-position
window -> 4 maps (N, C, H/s, W/s), s = 4, 8, 16, 32.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.models.beit import Block
from torch import nn

from bench.metrics.vit_adapter.msda import MSDeformAttn

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def reference_points(shapes: list[tuple[int, int]], device) -> torch.Tensor:
    """Pixel centres of each level's grid as (x, y) in [0, 1], concatenated: (1, sum(h*w), 1, 2)."""
    refs = []
    for h, w in shapes:
        ys, xs = torch.meshgrid((torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h,
                                (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w, indexing="ij")
        refs.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], -1))
    return torch.cat(refs, 0)[None, :, None]


class ConvFFN(nn.Module):
    """fc1 -> 3x3 depthwise conv on each of the 3 levels' maps -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), h, w)))


class DWConv(nn.Module):
    """Depthwise 3x3 conv applied per level of tokens laid out as (2h x 2w, h x w, h/2 x w/2)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        n, _, c = x.shape
        outs, start = [], 0
        for hh, ww in ((2 * h, 2 * w), (h, w), (h // 2, w // 2)):
            part = x[:, start:start + hh * ww].transpose(1, 2).reshape(n, c, hh, ww)
            outs.append(self.dwconv(part).flatten(2).transpose(1, 2))
            start += hh * ww
        return torch.cat(outs, 1)


class Injector(nn.Module):
    """ViT tokens attend to the SPM's 3 levels: x + gamma * attn(norm(x), norm(c))."""

    def __init__(self, dim: int, heads: int, points: int, ratio: float, init_values: float) -> None:
        super().__init__()
        self.query_norm = LayerNorm(dim)
        self.feat_norm = LayerNorm(dim)
        self.attn = MSDeformAttn(dim, 3, heads, points, ratio)
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x, ref, c, shapes):
        return x + self.gamma * self.attn(self.query_norm(x), ref, self.feat_norm(c), shapes)


class Extractor(nn.Module):
    """SPM tokens attend to the ViT tokens (one level), then a conv-FFN; both residual."""

    def __init__(self, dim: int, heads: int, points: int, ratio: float, cffn_ratio: float) -> None:
        super().__init__()
        self.query_norm = LayerNorm(dim)
        self.feat_norm = LayerNorm(dim)
        self.attn = MSDeformAttn(dim, 1, heads, points, ratio)
        self.ffn = ConvFFN(dim, int(dim * cffn_ratio))
        self.ffn_norm = LayerNorm(dim)

    def forward(self, c, ref, x, shapes, h, w):
        c = c + self.attn(self.query_norm(c), ref, self.feat_norm(x), shapes)
        return c + self.ffn(self.ffn_norm(c), h, w)


class InteractionBlock(nn.Module):
    """injector -> (cls + tokens) through the group's BEiT blocks -> extractor(s)."""

    def __init__(self, dim, heads, points, ratio, cffn_ratio, init_values, extra_extractor: bool) -> None:
        super().__init__()
        self.injector = Injector(dim, heads, points, ratio, init_values)
        self.extractor = Extractor(dim, heads, points, ratio, cffn_ratio)
        self.extra_extractors = nn.Sequential(*[Extractor(dim, heads, points, ratio, cffn_ratio)
                                                for _ in range(2)]) if extra_extractor else None

    def forward(self, x, c, cls, blocks, inj, ext, h, w):
        x = self.injector(x, inj[0], c, inj[1])
        x = torch.cat((cls, x), 1)
        for blk in blocks:
            x = blk(x)
        cls, x = x[:, :1], x[:, 1:]
        for extractor in [self.extractor, *(self.extra_extractors or ())]:
            c = extractor(c, ext[0], x, ext[1], h, w)
        return x, c, cls


def _conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SpatialPriorModule(nn.Module):
    """Conv stem -> maps at 1/4 (c1, kept as a map), 1/8, 1/16, 1/32 (flattened tokens)."""

    def __init__(self, inplanes: int, dim: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(3, inplanes, 2), *_conv_bn_relu(inplanes, inplanes, 1),
                                  *_conv_bn_relu(inplanes, inplanes, 1), nn.MaxPool2d(3, 2, 1))
        self.conv2 = nn.Sequential(*_conv_bn_relu(inplanes, 2 * inplanes, 2))
        self.conv3 = nn.Sequential(*_conv_bn_relu(2 * inplanes, 4 * inplanes, 2))
        self.conv4 = nn.Sequential(*_conv_bn_relu(4 * inplanes, 4 * inplanes, 2))
        self.fc1 = nn.Conv2d(inplanes, dim, 1)
        self.fc2 = nn.Conv2d(2 * inplanes, dim, 1)
        self.fc3 = nn.Conv2d(4 * inplanes, dim, 1)
        self.fc4 = nn.Conv2d(4 * inplanes, dim, 1)

    def forward(self, x):
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        return (self.fc1(c1), *(fc(c).flatten(2).transpose(1, 2) for fc, c in ((self.fc2, c2), (self.fc3, c3),
                                                                             (self.fc4, c4))))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x):
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2), x.shape[2], x.shape[3]


class BEiTAdapter(nn.Module):
    """BEiT + ViT-Adapter backbone for a :class:`~bench.metrics.vit_adapter.configs.ViTAdapterConfig`."""

    def __init__(self, cfg) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.window = cfg.window
        self.patch_embed = PatchEmbed(cfg.patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList([
            Block(dim, cfg.num_heads, qkv_bias=True, mlp_ratio=cfg.mlp_ratio, init_values=cfg.init_values,
                  norm_layer=LayerNorm, window_size=cfg.window) for _ in range(cfg.depth)])
        self.interaction_indexes = [tuple(ix) for ix in cfg.interaction_indexes]
        self.level_embed = nn.Parameter(torch.zeros(3, dim))
        self.spm = SpatialPriorModule(cfg.conv_inplane, dim)
        n = len(self.interaction_indexes)
        self.interactions = nn.Sequential(*[
            InteractionBlock(dim, cfg.deform_num_heads, cfg.n_points, cfg.deform_ratio, cfg.cffn_ratio,
                             cfg.init_values, extra_extractor=(i == n - 1)) for i in range(n)])
        self.up = nn.ConvTranspose2d(dim, dim, 2, 2)
        self.norm1, self.norm2, self.norm3, self.norm4 = (nn.BatchNorm2d(dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        n, _, hi, wi = x.shape
        if hi % 32 or wi % 32:
            raise ValueError(f"ViT-Adapter input must be a multiple of 32 pixels, got {hi}x{wi}")
        h, w = hi // 16, wi // 16
        if (h, w) != tuple(self.window):
            raise ValueError(f"input {hi}x{wi} gives {h}x{w} patches; the relative position bias is for "
                             f"{self.window[0]}x{self.window[1]} (use the slide window of the test pipeline)")
        levels = [(hi // 8, wi // 8), (h, w), (hi // 32, wi // 32)]
        inj = (reference_points([(h, w)], x.device).to(x.dtype), levels)
        ext = (reference_points(levels, x.device).to(x.dtype), [(h, w)])

        c1, c2, c3, c4 = self.spm(x)
        c2, c3, c4 = c2 + self.level_embed[0], c3 + self.level_embed[1], c4 + self.level_embed[2]
        c = torch.cat([c2, c3, c4], 1)
        t, _, _ = self.patch_embed(x)
        cls = self.cls_token.expand(n, -1, -1)
        outs = []
        for layer, (a, b) in zip(self.interactions, self.interaction_indexes):
            t, c, cls = layer(t, c, cls, self.blocks[a:b + 1], inj, ext, h, w)
            outs.append(t.transpose(1, 2).reshape(n, -1, h, w))
        n2, n3 = c2.shape[1], c3.shape[1]
        dim = c.shape[-1]
        c2 = c[:, :n2].transpose(1, 2).reshape(n, dim, 2 * h, 2 * w)
        c3 = c[:, n2:n2 + n3].transpose(1, 2).reshape(n, dim, h, w)
        c4 = c[:, n2 + n3:].transpose(1, 2).reshape(n, dim, h // 2, w // 2)
        c1 = self.up(c2) + c1
        x1, x2, x3, x4 = outs
        c1 = c1 + F.interpolate(x1, scale_factor=4, mode="bilinear", align_corners=False)
        c2 = c2 + F.interpolate(x2, scale_factor=2, mode="bilinear", align_corners=False)
        c3 = c3 + x3
        c4 = c4 + F.interpolate(x4, scale_factor=0.5, mode="bilinear", align_corners=False)
        return [self.norm1(c1), self.norm2(c2), self.norm3(c3), self.norm4(c4)]
