"""The isolated Python environment that runs TFC's HiFiC models (TensorFlow 2.14).

Where: ``$BENCH_HIFIC_ENV``, else ``$XDG_CACHE_HOME/bench/envs/hific-tf2.14``
(default ``~/.cache/bench/envs/hific-tf2.14``). What: a venv with exactly the
packages of ``requirements.lock`` (installed with ``--no-deps --only-binary :all:``,
then ``pip check``), made from a CPython 3.9-3.11 (TensorFlow 2.14 has wheels for no
other): ``$BENCH_HIFIC_PYTHON``, else the running interpreter if its version fits,
else ``python3.11``/``python3.10``/``python3.9`` on PATH.

Complete = the marker ``bench-env.json`` exists, names the sha256 of the current
lock, and the env's python is there. The marker is written last, after the env's
python has imported TensorFlow and tensorflow-compression and reported their
versions; the venv is built beside its final place and renamed into it, so a killed
setup leaves no half-made env where bench looks. :func:`ensure_env` reuses a complete
env and otherwise (re)creates it. Shell-free entry (CI)::

    python -m bench.codecs.hific.env [--force] [--python /usr/bin/python3.11]
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
LOCK = HERE / "requirements.lock"
RUNNER = HERE / "runner.py"
ENV_NAME = "hific-tf2.14"
MARKER = "bench-env.json"
PYTHONS = ((3, 9), (3, 10), (3, 11))
SETUP_COMMAND = "python -m bench.codecs.hific.env"  # the CLI wires `bench codecs setup hific` to ensure_env()


class EnvError(RuntimeError):
    """The env cannot be made or is not usable; the message says what to do."""


def lock_sha256() -> str:
    return hashlib.sha256(LOCK.read_bytes()).hexdigest()


def env_dir() -> Path:
    if os.environ.get("BENCH_HIFIC_ENV"):
        return Path(os.path.expanduser(os.environ["BENCH_HIFIC_ENV"]))
    cache = Path(os.path.expanduser(os.environ.get("XDG_CACHE_HOME") or "~/.cache"))
    return cache / "bench" / "envs" / ENV_NAME


def env_python(root: Path | None = None) -> Path:
    return (root or env_dir()) / "bin" / "python"


def marker(root: Path | None = None) -> dict | None:
    """The marker of a complete env made from the current lock, else None."""
    root = root or env_dir()
    try:
        info = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("lock_sha256") != lock_sha256() or not env_python(root).is_file():
        return None
    return info


def state(root: Path | None = None) -> tuple[dict | None, str]:
    """(marker, "") for a complete env; (None, why not and the command that makes it)."""
    root = root or env_dir()
    info = marker(root)
    if info is not None:
        return info, ""
    if not root.exists():
        why = f"the HiFiC TensorFlow environment is not set up (expected at {root})"
    elif not (root / MARKER).is_file():
        why = f"the HiFiC TensorFlow environment at {root} is incomplete (no {MARKER})"
    else:
        why = f"the HiFiC TensorFlow environment at {root} was made from another requirements.lock"
    return None, (f"{why}. Create it with `{SETUP_COMMAND}` (one-time, ~1 min, ~1.9 GB, needs PyPI), "
                  "or point BENCH_HIFIC_ENV at one")


def find_base_python(explicit: str | None = None) -> str:
    """A CPython 3.9-3.11 to make the venv from (see module docstring)."""
    given = explicit or os.environ.get("BENCH_HIFIC_PYTHON")
    if given:
        candidates = [given]
    elif sys.version_info[:2] in PYTHONS:
        candidates = [getattr(sys, "_base_executable", None) or sys.executable]
    else:
        candidates = [shutil.which(f"python{a}.{b}") for a, b in reversed(PYTHONS)]
    for c in candidates:
        if c and _python_version(c) in PYTHONS:
            return c
    raise EnvError("TensorFlow 2.14 needs CPython 3.9, 3.10 or 3.11 and none was found"
                   f"{f' ({given} is not one)' if given else ''}; install one and pass "
                   "--python /path/to/python3.11 (or set BENCH_HIFIC_PYTHON)")


def _python_version(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True,
                             text=True, timeout=60, check=True).stdout.split()
        return int(out[0]), int(out[1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def _run(cmd: list[str], what: str, log: Callable[[str], None]) -> str:
    log(f"$ {' '.join(cmd)}")
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise EnvError(f"{what} failed (exit {proc.returncode}):\n{tail}\ncommand: {' '.join(cmd)}")
    return proc.stdout


def ensure_env(force: bool = False, python: str | None = None, root: Path | None = None,
               log: Callable[[str], None] = print) -> dict:
    """Make (or reuse) the HiFiC env; returns its marker: lock sha256, package versions,
    base python, seconds taken and size in bytes. EnvError says what failed."""
    root = Path(root) if root else env_dir()
    if not force:
        info = marker(root)
        if info is not None:
            log(f"HiFiC env at {root} is complete (lock {info['lock_sha256'][:12]}, "
                f"tensorflow {info['tensorflow']}, tensorflow-compression {info['tensorflow_compression']})")
            return info
    base = find_base_python(python)
    t0 = time.monotonic()
    root.parent.mkdir(parents=True, exist_ok=True)
    build = root.parent / f".{root.name}.building-{os.getpid()}"
    shutil.rmtree(build, ignore_errors=True)
    try:
        _run([base, "-m", "venv", str(build)], "creating the venv", log)
        py = str(env_python(build))
        _run([py, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--no-deps",
              "--only-binary", ":all:", "-r", str(LOCK)], "installing requirements.lock", log)
        _run([py, "-m", "pip", "check"], "pip check", log)
        versions = json.loads(_run([py, str(RUNNER), "version"], "importing TensorFlow in the new env", log))
        probe = _run([py, "-c", "import os; os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'; "
                      "import tensorflow_compression as tfc; print(tfc.PackedTensors.__name__)"],
                     "importing tensorflow_compression in the new env", log)
        if "PackedTensors" not in probe:
            raise EnvError(f"tensorflow_compression in the new env has no PackedTensors: {probe!r}")
        info = {"lock_sha256": lock_sha256(), **versions, "base_python": base,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "setup_s": round(time.monotonic() - t0, 1), "size_bytes": _size(build)}
        (build / MARKER).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        if root.exists():
            shutil.rmtree(root)
        os.replace(build, root)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    log(f"HiFiC env ready at {root} in {info['setup_s']:g} s, {info['size_bytes'] / 1e9:.2f} GB")
    return info


def _size(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.codecs.hific.env",
                                     description="Create (or reuse) the isolated TensorFlow env of bench's HiFiC codec.")
    parser.add_argument("--force", action="store_true", help="recreate it even if complete")
    parser.add_argument("--python", help="CPython 3.9-3.11 to make the venv from")
    args = parser.parse_args(argv)
    try:
        ensure_env(force=args.force, python=args.python)
    except EnvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
