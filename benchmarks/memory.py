"""Peak memory of a long run (not a test): the resident set must stay flat as images go by.

Writes ``--images`` synthetic ``--size``×``--size`` PNGs (seeded smooth gradients plus noise)
into a temporary folder, then runs the one way to run work (``bench.runner.run``) on them in
this process: a cheap codec (``--codec jpeg`` at one point) and a per-image metric
(``--metrics psnr``); with ``--set-metric`` also FID over the whole set, with a small
random-weight feature extractor standing in for Inception (no weights here) so that
``run_set_metrics`` reads all ``--images`` pairs. The process's resident set (VmRSS) and its
peak (VmHWM) are read from /proc at 100, 500 and 1000 finished units (scaled to ``--images``)
and after the run (set metrics, tables). pandas, pyarrow and torch are imported before the run
so that their one-off import does not read as growth.

Printed: RSS and peak at each checkpoint, the growth ratio peak(1000 units) / peak(100 units)
(target ≤ 1.05: flat) and the growth per image between them next to the bytes of one image (a
run that kept its images would grow by at least one image per image), then the peak of the
whole run (set metrics and table export included) against the 100-unit one.

The process runs with bench's malloc settings (bench/tuning.py: freed memory is kept, never
trimmed, as in ``bench run``), so RSS is the high-water mark of what was ever held.

Usage: ``python benchmarks/memory.py [--images 1000] [--size 64] [--batch 1] [--set-metric]``
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def rss_kib() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in KiB, from /proc/self/status."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def write_images(folder: Path, n: int, size: int) -> None:
    """``n`` distinct seeded images: a random colour gradient plus noise, as PNG."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    for i in range(n):
        a, b = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        img = a + (b - a) * (ramp[:, None, None] + ramp[None, :, None]) / 2 + rng.normal(0, 12, (size, size, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"img{i:05d}.png")


class SmallExtractor:
    """Random-weight conv net for FID here (the Inception file cannot be downloaded): 64-d features."""

    id = "benchmark-random-conv64"
    weights = ()

    def __init__(self) -> None:
        import torch

        g = torch.Generator().manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 8, stride=8), torch.nn.ReLU(),
                                       torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(64, 64))
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        self.net.eval()

    def __call__(self, x):
        self.net.to(x.device)
        return self.net(x / 255.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--size", type=int, default=64, help="side of the square synthetic images (px)")
    ap.add_argument("--codec", default="jpeg")
    ap.add_argument("--point", default="50")
    ap.add_argument("--metrics", default="psnr")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--set-metric", action="store_true", help="also FID over the set (small random extractor)")
    args = ap.parse_args()

    from bench.tuning import MALLOC_ENV, tuned, wanted

    if wanted() and not tuned():  # glibc reads these at start: run again with them, as `bench run` does
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})

    from bench.metrics import fid
    from bench.runner import Experiment, run

    checkpoints = sorted({max(1, round(args.images * f)) for f in (0.1, 0.5, 1.0)})
    samples: dict[str, tuple[int, int]] = {}

    def progress(desc: str, done: int, total: int) -> None:
        if desc == "units" and done in checkpoints:
            samples[f"{done} units"] = rss_kib()

    metrics = [m for m in args.metrics.split(",") if m]
    if args.set_metric:
        fid.feature_extractor = lambda device="cpu": SmallExtractor()
        metrics.append("fid")
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        write_images(folder, args.images, args.size)
        import pandas  # noqa: F401 - imported up front (the tables are written at the end), so that a
        import pyarrow  # noqa: F401 - one-off import does not read as growth
        import torch  # noqa: F401

        samples["before the run"] = rss_kib()
        t0 = time.perf_counter()
        res = run(Experiment(data_dir=str(folder), codecs=[args.codec], points=[int(args.point) if args.point.isdigit() else args.point], metrics=metrics,
                             out=str(Path(tmp) / "run"), batch=args.batch), progress)
        seconds = time.perf_counter() - t0
        samples["after set metrics" if args.set_metric else "after the run"] = rss_kib()
    problems = [p for p in res.problems if not p.startswith("note:")]
    print(f"{args.images} images {args.size}x{args.size}, {args.codec} @ {args.point}, metrics {','.join(metrics)}, "
          f"batch {args.batch}: {res.units_coded} units coded in {seconds:.1f} s"
          + (f"; {len(problems)} problems, first: {problems[0]}" if problems else ""))
    print(f"{'checkpoint':<22}{'RSS MiB':>10}{'peak MiB':>10}")
    for name, (rss, hwm) in samples.items():
        print(f"{name:<22}{rss / 1024:>10.1f}{hwm / 1024:>10.1f}")
    first, last = samples[f"{checkpoints[0]} units"][1], samples[f"{checkpoints[-1]} units"][1]
    if not res.units_coded:
        raise SystemExit("no unit was coded: nothing measured")
    ratio = last / first
    per_image = (last - first) * 1024 / max(1, args.images - checkpoints[0])
    image_bytes = args.size * args.size * 3
    print(f"peak growth {checkpoints[0]} -> {checkpoints[-1]} units: {ratio:.3f}x   target <= 1.05 "
          f"{'met' if ratio <= 1.05 else 'MISSED'}   ({per_image:.0f} bytes per image; one image's pixels are "
          f"{image_bytes} bytes)")
    end = max(hwm for _, hwm in samples.values())
    print(f"peak over the whole run, set metrics and tables included: {end / first:.3f}x the first checkpoint's")


if __name__ == "__main__":
    main()
