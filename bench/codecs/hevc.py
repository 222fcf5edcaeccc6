"""HEVC intra through x265 (encoder) and libde265's dec265 (decoder), both Debian packages.

Why these two: BPG *is* x265 + libde265 (bpgenc links x265, bpgdec is libde265)
inside a small container, and neither bpgenc nor VTM can be installed on a fresh
Debian machine. Driving x265 with the parameters bpgenc gives it (libbpg 0.9.8
``x265_glue.c``: preset from ``-m``, default level 8 -> ``placebo``; tune ``ssim``;
``keyframeMax = 1``; constant QP = BPG quality + 1 at 8 bit; no info SEI) and
decoding with BPG's own decoder gives the HEVC-intra anchor of the papers on any
machine. ffmpeg's libx265 wrapper would do too but pulls ~150 packages and adds its
own pixel-format layer; libheif's heif-enc takes a 0-100 quality, not a QP.

The stored bytes are x265's Annex-B output (VPS, SPS, PPS, slice; ~60-90 bytes of
parameter sets that BPG replaces by a ~4-byte header). x265 needs a picture of at
least one 64x64 CTU (and even sizes for 4:2:0): smaller inputs are padded by edge
replication and their true size travels in a user-data-unregistered SEI NAL unit
(ITU-T H.265 D.2.7; decoders ignore it), which the decoder side reads to crop.
"""
from __future__ import annotations

import struct
import uuid
from typing import Any

import numpy as np

from bench.codecs.base import CodecError
from bench.codecs.nal import nal_units, rbsp
from bench.codecs.yuv_program import YuvProgramCodec
from bench.registry import register

SIZE_SEI_UUID = uuid.uuid5(uuid.NAMESPACE_URL, "https://bench/picture-size").bytes
PREFIX_SEI = 39  # H.265 nal_unit_type
MIN_SIDE = 64  # x265's default CTU: the smallest picture it codes
COLORMATRIX = {"bt709": "bt709", "bt601": "bt470bg"}


def escape(payload: bytes) -> bytes:
    """Insert emulation-prevention bytes (``00 00 0x`` with x <= 3 -> ``00 00 03 0x``)."""
    out = bytearray()
    zeros = 0
    for b in payload:
        if zeros >= 2 and b <= 3:
            out.append(3)
            zeros = 0
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


def size_sei(width: int, height: int) -> bytes:
    """Annex-B prefix-SEI NAL unit carrying bench's picture size (UUID + two u32 BE)."""
    body = SIZE_SEI_UUID + struct.pack(">II", width, height)
    sei = bytes([5, len(body)]) + body + b"\x80"  # payloadType 5, payloadSize, payload, rbsp_trailing_bits
    return b"\x00\x00\x00\x01" + bytes([PREFIX_SEI << 1, 1]) + escape(sei)


def read_size_sei(data: bytes) -> tuple[int, int] | None:
    """(width, height) from bench's size SEI in ``data``, or None if it has none."""
    for unit in nal_units(data):
        if len(unit) > 2 and (unit[0] >> 1) & 0x3F == PREFIX_SEI:
            sei = rbsp(unit[2:])
            if len(sei) >= 2 + 24 and sei[0] == 5 and sei[1] == 24 and sei[2:18] == SIZE_SEI_UUID:
                return struct.unpack(">II", sei[18:26])
    return None


def insert_before_first_slice(data: bytes, unit: bytes) -> bytes:
    """``data`` with the Annex-B ``unit`` inserted before its first VCL NAL unit (type < 32)."""
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        if i + 3 < len(data) and (data[i + 3] >> 1) & 0x3F < 32:
            start = i - 1 if i > 0 and data[i - 1] == 0 else i
            return data[:start] + unit + data[start:]
        i = data.find(b"\x00\x00\x01", i + 3)
    raise CodecError("x265 wrote no slice NAL unit")


@register("codec", "x265")
class X265(YuvProgramCodec):
    """HEVC intra: x265 encodes one I frame at a constant QP, dec265 decodes it.
    Rate point = BPG-style quality q (0-51, lower = better): x265 ``--qp q + qp_offset``."""

    name = "x265"
    point_name = "qp"
    higher_point_is_better = False
    default_points = (47, 42, 37, 32, 27, 22, 17, 12)
    programs = {"encoder": "x265", "decoder": "libde265-dec265"}
    program_alternatives = {"decoder": ("dec265",)}
    version_args = {"encoder": ("--version",), "decoder": ("-h",)}
    install_hint = "Install them with `apt-get install x265 libde265-examples`"
    bitstream_suffix = ".hevc"
    standard = "hevc"
    decoder_damage_markers = ("WARNING", "ERROR", "error")  # dec265 conceals and exits 0; it does say so

    def __init__(self, device: str = "cpu", preset: str = "placebo", tune: str = "ssim", qp_offset: int = 1,
                 matrix: str = "bt601", **params: Any) -> None:
        super().__init__(device, preset=preset, tune=tune, qp_offset=qp_offset, matrix=matrix, **params)
        self.preset, self.tune, self.qp_offset = str(preset), str(tune), int(qp_offset)
        self.true_size: tuple[int, int] | None = None

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        ph, pw = max(h, MIN_SIDE), max(w, MIN_SIDE)
        if self.chroma == "420":
            ph, pw = ph + ph % 2, pw + pw % 2
        self.true_size = (w, h)
        return np.pad(rgb, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge") if (ph, pw) != (h, w) else rgb

    def encode_args(self, src: str, dst: str, point: Any) -> list[str]:
        q = int(point)
        if q != point or not 0 <= q + self.qp_offset <= 51:
            raise CodecError(f"x265: rate point is an integer q with q + qp_offset ({self.qp_offset}) in [0, 51], "
                             f"got {point!r}")
        w, h = self.frame
        return ["--input", src, "--input-res", f"{w}x{h}", "--input-csp", f"i{self.chroma}",
                "--input-depth", str(self.bits), "--output-depth", str(self.bits), "--fps", "25", "--frames", "1",
                "--preset", self.preset, "--tune", self.tune, "--keyint", "1", "--qp", str(q + self.qp_offset),
                "--no-info", "--range", self.range, "--colormatrix", COLORMATRIX[self.matrix],
                "--pools", "1", "--frame-threads", "1", "--log-level", "error", "--output", dst]

    def decode_args(self, src: str, dst: str) -> list[str]:
        return ["-q", "-t", "0", "-o", dst, src]

    def encode(self, rgb: np.ndarray, point: Any, seed: int = 0) -> bytes:
        data = super().encode(rgb, point, seed)
        if self.true_size != self.frame:
            data = insert_before_first_slice(data, size_sei(*self.true_size))
        return data

    def finish(self, rgb: np.ndarray, data: bytes) -> np.ndarray:
        size = read_size_sei(data)
        if size is None:
            return rgb
        w, h = size
        if not (0 < w <= rgb.shape[1] and 0 < h <= rgb.shape[0]):
            raise CodecError(f"x265: size SEI {w}x{h} does not fit the decoded {rgb.shape[1]}x{rgb.shape[0]} picture")
        return rgb[:h, :w]
