"""Executors compared (not a test): the same fresh run locally and on Ray; prints ratios.

1. throughput: CPU codecs (JPEG and WebP at 3 points, PSNR + SSIM + MS-SSIM + GMSD) on
   ``--images`` Kodak images, whole ``bench run`` processes, fresh run directory each time:
   local ``--workers 1`` (inline, torch using every core's threads), local ``--workers 2``
   (process pool, one thread each) and ``--executor ray --workers 2`` (a local Ray
   instance with 2 CPUs, started and stopped by the run, so its start-up is counted).
   Ray's speed-up is reported against the *best* local configuration measured
   (target ≥ 1.6× on 2 cores), and for information against each of them.
2. overhead: a small run (1 image, 1 point, PSNR): Ray vs the best local configuration,
   as a ratio and in seconds (Ray's start-up, its workers' imports, task round trips).

Each figure is the median over ``--repeat`` runs (wall clock); the configurations take
turns, so load from elsewhere falls on all alike. Still, run it on an idle machine.
Usage: ``python benchmarks/executors.py [--data-dir ../shared/data/kodak] [--images 12] [--repeat 3]``
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from perf import BENCH, REPO, timed  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

METRICS = "psnr,ssim,ms_ssim,gmsd"
CONFIGS = {"local, 1 worker": ["--workers", "1"], "local, 2 workers": ["--workers", "2"],
           "ray, 2 workers": ["--executor", "ray", "--workers", "2"]}


def cmd(data_dir: str, out: Path, images: int, codecs: str, points: str, metrics: str, extra: list[str]) -> list[str]:
    return [*BENCH, "run", "--dataset", "kodak", "--data-dir", data_dir, "--limit", str(images), "--codec", codecs,
            "--points", points, "--metrics", metrics, "--out", str(out), "--no-plot", *extra]


def measure(args, tmp: Path, images: int, codecs: str, points: str, metrics: str) -> dict[str, float]:
    """Median wall time of each configuration; the configurations take turns (one run of
    each per round) so that load from elsewhere falls on all of them alike."""
    runs: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for _ in range(args.repeat):
        for name, extra in CONFIGS.items():
            out = tmp / name.replace(", ", "-").replace(" ", "")
            shutil.rmtree(out, ignore_errors=True)
            runs[name].append(timed(cmd(args.data_dir, out, images, codecs, points, metrics, extra)))
    for name, times in runs.items():
        print(f"  {name:<18} {statistics.median(times):7.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times)})",
              flush=True)
    return {name: statistics.median(times) for name, times in runs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "kodak"))
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-executors-"))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; median of {args.repeat} whole runs\n")
    try:
        units = args.images * 2 * 3
        print(f"1. throughput: {units} units (jpeg + webp × 3 points × {args.images} images), {METRICS}")
        t = measure(args, tmp, args.images, "jpeg,webp", "10,50,90", METRICS)
        ray = t["ray, 2 workers"]
        best = min((v, k) for k, v in t.items() if k.startswith("local"))
        ok = best[0] / ray >= 1.6
        print(f"ray-vs-best {best[0] / ray:8.3f}   target ≥ 1.6   {'met' if ok else 'MISSED'}   "
              f"(best local: {best[1]}, {best[0]:.2f} s vs ray {ray:.2f} s)")
        for name in ("local, 1 worker", "local, 2 workers"):
            print(f"(info)      {t[name] / ray:8.3f}   ray, 2 workers vs {name}")
        print("\n2. overhead: a small run (1 image, 1 point, psnr)")
        s = measure(args, tmp, 1, "jpeg", "50", "psnr")
        best = min((v, k) for k, v in s.items() if k.startswith("local"))
        print(f"overhead    {s['ray, 2 workers'] / best[0]:8.3f}   (ray {s['ray, 2 workers']:.2f} s vs best local "
              f"{best[1]} {best[0]:.2f} s: +{s['ray, 2 workers'] - best[0]:.2f} s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
