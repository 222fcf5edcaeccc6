"""Base classes of every metric, and the metadata each one carries (one table, like pyiqa's configs).

Every registered metric (registry kind ``"metric"``) derives from :class:`PerImageMetric`
or :class:`SetMetric` and states, next to its definition:

==================  ==========================================================================
``name``            registry name (``psnr``, ``ms_ssim_rgb``, ``fid_patch``, ...)
``kind``            ``"per_image"`` (a value per image, averaged per point in ``per_set``)
                    or ``"per_set"`` (one value per codec point: FID/KID, mIoU)
``mode``            ``"FR"`` (full reference: compares with the original) or ``"NR"``
                    (no reference: looks at the reconstruction alone)
``higher_better``   direction: True if a larger value means better quality
``value_range``     what values to expect, e.g. ``"[0, 1]"``, ``"dB, ≥ 0"``
``colour_space``    what the metric looks at, e.g. ``"RGB"`` or
                    ``"Y = 0.299R + 0.587G + 0.114B (BT.601 luma, full range), rounded to 0..255"``
``unit``            unit for plot axes: ``"dB"`` for PSNR, ``"%"`` for mIoU, ``""`` otherwise
``learned``         True if the metric uses trained network weights
``licence``         licence of the code (and weights) computing it
``convention``      one line with the exact protocol (window, data range, pooling, ...)
==================  ==========================================================================

``version()`` is part of the resume key of every stored value: change it exactly when a value
can change. ``meta()`` returns the metadata as a dict (``bench metrics list`` and plots use it).

Per-image contract (the metrics engine): ``available()``, ``check_size(h, w)``, ``version()``,
``build(device)`` -> ``scorer(recon, ref)`` on (B, 3, H, W) float tensors in [0, 1] returning
(B,); with ``uses_captions = True`` the scorer is called as ``scorer(recon, ref, captions)``.

Set contract (torchmetrics' update/compute split): ``reset()``, ``update(sample, recon)`` per
image (``sample`` a :class:`bench.data.loaders.Sample`, ``recon`` uint8 (H, W, 3)),
``compute() -> {"value", "n_images", "extra"}``. ``compute_set(pairs, device, cache_dir)``
(what the runner calls) configures device and cache, resets, updates with every pair and
computes.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar


class MetricError(ValueError):
    """A metric that cannot score an input (e.g. image too small); says why."""


META_KEYS = ("name", "kind", "mode", "higher_better", "value_range", "colour_space", "unit", "learned", "licence",
             "convention")


class Metric:
    """Metadata and the parts of the contract every metric shares (see module doc).

    Subclasses set the metadata as class attributes or (dataclasses) as fields. ``name``,
    ``mode``, ``higher_better`` and ``convention`` have no default here on purpose: every metric
    states them (and a dataclass subclass would otherwise inherit them as field defaults)."""

    kind: ClassVar[str] = ""
    name: str
    mode: str
    higher_better: bool
    convention: str
    value_range: str = ""
    colour_space: str = "RGB"
    unit: str = ""
    learned: bool = False
    licence: str = ""
    weights: tuple[str, ...] = ()  # bench.weights ids the metric needs
    needs: tuple[str, ...] = ()  # what the dataset must provide besides images ("captions", "label_map")

    def available(self) -> tuple[bool, str]:
        """``(True, "")`` if the metric can run here, else ``(False, reason and remedy)``."""
        return True, ""

    def check_size(self, height: int, width: int) -> None:
        """Raise :class:`MetricError` if the metric cannot score an H×W image."""

    def version(self) -> str:
        """Part of the resume key of every stored value (backend, options, weights)."""
        raise NotImplementedError(f"{type(self).__name__} must define version()")

    def meta(self) -> dict[str, Any]:
        """The metadata as a dict (keys ``META_KEYS``)."""
        return {k: getattr(self, k) for k in META_KEYS}

    def axis_label(self) -> str:
        """A plot axis label: the name, the unit in parentheses if there is one, and the direction."""
        unit = f" ({self.unit})" if self.unit else ""
        return f"{self.name}{unit}, {'higher' if self.higher_better else 'lower'} is better"


class PerImageMetric(Metric):
    """A metric with one value per (reference, reconstruction) pair."""

    kind: ClassVar[str] = "per_image"
    uses_captions: bool = False
    min_side: int = 1  # smallest H and W the metric accepts

    def check_size(self, height: int, width: int) -> None:
        if min(height, width) < self.min_side:
            raise MetricError(f"{self.name} needs images at least {self.min_side}×{self.min_side} px "
                              f"(got {width}×{height}); skip it for this dataset or use larger images")

    def build(self, device: str = "cpu") -> Callable:
        """A scorer ``f(recon, ref) -> (B,)`` on ``device`` (torch tensors in [0, 1])."""
        raise NotImplementedError(f"{type(self).__name__} must define build()")


class SetMetric(Metric):
    """A metric with one value per set of pairs (a codec point), computed by update/compute.

    State lives on the instance between ``reset()`` and ``compute()``; ``device`` and
    ``cache_dir`` are set by :meth:`configure` (``compute_set`` does all of it)."""

    kind: ClassVar[str] = "per_set"
    device: str = "cpu"
    cache_dir: Path | None = None

    def configure(self, device: str = "cpu", cache_dir: str | Path | None = None) -> SetMetric:
        """Where the next accumulation runs and caches (features, models); returns self."""
        self.device = device
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        return self

    def reset(self) -> None:
        """Forget everything accumulated."""
        raise NotImplementedError(f"{type(self).__name__} must define reset()")

    def update(self, sample: Any, recon: Any) -> None:
        """Accumulate one image: its :class:`Sample` (reference pixels, captions, label map) and
        its reconstruction (uint8 (H, W, 3))."""
        raise NotImplementedError(f"{type(self).__name__} must define update()")

    def compute(self) -> dict[str, Any]:
        """``{"value": float, "n_images": int, "extra": dict}`` over what was accumulated."""
        raise NotImplementedError(f"{type(self).__name__} must define compute()")

    def compute_set(self, pairs: Iterable[tuple[Any, Any]], device: str = "cpu",
                    cache_dir: str | Path | None = None) -> dict[str, Any]:
        """reset, update with every ``(sample, recon)`` pair, compute (the runner's call)."""
        self.configure(device, cache_dir)
        self.reset()
        for sample, recon in pairs:
            self.update(sample, recon)
        return self.compute()
