"""CDC decode speed and peak memory (a benchmark, not a test).

For each CDC card, rate point β and denoising step count: seconds per decoded image
(batched decode of ``--batch`` samples of one bitstream, i.e. ``--batch`` seeds, wall clock
after one warm-up batch, divided by the batch size) and the peak memory of that
configuration, on the current ``--device`` in ``--dtype``. Each configuration runs in its
own process so that each peak is its own: on CUDA ``torch.cuda.max_memory_allocated``
(tensors only), on the CPU the process's peak resident set (``ru_maxrss``, everything).

Weights are **seeded random** (``--init random``): decode cost does not depend on the
weight values, only on the architecture, the image size and the step count; the output
says so on every line. ``--size tiny`` times the test architecture instead (dim 4).

Usage::

    python benchmarks/diffusion_decode.py --device cuda --dtype float16 --steps 65,200
    python benchmarks/diffusion_decode.py --size tiny --height 64 --width 96 --steps 2   # CPU smoke run
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ONE = """
import json, resource, sys, time
import numpy as np, torch
sys.path.insert(0, {repo!r})
from bench import cards
from bench.runner import build_codec
cfg = json.loads(sys.argv[1])
card = cards.get("codec", cfg["card"])
params = dict(card.get("params") or {{}}, steps=cfg["steps"], size=cfg["size"])
card = cards.Card(card.kind, card.name, dict(card.body, params=params), card.path)
codec = build_codec(card, cfg["device"], cfg["dtype"], "random")
rgb = np.random.default_rng(0).integers(0, 256, (cfg["height"], cfg["width"], 3), dtype=np.uint8)
data = codec.encode(rgb, cfg["point"])
seeds = list(range(cfg["batch"]))
codec.decode_batch([data] * len(seeds), seeds)  # warm-up: model build, kernels, caches
cuda = cfg["device"].startswith("cuda")
if cuda:
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
t0 = time.perf_counter()
for _ in range(cfg["repeat"]):
    codec.decode_batch([data] * len(seeds), seeds)
if cuda:
    torch.cuda.synchronize()
sec = (time.perf_counter() - t0) / (cfg["repeat"] * len(seeds))
peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"s_per_image": sec, "peak_bytes": peak, "bpp": 8 * len(data) / (cfg["height"] * cfg["width"]),
                   "device_name": torch.cuda.get_device_name() if cuda else "cpu"}}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cards", default="cdc-x,cdc-eps", help="comma-separated CDC cards")
    ap.add_argument("--points", default="", help="comma-separated β (default: every point of each card)")
    ap.add_argument("--steps", default="", help="comma-separated step counts (default: each card's own)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    ap.add_argument("--size", default="full", choices=("full", "tiny"))
    ap.add_argument("--height", type=int, default=512, help="image height (Kodak landscape: 512)")
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--batch", type=int, default=1, help="samples (seeds) of one bitstream decoded together")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)

    from bench import cards

    rows = []
    print(f"CDC decode on {args.device} ({args.dtype}), {args.height}x{args.width}, batch {args.batch}, "
          f"architecture {args.size}, SEEDED RANDOM WEIGHTS (cost does not depend on weight values)")
    print(f"{'card':14} {'beta':>7} {'steps':>5} {'s/image':>9} {'peak MiB':>9}  device")
    for name in [c for c in args.cards.split(",") if c]:
        card = cards.get("codec", name)
        points = [float(p) for p in args.points.split(",") if p] or card.get("points")
        steps = [int(s) for s in args.steps.split(",") if s] or [card.get("params")["steps"]]
        for point in points:
            for n in steps:
                cfg = dict(card=name, point=point, steps=n, size=args.size, device=args.device, dtype=args.dtype,
                           height=args.height, width=args.width, batch=args.batch, repeat=args.repeat)
                proc = subprocess.run([sys.executable, "-c", ONE.format(repo=str(REPO)), json.dumps(cfg)],
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    print(f"{name:14} {point:>7} {n:>5}  FAILED: {proc.stderr.strip().splitlines()[-1:]}")
                    continue
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append({**cfg, **res, "weights": "random"})
                print(f"{name:14} {point:>7} {n:>5} {res['s_per_image']:>9.3f} {res['peak_bytes'] / 2**20:>9.0f}  "
                      f"{res['device_name']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
