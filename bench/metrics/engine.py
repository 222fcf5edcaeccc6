"""The metrics engine: scores (reference, reconstruction) pairs with many metrics.

Each pair is converted to tensors once and handed to every metric; models are
built once per engine (lazily, on first use) and kept on ``device``.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from bench import registry
from bench.metrics.iqa import MetricError


def resolve(names: Iterable[str] | str) -> list[str]:
    """Expand a comma list / iterable of metric names ('all' = every registered
    metric, 'none' = codec work only); raises UnknownNameError for an unknown name."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    out: list[str] = []
    for name in names:
        if name == "none":
            continue
        if name == "all":
            out += list(registry.entries("metric"))
        else:
            registry.get("metric", name)
            out.append(name)
    return list(dict.fromkeys(out))


def to_tensor(rgb: np.ndarray, device: str = "cpu"):
    """uint8 (H, W, 3) -> float32 (1, 3, H, W) in [0, 1] on ``device``."""
    import torch

    t = torch.from_numpy(np.array(rgb, dtype=np.uint8, copy=True)).to(device)
    return t.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


def split_kinds(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """(per-image metric names, per-set metric names), order kept."""
    per_image, per_set = [], []
    for n in names:
        (per_set if getattr(registry.get("metric", n).obj, "kind", "per_image") == "per_set" else per_image).append(n)
    return per_image, per_set


class MetricEngine:
    """``MetricEngine(["psnr", "ms_ssim"], device="cpu").score(ref, recon)``
    -> ``{name: float or MetricError}`` (an error for one metric never loses the others).

    Per-image metric contract (registry kind "metric", ``kind = "per_image"``):
    ``available()``, ``check_size(h, w)``, ``version()``, ``higher_better`` and
    ``build(device)`` -> ``scorer(recon, ref)`` on (1, 3, H, W) float tensors in
    [0, 1] returning (1,); a metric with ``uses_captions = True`` is called as
    ``scorer(recon, ref, captions)`` with the sample's ground-truth captions.
    """

    def __init__(self, names: Iterable[str], device: str = "cpu") -> None:
        self.names = resolve(names)
        self.specs = {n: registry.get("metric", n).obj for n in self.names}
        self.device = device
        self._scorers: dict = {}

    def scorer(self, name: str):
        if name not in self._scorers:
            self._scorers[name] = self.specs[name].build(self.device)
        return self._scorers[name]

    def score(self, ref: np.ndarray, recon: np.ndarray, names: Iterable[str] | None = None,
              captions: list[str] | None = None) -> dict:
        names = list(names) if names is not None else self.names
        if ref.shape != recon.shape:
            raise MetricError(f"reference {ref.shape} and reconstruction {recon.shape} differ in shape")
        h, w = ref.shape[:2]
        ref_t = to_tensor(ref, self.device)
        rec_t = to_tensor(recon, self.device)
        out: dict = {}
        for name in names:
            spec = self.specs[name]
            try:
                spec.check_size(h, w)
                if getattr(spec, "uses_captions", False):
                    if not captions:
                        raise MetricError(f"{name} needs ground-truth captions; this dataset has none")
                    value = self.scorer(name)(rec_t, ref_t, captions)
                else:
                    value = self.scorer(name)(rec_t, ref_t)
                out[name] = float(value.reshape(-1)[0])
            except MetricError as exc:
                out[name] = exc
            except RuntimeError as exc:  # e.g. out of memory: report, keep the other metrics
                out[name] = MetricError(f"{name} failed on a {w}×{h} image: {exc}")
        return out
