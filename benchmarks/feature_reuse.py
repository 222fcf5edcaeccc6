"""FID over N codec points with the feature cache vs N naive FID calls (not a test).

The reference images are the same for every codec point, so with the cache
(``<run>/cache/features/<extractor>/<resizer>/<protocol>/<pixel sha256>.npy``, what
``bench run`` uses) their features are extracted once; a naive evaluation extracts them again
for every point. Both arms compute FID (``fid``, clean-fid resize, whole images) for the same
``--points`` JPEG reconstructions of the same ``--images`` images, through the registered
metric's ``compute_set``; the cached arm starts from an empty cache. Printed: extractor rows
(images pushed through the network), wall time and the part of it spent in the distance (mean,
covariance, matrix square root: the same in both arms, the cache cannot help it) of each arm,
and the ratios cached / naive — target ≤ 0.55 for the time. With N points the rows ratio is
(N + 1) / 2N (16 points: 0.53, 24: 0.52); the time ratio adds the distance and the cache's own
reads and writes, so it reaches the target once extraction dominates and N is large enough.
Both wall-clock and CPU-time (``time.process_time``, all threads) ratios are printed: on a
shared machine the wall clock varies by 2× from run to run, the CPU time much less.

Extractor (the Inception TorchScript file cannot be downloaded here, and a random-weight
Inception-v3 takes ~0.8 s per image and a minute per 2048-d matrix square root on these
shared CPUs): ``--extractor small`` (default) is a random-weight 3-layer conv net with 64-d
features, so the resize and the network both cost something and the matrix square root next
to nothing; ``--extractor inception`` is torchvision's Inception-v3 architecture with random
weights and 2048-d pool features (the real network's cost: use it on a GPU, ``--device cuda``);
``--extractor cleanfid`` is the real one (its weight file in place, see ``bench weights``).
The reference and reconstruction pixels come from ``--data-dir`` (Kodak) when it exists, else
from seeded synthetic images; JPEG coding is done before timing.

Usage: ``python benchmarks/feature_reuse.py [--points 16] [--images 12] [--extractor small]
[--device cpu] [--repeat 3] [--data-dir ../shared/data/kodak]``
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


class Counting:
    """Wraps an extractor; counts rows and forward calls."""

    def __init__(self, inner) -> None:
        self.inner, self.id, self.weights = inner, inner.id, getattr(inner, "weights", ())
        self.rows = self.calls = 0
        self.seconds = 0.0

    def __call__(self, x):
        self.rows += x.shape[0]
        self.calls += 1
        t0 = time.perf_counter()
        out = self.inner(x)
        self.seconds += time.perf_counter() - t0
        return out


class SmallExtractor:
    """Random-weight conv net (3 conv layers, 64-d features) on 299×299 inputs in [0, 255]."""

    id = "benchmark-random-conv3-64"

    def __init__(self, device: str) -> None:
        import torch

        g = torch.Generator().manual_seed(0)
        nn = torch.nn
        self.net = nn.Sequential(nn.Conv2d(3, 32, 5, stride=3), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2), nn.ReLU(),
                                 nn.Conv2d(64, 64, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        self.net.eval().to(device)

    def __call__(self, x):
        return self.net(x / 255.0)


class RandomInception:
    """torchvision Inception-v3 (random weights), 2048-d pool features: the real network's cost."""

    id = "benchmark-random-inception-v3"

    def __init__(self, device: str) -> None:
        import torch
        import torchvision

        torch.manual_seed(0)
        self.net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=True)
        self.net.fc = torch.nn.Identity()
        self.net.eval().to(device)

    def __call__(self, x):
        return self.net((x - 128) / 128)


def images(data_dir: Path, n: int) -> list:
    import numpy as np

    from bench.data.images import read_rgb

    paths = sorted(data_dir.glob("*.png"))[:n] if data_dir.is_dir() else []
    if len(paths) == n:
        return [read_rgb(p)[0] for p in paths]
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, 256, dtype=np.float32)
    out = []
    for _ in range(n):
        a, b = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        img = a + (b - a) * (ramp[:, None, None] + ramp[None, :, None]) / 2 + rng.normal(0, 20, (256, 256, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def jpeg(rgb, quality: int):
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=16, help="codec points N (JPEG qualities)")
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--extractor", choices=("small", "inception", "cleanfid"), default="small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3, help="median over this many runs of each arm")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: CPU time = work, no spinning)")
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "kodak")
    args = ap.parse_args()
    import warnings

    warnings.filterwarnings("ignore", message="Matrix is singular")  # few images, 64-d: rank-deficient covariances

    import torch

    torch.set_num_threads(args.threads)
    from bench.data.images import pixel_sha256
    from bench.data.loaders import Sample
    from bench.metrics import fid

    refs = images(args.data_dir, args.images)
    samples = [Sample(f"img{i}", rgb, pixel_sha256(rgb)) for i, rgb in enumerate(refs)]
    qualities = [round(5 + i * 90 / max(1, args.points - 1)) for i in range(args.points)]
    recons = {q: [jpeg(rgb, q) for rgb in refs] for q in qualities}
    inner = {"small": SmallExtractor, "inception": RandomInception,
             "cleanfid": fid.InceptionExtractor}[args.extractor](args.device)
    ext = Counting(inner)
    fid.feature_extractor = lambda device="cpu": ext
    distance = fid.frechet_distance
    spent = [0.0]  # seconds in the distance (mean, covariance, matrix square root): the same in both arms

    def timed_distance(a, b):
        t0 = time.perf_counter()
        try:
            return distance(a, b)
        finally:
            spent[0] += time.perf_counter() - t0

    fid.frechet_distance = timed_distance
    spec = fid.CleanFIDMetric("fid", "fid", "full")
    spec.compute_set(list(zip(samples[:2], recons[qualities[0]][:2])), args.device, None)  # warm-up: imports, kernels

    def arm(cached: bool) -> tuple[float, int, list[float]]:
        rows0, spent[0], ext.seconds = ext.rows, 0.0, 0.0
        with tempfile.TemporaryDirectory(prefix="bench-fid-cache-") as tmp:
            t0, c0 = time.perf_counter(), time.process_time()
            values = [spec.compute_set(list(zip(samples, recons[q])), args.device, tmp if cached else None)["value"]
                      for q in qualities]
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        net[cached].append(ext.seconds)
        return seconds, ext.rows - rows0, values, spent[0], cpu

    times: dict[bool, list[float]] = {True: [], False: []}
    net: dict[bool, list[float]] = {True: [], False: []}
    dist: dict[bool, list[float]] = {True: [], False: []}
    cpus: dict[bool, list[float]] = {True: [], False: []}
    rows: dict[bool, int] = {}
    values: dict[bool, list[float]] = {}
    for _ in range(args.repeat):
        for cached in (False, True):
            t, rows[cached], values[cached], d, c = arm(cached)
            times[cached].append(t)
            cpus[cached].append(c)
            dist[cached].append(d)
    same = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(values[True], values[False]))
    naive, cached = statistics.median(times[False]), statistics.median(times[True])
    src = "Kodak" if args.data_dir.is_dir() and len(list(args.data_dir.glob("*.png"))) >= args.images else "synthetic"
    print(f"FID ({fid.resizer_id()}, full images) of {args.points} JPEG points x {args.images} {src} images, "
          f"extractor {ext.id} on {args.device} ({args.threads} CPU thread(s)), median of {args.repeat}")
    d_naive, d_cached = statistics.median(dist[False]), statistics.median(dist[True])
    n_naive, n_cached = statistics.median(net[False]), statistics.median(net[True])
    print(f"{'arm':<26}{'rows':>8}{'seconds':>10}{'network':>10}{'distance':>10}")
    print(f"{'naive (no cache), N calls':<26}{rows[False]:>8}{naive:>10.2f}{n_naive:>10.2f}{d_naive:>10.2f}")
    print(f"{'feature cache':<26}{rows[True]:>8}{cached:>10.2f}{n_cached:>10.2f}{d_cached:>10.2f}")
    print(f"rows ratio {rows[True] / rows[False]:.3f} (expected (N+1)/2N = {(args.points + 1) / (2 * args.points):.3f}); "
          f"features-only time ratio {(cached - d_cached) / (naive - d_naive):.3f}")
    print(f"each run, seconds: naive {' '.join(f'{t:.2f}' for t in times[False])}; "
          f"cache {' '.join(f'{t:.2f}' for t in times[True])}")
    cpu = statistics.median(cpus[True]) / statistics.median(cpus[False])
    print(f"time ratio {cached / naive:.3f} wall clock, {cpu:.3f} CPU time   target <= 0.55 "
          f"{'met' if cached / naive <= 0.55 else 'MISSED'} (wall), {'met' if cpu <= 0.55 else 'MISSED'} (CPU)   "
          f"(largest relative FID difference between arms {same:.1e})")


if __name__ == "__main__":
    main()
