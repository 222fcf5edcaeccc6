"""Speed benchmarks of the harness (not tests): prints ratios against targets.

1. overhead: ``bench run`` scoring stored reconstructions vs a plain script that
   calls pyiqa on the same image pairs (both whole processes, both with the
   malloc settings of bench/tuning.py)                          — target ≤ 1.10×
   and, for information, that plain script without vs with those settings
2. resume:   re-running a finished run vs the first run                   — target ≤ 2 %
3. workers:  first run with ``--workers 2`` vs ``--workers 1`` (speed-up)  — target ≥ 1.7×
4. compressai: ``bench run`` (JPEG at qualities 5..95 on Kodak, PSNR + RGB MS-SSIM, 2
   workers, writing parquet, reconstructions and provenance) vs CompressAI's own
   ``python -m compressai.utils.bench jpeg`` on the same images, qualities and metrics,
   at its best of ``-j 1`` and ``-j 2``                                         — target ≤ 0.8
5. throughput: pairs per second of each per-image metric that can run here
   (weights present), on ``--device`` (cpu or cuda), 768×512 Kodak pairs

Each figure is the median over ``--repeat`` runs of a whole process (wall clock).
Usage: ``python benchmarks/perf.py [--data-dir ../shared/data/kodak] [--repeat 3]``
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.tuning import MALLOC_ENV  # noqa: E402
BENCH = [sys.executable, "-m", "bench"]
METRICS = "psnr,ssim,ms_ssim,gmsd"

DIRECT = """
import sys, warnings, numpy as np, torch, pyiqa
from PIL import Image
warnings.filterwarnings("ignore")
names, pairs = sys.argv[1].split(","), sys.argv[2:]
models = {{n: pyiqa.create_metric(n, device="cpu", as_loss=False) for n in names}}
t = lambda p: torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1)[None].float() / 255
with torch.inference_mode():
    for ref, rec in zip(pairs[::2], pairs[1::2]):
        x, y = t(ref), t(rec)
        scores = {{n: float(m(y, x)) for n, m in models.items()}}
"""


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def median_of(repeat: int, make_cmd, before=None) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeat):
        if before:
            before()
        times.append(timed(make_cmd()))
    return statistics.median(times), times


def run_args(data_dir: str, out: Path, limit: int, points: str, metrics: str, workers: int = 1) -> list[str]:
    return [*BENCH, "run", "--dataset", "kodak", "--data-dir", data_dir, "--codec", "jpeg", "--points", points,
            "--metrics", metrics, "--out", str(out), "--limit", str(limit), "--workers", str(workers), "--no-plot"]


def report(name: str, ratio: float, target: str, ok: bool, detail: str) -> None:
    print(f"{name:<9} {ratio:8.3f}   target {target:<7} {'met' if ok else 'MISSED'}   ({detail})", flush=True)


def throughput(data_dir: str, device: str, pairs: int = 3) -> None:
    """Per-metric pairs/s through the engine (models built once, first call not timed)."""
    import io

    import numpy as np
    from PIL import Image

    from bench import registry, weights
    from bench.data.images import read_rgb
    from bench.metrics.engine import MetricEngine

    refs = [read_rgb(Path(data_dir) / f"kodim{i:02d}.png")[0] for i in (1, 2, 3)][:pairs]
    recs = []
    for ref in refs:
        buf = io.BytesIO()
        Image.fromarray(ref).save(buf, "JPEG", quality=30)
        recs.append(np.asarray(Image.open(buf).convert("RGB")))
    print(f"metric throughput on {device}, 768×512 pairs:")
    for name, entry in sorted(registry.entries("metric").items()):
        spec = entry.obj
        if getattr(spec, "kind", "") != "per_image" or getattr(spec, "uses_captions", False):
            continue
        missing = [w for w in getattr(spec, "weights", ()) if weights.status(w, verify=False) != "ok"]
        if missing:
            print(f"  {name:<10} skipped: weights missing ({', '.join(missing)})")
            continue
        engine = MetricEngine([name], device)
        engine.score(refs[0], recs[0])  # build + warm up
        t0 = time.perf_counter()
        for ref, rec in zip(refs, recs):
            engine.score(ref, rec)
        dt = (time.perf_counter() - t0) / len(refs)
        print(f"  {name:<10} {1 / dt:8.2f} pairs/s  ({dt:.3f} s/pair)", flush=True)
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "kodak"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--images", type=int, default=24, help="Kodak images scored for the overhead figure")
    ap.add_argument("--run-images", type=int, default=24, help="Kodak images of the resume and workers runs")
    ap.add_argument("--device", default="cpu", help="device for the metric throughput figures")
    ap.add_argument("--only", help="comma list of parts: overhead, resume, workers, compressai, throughput "
                    "[default: all]")
    args = ap.parse_args()
    parts = set(args.only.split(",")) if args.only else {"overhead", "resume", "workers", "compressai", "throughput"}
    if "throughput" in parts:
        throughput(args.data_dir, args.device)
    if not parts & {"overhead", "resume", "workers", "compressai"}:
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench-perf-"))
    print(f"python {sys.version.split()[0]}; median of {args.repeat} runs of whole processes\n")

    if "overhead" in parts:
        overhead(args, tmp)
    if "resume" in parts:
        resume(args, tmp)
    if "workers" in parts:
        workers(args, tmp)
    if "compressai" in parts:
        against_compressai(args, tmp)
    shutil.rmtree(tmp, ignore_errors=True)


def overhead(args, tmp: Path) -> None:
    """Codec work done once; each timed run scores the same stored pairs from scratch."""
    prepared = tmp / "prepared"
    timed(run_args(args.data_dir, prepared, args.images, "30", "none"))
    pairs = []
    for i in range(1, args.images + 1):
        pairs += [f"{args.data_dir}/kodim{i:02d}.png", str(prepared / f"recon/kodak/jpeg/30/s0/kodim{i:02d}.png")]
    scoring = tmp / "scoring"

    def fresh_copy():
        shutil.rmtree(scoring, ignore_errors=True)
        shutil.copytree(prepared, scoring)

    harness, h_all = median_of(args.repeat, lambda: run_args(args.data_dir, scoring, args.images, "30", METRICS),
                               fresh_copy)
    direct_cmd = [sys.executable, "-c", DIRECT.format(), METRICS, *pairs]
    direct, _ = median_of(args.repeat, lambda: ["env", *(f"{k}={v}" for k, v in MALLOC_ENV.items()), *direct_cmd])
    report("overhead", harness / direct, "≤ 1.10", harness / direct <= 1.10,
           f"bench {harness:.2f} s vs pyiqa loop {direct:.2f} s for {args.images} pairs × {METRICS}")
    plain, _ = median_of(args.repeat, lambda: ["env", *(f"-u{k}" for k in MALLOC_ENV), *direct_cmd])
    print(f"(info)    {plain / direct:8.3f}   the same pyiqa loop without / with the malloc settings "
          f"({plain:.2f} s vs {direct:.2f} s)")



def resume(args, tmp: Path) -> None:
    """A finished run re-run with the same command."""
    resumed = tmp / "resume"
    n = args.run_images
    first = timed(run_args(args.data_dir, resumed, n, "10,50,90", METRICS))
    again, a_all = median_of(args.repeat, lambda: run_args(args.data_dir, resumed, n, "10,50,90", METRICS))
    report("resume", again / first, "≤ 0.02", again / first <= 0.02,
           f"re-run {again:.2f} s vs first run {first:.2f} s, {3 * n} units")



def workers(args, tmp: Path) -> None:
    """The same fresh run with 1 and 2 worker processes."""
    def fresh(n):
        out = tmp / f"w{n}"
        return lambda: shutil.rmtree(out, ignore_errors=True), lambda: run_args(args.data_dir, out, args.run_images,
                                                                                "10,50,90", METRICS, n)
    clear1, cmd1 = fresh(1)
    clear2, cmd2 = fresh(2)
    one, _ = median_of(args.repeat, cmd1, clear1)
    two, _ = median_of(args.repeat, cmd2, clear2)
    report("workers", one / two, "≥ 1.7", one / two >= 1.7, f"1 worker {one:.2f} s vs 2 workers {two:.2f} s")


CAI_QUALITIES = ",".join(str(q) for q in range(5, 100, 5))


def against_compressai(args, tmp: Path) -> None:
    """The issue's side-by-side: the same JPEG sweep and metrics through bench and through
    CompressAI's bench script (which keeps nothing but the printed JSON)."""
    out = tmp / "cai-bench"
    images = tmp / "cai-images"  # CompressAI's script globs a folder: give it exactly the images
    images.mkdir(exist_ok=True)
    for i in range(1, args.run_images + 1):
        shutil.copy(Path(args.data_dir) / f"kodim{i:02d}.png", images)
    ours, _ = median_of(args.repeat, lambda: run_args(args.data_dir, out, args.run_images, CAI_QUALITIES,
                                                      "psnr,ms_ssim_rgb", 2),
                        lambda: shutil.rmtree(out, ignore_errors=True))
    theirs = {}
    for jobs in (1, 2):
        theirs[jobs], _ = median_of(args.repeat, lambda: [sys.executable, "-m", "compressai.utils.bench", "jpeg",
                                                          str(images), "-q", CAI_QUALITIES, "-j", str(jobs)])
    best = min(theirs, key=theirs.get)
    report("compressai", ours / theirs[best], "≤ 0.8", ours / theirs[best] <= 0.8,
           f"bench --workers 2 {ours:.1f} s vs compressai.utils.bench jpeg -j {best} {theirs[best]:.1f} s "
           f"(-j 1 {theirs[1]:.1f} s, -j 2 {theirs[2]:.1f} s); {args.run_images} images × "
           f"{len(CAI_QUALITIES.split(','))} qualities, PSNR + RGB MS-SSIM")


if __name__ == "__main__":
    main()
