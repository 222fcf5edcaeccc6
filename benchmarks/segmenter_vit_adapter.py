"""Seconds per 512x512 image and peak memory of the ViT-Adapter segmenter (PerCo's mIoU), on this device.

The full-size released architecture of one variant (``--variant``, default
``upernet-beit-l-cocostuff164k``: BEiT-L + adapter + UperNet, 451M parameters; or
``mask2former-beit-l-cocostuff164k`` / ``mask2former-beitv2-l-cocostuff164k``: the same backbone
at a 896 window + Mask2Former head, 571M) with SEEDED RANDOM weights (the checkpoints cannot be
downloaded here: timings and memory are the real network's, the predictions are not). Each image
goes through the released test pipeline exactly as ``miou_cocostuff`` runs it: a 512x512 image is
resized to one 640x640 (UperNet) or 896x896 (Mask2Former) slide window, segmented, and the scores
resized back to 512x512.

Reports, after ``--warmup`` untimed images: seconds per image (median and mean over ``--images``),
the share of the backbone (ViT + adapter) and of the head in one forward pass, the time the
5000-image ``coco2017-val512`` set would take per rate point, and peak memory: on CUDA
``torch.cuda.max_memory_allocated`` (tensors), on the CPU the process's peak resident set
(``ru_maxrss``: the model, its activations and the interpreter).

Measured on the development machine (no GPU; 2 CPU cores shared with other jobs, load average ~8,
``--threads 2 --warmup 1 --images 1``, float32): UperNet 133 s per 512x512 image (backbone 61%,
UperNet head 39% of a forward), peak RSS 5.3 GiB; i.e. ~185 h per 5000-image rate point: use a
GPU for ``miou_cocostuff`` on ``coco2017-val512``. ``--variant mask2former-beit-l-cocostuff164k``
(same machine, load average ~5, ``--threads 2 --warmup 0 --images 1``, so the one timed image is
also the first): 322 s per 512x512 image (one 896x896 forward: backbone 209 s = 56%, Mask2Former
head 162 s = 44%), peak RSS 8.4 GiB, build 36 s; ~448 h per rate point. The BEiTv2 variant has
the same architecture (not timed). No GPU number yet (no device was available).

Usage: ``python benchmarks/segmenter_vit_adapter.py [--device cpu|cuda] [--dtype float32|bfloat16|float16]
[--images 3] [--warmup 1] [--variant upernet-beit-l-cocostuff164k|mask2former-beit-l-cocostuff164k|
mask2former-beitv2-l-cocostuff164k|tiny|tiny-mask2former] [--threads N]`` (``--model`` is the
same option). One variant per run: on a CPU the full-size models take minutes per image.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks.perco_decode import _cuda  # noqa: E402  (one "is there a GPU" probe for the benchmarks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if _cuda() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--variant", "--model", dest="variant", default="upernet-beit-l-cocostuff164k",
                    help="ViT-Adapter variant (bench.metrics.vit_adapter.configs.VARIANTS)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()

    import numpy as np
    import torch
    from rich.console import Console
    from rich.progress import track

    from bench.metrics.vit_adapter import configs
    from bench.metrics.vit_adapter.model import build

    console = Console()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg = configs.get(args.variant)
    except KeyError as exc:
        ap.error(exc.args[0])
    dtype = getattr(torch, args.dtype)
    t0 = time.perf_counter()
    model = build(cfg, seed=0, device=args.device).to(dtype)
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(0)
    imgs = [(rng.random((512, 512, 3)) * 255).astype(np.uint8) for _ in range(args.images + args.warmup)]

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for k, rgb in enumerate(track(imgs, description=f"{cfg.name} on {args.device}", console=console)):
        sync()
        t = time.perf_counter()
        pred = model.predict(rgb)
        sync()
        if k >= args.warmup:
            times.append(time.perf_counter() - t)
    assert pred.shape == (512, 512)

    # one forward split into backbone and head (the one window a 512x512 image becomes)
    x = model.preprocess(imgs[0], next(model.parameters()).device, dtype)
    with torch.inference_mode():
        sync()
        t = time.perf_counter()
        feats = model.backbone(x)
        sync()
        t_backbone = time.perf_counter() - t
        if cfg.head == "mask2former":
            model.decode_head.forward_test(feats)
        else:
            model.decode_head(feats)
        sync()
        t_head = time.perf_counter() - t - t_backbone
    if args.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
        peak_what = "torch.cuda.max_memory_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peak_what = "process peak RSS (ru_maxrss)"
    med = statistics.median(times)
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    console.print(f"model {cfg.name} ({n_params / 1e6:.1f}M parameters, random weights, {args.dtype}); "
                  f"device {dev}; build {build_s:.1f} s")
    console.print(f"seconds per 512x512 image: median {med:.3f}, mean {statistics.mean(times):.3f} "
                  f"over {len(times)} images (after {args.warmup} warm-up)")
    head = "UperNet" if cfg.head == "upernet" else "Mask2Former"
    console.print(f"one {x.shape[2]}x{x.shape[3]} forward: backbone {t_backbone:.3f} s "
                  f"({t_backbone / (t_backbone + t_head):.0%}), {head} head {t_head:.3f} s "
                  f"({t_head / (t_backbone + t_head):.0%})")
    console.print(f"coco2017-val512 (5000 images) per rate point: {5000 * med / 3600:.2f} h")
    console.print(f"peak memory: {peak:.0f} MiB ({peak_what})")


if __name__ == "__main__":
    main()
