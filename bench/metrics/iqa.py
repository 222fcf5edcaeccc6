"""Per-image quality metrics through pyiqa: one default-config table.

Every metric takes reconstruction and reference as float32 tensors
(B, 3, H, W) in [0, 1], RGB, and returns one score per image (B,). Conventions
(colour space, range, direction) are pyiqa's defaults for the metric name and
are stated in ``convention`` so ``bench metrics list`` can show them.

pyiqa is licensed PolyForm Noncommercial 1.0.0 (+ S-Lab non-commercial terms
for some parts): results are fine to publish, but commercial use of the
library is not allowed. ``LICENCE`` below is shown by ``bench metrics list``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable

from bench import registry

PYIQA_LICENCE = "pyiqa: PolyForm Noncommercial 1.0.0 (+ S-Lab non-commercial)"


class MetricError(ValueError):
    """A metric that cannot score an input (e.g. image too small); says why."""


@dataclass(frozen=True)
class IQAMetric:
    """A per-image metric backed by ``pyiqa.create_metric(pyiqa_name, **options)``."""

    name: str
    pyiqa_name: str
    mode: str  # "FR" (full reference) or "NR" (no reference)
    higher_better: bool
    convention: str
    learned: bool = False
    min_side: int = 1  # smallest H and W the metric accepts
    options: dict = field(default_factory=dict)
    licence: str = PYIQA_LICENCE
    weights: tuple[str, ...] = ()  # weight ids in bench.weights this metric needs
    # Memory rule for large images: None = always the whole image; N = an image with a side
    # longer than N px is scored on near-equal non-overlapping tiles of at most N×N px (see
    # tiles()) and the tile scores are averaged weighted by tile area. Part of version().
    tile: int | None = None

    kind = "per_image"

    def available(self) -> tuple[bool, str]:
        import importlib.util

        if importlib.util.find_spec("pyiqa") is None:
            return False, "pyiqa is not installed: pip install 'pyiqa==0.1.16'"
        return True, ""

    def check_size(self, height: int, width: int) -> None:
        if min(height, width) < self.min_side:
            raise MetricError(f"{self.name} needs images at least {self.min_side}×{self.min_side} px "
                              f"(got {width}×{height}); skip it for this dataset or use larger images")

    def version(self) -> str:
        """Part of the resume key: the backend and its version."""
        import importlib.metadata as md

        tiling = f":tile={self.tile}" if self.tile else ""
        return f"pyiqa-{md.version('pyiqa')}:{self.pyiqa_name}:{sorted(self.options.items())}{tiling}"

    def build(self, device: str = "cpu") -> Callable:
        """A scorer ``f(recon, ref) -> (B,)`` on ``device`` (torch tensors)."""
        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pyiqa

            model = pyiqa.create_metric(self.pyiqa_name, device=torch.device(device), as_loss=False, **self.options)
        model.eval()

        def one(recon, ref):
            out = model(recon) if self.mode == "NR" else model(recon, ref)
            return out.reshape(-1).float()

        def score(recon, ref):
            with torch.inference_mode():
                return tiled(one, recon, ref, self.tile)

        return score


def tiles(height: int, width: int, tile: int | None) -> list[tuple[int, int, int, int]]:
    """The tiling rule: ``(top, bottom, left, right)`` boxes covering the image without
    overlap. A side of length L > tile is cut into n = ceil(L / tile) near-equal parts
    (boundaries at round(i·L/n)), so no tile is a thin sliver; with ``tile`` None or an
    image within tile×tile, the one box is the whole image."""
    def cuts(length: int) -> list[int]:
        n = 1 if not tile or length <= tile else -(-length // tile)
        return [round(i * length / n) for i in range(n + 1)]

    rows, cols = cuts(height), cuts(width)
    return [(t, b, l, r) for t, b in zip(rows, rows[1:]) for l, r in zip(cols, cols[1:])]


def tiled(fn: Callable, recon, ref, tile: int | None):
    """``fn(recon, ref) -> (B,)`` on the whole batch, or its tile-area-weighted mean over
    :func:`tiles` when the image is larger than ``tile`` (same boxes for every image)."""
    h, w = recon.shape[-2:]
    boxes = tiles(h, w, tile)
    if len(boxes) == 1:
        return fn(recon, ref)
    total = 0.0
    for t, b, l, r in boxes:
        total = total + fn(recon[..., t:b, l:r], ref[..., t:b, l:r]) * ((b - t) * (r - l))
    return total / float(h * w)


_Y = "Y of YCbCr (BT.601), from RGB in [0,1]"
NON_LEARNED_FR: tuple[IQAMetric, ...] = (
    IQAMetric("psnr", "psnr", "FR", True, "RGB, data range 1 (8-bit values /255), dB; MSE over all channels"),
    IQAMetric("ssim", "ssim", "FR", True, f"{_Y}; 11×11 Gaussian window, no downsampling"),
    IQAMetric("ms_ssim", "ms_ssim", "FR", True, f"{_Y}; 5 scales, product form", min_side=161),
    IQAMetric("cw_ssim", "cw_ssim", "FR", True, f"{_Y}; complex steerable pyramid, 4 levels × 8 orientations",
              min_side=64),
    IQAMetric("fsim", "fsim", "FR", True, "RGB (FSIMc, chromatic), [0,1]"),
    IQAMetric("gmsd", "gmsd", "FR", False, f"{_Y}; gradient magnitude similarity deviation"),
    IQAMetric("nlpd", "nlpd", "FR", False, f"{_Y}; normalised Laplacian pyramid distance"),
    IQAMetric("vsi", "vsi", "FR", True, "RGB, [0,1]; visual-saliency induced index"),
    IQAMetric("mad", "mad", "FR", False, "Y (grey) from RGB, [0,1]; most apparent distortion (slow: ~20 s (16 cores) to ~70 s (2 cores) per 768×512 pair "
              "on CPU, ~2.6 GB RAM, growing with area); images with a side > 768 px are scored on near-equal tiles "
              "≤ 768×768, area-weighted mean (every paper dataset, ≤ 768 px, is scored whole)",
              min_side=32, tile=768),
)

for _m in NON_LEARNED_FR:
    registry.add("metric", _m.name, _m)


def non_learned_names() -> list[str]:
    return [m.name for m in NON_LEARNED_FR]
