"""The metrics engine: scores (reference, reconstruction) pairs with many metrics.

Each pair is converted to tensors once and handed to every metric; models are
built once per engine (lazily, on first use) and kept on ``device``.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from bench import registry
from bench.metrics.base import MetricError


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

    Per-image metrics derive from :class:`bench.metrics.base.PerImageMetric` (contract and
    metadata there): ``build(device)`` -> ``scorer(recon, ref)`` on (B, 3, H, W) float tensors
    in [0, 1] returning (B,); a metric with ``uses_captions = True`` is called as
    ``scorer(recon, ref, captions)`` with one list of ground-truth captions per pair.
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
        """Scores of one pair: ``{name: float or MetricError}``."""
        return self.score_batch([ref], [recon], names, [captions or []])[0]

    def score_batch(self, refs: list[np.ndarray], recons: list[np.ndarray], names: Iterable[str] | None = None,
                    captions: list[list[str]] | None = None) -> list[dict]:
        """Scores of several pairs of one size, each metric called once on the stacked batch
        (B, 3, H, W) (caption metrics get ``captions``, one list per pair). The batch size is the
        caller's (the runner's ``--batch``). Returns one dict per pair."""
        import torch

        names = list(names) if names is not None else self.names
        captions = captions or [[] for _ in refs]
        for ref, recon in zip(refs, recons):
            if ref.shape != recon.shape or ref.shape != refs[0].shape:
                raise MetricError(f"reference {ref.shape} and reconstruction {recon.shape} differ in shape "
                                  f"(a batch holds pairs of one size, here {refs[0].shape})")
        h, w = refs[0].shape[:2]
        ref_t = torch.cat([to_tensor(r, self.device) for r in refs])
        rec_t = torch.cat([to_tensor(r, self.device) for r in recons])
        out: list[dict] = [{} for _ in refs]
        for name in names:
            spec = self.specs[name]
            try:
                spec.check_size(h, w)
                if getattr(spec, "uses_captions", False):
                    if not all(captions):
                        raise MetricError(f"{name} needs ground-truth captions; this dataset has none")
                    values = self.scorer(name)(rec_t, ref_t, [list(c) for c in captions]).reshape(-1).tolist()
                else:
                    values = self.scorer(name)(rec_t, ref_t).reshape(-1).tolist()
                for i, v in enumerate(values):
                    out[i][name] = float(v)
            except MetricError as exc:
                for o in out:
                    o[name] = exc
            except RuntimeError as exc:  # e.g. out of memory: report, keep the other metrics
                for o in out:
                    o[name] = MetricError(f"{name} failed on {len(refs)} {w}×{h} image(s): {exc}")
        return out
