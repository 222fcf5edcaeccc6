"""The one bitstream container of every learned codec: a tiny header, named sections, a CRC.

A learned adapter's stored bytes are ``Container(...).pack()``; its decoder reads
them back with :func:`unpack`, which either returns every field or raises
:class:`ContainerError` naming what is wrong (never IndexError, struct.error,
UnicodeDecodeError, ...). Layout, format version 1 (``varint`` = unsigned LEB128,
7 bits a byte)::

    0xBC                       magic (1 byte)
    0x01                       format version (1 byte)
    varint n, n bytes          codec id, ASCII (short: "zoo:bh", "perco")
    point                      the rate point, tagged (below)
    varint n, n varints        dims: original height, width, then whatever the
                               decoder needs (latent shapes, ...)
    model                      weights identity, tagged (below)
    varint n                   number of sections, then per section:
      varint 2*len(name)+side    side = 1 for side information, 0 for payload
      name (ASCII)
      varint size, size bytes    the section's data
    4 bytes                    CRC-32 (zlib) of every byte before it, big-endian

Tagged values put a 2-bit tag in the low bits of one varint, so small values
cost one byte:

* point: ``4*n`` an int n >= 0; ``4*n+1`` the int -n; ``4*len+2`` a float as its
  shortest ``repr`` (ASCII); ``4*len+3`` a string (UTF-8).
* model: ``0`` = "random" (seeded random weights, ``--init random``);
  ``4*n+1`` n bytes shown as lower-case hex (a sha256 prefix: "6d87be32" costs
  5 bytes); ``4*n+2`` n bytes of UTF-8 text (any other identity, "" included).

Typical overhead: 2 (magic, version) + 1 + len(codec id) + 1 (point) + 1 + 2 per
dim >= 128 + 5 (sha256 prefix; 1 under random init) + 1 + (2 + len(name) + 1..2)
per section + 4 (CRC). A CompressAI hyperprior image (id "zoo:bh", 4 dims,
sections "y" and "z"): 35 bytes at 768x512 (0.0007 bpp); a diffusion codec with
id "perco", 512x512, one payload section: 23 bytes (0.0007 bpp).

:func:`bits_breakdown` splits ``8*len(data)`` into ``payload`` (data of payload
sections), ``side`` (data of side sections) and ``container`` (everything else:
header, section names and sizes, CRC); the three always sum to ``8*len(data)``.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Union

from bench.codecs.base import CodecError

MAGIC = 0xBC
FORMAT_VERSION = 1
CRC_BYTES = 4
MAX_VARINT_BYTES = 10  # enough for 64-bit values; longer runs of continuation bits are corruption
MAX_ID_LEN = 64
MIN_BYTES = 12  # magic, version, 2-byte codec id, point, no dims, model, no sections, CRC

Point = Union[int, float, str]


class ContainerError(CodecError):
    """Bytes that are not a valid container: empty, wrong magic, truncated, corrupted,
    or written by another codec or model. The message says which and where."""


@dataclass(frozen=True)
class Section:
    """One named block of a container: ``side=False`` payload, ``side=True`` side information."""

    name: str
    data: bytes
    side: bool = False

    @property
    def kind(self) -> str:
        return "side" if self.side else "payload"


@dataclass(frozen=True)
class Container:
    """Everything a learned decoder reads from the stored bytes (see module docstring)."""

    codec: str
    point: Point
    dims: tuple[int, ...]  # (original H, original W, *decoder dims)
    model: str  # weights identity: "random", a sha256 prefix (hex), or other short text
    sections: tuple[Section, ...] = field(default_factory=tuple)

    def pack(self) -> bytes:
        """The container's bytes; ValueError for a field that cannot be written."""
        _check_id("codec id", self.codec)
        out = bytearray((MAGIC, FORMAT_VERSION))
        _put_text(out, self.codec.encode("ascii"))
        _put_point(out, self.point)
        out += _varint(len(self.dims))
        for d in self.dims:
            if isinstance(d, bool) or not isinstance(d, int) or d < 0:
                raise ValueError(f"dims must be non-negative ints, got {self.dims!r}")
            out += _varint(d)
        _put_model(out, self.model)
        names = [s.name for s in self.sections]
        if len(set(names)) != len(names):
            raise ValueError(f"section names must be unique, got {names}")
        out += _varint(len(self.sections))
        for s in self.sections:
            _check_id("section name", s.name)
            out += _varint(2 * len(s.name) + int(bool(s.side)))
            out += s.name.encode("ascii")
            out += _varint(len(s.data))
            out += bytes(s.data)
        out += zlib.crc32(out).to_bytes(CRC_BYTES, "big")
        return bytes(out)

    def section(self, name: str) -> bytes:
        """The data of section ``name``; ContainerError naming the sections present if absent."""
        for s in self.sections:
            if s.name == name:
                return s.data
        raise ContainerError(f"container of codec {self.codec!r} has no section {name!r} "
                             f"(sections: {', '.join(repr(s.name) for s in self.sections) or 'none'})")

    def bits(self) -> dict[str, int]:
        """Payload and side bits of this container (data of sections only)."""
        return {kind: 8 * sum(len(s.data) for s in self.sections if s.kind == kind) for kind in ("payload", "side")}


def pack(codec: str, point: Point, dims: Iterable[int], model: str, sections: Iterable[Section]) -> bytes:
    """Shorthand for ``Container(...).pack()``."""
    return Container(codec, point, tuple(dims), model, tuple(sections)).pack()


def unpack(data: bytes, codec: str | None = None) -> Container:
    """Parse ``data``; with ``codec`` the bytes must have been written by that codec id.
    Raises :class:`ContainerError` for anything invalid."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ContainerError(f"a container is bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise ContainerError("empty bitstream: 0 bytes (expected a bench container)")
    if data[0] != MAGIC:
        raise ContainerError(f"not a bench container: first byte is 0x{data[0]:02X}, expected magic 0x{MAGIC:02X}")
    if len(data) < MIN_BYTES:
        raise ContainerError(f"truncated: {len(data)} bytes, but the smallest container has {MIN_BYTES}")
    r = _Reader(data)
    r.take(1, "magic", declared=False)
    version = r.take(1, "format version", declared=False)[0]
    if version != FORMAT_VERSION:
        r.fail(f"unsupported container format version {version} (this bench reads version {FORMAT_VERSION})")
    codec_id = _ascii(r, r.text("codec id"), "codec id")
    point = _get_point(r)
    dims = tuple(r.varint(f"dim {i}") for i in range(r.count("number of dims")))
    model = _get_model(r)
    sections = []
    for i in range(r.count("number of sections")):
        head = r.varint(f"section {i} name length")
        name = _ascii(r, r.take(head >> 1, f"section {i} name"), f"section {i} name")
        size = r.varint(f"size of section {name!r}")
        sections.append(Section(name, r.take(size, f"section {name!r}"), bool(head & 1)))
    if r.end - r.pos > 0:
        r.fail(f"{r.end - r.pos} unexpected byte(s) after the last section")
    stored = data[r.end:]
    if len(stored) < CRC_BYTES:
        r.fail(f"truncated: the CRC-32 needs {CRC_BYTES} bytes, {len(stored)} remain")
    computed = zlib.crc32(data[:r.end])
    if int.from_bytes(stored, "big") != computed:
        raise ContainerError(f"corrupted: CRC-32 mismatch (stored {stored.hex()}, computed {computed:08x}) over "
                             f"{r.end} bytes of a {codec_id!r} container: the stored bytes were altered")
    if len({s.name for s in sections}) != len(sections):
        raise ContainerError(f"corrupted: duplicate section names {[s.name for s in sections]}")
    if codec is not None and codec_id != codec:
        raise ContainerError(f"these bytes were written by codec {codec_id!r}, not by {codec!r}")
    return Container(codec_id, point, dims, model, tuple(sections))


def bits_breakdown(data: bytes) -> dict[str, int]:
    """``{"payload", "side", "container"}`` bits of a valid container, summing to ``8*len(data)``."""
    bits = unpack(data).bits()
    bits["container"] = 8 * len(data) - bits["payload"] - bits["side"]
    return bits


# ---------------------------------------------------------------------------- writing
def _varint(n: int) -> bytes:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0 or n.bit_length() > 7 * MAX_VARINT_BYTES:
        raise ValueError(f"cannot write {n!r} as a varint")
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _check_id(what: str, s: Any) -> None:
    if not isinstance(s, str) or not 0 < len(s) <= MAX_ID_LEN or not s.isascii() or not s.isprintable():
        raise ValueError(f"{what} must be 1..{MAX_ID_LEN} printable ASCII characters, got {s!r}")


def _put_text(out: bytearray, raw: bytes) -> None:
    out += _varint(len(raw))
    out += raw


def _put_point(out: bytearray, point: Point) -> None:
    if isinstance(point, bool):
        raise ValueError(f"rate point must be an int, float or str, got {point!r}")
    if isinstance(point, int):
        out += _varint(4 * point if point >= 0 else 4 * -point + 1)
    elif isinstance(point, float):
        if math.isnan(point):
            raise ValueError("rate point must not be NaN")
        raw = repr(point).encode("ascii")
        out += _varint(4 * len(raw) + 2) + raw
    elif isinstance(point, str):
        raw = point.encode("utf-8")
        out += _varint(4 * len(raw) + 3) + raw
    else:
        raise ValueError(f"rate point must be an int, float or str, got {type(point).__name__}")


def _put_model(out: bytearray, model: str) -> None:
    if not isinstance(model, str):
        raise ValueError(f"model identity must be a str, got {model!r}")
    if model == "random":
        out += _varint(0)
    elif model and len(model) % 2 == 0 and all(c in "0123456789abcdef" for c in model):
        raw = bytes.fromhex(model)
        out += _varint(4 * len(raw) + 1) + raw
    else:
        raw = model.encode("utf-8")
        out += _varint(4 * len(raw) + 2) + raw


# ---------------------------------------------------------------------------- reading
class _Reader:
    """Bounds-checked reads of the header and sections (everything but the trailing CRC)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.end = max(0, len(data) - CRC_BYTES)

    def fail(self, message: str) -> None:
        if len(self.data) >= CRC_BYTES and zlib.crc32(self.data[:-CRC_BYTES]) != int.from_bytes(
                self.data[-CRC_BYTES:], "big"):
            message += " (and the CRC-32 does not match: the bytes are truncated or corrupted)"
        raise ContainerError(message + f" [at byte {self.pos} of {len(self.data)}]")

    def take(self, n: int, what: str, declared: bool = True) -> bytes:
        """``n`` bytes of ``what``; ``declared``: ``n`` was read from the header (a length field)."""
        left = self.end - self.pos
        if n > left:
            said = f"header says {what} has" if declared else f"{what} needs"
            self.fail(f"truncated: {said} {n} bytes, {max(left, 0)} remain")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def varint(self, what: str) -> int:
        n = shift = 0
        for i in range(MAX_VARINT_BYTES):
            if self.pos >= self.end:
                self.fail(f"truncated: the bytes end inside {what}")
            b = self.data[self.pos]
            self.pos += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return n
        self.fail(f"corrupted: {what} is not a valid varint (more than {MAX_VARINT_BYTES} bytes)")
        return 0  # unreachable

    def count(self, what: str) -> int:
        """A count of items that each take at least one byte: cannot exceed what remains."""
        n = self.varint(what)
        if n > self.end - self.pos:
            self.fail(f"corrupted: {what} is {n}, but only {self.end - self.pos} bytes remain")
        return n

    def text(self, what: str) -> bytes:
        return self.take(self.varint(f"length of {what}"), what)


def _ascii(r: _Reader, raw: bytes, what: str) -> str:
    try:
        s = raw.decode("ascii")
    except UnicodeDecodeError:
        s = ""
    if not s or not s.isprintable():
        r.fail(f"corrupted: {what} {raw[:MAX_ID_LEN]!r} is not printable ASCII")
    return s


def _utf8(r: _Reader, raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        r.fail(f"corrupted: {what} {raw[:MAX_ID_LEN]!r} is not UTF-8")
        return ""  # unreachable


def _get_point(r: _Reader) -> Point:
    head = r.varint("rate point")
    tag, n = head & 3, head >> 2
    if tag == 0:
        return n
    if tag == 1:
        return -n
    raw = r.take(n, "rate point")
    if tag == 3:
        return _utf8(r, raw, "rate point")
    try:
        value = float(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        r.fail(f"corrupted: rate point {raw!r} is not a number")
    return value


def _get_model(r: _Reader) -> str:
    head = r.varint("model identity")
    tag, n = head & 3, head >> 2
    if head == 0:
        return "random"
    if tag == 1:
        return r.take(n, "model identity").hex()
    if tag == 2:
        return _utf8(r, r.take(n, "model identity"), "model identity")
    r.fail(f"corrupted: model identity tag {head} is not valid")
    return ""  # unreachable
