"""Shared fixtures: the real Kodak images from ../shared/data (CI has them too)."""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("BENCH_SHARED", REPO.parent / "shared"))
KODAK = SHARED / "data" / "kodak"

warnings.filterwarnings("ignore", category=UserWarning)


@pytest.fixture(scope="session")
def kodak_dir() -> Path:
    if not (KODAK / "kodim01.png").is_file():
        pytest.fail(f"the shared Kodak images are missing at {KODAK}: CI and development machines have "
                    "../shared beside the checkout (or set BENCH_SHARED)")
    return KODAK


@pytest.fixture(scope="session")
def kodim01(kodak_dir) -> np.ndarray:
    from bench.data.images import read_rgb

    return read_rgb(kodak_dir / "kodim01.png")[0]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """Empty TORCH_HOME and bench cache; restores the offline switches require() may set."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("BENCH_WEIGHTS", str(tmp_path / "bench"))
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", constants.HF_HUB_OFFLINE)
    return tmp_path
