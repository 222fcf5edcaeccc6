"""External programs: the base class for codecs that run encoder/decoder programs as
subprocesses, and the adapters built on it (libavif's avifenc/avifdec and libjxl's
cjxl/djxl from Debian packages; VTM and BPG join them).

A subclass names its programs in ``programs`` (role -> default executable; other
names the same program goes by in ``program_alternatives``) and implements
``encode_args``/``decode_args``. The executable for a role is found, in order,
from the card/constructor parameter ``<role>`` (a path), the environment variable
``BENCH_<EXECUTABLE>`` (e.g. ``BENCH_AVIFENC``; ``bench run --program
avifenc=PATH`` sets it for one run), then PATH (each name in turn).
Each program's path, version string and sha256 go into provenance.

Files are exchanged through a private temporary directory (removed on success
and on failure); the encoder's output file is the stored bitstream, and the
decoder sees only that file.

Each program runs in its own session (process group). After ``timeout_s``
seconds (class default, or the card parameter ``timeout_s``) the whole group is
killed, so children a program spawned cannot outlive it; the group is also
killed when the program exits. A program that times out, dies of a signal,
exits non-zero, writes nothing or writes an unreadable file raises a
``CodecError`` naming the program, the exit status or signal, the last stderr
lines and the command line; the runner records it as a failed unit and goes on.
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
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


def set_program_paths(items: list[str]) -> dict[str, str]:
    """Apply ``--program NAME=PATH`` options: set ``BENCH_<NAME>`` for this process and the
    workers it starts. ValueError for a malformed item or a path that is not an executable."""
    applied = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--program takes NAME=PATH (e.g. EncoderAppStatic=/opt/vtm/bin/EncoderAppStatic), "
                             f"got {item!r}")
        if not (Path(path).is_file() and os.access(path, os.X_OK)):
            raise ValueError(f"--program {name}: {path} is not an executable file")
        os.environ[env_var_for(name)] = applied[name] = str(Path(path).resolve())
    return applied


class SubprocessCodec(Codec):
    """Codec adapter around external programs (see module docstring)."""

    programs: ClassVar[dict[str, str]] = {}  # role -> default executable name
    program_alternatives: ClassVar[dict[str, tuple[str, ...]]] = {}  # role -> other names tried on PATH
    version_args: ClassVar[tuple[str, ...] | dict[str, tuple[str, ...]]] = ("--version",)  # or role -> args
    install_hint: ClassVar[str] = ""
    input_suffix: ClassVar[str] = ".png"
    bitstream_suffix: ClassVar[str] = ".bin"
    output_suffix: ClassVar[str] = ".png"
    timeout_s: ClassVar[float] = 600.0
    # text in the decoder's stdout/stderr that means it met a damaged stream even though it exited 0
    decoder_damage_markers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, device: str = "cpu", **params: Any) -> None:
        paths = {role: params.pop(role, None) for role in self.programs}
        timeout = params.pop("timeout_s", None)
        super().__init__(device, **params)
        if timeout is not None:
            try:
                self.timeout_s = float(timeout)
            except (TypeError, ValueError):
                raise CodecError(f"{self.name}: timeout_s must be a number of seconds, got {timeout!r}") from None
            if not self.timeout_s > 0:
                raise CodecError(f"{self.name}: timeout_s must be > 0, got {timeout!r}")
        self.paths = {role: self.find(role, paths[role]) for role in self.programs}

    # -- locating programs ------------------------------------------------
    @classmethod
    def find(cls, role: str, explicit: str | None = None) -> str:
        exe = cls.programs[role]
        names = (exe, *cls.program_alternatives.get(role, ()))
        var = next((env_var_for(n) for n in names if os.environ.get(env_var_for(n))), env_var_for(exe))
        candidate = explicit or os.environ.get(var)
        if candidate:
            if Path(candidate).is_file() and os.access(candidate, os.X_OK):
                return str(Path(candidate).resolve())
            raise CodecError(f"{cls.name}: {role} program {candidate!r} (from {'card' if explicit else var}) "
                             "is not an executable file")
        found = next(filter(None, map(shutil.which, names)), None)
        if not found:
            raise CodecError(f"{cls.name}: program {exe!r} not found on PATH. {cls.install_hint} "
                             f"or set {var}=/path/to/{exe}".strip())
        return found

    @classmethod
    def available(cls, **params: Any) -> tuple[bool, str]:
        """Every program found (a path among ``params`` wins, as in the constructor)."""
        try:
            for role in cls.programs:
                cls.find(role, params.get(role))
        except CodecError as exc:
            return False, str(exc)
        return True, ""

    # -- running ------------------------------------------------------------
    def run(self, role: str, args: list[str], cwd: str) -> subprocess.CompletedProcess:
        """Run the ``role`` program in ``cwd`` in its own process group; CodecError on
        timeout (the whole group is killed), on a signal or on a non-zero exit."""
        cmd = [self.paths[role], *args]
        try:
            proc, timed_out = run_program(cmd, cwd, self.timeout_s)
        except OSError as exc:
            raise CodecError(f"{self.name}: cannot start {role} program: {exc}\ncommand: {shlex.join(cmd)}") from exc
        if timed_out:
            raise CodecError(self.failure(role, cmd, f"failed (timed out after {self.timeout_s:g}s; process group killed)",
                                          proc.stderr or proc.stdout) +
                             f"\nA slow but working program needs more time: raise the limit in the codec card, "
                             f"`params: {{timeout_s: {max(2 * self.timeout_s, 60):g}}}` (seconds; now {self.timeout_s:g})")
        if proc.returncode != 0:
            if proc.returncode < 0:
                try:
                    status = f"failed (killed by signal {signal.Signals(-proc.returncode).name})"
                except ValueError:
                    status = f"failed (killed by signal {-proc.returncode})"
            else:
                status = f"failed (exit {proc.returncode})"
            raise CodecError(self.failure(role, cmd, status, proc.stderr or proc.stdout))
        return proc

    def failure(self, role: str, cmd: list[str], status: str, output: bytes | None, lines: int = 10) -> str:
        """The message of a failed program: name, status, last output lines, command line."""
        text = (output or b"").decode(errors="replace").strip().splitlines()
        tail = "\n".join(text[-lines:])[-2000:]
        msg = f"{self.name}: {role} {status}, program {Path(cmd[0]).name}"
        if tail:
            msg += f"\nlast stderr lines:\n{tail}"
        elif output is not None:
            msg += " (no stderr output)"
        return msg + f"\ncommand: {shlex.join(cmd)}"

    def write_input(self, rgb: np.ndarray, path: Path) -> None:
        Image.fromarray(rgb, "RGB").save(path, compress_level=1)

    def read_output(self, path: Path, data: bytes) -> np.ndarray:
        """The decoder's output file -> uint8 (H, W, 3); ``data`` is the bitstream it decoded."""
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
            args = self.encode_args(str(src), str(dst), point)
            self.run("encoder", args, tmp)
            if not dst.is_file() or dst.stat().st_size == 0:
                raise CodecError(self.failure("encoder", [self.paths["encoder"], *args], "wrote "
                                              f"{'an empty' if dst.is_file() else 'no'} bitstream {dst.name} (exit 0)", None))
            return dst.read_bytes()

    def decode(self, data: bytes, seed: int = 0) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="bench-dec-") as tmp:
            src, dst = Path(tmp, "in" + self.bitstream_suffix), Path(tmp, "out" + self.output_suffix)
            src.write_bytes(data)
            args = self.decode_args(str(src), str(dst))
            proc = self.run("decoder", args, tmp)
            cmd = [self.paths["decoder"], *args]
            said = (proc.stdout or b"") + b"\n" + (proc.stderr or b"")
            if any(m.encode() in said for m in self.decoder_damage_markers):
                raise CodecError(self.failure("decoder", cmd, "reported a damaged bitstream (exit 0)", said))
            if not dst.is_file():
                raise CodecError(self.failure("decoder", cmd, f"wrote no image {dst.name} (exit 0)", None))
            try:
                return self.read_output(dst, data)
            except CodecError:
                raise
            except Exception as exc:  # garbage instead of an image
                what = (f"wrote an unreadable image {dst.name} ({dst.stat().st_size} bytes starting "
                        f"{dst.read_bytes()[:16]!r}; {type(exc).__name__}: {exc})")
                raise CodecError(self.failure("decoder", cmd, what, None)) from exc

    def provenance(self) -> dict[str, Any]:
        out = {}
        for role, path in self.paths.items():
            out[role] = {"path": path, "sha256": sha256_file_cached(path),
                         "version": program_version(path, self.version_args_for(role))}
        return out

    @classmethod
    def version_args_for(cls, role: str) -> tuple[str, ...]:
        """Arguments that make the ``role`` program print its version first."""
        args = cls.version_args
        return tuple(args[role] if isinstance(args, dict) else args)

    def fingerprint(self, point: Any = None) -> dict[str, Any]:
        """Each program's sha256 and version string (not its path: a moved, identical
        program gives the same results)."""
        return {role: {k: v for k, v in info.items() if k != "path"} for role, info in self.provenance().items()}


def run_program(cmd: list[str], cwd: str | None, timeout_s: float) -> tuple[subprocess.CompletedProcess, bool]:
    """Run ``cmd`` in a new session (its own process group) with stdout/stderr captured;
    returns (completed process, timed out). On timeout, on an exception (e.g.
    KeyboardInterrupt) and after a normal exit the whole group is killed, so no child
    the program spawned keeps running. OSError if it cannot be started."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_group(proc.pid)
        out, err = proc.communicate()
    except BaseException:
        kill_group(proc.pid)
        proc.wait()
        raise
    finally:
        kill_group(proc.pid)  # children left behind by a program that has exited
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), timed_out


def kill_group(pgid: int) -> None:
    """SIGKILL every process in group ``pgid`` (a program started with
    ``start_new_session=True`` leads its own group); a gone group is fine."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@lru_cache(maxsize=None)
def program_version(path: str, args: tuple[str, ...], timeout_s: float = 30.0) -> str:
    """First non-empty output line of ``path args`` (many tools print it on stderr);
    ``unknown (why)`` if it cannot be run or hangs (its process group is killed)."""
    try:
        proc, timed_out = run_program([path, *args], None, timeout_s)
    except OSError as exc:
        return f"unknown ({exc})"
    if timed_out:
        return f"unknown ({shlex.join([path, *args])} timed out after {timeout_s:g}s)"
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
