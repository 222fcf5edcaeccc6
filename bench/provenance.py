"""What produced a run: versions of bench, Python, the packages that compute
results, the device, the git commit of this checkout."""
from __future__ import annotations

import importlib.metadata as md
import platform
import subprocess
import sys
import time
from pathlib import Path

import bench

PACKAGES = ("numpy", "pillow", "torch", "torchvision", "pyiqa", "imagecodecs", "scikit-image", "pandas", "pyarrow",
            "clean-fid", "open_clip_torch", "lpips", "compressai", "transformers", "scipy")


def git_sha() -> str | None:
    root = Path(bench.__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def device_info(device: str) -> dict:
    info = {"device": device, "platform": platform.platform(), "processor": platform.machine()}
    if device.startswith("cuda"):
        import torch

        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


def collect(device: str = "cpu", dtype: str = "float32") -> dict:
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv,
        "bench": bench.__version__,
        "git": git_sha(),
        "python": sys.version.split()[0],
        "packages": package_versions(),
        "dtype": dtype,
        **device_info(device),
    }
