"""Decode time and peak memory of learned codecs per Kodak image (768x512), on this device.

For each codec card (default: the MS-ILLM ones) at one rate point: encode ``--images`` Kodak
images, then time ``decode`` of their bytes (a fresh adapter instance, after one warm-up
decode that builds the model), split into entropy decoding (bytes -> latent) and synthesis
(latent -> pixels). Every point of a card is the same network, so one point per card
tells the network's cost (the entropy decoding part grows with the rate).

Weights are SEEDED RANDOM (``--init random``; the released files cannot be downloaded here):
timings and memory are those of the real architecture, the bytes and pixels are not a real
codec's (random weights give other rates, so the entropy-decoding share is indicative only).

Each card runs in its own process so that the peak memory is its own: on CUDA
``torch.cuda.max_memory_allocated`` (tensors on the device), on the CPU the process's peak
resident set (``ru_maxrss``: the model, its activations and the interpreter).

Usage: ``python benchmarks/learned_decode.py [--device cpu|cuda] [--dtype float32|bfloat16|float16]
[--images 3] [--cards msillm:6 msillm-nogan:3] [--data-dir ../shared/data/kodak]``
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DEFAULT_CARDS = ("msillm:6", "msillm-nogan:6")


def _point(text: str):
    return int(text) if text.lstrip("-").isdigit() else text


def one(card_name: str, point, device: str, dtype: str, images: int, data_dir: Path) -> dict:
    """Measure one card in this process; returns the numbers as a dict."""
    import numpy as np
    import torch

    from bench import cards
    from bench.data.images import read_rgb
    from bench.runner import build_codec

    card = cards.get("codec", card_name)
    paths = sorted(data_dir.glob("kodim*.png"))
    rgbs = [r for r in (read_rgb(p)[0] for p in paths) if r.shape[:2] == (512, 768)][:images]
    if len(rgbs) < images:
        raise SystemExit(f"need {images} landscape 768x512 Kodak images in {data_dir}, found {len(rgbs)}")
    enc = build_codec(card, device, dtype, "random")
    datas = [enc.encode(rgb, point) for rgb in rgbs]
    del enc
    dec = build_codec(card, device, dtype, "random")

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    dec.decode(datas[0])  # builds the model (not timed)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    total, entropy, synthesis = [], [], []
    model = dec.model(point)
    for data in datas:
        sync()
        t0 = time.perf_counter()
        out = dec.decode(data)
        sync()
        total.append(time.perf_counter() - t0)
        assert out.shape == (512, 768, 3)
        # the same decode in two parts (what decode() does, timed separately)
        c = dec.read(data)
        with torch.inference_mode():
            sync()
            t0 = time.perf_counter()
            latent = model.decompress_latent(*dec._parts(c))
            sync()
            t1 = time.perf_counter()
            model.decoder(latent)
            sync()
            t2 = time.perf_counter()
        entropy.append(t1 - t0)
        synthesis.append(t2 - t1)
    bits = [8 * len(d) for d in datas]
    res = {"card": card_name, "point": point, "device": device, "dtype": dtype, "images": len(datas),
           "decode_s": statistics.median(total), "entropy_s": statistics.median(entropy),
           "synthesis_s": statistics.median(synthesis), "bpp_random": float(np.mean(bits)) / (768 * 512),
           "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    if device.startswith("cuda"):
        res["peak_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
        res["peak_kind"] = "CUDA max_memory_allocated during decodes"
        res["gpu"] = torch.cuda.get_device_name()
    else:
        res["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        res["peak_kind"] = "process peak RSS (encoder instance included)"
        res["threads"] = torch.get_num_threads()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--cards", nargs="+", default=list(DEFAULT_CARDS), help="CARD:POINT ...")
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("BENCH_SHARED") or REPO.parent / "shared")
                    / "data" / "kodak")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # CARD:POINT measured in this process (JSON out)
    args = ap.parse_args()
    if args.one:
        name, _, point = args.one.partition(":")
        print(json.dumps(one(name, _point(point), args.device, args.dtype, args.images, args.data_dir)))
        return
    print("learned decode benchmark: SEEDED RANDOM WEIGHTS (real architectures, not real codecs); "
          f"{args.images} Kodak image(s) 768x512, device {args.device}, dtype {args.dtype}")
    print(f"{'card:point':<18} {'params':>8} {'decode s/img':>13} {'entropy s':>10} {'synthesis s':>12} "
          f"{'peak MiB':>9}  peak measured as")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    from bench.tuning import MALLOC_ENV

    env.update(MALLOC_ENV)
    for spec in args.cards:
        cmd = [sys.executable, __file__, "--one", spec, "--device", args.device, "--dtype", args.dtype,
               "--images", str(args.images), "--data-dir", str(args.data_dir)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode:
            print(f"{spec:<18} failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        where = r.get("gpu") or f"{r.get('threads')} CPU threads"
        print(f"{spec:<18} {r['params_m']:>7.1f}M {r['decode_s']:>13.3f} {r['entropy_s']:>10.3f} "
              f"{r['synthesis_s']:>12.3f} {r['peak_mib']:>9.0f}  {r['peak_kind']}; {where}")


if __name__ == "__main__":
    main()
