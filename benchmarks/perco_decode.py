"""PerCo decoding speed and peak memory per rate point and DDIM step count (not a test).

The paper (App. A, "Decoding time") reports 0.67 s with 5 steps and 2.54 s with 20 steps per
Kodak image on an A100, one image at a time. This script times bench's decoder the same way
(``decode_batch`` of ``--batch`` bitstreams, default 1) on the current device, **with seeded
random weights** (official weights are unreleased; the timing depends on the architecture,
not on the weight values): ``--size full`` builds the SD-2.1-sized networks (UNet ~867M
parameters; use a GPU), ``--size tiny`` the CPU smoke-test networks. Each figure is the
median over ``--repeat`` decodes after one warm-up decode; decode time includes the index-map
look-up, text encoding, the DDIM loop with classifier-free guidance (two UNet passes per
step), the VAE decoder and the resize back to the input size.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` during the timed decodes (reset per
row); on the CPU the process's peak resident set size (``ru_maxrss``, monotone over the run).

Usage::

    python benchmarks/perco_decode.py --device cuda --dtype float16            # full size
    python benchmarks/perco_decode.py --device cpu --size tiny --steps 1,2     # smoke run
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PAPER_S = {5: 0.67, 20: 2.54}  # per image, A100, Kodak (768x512)


def _image():
    """kodim01 (768x512) from ../shared when present, else a synthetic 768x512 image."""
    import numpy as np

    kodak = REPO.parent / "shared" / "data" / "kodak" / "kodim01.png"
    if kodak.is_file():
        from bench.data.images import read_rgb

        return read_rgb(kodak)[0], "kodim01"
    y, x = np.mgrid[0:512, 0:768] / 768
    return ((np.stack([np.sin(9 * x), np.cos(7 * y), np.sin(5 * (x + y))], -1) + 1) * 127.5).astype(np.uint8), \
        "synthetic 512x768"


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if _cuda() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--size", default=None, choices=["tiny", "full"], help="default: full on cuda, tiny on cpu")
    ap.add_argument("--points", default="0.0019,0.0313,0.1250")
    ap.add_argument("--steps", default="5,20")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args(argv)
    size = args.size or ("full" if args.device.startswith("cuda") else "tiny")

    import torch

    from bench.codecs.perco.adapter import PerCo

    rgb, what = _image()
    rows = []
    print(f"PerCo decode on {args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'})"
          f", dtype {args.dtype}, RANDOM weights ({size} networks), image {what}, batch {args.batch}, "
          f"median of {args.repeat}")
    print(f"{'point':>7} {'steps':>5} {'s/image':>9} {'paper A100':>10} {'peak MiB':>9}")
    for point in [float(p) for p in args.points.split(",")]:
        codec = PerCo(device=args.device, dtype=args.dtype, init="random", caption="none", random_size=size)
        data = codec.encode(rgb, point, seed=0)
        for steps in [int(s) for s in args.steps.split(",")]:
            codec.steps = steps
            datas, seeds = [data] * args.batch, list(range(args.batch))
            codec.decode_batch(datas, seeds)  # warm-up (and model build)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                codec.decode_batch(datas, seeds)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append((time.perf_counter() - t0) / args.batch)
            peak = (torch.cuda.max_memory_allocated() if args.device.startswith("cuda")
                    else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2 ** 20
            row = dict(point=point, steps=steps, s_per_image=statistics.median(times), peak_mib=peak,
                       device=args.device, dtype=args.dtype, weights=f"random-{size}", batch=args.batch)
            rows.append(row)
            paper = f"{PAPER_S[steps]:.2f}" if steps in PAPER_S else "-"
            print(f"{point:>7.4f} {steps:>5} {row['s_per_image']:>9.3f} {paper:>10} {peak:>9.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
