"""External programs: the base class for codecs that run encoder/decoder programs as
subprocesses, and the adapters built on it (libavif's avifenc/avifdec and libjxl's
cjxl/djxl from Debian packages; VTM and BPG join them).

A subclass names its programs in ``programs`` (role -> default executable) and
implements ``encode_args``/``decode_args``. The executable for a role is found,
in order, from the card/constructor parameter ``<role>`` (a path), the
environment variable ``BENCH_<EXECUTABLE>`` (e.g. ``BENCH_AVIFENC``), then PATH.
Each program's path, version string and sha256 go into provenance.

Files are exchanged through a private temporary directory; the encoder's output
file is the stored bitstream, and the decoder sees only that file.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from abc import abstractmethod
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from bench.codecs.base import Codec, CodecError, check_rgb
from bench.hashing import sha256_file_cached
from bench.registry import register


def env_var_for(executable: str) -> str:
    return "BENCH_" + "".join(c if c.isalnum() else "_" for c in executable).upper()

class SubprocessCodec(Codec):
    """Codec adapter around external programs (see module docstring)."""

    programs: ClassVar[dict[str, str]] = {}  # role -> default executable name
    version_args: ClassVar[tuple[str, ...]] = ("--version",)
    install_hint: ClassVar[str] = ""
    input_suffix: ClassVar[str] = ".png"
    bitstream_suffix: ClassVar[str] = ".bin"
    output_suffix: ClassVar[str] = ".png"
    timeout_s: ClassVar[float] = 600.0

    def __init__(self, device: str = "cpu", **params: Any) -> None:
        paths = {role: params.pop(role, None) for role in self.programs}
        super().__init__(device, **params)
        self.paths = {role: self.find(role, paths[role]) for role in self.programs}

    # -- locating programs ------------------------------------------------
    @classmethod
    def find(cls, role: str, explicit: str | None = None) -> str:
        exe = cls.programs[role]
        var = env_var_for(exe)
        candidate = explicit or os.environ.get(var)
        if candidate:
            if Path(candidate).is_file() and os.access(candidate, os.X_OK):
                return str(Path(candidate).resolve())
            raise CodecError(f"{cls.name}: {role} program {candidate!r} (from {'card' if explicit else var}) "
                             "is not an executable file")
        found = shutil.which(exe)
        if not found:
            raise CodecError(f"{cls.name}: program {exe!r} not found on PATH. {cls.install_hint} "
                             f"or set {var}=/path/to/{exe}".strip())
        return found

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            for role in cls.programs:
                cls.find(role)
        except CodecError as exc:
            return False, str(exc)
        return True, ""

    # -- running ------------------------------------------------------------
    def run(self, role: str, args: list[str], cwd: str) -> subprocess.CompletedProcess:
        cmd = [self.paths[role], *args]
        try:
            proc = subprocess.run(cmd, cwd=cwd, capture_output=True, timeout=self.timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise CodecError(f"{self.name}: {role} timed out after {self.timeout_s:.0f}s: {' '.join(cmd)}") from exc
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).decode(errors="replace").strip()[-800:]
            raise CodecError(f"{self.name}: {role} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
        return proc

    def write_input(self, rgb: np.ndarray, path: Path) -> None:
        Image.fromarray(rgb, "RGB").save(path, compress_level=1)

    def read_output(self, path: Path) -> np.ndarray:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))

    @abstractmethod
    def encode_args(self, src: str, dst: str, point: Any) -> list[str]:
        """Encoder arguments: read the image ``src``, write the bitstream ``dst`` at ``point``."""

    @abstractmethod
    def decode_args(self, src: str, dst: str) -> list[str]:
        """Decoder arguments: read the bitstream ``src``, write the image ``dst``."""

    def encode(self, rgb: np.ndarray, point: Any, seed: int = 0) -> bytes:
        check_rgb(rgb)
        with tempfile.TemporaryDirectory(prefix="bench-enc-") as tmp:
            src, dst = Path(tmp, "in" + self.input_suffix), Path(tmp, "out" + self.bitstream_suffix)
            self.write_input(rgb, src)
            self.run("encoder", self.encode_args(str(src), str(dst), point), tmp)
            if not dst.is_file():
                raise CodecError(f"{self.name}: encoder wrote no bitstream at {dst.name}")
            return dst.read_bytes()

    def decode(self, data: bytes, seed: int = 0) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="bench-dec-") as tmp:
            src, dst = Path(tmp, "in" + self.bitstream_suffix), Path(tmp, "out" + self.output_suffix)
            src.write_bytes(data)
            self.run("decoder", self.decode_args(str(src), str(dst)), tmp)
            if not dst.is_file():
                raise CodecError(f"{self.name}: decoder wrote no image at {dst.name}")
            return self.read_output(dst)

    def provenance(self) -> dict[str, Any]:
        out = {}
        for role, path in self.paths.items():
            out[role] = {"path": path, "sha256": sha256_file_cached(path), "version": program_version(path, self.version_args)}
        return out

    def fingerprint(self, point: Any = None) -> dict[str, Any]:
        """Each program's sha256 and version string (not its path: a moved, identical
        program gives the same results)."""
        return {role: {k: v for k, v in info.items() if k != "path"} for role, info in self.provenance().items()}


@lru_cache(maxsize=None)
def program_version(path: str, args: tuple[str, ...]) -> str:
    """First non-empty output line of ``path args`` (many tools print it on stderr)."""
    try:
        proc = subprocess.run([path, *args], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    text = (proc.stdout or b"").decode(errors="replace") + (proc.stderr or b"").decode(errors="replace")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else "unknown"



@register("codec", "avifenc")
class AvifEnc(SubprocessCodec):
    """AVIF through avifenc/avifdec. Rate point = AV1 quantizer 0 (best) .. 63
    (``--min Q --max Q``; avifenc 0.11 has no ``-q``). ``yuv``: "444" or "420"."""

    name = "avifenc"
    point_name = "quantizer"
    higher_point_is_better = False
    default_points = (50, 40, 32, 24, 16)
    programs = {"encoder": "avifenc", "decoder": "avifdec"}
    install_hint = "Install it with `apt-get install libavif-bin`"
    bitstream_suffix = ".avif"

    def __init__(self, device="cpu", yuv: str = "444", speed: int = 6, **params):
        super().__init__(device, yuv=yuv, speed=speed, **params)
        if str(yuv) not in ("444", "422", "420"):
            raise CodecError(f"avifenc: yuv must be 444, 422 or 420, got {yuv!r}")
        self.yuv, self.speed = str(yuv), int(speed)

    def encode_args(self, src, dst, point):
        q = int(point)
        if q != point or not 0 <= q <= 63:
            raise CodecError(f"avifenc: rate point is an integer quantizer in [0, 63], got {point!r}")
        return ["--min", str(q), "--max", str(q), "-y", self.yuv, "-s", str(self.speed),
                "-d", "8", "--jobs", "1", src, dst]

    def decode_args(self, src, dst):
        return ["--jobs", "1", src, dst]


@register("codec", "cjxl")
class CJXL(SubprocessCodec):
    """JPEG XL through cjxl/djxl. Rate point = Butteraugli distance (``-d``)."""

    name = "cjxl"
    point_name = "distance"
    higher_point_is_better = False
    default_points = (0.5, 1.0, 2.0, 4.0, 8.0)
    programs = {"encoder": "cjxl", "decoder": "djxl"}
    install_hint = "Install it with `apt-get install libjxl-tools`"
    bitstream_suffix = ".jxl"

    def __init__(self, device="cpu", effort: int = 7, **params):
        super().__init__(device, effort=effort, **params)
        self.effort = int(effort)

    def encode_args(self, src, dst, point):
        d = float(point)
        if not 0.0 < d <= 25.0:
            raise CodecError(f"cjxl: rate point is a distance in (0, 25], got {point!r}")
        return [src, dst, "-d", f"{d:g}", "-e", str(self.effort), "--quiet"]

    def decode_args(self, src, dst):
        return [src, dst, "--quiet"]
