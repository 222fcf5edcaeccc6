"""Learned per-image metrics through pyiqa 0.1.16: the CDC paper's PIEAPP, LPIPS, DISTS,
CKDN (full reference) and MUSIQ, DBCNN (no reference), and PerCo's LPIPS (AlexNet, v0.1).

Weights. Every file a metric needs is an entry of :mod:`bench.weights`, listed in the
metric's ``weights``; the runner calls ``bench.weights.require`` before any work, and
``build`` calls it again, so a missing file stops a run at once with the URL, sha256
and place of every missing file. The metric's own checkpoint is handed to pyiqa as
``pretrained_model_path``; backbones are found by torchvision in
``$TORCH_HOME/hub/checkpoints``. While a model is built, downloads are refused
(``bench.weights.no_downloads``), so nothing is ever fetched silently.

Memory rules for large images (stated in each ``convention`` and, where the rule can
change a value, part of ``version()``, hence of every row's metric_version):

- ``lpips`` (AlexNet): whole image; AlexNet is stride 4, ~1 GB at 2048×1365.
- ``lpips_vgg``, ``dists``, ``dbcnn`` (VGG-16): whole image up to 1024 px a side
  (every paper dataset: ≤ 768 px; KonIQ, DBCNN's training set: 1024×768); larger
  images are scored on near-equal non-overlapping tiles ≤ 1024×1024 and the tile
  scores averaged weighted by area (``tile=1024``; VGG-16 LPIPS needs ~8.6 GB whole at
  2048×1365). For DISTS and DBCNN this makes their global statistics per tile.
- ``pieapp``: pyiqa's protocol (all 64×64 patches at stride 27, patch-weighted mean)
  evaluated in chunks of ``patch_chunk`` patches: the same value as pyiqa's one-pass
  forward (checked by the tests) with bounded memory (one pass needs ~1.8 GB at
  768×512 and grows with area).
- ``ckdn``: pyiqa resizes (shorter side → 329) and centre-crops 288×288: fixed cost.
- ``musiq``: pyiqa's multi-scale input (native-resolution 32×32 patches plus the image
  resized to longer side 224 and 384); memory grows with area but stays modest.

Batched use: ``build(device)`` returns ``scorer(recon, ref)`` on (B, 3, H, W) float
tensors in [0, 1], returning (B,); NR metrics ignore ``ref``.

Licences: pyiqa is PolyForm Noncommercial 1.0.0; each weight file's licence is in
``bench weights list``.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from typing import Callable

from bench import registry
from bench.metrics.iqa import IQAMetric, tiled

PATCH_CHUNK = 128  # PieAPP patches per forward pass (memory ~0.6 GB on CPU)


@dataclass(frozen=True)
class LearnedMetric(IQAMetric):
    """An :class:`IQAMetric` whose pyiqa network needs weight files from bench.weights."""

    checkpoint: str = ""  # weight id passed to pyiqa as pretrained_model_path
    patch_chunk: int | None = None  # PieAPP only: patches per forward pass (exact, value unchanged)

    def available(self) -> tuple[bool, str]:
        ok, why = super().available()
        if not ok:
            return ok, why
        from bench import weights

        missing = [w for w in self.weights if weights.status(w, verify=False) != "ok"]
        if missing:
            return False, (f"weight files missing: {', '.join(missing)} — `bench weights fetch {' '.join(missing)}` "
                           "or `bench weights import FILE` (see `bench weights list`)")
        return True, ""

    def version(self) -> str:
        """pyiqa version, metric, options, tiling rule and the expected weight hashes."""
        from bench import weights

        files = ",".join(f"{w}@{weights.entry(w).sha256_prefix}" for w in self.weights)
        return f"{super().version()}:weights={files}"

    def build(self, device: str = "cpu") -> Callable:
        """Check the weight files, build the pyiqa model on ``device`` (no downloads) and
        return the batched scorer."""
        from bench import weights

        weights.require(self.weights)
        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pyiqa
            import pyiqa.utils.download_util as dl

            old_cache = dl.DEFAULT_CACHE_DIR
            dl.DEFAULT_CACHE_DIR = str(weights.dest_dir("torch-hub/pyiqa"))  # pyiqa fixed it at import time
            try:
                with weights.no_downloads(), contextlib.redirect_stdout(io.StringIO()):
                    model = pyiqa.create_metric(self.pyiqa_name, device=torch.device(device), as_loss=False,
                                                pretrained_model_path=str(weights.path(self.checkpoint)),
                                                **self.options)
            finally:
                dl.DEFAULT_CACHE_DIR = old_cache
        model.eval()
        return self.scorer(model)

    def scorer(self, model) -> Callable:
        """The batched scorer around a built model: a pyiqa ``InferenceModel`` or the bare
        architecture module (tests build those with random weights)."""
        import torch

        net = getattr(model, "net", model)

        def one(recon, ref):
            if self.patch_chunk:
                return pieapp_chunked(net, recon, ref, self.patch_chunk)
            out = model(recon) if self.mode == "NR" else model(recon, ref)
            return out.reshape(-1).float()

        def score(recon, ref=None):
            with torch.inference_mode():
                return tiled(one, recon, ref if ref is not None else recon, self.tile).reshape(-1).float()

        return score


def pieapp_chunked(net, dist, ref, chunk: int = PATCH_CHUNK):
    """pyiqa 0.1.16's ``PieAPP.forward`` in eval mode, with the patches pushed through the
    network ``chunk`` at a time: per-patch scores s and weights w as pyiqa computes them,
    result Σ w·s / Σ w per image, so the value equals the one-pass forward."""
    import torch
    import torch.nn.functional as F
    from pyiqa.archs.func_util import extract_2d_patches

    if dist.shape != ref.shape:
        raise ValueError(f"PieAPP: shapes differ: {tuple(dist.shape)} vs {tuple(ref.shape)}")
    a = extract_2d_patches(net.preprocess(dist), net.patch_size, net.stride, padding="none")
    r = extract_2d_patches(net.preprocess(ref), net.patch_size, net.stride, padding="none")
    b, n, c, p, _ = a.shape
    num = torch.zeros(b, dtype=torch.float32, device=dist.device)
    den = torch.zeros(b, dtype=torch.float32, device=dist.device)
    step = max(1, chunk // max(b, 1))  # patches per image per pass, so each pass holds ≈ chunk patches
    for s in range(0, n, step):
        pa = a[:, s:s + step].reshape(-1, c, p, p)
        pr = r[:, s:s + step].reshape(-1, c, p, p)
        a_ms, a_coarse = net.compute_features(pa)
        r_ms, r_coarse = net.compute_features(pr)
        score = net.ref_score_subtract(0.01 * net.fc2_score(F.relu(net.fc1_score(r_ms - a_ms)))).view(b, -1)
        weight = (net.fc2_weight(F.relu(net.fc1_weight(r_coarse - a_coarse))) + 1e-6).view(b, -1)
        num += (weight * score).sum(-1).float()
        den += weight.sum(-1).float()
    return num / den


_RGB = "RGB in [0,1]"
_TILE = ("images with a side > 1024 px are scored on near-equal tiles ≤ 1024×1024, area-weighted mean "
         "(every paper dataset, ≤ 768 px, is scored whole)")
LEARNED: tuple[LearnedMetric, ...] = (
    LearnedMetric("lpips", "lpips", "FR", False,
                  f"LPIPS v0.1, AlexNet + linear calibration (PerCo's LPIPS; pyiqa 'lpips'); {_RGB}, mapped to "
                  "[-1,1] inside; distance, 0 = identical; whole image (AlexNet is stride 4)",
                  learned=True, min_side=32, weights=("lpips-alex-v0.1", "torchvision-alexnet"),
                  checkpoint="lpips-alex-v0.1", value_range="≥ 0 (~0..1), 0 = identical"),
    LearnedMetric("lpips_vgg", "lpips-vgg", "FR", False,
                  f"LPIPS v0.1, VGG-16 + linear calibration (pyiqa 'lpips-vgg'); {_RGB}; distance; {_TILE}",
                  learned=True, min_side=16, weights=("lpips-vgg-v0.1", "torchvision-vgg16"),
                  checkpoint="lpips-vgg-v0.1", tile=1024, value_range="≥ 0 (~0..1), 0 = identical"),
    LearnedMetric("dists", "dists", "FR", False,
                  f"DISTS (Ding et al. 2020), VGG-16 with L2 pooling, ImageNet mean/std; {_RGB}; distance; {_TILE}",
                  learned=True, min_side=16, weights=("dists", "torchvision-vgg16"), checkpoint="dists", tile=1024,
                  value_range="≥ 0 (~0..1), 0 = identical"),
    LearnedMetric("pieapp", "pieapp", "FR", False,
                  f"PieAPP v0.1 (pyiqa): {_RGB} → BGR ×255; all 64×64 patches at stride 27, patch-weighted mean; "
                  f"patches evaluated {PATCH_CHUNK} at a time (exact: same value as pyiqa's one pass, bounded "
                  "memory); lower = better",
                  learned=True, min_side=64, weights=("pieapp",), checkpoint="pieapp", patch_chunk=PATCH_CHUNK,
                  value_range="~0..5 (can be < 0), lower = better"),
    LearnedMetric("ckdn", "ckdn", "FR", True,
                  f"CKDN (degraded-reference IQA, pyiqa): {_RGB}; recon bicubic / ref nearest resize of the shorter "
                  "side to 329, centre crop 288×288, ImageNet mean/std (fixed cost, no tiling); 0..1",
                  learned=True, weights=("ckdn", "torchvision-resnet50"), checkpoint="ckdn", value_range="[0, 1]"),
    LearnedMetric("musiq", "musiq", "NR", True,
                  f"MUSIQ trained on KonIQ-10k (no reference: ref ignored); {_RGB}; multi-scale input "
                  "(native 32×32 patches + longer side 224 and 384); ~0..100; whole image",
                  learned=True, min_side=32, weights=("musiq-koniq",), checkpoint="musiq-koniq",
                  value_range="~0..100 (KonIQ MOS scale)"),
    LearnedMetric("dbcnn", "dbcnn", "NR", True,
                  f"DBCNN trained on KonIQ-10k (no reference: ref ignored); {_RGB}, ImageNet mean/std; VGG-16 + "
                  f"SCNN bilinear pooling; ~0..1; {_TILE}",
                  learned=True, min_side=32, weights=("dbcnn-koniq", "dbcnn-scnn", "torchvision-vgg16"),
                  checkpoint="dbcnn-koniq", tile=1024, value_range="~0..1 (KonIQ MOS, normalised)"),
)

for _m in LEARNED:
    registry.add("metric", _m.name, _m)


def learned_names() -> list[str]:
    return [m.name for m in LEARNED]
