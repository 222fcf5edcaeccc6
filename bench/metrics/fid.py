"""FID and KID through clean-fid (clean mode), on whole images or on 256×256 patches.

Registered set metrics (``kind = "per_set"``, lower is better):

=================  =======================================================================
``fid``, ``kid``   whole images (protocol ``full``): for large sets (COCO 30k, ...)
``fid_patch``,     CDC protocol (``cdc-256``): non-overlapping 256×256 patches on a grid
``kid_patch``      anchored at the top-left corner; the image is cropped to the grid
                   (right/bottom remainders dropped). Kodak 768×512 -> 3·2 = 6 patches
                   per image, 144 for the 24 images.
``fid_patch_hific``  HiFiC / MS-ILLM protocol (``hific-256``): the same 256 grid plus a
``kid_patch_hific``  second grid shifted by 128 px down and right, i.e. the grid of the
                   image cropped at (128, 128). An H×W image gives
                   ``(H//256)(W//256) + ((H-128)//256)((W-128)//256)`` patches:
                   768×512 -> 6 + 2·1 = 8, 600×600 -> 4 + 1 = 5. This matches
                   "FID/256" of Mentzer et al. 2020 (the shifted grid exists only
                   when both sides are >= 384 = 1.5·256).
=================  =======================================================================

Pipeline, per image or patch (uint8 H×W×3 RGB): clean-fid's "clean" resizer
(``cleanfid.resize.build_resizer("clean")``: PIL bicubic on float32 channels to
299×299, values kept in [0, 255], no quantisation) -> float32 (N, 3, 299, 299)
-> feature extractor -> (N, D). The default extractor is clean-fid's Inception-v3
TorchScript file (``inception-2015-12-05.pt``, NVIDIA's port of the TF FID
network), pool3 features, D = 2048. clean-fid hard-codes the file to
``/tmp/inception-2015-12-05.pt`` and downloads it on demand; here the file comes
from ``bench.weights.path("inception-2015-12-05")`` and is loaded with
``torch.jit.load(path, map_location=device)`` - we never download and never
touch /tmp. The forward pass is the one of clean-fid's ``InceptionV3W`` with
``resize_inside=False``: ``layers((x - 128) / 128)`` reshaped to (N, 2048).
No ``DataParallel`` and no worker pool (clean-fid defaults to ``cuda`` and 12
workers); everything runs on the ``device`` given.

Distances, from the feature arrays, with clean-fid's own functions:

- FID: ``cleanfid.fid.frechet_distance`` on (mean, covariance) of the two sets.
  clean-fid calls ``scipy.linalg.sqrtm(..., disp=False)``; SciPy 1.16 deprecates
  ``disp`` and 1.18 removes it (TypeError). We silence the deprecation warning
  and, on that TypeError, compute the same distance with ``sqrtm(A)`` (no
  ``disp``) and check the result ourselves: non-finite -> retry with eps on the
  diagonals (as clean-fid does); relative residual ||X·X - A||_F / ||A||_F is
  recorded in ``extra["sqrtm_residual"]``; a non-negligible imaginary part
  raises ValueError (as clean-fid does). clean-fid's own printed notes (e.g.
  "adding eps to diagonal") are captured into ``extra["notes"]``.
- KID: ``cleanfid.fid.kernel_distance`` (cubic polynomial kernel, unbiased MMD²
  over random subsets), raw value (not ×1000). clean-fid's defaults are 100
  subsets of size 1000; a set smaller than that uses
  ``subset_size = min(1000, n)`` (n >= 2 required). When the subset size equals
  both set sizes every "subset" is the whole set, so one evaluation is done
  (the 100 would be identical). Each subset is evaluated separately (one call
  with ``num_subsets=1``) so the std over subsets can be reported; NumPy's
  global RNG is seeded with ``KID_SEED`` for the call and restored afterwards,
  so KID is reproducible. Features are cast to float64 first.

Feature cache (features are computed once per image set, then reused by every
codec and rate point; the reference images are never re-extracted)::

    <cache_dir>/features/<extractor id>/<resizer id>/<protocol>/<pixel sha256>.npy

one file per source image, shape (n_patches, D) float32, patches in
:func:`patch_boxes` order. The key is the content: the pixel sha256 of the
reference (``Sample.sha256``) or of the reconstruction (computed here), the
protocol, the feature extractor id and the resizer id (clean-fid version +
"clean" mode). Files are written to a temporary sibling and renamed (atomic);
a file whose shape does not match the expected patch count is recomputed.

Test hook: the module-level :func:`feature_extractor` builds the extractor;
tests replace it (``monkeypatch.setattr(fid, "feature_extractor", ...)``) with
a small random-weight model. An extractor has ``id`` (str, part of the cache key
and of ``version()``), optional ``weights`` (weight ids it needs) and
``__call__(batch)`` mapping a float32 torch tensor (N, 3, 299, 299) in [0, 255]
on the device to (N, D) features (torch tensor or ndarray).
"""
from __future__ import annotations

import contextlib
import functools
import io
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import registry
from bench.metrics.base import SetMetric

INCEPTION_WEIGHTS = "inception-2015-12-05"
INPUT_SIZE = 299  # clean-fid's resize target
PATCH = 256
SHIFT = PATCH // 2
KID_SUBSET_SIZE = 1000  # clean-fid's default max_subset_size
KID_NUM_SUBSETS = 100  # clean-fid's default num_subsets
KID_SEED = 0
CLEANFID_LICENCE = "clean-fid: MIT; Inception-v3 TorchScript weights: see bench weights list"

PROTOCOLS = {
    "full": "whole image, clean-fid resize to 299×299",
    "cdc-256": "non-overlapping 256×256 patches, image cropped to the grid (CDC, Yang & Mandt 2023)",
    "hific-256": "256×256 grid plus the grid shifted by 128 px in both directions (HiFiC FID/256, MS-ILLM)",
}


# ---------------------------------------------------------------------------- patches
def patch_boxes(height: int, width: int, protocol: str) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of every crop ``protocol`` takes from an H×W image, in cache order."""
    if protocol == "full":
        return [(0, 0, height, width)]
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown FID protocol {protocol!r}; protocols: {', '.join(PROTOCOLS)}")
    offsets = [0] if protocol == "cdc-256" else [0, SHIFT]
    boxes = []
    for off in offsets:
        rows, cols = (height - off) // PATCH, (width - off) // PATCH
        boxes += [(off + i * PATCH, off + j * PATCH, PATCH, PATCH) for i in range(max(rows, 0))
                  for j in range(max(cols, 0))]
    return boxes


def extract_patches(rgb: np.ndarray, protocol: str) -> list[np.ndarray]:
    """The crops of ``rgb`` (H×W×3) that ``protocol`` feeds to the feature extractor (views, no copy)."""
    return [rgb[t:t + h, l:l + w] for t, l, h, w in patch_boxes(rgb.shape[0], rgb.shape[1], protocol)]


# ---------------------------------------------------------------------------- feature extractor
_MODELS: dict[tuple[str, str], Any] = {}  # (weights file, device) -> loaded TorchScript module


@functools.lru_cache(maxsize=None)
def _cleanfid_version() -> str:
    """The installed clean-fid version (read once per process: a metadata lookup costs ~20 ms,
    and the cache key asks for it on every feature lookup)."""
    import importlib.metadata as md

    try:
        return md.version("clean-fid")
    except md.PackageNotFoundError:
        return "missing"


class InceptionExtractor:
    """clean-fid's Inception-v3 TorchScript, pool3 features (2048-d), on ``device``.

    Construction is cheap; the file is loaded on first call and kept for the
    process (one copy per device)."""

    weights = (INCEPTION_WEIGHTS,)
    id = INCEPTION_WEIGHTS
    dim = 2048

    def __init__(self, device: str = "cpu") -> None:
        self.device = device

    def model(self):
        import torch

        from bench import weights

        path = str(weights.path(INCEPTION_WEIGHTS))
        key = (path, str(self.device))
        if key not in _MODELS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch 2.14: "torch.jit.load is deprecated"
                _MODELS[key] = torch.jit.load(path, map_location=torch.device(self.device)).eval()
        return _MODELS[key]

    def __call__(self, batch):
        # as cleanfid.inception_torchscript.InceptionV3W.forward with resize_inside=False
        return self.model().layers.forward((batch - 128) / 128).reshape(batch.shape[0], self.dim)


def feature_extractor(device: str = "cpu"):
    """The extractor FID/KID use (test hook: replace this function)."""
    return InceptionExtractor(device)


def _resizer():
    from cleanfid.resize import build_resizer

    return build_resizer("clean")


def resizer_id() -> str:
    return f"clean-fid-{_cleanfid_version()}-clean{INPUT_SIZE}"


# ---------------------------------------------------------------------------- features + cache
class FeatureCache:
    """``<root>/features/<extractor id>/<resizer id>/<protocol>/<sha256>.npy`` (see module doc)."""

    def __init__(self, cache_dir: str | Path | None, extractor_id: str, protocol: str) -> None:
        self.dir = (Path(cache_dir) / "features" / _safe(extractor_id) / _safe(resizer_id()) / protocol
                    if cache_dir is not None else None)

    def load(self, sha: str, n_rows: int) -> np.ndarray | None:
        if self.dir is None:
            return None
        path = self.dir / f"{sha}.npy"
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        return arr if arr.ndim == 2 and arr.shape[0] == n_rows else None

    def save(self, sha: str, feats: np.ndarray) -> None:
        if self.dir is None:
            return
        from bench.store import atomic_path

        with atomic_path(self.dir / f"{sha}.npy") as tmp:  # tmp ends in .npy: np.save keeps the name
            np.save(tmp, feats, allow_pickle=False)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name)


def compute_features(images: Iterable[tuple[str, np.ndarray]], protocol: str, extractor, device: str = "cpu",
                     cache_dir: str | Path | None = None, batch_size: int = 32) -> list[np.ndarray]:
    """Features of each (pixel sha256, rgb) image under ``protocol``: a list of (n_patches, D) arrays.

    Cached images are read from the cache; the others are resized and run
    through ``extractor`` in batches of ``batch_size`` crops, then cached."""
    images = list(images)
    cache = FeatureCache(cache_dir, extractor.id, protocol)
    out: list[np.ndarray | None] = [None] * len(images)
    first: dict[str, int] = {}  # sha -> index of its first occurrence (duplicates computed once)
    todo: list[int] = []
    for i, (sha, rgb) in enumerate(images):
        if sha in first:
            continue
        first[sha] = i
        n = len(patch_boxes(rgb.shape[0], rgb.shape[1], protocol))
        if n == 0:
            raise ValueError(f"protocol {protocol!r} needs images at least {PATCH}×{PATCH} px; "
                             f"got {rgb.shape[1]}×{rgb.shape[0]}")
        cached = cache.load(sha, n)
        if cached is not None:
            out[i] = cached
        else:
            todo.append(i)
    if todo:
        _extract(images, todo, protocol, extractor, device, batch_size, cache, out)
    return [out[first[sha]] for sha, _ in images]  # type: ignore[misc]


def _extract(images, todo, protocol, extractor, device, batch_size, cache, out) -> None:
    import torch

    resize = _resizer()
    pending: list[tuple[int, np.ndarray]] = []  # (image index, resized crop CHW float32)
    parts: dict[int, list[np.ndarray]] = {i: [] for i in todo}
    expected = {i: len(patch_boxes(images[i][1].shape[0], images[i][1].shape[1], protocol)) for i in todo}

    def flush() -> None:
        x = torch.from_numpy(np.stack([p for _, p in pending])).to(device)
        with torch.inference_mode():
            f = extractor(x)
        f = f.detach().float().cpu().numpy() if isinstance(f, torch.Tensor) else np.asarray(f, np.float32)
        if f.ndim != 2 or f.shape[0] != len(pending):
            raise RuntimeError(f"feature extractor {extractor.id!r} returned shape {f.shape} for {len(pending)} inputs")
        for (owner, _), row in zip(pending, f):
            parts[owner].append(row)
            if len(parts[owner]) == expected[owner]:
                feats = np.stack(parts.pop(owner)).astype(np.float32)
                cache.save(images[owner][0], feats)
                out[owner] = feats
        pending.clear()

    for i in todo:
        for crop in extract_patches(images[i][1], protocol):
            resized = resize(np.ascontiguousarray(crop, dtype=np.uint8))  # (299, 299, 3) float32 in [0, 255]
            pending.append((i, np.ascontiguousarray(resized.transpose(2, 0, 1), dtype=np.float32)))
            if len(pending) >= batch_size:
                flush()
    if pending:
        flush()


# ---------------------------------------------------------------------------- distances
def frechet_distance(feats1: np.ndarray, feats2: np.ndarray) -> tuple[float, dict]:
    """FID between two feature sets with ``cleanfid.fid.frechet_distance``; (value, info)."""
    from cleanfid import fid as cfid

    a, b = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    mu1, sig1 = a.mean(axis=0), np.cov(a, rowvar=False)
    mu2, sig2 = b.mean(axis=0), np.cov(b, rowvar=False)
    printed = io.StringIO()
    info: dict = {}
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(printed):
            warnings.simplefilter("ignore", DeprecationWarning)  # sqrtm(disp=...) deprecated in SciPy 1.16
            value = float(cfid.frechet_distance(mu1, sig1, mu2, sig2))
    except TypeError as exc:
        if "disp" not in str(exc):
            raise
        value, info = _frechet_distance_no_disp(mu1, sig1, mu2, sig2)
        info["sqrtm"] = "scipy.linalg.sqrtm without disp (SciPy >= 1.18 fallback)"
    notes = [line for line in printed.getvalue().splitlines() if line.strip()]
    if notes:
        info["notes"] = notes
    return value, info


def _frechet_distance_no_disp(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> tuple[float, dict]:
    """d² = |mu1 - mu2|² + Tr(S1 + S2 - 2 (S1 S2)^½), the formula of clean-fid's
    frechet_distance, for SciPy versions whose sqrtm has no ``disp`` argument:
    the error that ``disp=False`` used to return is computed here."""
    from scipy import linalg

    info: dict = {}
    product = sigma1 @ sigma2
    covmean = linalg.sqrtm(product)
    if not np.isfinite(covmean).all():
        info["notes"] = [f"singular covariance product; added {eps} to the diagonals"]
        offset = np.eye(sigma1.shape[0]) * eps
        product = (sigma1 + offset) @ (sigma2 + offset)
        covmean = linalg.sqrtm(product)
    denom = np.linalg.norm(product, "fro")
    info["sqrtm_residual"] = float(np.linalg.norm(covmean @ covmean - product, "fro") / denom) if denom else 0.0
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: matrix square root has an imaginary component {np.max(np.abs(covmean.imag)):.3g}")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)), info


def kernel_distance(feats1: np.ndarray, feats2: np.ndarray, num_subsets: int = KID_NUM_SUBSETS,
                    max_subset_size: int = KID_SUBSET_SIZE, seed: int = KID_SEED) -> tuple[float, dict]:
    """KID with ``cleanfid.fid.kernel_distance``, subset size adapted to small sets; (mean, info)."""
    from cleanfid import fid as cfid

    a, b = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    n = min(len(a), len(b))
    if n < 2:
        raise ValueError(f"KID needs at least 2 samples per set (got {len(a)} and {len(b)})")
    m = min(max_subset_size, n)
    subsets = 1 if m == len(a) == len(b) else num_subsets  # whole sets: every subset is identical
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        values = np.array([cfid.kernel_distance(a, b, num_subsets=1, max_subset_size=m) for _ in range(subsets)])
    finally:
        np.random.set_state(state)
    info = {"kid_subset_size": m, "kid_num_subsets": subsets, "kid_seed": seed,
            "kid_std": float(values.std()) if subsets > 1 else None}
    if subsets == 1:
        info["kid_note"] = "subset size = set size: the one subset is the whole set (no std)"
    return float(values.mean()), info


# ---------------------------------------------------------------------------- the metrics
@dataclass(eq=False)
class CleanFIDMetric(SetMetric):
    """FID or KID between a set of references and their reconstructions (a :class:`SetMetric`).

    ``update(sample, recon)`` queues the pair; every ``batch_size`` images the queue's
    features (references and reconstructions) are extracted (or read from the cache) and
    kept, so memory holds features, not images. ``compute()`` extracts the rest and returns
    the distance with its protocol in ``extra``."""

    name: str
    statistic: str  # "fid" or "kid"
    protocol: str  # key of PROTOCOLS
    batch_size: int = 32

    mode = "FR"  # compares the distribution of reconstructions with that of the references
    higher_better = False
    learned = True
    licence = CLEANFID_LICENCE
    colour_space = "RGB → clean-fid resize to 299×299 (PIL bicubic, float) → Inception-v3 pool3"

    def __post_init__(self) -> None:
        self.reset()

    @property
    def value_range(self) -> str:  # type: ignore[override]
        return "≥ 0, 0 = same distribution" if self.statistic == "fid" else \
            "≈ ≥ 0 (unbiased: can be slightly < 0), 0 = same distribution"

    @property
    def convention(self) -> str:  # type: ignore[override]
        what = "FID" if self.statistic == "fid" else "KID (raw, not ×1000)"
        return f"{what}, clean-fid clean mode, Inception pool3; {PROTOCOLS[self.protocol]}"

    @property
    def weights(self) -> tuple[str, ...]:  # type: ignore[override]
        """Weight ids of the current feature extractor (none for a test extractor)."""
        return tuple(getattr(feature_extractor("cpu"), "weights", ()))

    def available(self) -> tuple[bool, str]:
        import importlib.util

        for mod, pip in (("torch", "torch"), ("scipy", "scipy<1.18"), ("cleanfid", "clean-fid==0.1.35")):
            if importlib.util.find_spec(mod) is None:
                return False, f"{mod} is not installed: pip install '{pip}' (or the 'fid' extra)"
        if self.weights:
            try:
                from bench import weights
            except ImportError as exc:
                return False, f"bench.weights is unavailable: {exc}"
            for w in self.weights:
                path = weights.path(w)
                if not Path(path).is_file():
                    return False, f"weight file {w!r} is missing: place it at {path} (see bench weights)"
        return True, ""

    def version(self) -> str:
        ext = feature_extractor("cpu")
        v = f"clean-fid-{_cleanfid_version()}:{self.statistic}:{self.protocol}:{ext.id}:{resizer_id()}"
        if self.statistic == "kid":
            v += f":subsets={KID_NUM_SUBSETS},max_subset={KID_SUBSET_SIZE},seed={KID_SEED}"
        return v

    # -- update / compute
    def reset(self) -> None:
        self._pending: list[tuple[Any, np.ndarray]] = []  # (sample, recon) not yet embedded
        self._ref: list[np.ndarray] = []  # (n_patches, D) per image
        self._rec: list[np.ndarray] = []
        self._n_images = 0
        self._extractor = None

    def update(self, sample, recon) -> None:
        if np.shape(recon) != sample.rgb.shape:
            raise ValueError(f"{self.name}: image {sample.id}: reconstruction {np.shape(recon)} and reference "
                             f"{sample.rgb.shape} differ in shape")
        self._pending.append((sample, recon))
        self._n_images += 1
        if len(self._pending) >= self.batch_size:
            self._embed()

    def _embed(self) -> None:
        """Features of the queued pairs (batches of ``batch_size`` crops, as one call would make)."""
        from bench.data.images import pixel_sha256

        if not self._pending:
            return
        if self._extractor is None:
            self._extractor = feature_extractor(self.device)
        kw = {"protocol": self.protocol, "extractor": self._extractor, "device": self.device,
              "cache_dir": self.cache_dir, "batch_size": self.batch_size}
        self._ref += compute_features(((s.sha256, s.rgb) for s, _ in self._pending), **kw)
        self._rec += compute_features(((pixel_sha256(r), r) for _, r in self._pending), **kw)
        self._pending = []

    def compute(self) -> dict:
        least = 2 if self.protocol == "full" else 1
        if self._n_images < least:
            raise ValueError(f"{self.name} needs at least {least} image(s) (got {self._n_images})")
        self._embed()
        ref, rec = np.concatenate(self._ref), np.concatenate(self._rec)
        if len(ref) < 2:
            raise ValueError(f"{self.name} needs at least 2 {'images' if self.protocol == 'full' else 'patches'} "
                             f"(got {len(ref)})")
        if self.statistic == "fid":
            value, info = frechet_distance(ref, rec)
        else:
            value, info = kernel_distance(ref, rec)
        extra = {"protocol": self.protocol, "protocol_description": PROTOCOLS[self.protocol],
                 "n_images": self._n_images, "feature_extractor": self._extractor.id,
                 "feature_dim": int(ref.shape[1]), "resizer": resizer_id(), "clean_fid": _cleanfid_version()}
        if self.protocol != "full":
            extra["n_patches"] = len(ref)
            extra["patch_size"] = PATCH
        if self.statistic == "fid" and len(ref) <= ref.shape[1]:
            extra["rank_note"] = (f"{len(ref)} samples <= {ref.shape[1]} feature dims: covariances are "
                                  "rank-deficient; compare values only at equal sample counts")
        extra.update(info)
        return {"value": value, "n_images": self._n_images, "extra": extra}


METRICS = (
    CleanFIDMetric("fid", "fid", "full"),
    CleanFIDMetric("kid", "kid", "full"),
    CleanFIDMetric("fid_patch", "fid", "cdc-256"),
    CleanFIDMetric("kid_patch", "kid", "cdc-256"),
    CleanFIDMetric("fid_patch_hific", "fid", "hific-256"),
    CleanFIDMetric("kid_patch_hific", "kid", "hific-256"),
)

for _m in METRICS:
    registry.add("metric", _m.name, _m)
