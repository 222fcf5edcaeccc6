"""Multi-scale deformable attention (Zhu et al., Deformable DETR, ICLR 2021), as ViT-Adapter uses it.

Hand-written because ViT-Adapter's module ships only as a compiled CUDA extension (and mmcv's is
compiled too); here the sampling is ``torch.nn.functional.grid_sample`` (bilinear, zero padding,
``align_corners=False``), which samples value maps at the same points as the CUDA kernel
(pixel centre at (i + 0.5) / size, zero outside), on any device.

:func:`ms_deform_attn_core` is the sampling/weighting step; :class:`MSDeformAttn` adds the
projections with the parameter layout of ViT-Adapter's ``ops/modules/ms_deform_attn.py``
(``sampling_offsets``, ``attention_weights``, ``value_proj``, ``output_proj``; ``ratio`` scales
the value dimension).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

Shapes = list[tuple[int, int]]


def ms_deform_attn_core(value: torch.Tensor, shapes: Shapes, locations: torch.Tensor,
                        weights: torch.Tensor) -> torch.Tensor:
    """Weighted bilinear samples of multi-level value maps.

    value (N, S, M, D): the levels' maps flattened row-major and concatenated, S = sum(h*w);
    shapes [(h, w)] per level; locations (N, Q, M, L, P, 2) as (x, y) in [0, 1] of each level
    (0 and 1 = outer edges of the map); weights (N, Q, M, L, P). Returns (N, Q, M*D)."""
    n, s, m, d = value.shape
    _, q, _, levels, p, _ = locations.shape
    if levels != len(shapes) or s != sum(h * w for h, w in shapes):
        raise ValueError(f"value has {s} positions for shapes {shapes}; locations have {levels} levels")
    grids = 2 * locations - 1  # grid_sample's [-1, 1], align_corners=False convention
    sampled = []
    start = 0
    for lvl, (h, w) in enumerate(shapes):
        v = value[:, start:start + h * w].permute(0, 2, 3, 1).reshape(n * m, d, h, w)
        start += h * w
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(n * m, q, p, 2)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # (N*M, D, Q, L*P)
    w = weights.transpose(1, 2).reshape(n * m, 1, q, levels * p)
    out = (stacked * w).sum(-1)  # (N*M, D, Q)
    return out.view(n, m * d, q).transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """Deformable attention of ``n_heads`` heads, ``n_points`` points per head and level.

    ``forward(query (N, Q, C), reference_points (N or 1, Q, 1 or L, 2) in [0, 1] as (x, y),
    feat (N, S, C), shapes)`` -> (N, Q, C). Offsets are in pixels of each level (divided by the
    level's (w, h)); attention weights are a softmax over the L*P samples of a head."""

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4,
                 ratio: float = 1.0) -> None:
        super().__init__()
        if d_model % n_heads or int(d_model * ratio) % n_heads:
            raise ValueError(f"d_model {d_model} (x ratio {ratio}) must be divisible by n_heads {n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points, self.ratio = d_model, n_levels, n_heads, n_points, ratio
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, int(d_model * ratio))
        self.output_proj = nn.Linear(int(d_model * ratio), d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's initialisation: zero offsets' weights, bias on a ring of directions."""
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.n_heads, dtype=torch.float32) * (2 * math.pi / self.n_heads)
        ring = torch.stack([theta.cos(), theta.sin()], -1)
        ring = ring / ring.abs().max(-1, keepdim=True).values
        ring = ring[:, None, None].repeat(1, self.n_levels, self.n_points, 1)
        ring = ring * torch.arange(1, self.n_points + 1, dtype=torch.float32)[None, None, :, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(ring.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, feat: torch.Tensor,
                shapes: Shapes) -> torch.Tensor:
        n, q, _ = query.shape
        m, lv, p = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(feat).view(n, feat.shape[1], m, -1)
        offsets = self.sampling_offsets(query).view(n, q, m, lv, p, 2)
        weights = self.attention_weights(query).view(n, q, m, lv * p).softmax(-1).view(n, q, m, lv, p)
        norm = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype, device=query.device)  # (L, 2) as (x, y)
        locations = reference_points[:, :, None, :, None, :] + offsets / norm[None, None, None, :, None, :]
        return self.output_proj(ms_deform_attn_core(value, shapes, locations, weights))
