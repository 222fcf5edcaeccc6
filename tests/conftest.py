"""Shared fixtures (real data from ../shared) and the CI skip policy.

Data: ``../shared`` beside the checkout (CI and development machines have it),
or ``BENCH_SHARED=/path/to/shared``. Never an absolute path in a test.

Skip policy: every skip is listed at the end of a session with its reason, in
"skipped (allowed on CI)" or "skipped (NOT allowed on CI)". With ``BENCH_CI=1``
(set by ``.ci/run``) a skip fails the test unless the test carries an
allowed-skip marker whose resource is really missing here:

* ``needs_gpu``: no CUDA device;
* ``needs_weights("id", ...)``: pretrained files that cannot be downloaded here
  (with ids, the test is skipped automatically while ``bench.weights.path(id)``
  is absent; bare, the test skips itself and the skip is allowed);
* ``needs_mmcv``: mmcv's compiled ops (a ~22-min source build);
* ``needs_user_build("card", ...)``: codec cards whose programs no package provides
  (VTM, libbpg: users build them); skipped while the card's adapter is not available
  here. Only adapters in ``USER_BUILT`` may use it: a card whose programs a Debian
  package provides (x265, avifenc, ...) must run on CI.

A marked test is skipped automatically when its resource is missing, so it
needs no ``skipif`` of its own. A module skipped at collection (e.g. an
``importorskip``) is never allowed on CI: the session then exits non-zero.
"""
from __future__ import annotations

import functools
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytest_plugins = ["pytester"]  # test_ci_skips.py runs the policy on throwaway test files

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("BENCH_SHARED") or REPO.parent / "shared")
KODAK = SHARED / "data" / "kodak"
COCO_MINI = SHARED / "data" / "coco-mini"
SHARED_WEIGHTS = SHARED / "weights"

warnings.filterwarnings("ignore", category=UserWarning)


# ---------------------------------------------------------------------------- shared data
def _shared(path: Path, probe: str, what: str) -> Path:
    if not (path / probe).is_file():
        pytest.fail(f"{what} missing at {path}: CI and development machines have ../shared beside the checkout "
                    "(or set BENCH_SHARED=/path/to/shared)", pytrace=False)
    return path


@pytest.fixture(scope="session")
def kodak_dir() -> Path:
    return _shared(KODAK, "kodim01.png", "the shared Kodak images are")


@pytest.fixture(scope="session")
def coco_mini_dir() -> Path:
    return _shared(COCO_MINI, "captions_val2017_subset.json", "the shared coco-mini data is")


@pytest.fixture(scope="session")
def shared_weights() -> Path:
    """Weight files kept in ../shared/weights (with SHA256SUMS) for tests that need real calibrations."""
    return _shared(SHARED_WEIGHTS, "SHA256SUMS", "the shared weight files are")


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


def kodak_means(kodak_dir, enc, dec, point, **rates) -> dict[str, float]:
    """Code every Kodak image at ``point`` with ``enc``, decode with ``dec`` (a separate instance)
    and return the means over the images: ``bpp`` (8 x stored bytes / pixels), ``psnr`` (dB, RGB,
    8 bit), one entry per ``rates`` callable ``(data, dec) -> bits`` (e.g. what a publisher counts,
    divided by pixels too) and ``n`` (images coded)."""
    from bench.data.images import read_rgb

    sums: dict[str, list[float]] = {"bpp": [], "psnr": [], **{name: [] for name in rates}}
    for path in sorted(Path(kodak_dir).glob("kodim*.png")):
        rgb = read_rgb(path)[0]
        data = enc.encode(rgb, point)
        recon = dec.decode(data)
        pixels = rgb.shape[0] * rgb.shape[1]
        sums["bpp"].append(8 * len(data) / pixels)
        for name, bits in rates.items():
            sums[name].append(bits(data, dec) / pixels)
        mse = np.mean((rgb.astype(np.float64) - recon.astype(np.float64)) ** 2)
        sums["psnr"].append(10 * np.log10(255 ** 2 / mse))
    return {"n": len(sums["psnr"]), **{name: float(np.mean(v)) for name, v in sums.items()}}


def assert_light_imports(tmp_path, adapter: str, points: tuple) -> None:
    """Listing codecs and weights and computing fingerprints and provenance of ``adapter``
    ("module:Class") imports neither torch nor compressai (checked in a fresh process)."""
    import subprocess

    module, cls = adapter.split(":")
    code = ("import sys; from bench import registry, weights; registry.entries('codec'); weights.table(); "
            f"from {module} import {cls} as C; C().fingerprint({points[0]!r}); "
            f"C(init='random').fingerprint({points[-1]!r}); C().provenance(); "
            "print([m for m in ('torch', 'compressai') if m in sys.modules])")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "TORCH_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]", out.stderr


# ---------------------------------------------------------------------------- CI skip policy
ALLOWED_SKIP_MARKERS = ("needs_gpu", "needs_weights", "needs_mmcv", "needs_user_build")
USER_BUILT = {"vtm": "VTM (EncoderApp/DecoderApp)", "bpg": "libbpg (bpgenc/bpgdec)"}  # adapter -> what to build


def on_ci() -> bool:
    return os.environ.get("BENCH_CI") == "1"


@functools.lru_cache(maxsize=None)
def _missing(name: str, args: tuple = ()) -> str | None:
    """Why the resource an allowed-skip marker names is missing here; None when it is present."""
    if name == "needs_gpu":
        try:
            import torch
        except ImportError:
            return "no CUDA device (torch is not installed)"
        return None if torch.cuda.is_available() else "no CUDA device"
    if name == "needs_mmcv":
        try:
            import mmcv.ops  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - any failure means: no usable mmcv.ops
            return (f"mmcv.ops does not import ({type(exc).__name__}): mmcv 2.1 must be built from source "
                    "with -std=c++20 (~22 min on 2 cores)")
        return None
    if name == "needs_weights":
        if not args:  # the test checks its own files; its skip is allowed
            return "needs pretrained weight files that cannot be downloaded here"
        from bench import weights

        absent = [wid for wid in args if not weights.path(wid).is_file()]
        if absent:
            return (f"pretrained weight files {', '.join(absent)} are not here and cannot be downloaded here "
                    f"(bench weights fetch {' '.join(absent)})")
        return None
    if name == "needs_user_build":
        from bench import cards, registry

        for card_name in args:
            card = cards.get("codec", card_name)
            if card.target not in USER_BUILT:
                raise ValueError(f"needs_user_build({card_name!r}): adapter {card.target} runs packaged programs; "
                                 "its tests must run (install them in .ci/run)")
            ok, why = registry.get("codec", card.target).available(**(card.get("params") or {}))
            if not ok:
                return f"{USER_BUILT[card.target]} is not packaged anywhere and not built here: {why}"
        return None
    raise ValueError(f"not an allowed-skip marker: {name}")


def _allowed_skip(item) -> tuple[str | None, str]:
    """(marker name, why its resource is missing) if ``item`` may skip on CI, else (None, explanation)."""
    present = []
    for name in ALLOWED_SKIP_MARKERS:
        for marker in item.iter_markers(name):
            why = _missing(name, tuple(marker.args))
            if why:
                return name, why
            present.append(name)
    if present:
        return None, f"marked {', '.join(present)}, but that is present here, so the test must run"
    return None, f"no allowed-skip marker ({', '.join(ALLOWED_SKIP_MARKERS)})"


@dataclass
class Skip:
    nodeid: str
    reason: str
    marker: str | None  # the allowed-skip marker that permits it, None if it is not allowed on CI
    note: str = ""


SKIPS = pytest.StashKey[list]()


def _record(config, skip: Skip) -> None:
    config.stash.setdefault(SKIPS, []).append(skip)


def _skip_reason(rep) -> str:
    longrepr = rep.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_report_header(config):
    state = "on: a skip without an allowed marker fails" if on_ci() else "off (set BENCH_CI=1 to enforce)"
    return f"bench CI skip policy {state}; allowed: {', '.join(ALLOWED_SKIP_MARKERS)}; shared data: {SHARED}"


def pytest_collection_modifyitems(config, items):
    """A test marked with an allowed-skip marker is skipped (reported at its own line) while the resource is missing."""
    for item in items:
        for name in ALLOWED_SKIP_MARKERS:
            for marker in item.iter_markers(name):
                if name == "needs_weights" and not marker.args:
                    continue
                why = _missing(name, tuple(marker.args))
                if why:
                    item.add_marker(pytest.mark.skip(reason=f"{name}: {why}"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    if rep.skipped and not hasattr(rep, "wasxfail"):
        reason = _skip_reason(rep)
        marker, note = _allowed_skip(item)
        _record(item.config, Skip(rep.nodeid, reason, marker, "" if marker else note))
        if marker is None and on_ci():
            rep.outcome = "failed"
            rep.longrepr = (f"skipped on CI (BENCH_CI=1), which is not allowed: {note}.\n"
                            f"skip reason: {reason}\n"
                            "Make the test run on CI (data in ../shared, programs .ci/run installs), or mark it "
                            "needs_gpu / needs_weights / needs_mmcv if that is why it cannot.")
    return rep


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    rep = yield
    if rep.skipped:
        _record(collector.config, Skip(rep.nodeid, _skip_reason(rep), None,
                                       "a whole module skipped at collection"))
    return rep


def pytest_sessionfinish(session, exitstatus):
    if on_ci() and exitstatus == pytest.ExitCode.OK:
        if any(s.marker is None for s in session.config.stash.get(SKIPS, [])):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skips = config.stash.get(SKIPS, [])
    allowed = [s for s in skips if s.marker]
    refused = [s for s in skips if not s.marker]
    tr = terminalreporter
    if allowed:
        tr.section(f"skipped (allowed on CI): {len(allowed)}", sep="-", green=True)
        for s in allowed:
            tr.write_line(f"{s.nodeid}  [{s.marker}]  {s.reason}")
    if refused:
        title = "skipped (NOT allowed on CI) → failure" if on_ci() else \
            "skipped (NOT allowed on CI: would fail with BENCH_CI=1)"
        tr.section(f"{title}: {len(refused)}", sep="-", red=True)
        for s in refused:
            tr.write_line(f"{s.nodeid}  [{s.note}]  {s.reason}")
