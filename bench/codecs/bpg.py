"""BPG (Fabrice Bellard's HEVC-intra image format) through bpgenc/bpgdec, as CompressAI's bench runs it.

Facts (``compressai.utils.bench.codecs.BPG``, CompressAI 1.2.8): encode with

    bpgenc -o out.bpg -q Q -f 444 -e x265 -c ycbcr -b 8 in.png

(no ``-m``: bpgenc's default compression level 8), decode with ``bpgdec -o rec.png
out.bpg``; bpp = 8 x size of ``out.bpg`` / (H x W). The published Kodak curve
(``bpg_444_x265_ycbcr.json``, "BPG version 0.9.8") uses Q = 47, 42, ..., 12.

:func:`parse_header` reads the file header of the BPG specification (version 0.9.1,
section 3: magic, pixel format, sizes and lengths in ue7 codes, extension data, the
HEVC header that replaces VPS/SPS) so that ``bits_breakdown`` reports the HEVC
picture data as payload and everything else (header, extensions, alpha plane) as
container bits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.codecs.base import CodecError
from bench.codecs.external import SubprocessCodec
from bench.registry import register

MAGIC = b"BPG\xfb"


class BPGHeaderError(ValueError):
    """Bytes that are not a complete BPG file."""


@dataclass(frozen=True)
class BPGHeader:
    pixel_format: int
    alpha: bool
    bit_depth: int
    colour_space: int
    width: int
    height: int
    picture_data_length: int  # bytes of hevc_header_and_data() of the picture
    hevc_header_length: int  # bytes of the picture's HEVC header (replaces VPS/SPS)
    header_bytes: int  # bytes before the picture's HEVC data (file header, extensions, HEVC header)
    payload_bytes: int  # the picture's HEVC data (PPS, slice NAL units)


def _ue7(data: bytes, pos: int) -> tuple[int, int]:
    """A ue7(32) code at ``pos`` -> (value, next position)."""
    value = 0
    for i in range(5):
        if pos >= len(data):
            raise BPGHeaderError("truncated BPG header")
        b = data[pos]
        pos += 1
        if i == 0 and b == 0x80:
            raise BPGHeaderError("invalid ue7 code (leading 0x80)")
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            return value, pos
    raise BPGHeaderError("ue7 code longer than 32 bits")


def parse_header(data: bytes) -> BPGHeader:
    """Parse a BPG file's header (spec 0.9.1 section 3); BPGHeaderError if ``data`` is not a
    complete BPG file (wrong magic, truncated, lengths beyond the end)."""
    if len(data) < 6 or data[:4] != MAGIC:
        raise BPGHeaderError(f"not a BPG file (magic {data[:4]!r}, expected {MAGIC!r})")
    pixel_format, alpha, bit_depth = data[4] >> 5, bool(data[4] >> 4 & 1), (data[4] & 0x0F) + 8
    colour_space, extension = data[5] >> 4, bool(data[5] >> 3 & 1)
    pos = 6
    width, pos = _ue7(data, pos)
    height, pos = _ue7(data, pos)
    picture_len, pos = _ue7(data, pos)
    ext_len = alpha_len = 0
    if extension:
        ext_len, pos = _ue7(data, pos)
    if alpha:
        alpha_len, pos = _ue7(data, pos)
    if width == 0 or height == 0:
        raise BPGHeaderError(f"BPG picture size {width}x{height}")
    pos += ext_len
    picture_start = pos
    hevc_header_len, pos = _ue7(data, pos)
    data_start = pos + hevc_header_len
    end = picture_start + picture_len
    if data_start > end or end + alpha_len > len(data):
        raise BPGHeaderError(f"BPG lengths (picture {picture_len}, alpha {alpha_len}, extension {ext_len} bytes) "
                             f"run past the file's {len(data)} bytes")
    return BPGHeader(pixel_format, alpha, bit_depth, colour_space, width, height, picture_len, hevc_header_len,
                     data_start, end - data_start)


@register("codec", "bpg")
class BPG(SubprocessCodec):
    """BPG through bpgenc/bpgdec. Rate point = quantizer 0..51 (lower = better)."""

    name = "bpg"
    point_name = "qp"
    higher_point_is_better = False
    default_points = (47, 42, 37, 32, 27, 22, 17, 12)
    programs = {"encoder": "bpgenc", "decoder": "bpgdec"}
    version_args = ("-h",)  # "BPG Image Encoder version 0.9.8" / "BPG Image Decoder 0.9.8"
    install_hint = ("libbpg is not packaged in Debian: build it from https://bellard.org/bpg/ (libbpg-0.9.8, "
                    "`make`; needs libpng, libjpeg, libsdl for bpgview only), then give the card params "
                    "encoder:/decoder: or `bench run --program bpgenc=PATH --program bpgdec=PATH`")
    bitstream_suffix = ".bpg"

    def __init__(self, device: str = "cpu", subsampling: str = "444", encoder_lib: str = "x265",
                 colour_space: str = "ycbcr", bits: int = 8, level: int | None = None, **params: Any) -> None:
        super().__init__(device, subsampling=subsampling, encoder_lib=encoder_lib, colour_space=colour_space,
                         bits=bits, level=level, **params)
        checks = {"subsampling": (str(subsampling), ("444", "422", "420")),
                  "encoder_lib": (encoder_lib, ("x265", "jctvc")),
                  "colour_space": (colour_space, ("ycbcr", "rgb", "ycgco", "ycbcr_bt709", "ycbcr_bt2020")),
                  "bits": (int(bits), tuple(range(8, 13)))}
        for key, (value, allowed) in checks.items():
            if value not in allowed:
                raise CodecError(f"bpg: {key} must be one of {', '.join(map(str, allowed))}, got {value!r}")
        if level is not None and not 1 <= int(level) <= 9:
            raise CodecError(f"bpg: level (bpgenc -m) must be in 1..9, got {level!r}")
        self.subsampling, self.encoder_lib, self.colour_space = str(subsampling), encoder_lib, colour_space
        self.bits, self.level = int(bits), None if level is None else int(level)

    def encode_args(self, src: str, dst: str, point: Any) -> list[str]:
        q = int(point)
        if q != point or not 0 <= q <= 51:
            raise CodecError(f"bpg: rate point is an integer quantizer in [0, 51], got {point!r}")
        args = ["-o", dst, "-q", str(q), "-f", self.subsampling, "-e", self.encoder_lib, "-c", self.colour_space,
                "-b", str(self.bits)]
        if self.level is not None:
            args += ["-m", str(self.level)]
        return [*args, src]

    def decode_args(self, src: str, dst: str) -> list[str]:
        return ["-o", dst, src]

    def decode(self, data: bytes, seed: int = 0):
        try:
            parse_header(data)  # refuse truncated or foreign bytes before bpgdec conceals them
        except BPGHeaderError as exc:
            raise CodecError(f"bpg: {exc}") from None
        return super().decode(data, seed)

    def bits_breakdown(self, data: bytes) -> dict[str, int]:
        """``payload``: the picture's HEVC data; ``container``: BPG header, extensions, HEVC
        header and any alpha plane."""
        h = parse_header(data)
        return {"payload": 8 * h.payload_bytes, "container": 8 * (len(data) - h.payload_bytes)}
