"""Per-image quality metrics: pyiqa's default configs, and SSIM / MS-SSIM on RGB.

Every metric takes reconstruction and reference as float32 tensors
(B, 3, H, W) in [0, 1], RGB, and returns one score per image (B,). Each states its
conventions (colour space, value range, direction, unit) as metadata
(:mod:`bench.metrics.base`), shown by ``bench metrics list``.

SSIM and MS-SSIM come in two conventions that give different numbers (kodim01, JPEG q10
through Pillow's defaults: MS-SSIM 0.9178 on RGB, 0.9356 on Y):

* ``ssim``, ``ms_ssim`` — pyiqa 0.1.16's defaults (the CDC paper's 16-metric grid uses
  pyiqa): luma only, Y = 0.299·R + 0.587·G + 0.114·B (BT.601 luma weights, *full* range:
  the Y of YIQ/JFIF; pyiqa's ``to_y_channel`` with its default ``color_space='yiq'``, not its
  studio-range 16–235 ``rgb2ycbcr``), scaled to 0..255 and rounded to integers, data range
  255, float64.
* ``ssim_rgb``, ``ms_ssim_rgb`` — the R, G and B planes each, data range 1, averaged over the
  channels: the convention of CompressAI's bench (``pytorch_msssim``), NeuralCompression and
  PerCo. Computed here (no pyiqa), equal to ``pytorch_msssim.ssim/ms_ssim(x, y,
  data_range=1.0)`` to ~1e-7.

Each paper figure uses its paper's convention: PerCo's MS-SSIM is ``ms_ssim_rgb``; the CDC
grid is the pyiqa set (``ssim``, ``ms_ssim``, ...); CompressAI's published curves
(``results/reference/``) are ``psnr`` and ``ms_ssim_rgb``.

pyiqa is licensed PolyForm Noncommercial 1.0.0 (+ S-Lab non-commercial terms
for some parts): results are fine to publish, but commercial use of the
library is not allowed. ``licence`` of each metric is shown by ``bench metrics list``;
``ssim_rgb``/``ms_ssim_rgb`` run pytorch_msssim (MIT; the implementation CompressAI's bench
uses, installed with compressai) in float32, as CompressAI's bench does.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable

from bench import registry
from bench.metrics.base import MetricError, PerImageMetric

PYIQA_LICENCE = "pyiqa: PolyForm Noncommercial 1.0.0 (+ S-Lab non-commercial)"
PYTORCH_MSSSIM_LICENCE = "pytorch_msssim: MIT"

__all__ = ["RGBSSIM", "IQAMetric", "MetricError", "non_learned_names", "tiled", "tiles"]


@dataclass(frozen=True)
class IQAMetric(PerImageMetric):
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
    value_range: str = "[0, 1]"
    colour_space: str = "RGB"
    unit: str = ""

    def available(self) -> tuple[bool, str]:
        import importlib.util

        if importlib.util.find_spec("pyiqa") is None:
            return False, "pyiqa is not installed: pip install 'pyiqa==0.1.16'"
        return True, ""

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


# pyiqa's luma (every Y-channel metric below): to_y_channel(x, 255) with color_space='yiq'
_Y = "Y = 0.299R + 0.587G + 0.114B (BT.601 luma, full range), ×255 rounded to integers"
_Y_CONV = ("luma Y (colour space column; pyiqa's to_y_channel with its default color_space='yiq', not its "
           "studio-range 16–235 rgb2ycbcr)")
_SSIM_WIN = "11×11 Gaussian window σ=1.5, 'valid' borders, K1=0.01, K2=0.03, data range 255, float64"
NON_LEARNED_FR: tuple[IQAMetric, ...] = (
    IQAMetric("psnr", "psnr", "FR", True, "RGB, data range 1 (8-bit values /255), dB; MSE over all channels "
              "(+1e-8: identical images give 80 dB)", value_range="dB, 0..80", unit="dB"),
    IQAMetric("ssim", "ssim", "FR", True, f"{_Y_CONV}; {_SSIM_WIN}; no downsampling; pyiqa/CDC convention "
              "(the RGB one, as CompressAI/PerCo: ssim_rgb)", min_side=11, colour_space=_Y),
    IQAMetric("ms_ssim", "ms_ssim", "FR", True, f"{_Y_CONV}; {_SSIM_WIN}; 5 scales (2×2 average pooling), "
              "weights 0.0448/0.2856/0.3001/0.2363/0.1333, product form; pyiqa/CDC convention (the RGB one, "
              "as CompressAI/PerCo: ms_ssim_rgb)", min_side=161, colour_space=_Y),
    IQAMetric("cw_ssim", "cw_ssim", "FR", True, f"{_Y_CONV}; complex steerable pyramid, 4 levels × 8 orientations",
              min_side=64, colour_space=_Y),
    IQAMetric("fsim", "fsim", "FR", True, "FSIMc (chromatic): RGB ×255 → YIQ; phase congruency and gradient on "
              "Y, chroma similarity on I and Q", colour_space="RGB → YIQ (Y, I, Q)"),
    IQAMetric("gmsd", "gmsd", "FR", False, f"{_Y_CONV}; gradient magnitude similarity deviation",
              value_range="≥ 0, 0 = identical", colour_space=_Y),
    IQAMetric("nlpd", "nlpd", "FR", False, "luma Y in [0,1], not rounded (pyiqa's to_y_channel, 'yiq'); "
              "normalised Laplacian pyramid distance", value_range="≥ 0, 0 = identical",
              colour_space="Y = 0.299R + 0.587G + 0.114B (BT.601 luma, full range), in [0,1]"),
    IQAMetric("vsi", "vsi", "FR", True, "RGB ×255 → LMN colour space (saliency on CIELAB); visual-saliency "
              "induced index", colour_space="RGB → LMN (+ CIELAB for saliency)"),
    IQAMetric("mad", "mad", "FR", False, f"{_Y_CONV}; most apparent distortion (slow: ~20 s (16 cores) to ~70 s "
              "(2 cores) per 768×512 pair on CPU, ~2.6 GB RAM, growing with area); images with a side > 768 px "
              "are scored on near-equal tiles ≤ 768×768, area-weighted mean (every paper dataset, ≤ 768 px, is "
              "scored whole)", min_side=32, tile=768, value_range="≥ 0, 0 = identical", colour_space=_Y),
)

for _m in NON_LEARNED_FR:
    registry.add("metric", _m.name, _m)


def non_learned_names() -> list[str]:
    """The nine non-learned pyiqa metrics (the CDC grid's non-learned FR set)."""
    return [m.name for m in NON_LEARNED_FR]


# ---------------------------------------------------------------------------- SSIM / MS-SSIM on RGB
WINDOW = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03
MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, 5 scales


def _f32(x):
    """float32 (what CompressAI's bench computes its published MS-SSIM in; float64 agrees to
    ~2e-7 and costs twice as much), contiguous (NCHW): the engine's tensors are HWC views, and
    conv2d on channels-last strides takes a much slower path on CPU."""
    import torch

    return x.to(dtype=torch.float32, memory_format=torch.contiguous_format)


def ssim_rgb(x, y, data_range: float = 1.0):
    """SSIM of each channel, averaged over channels: (B,). x, y: (B, C, H, W), H, W ≥ 11.
    pytorch_msssim (the implementation CompressAI's bench uses) in float32, as it does."""
    from pytorch_msssim import ssim

    return ssim(_f32(x), _f32(y), data_range=data_range, win_size=WINDOW, win_sigma=SIGMA, K=(K1, K2),
                size_average=False)


def ms_ssim_rgb(x, y, data_range: float = 1.0):
    """MS-SSIM of each channel (5 scales, 2×2 average pooling with odd sides padded, negative
    terms clipped to 0, weighted product), averaged over channels: (B,). Sides ≥ 161.
    pytorch_msssim (the implementation CompressAI's bench uses) in float32, as it does."""
    from pytorch_msssim import ms_ssim

    return ms_ssim(_f32(x), _f32(y), data_range=data_range, win_size=WINDOW, win_sigma=SIGMA,
                   weights=list(MS_WEIGHTS), K=(K1, K2), size_average=False)


@dataclass(frozen=True)
class RGBSSIM(PerImageMetric):
    """SSIM (``multiscale=False``) or MS-SSIM on the R, G, B planes, data range 1 — the
    CompressAI / pytorch_msssim / PerCo convention (module doc): pytorch_msssim in float32."""

    name: str
    multiscale: bool
    convention: str
    min_side: int
    value_range: str = "[0, 1]"

    mode = "FR"
    higher_better = True
    colour_space = "RGB"
    licence = PYTORCH_MSSSIM_LICENCE

    def version(self) -> str:
        what = f"ms-ssim:weights={','.join(map(str, MS_WEIGHTS))}:avgpool2" if self.multiscale else "ssim"
        import importlib.metadata as md

        return (f"pytorch_msssim-{md.version('pytorch-msssim')}:{what}:rgb:dr=1:gauss{WINDOW}/{SIGMA}:k={K1},{K2}:"
                "valid:float32:channel-mean")

    def build(self, device: str = "cpu") -> Callable:
        import torch

        fn = ms_ssim_rgb if self.multiscale else ssim_rgb

        def score(recon, ref):
            with torch.inference_mode():
                return fn(recon, ref).float()

        return score


_RGB_CONV = ("R, G and B planes each, values in [0,1] (data range 1), 11×11 Gaussian window σ=1.5, 'valid' "
             "borders, K1=0.01, K2=0.03, float32 (as CompressAI)")
RGB_SSIM: tuple[RGBSSIM, ...] = (
    RGBSSIM("ssim_rgb", False, f"{_RGB_CONV}; mean over channels; = pytorch_msssim.ssim(x, y, data_range=1) "
            "(CompressAI/PerCo convention; pyiqa's Y one: ssim)", WINDOW, value_range="[-1, 1], 1 = identical"),
    RGBSSIM("ms_ssim_rgb", True, f"{_RGB_CONV}; 5 scales (2×2 average pooling), weights "
            "0.0448/0.2856/0.3001/0.2363/0.1333, cs and ssim clipped at 0, product per channel, mean over "
            "channels; = pytorch_msssim.ms_ssim(x, y, data_range=1) (CompressAI's bench, NeuralCompression, PerCo; "
            "pyiqa's Y one: ms_ssim)", 161),
)

for _m in RGB_SSIM:
    registry.add("metric", _m.name, _m)
