"""The picture size of an HEVC or VVC bitstream, read from its sequence parameter set.

External decoders that write raw planar YUV (libde265's dec265, VTM's DecoderApp)
do not say how big the picture is; the bitstream does. Reading it from the SPS
keeps "decode from bytes alone" true without adding a header of our own, so the
stored bytes are exactly the encoder's output file (the rate people compare).

Contracts
---------
* Input: an Annex-B byte stream (NAL units after ``00 00 01`` / ``00 00 00 01``
  start codes), as x265 ``--output x.hevc`` and VTM ``-b x.bin`` write it.
* :func:`sps_picture` returns :class:`Picture` (coded width/height after the
  conformance-window crop, ``chroma_format_idc`` 0..3) of the first SPS, or raises
  :class:`BitstreamError` saying what is wrong (no SPS, truncated, an
  unsupported syntax branch).
* Syntax followed: ITU-T H.265 (v8, 08/2021) 7.3.2.2 (``seq_parameter_set_rbsp``
  up to ``conf_win_bottom_offset``) with ``profile_tier_level`` 7.3.3; ITU-T H.266
  (v2, 04/2022) 7.3.2.4 with ``profile_tier_level`` 7.3.3.1 and
  ``general_constraints_info`` 7.3.3.2. Conformance-window offsets are in chroma
  sample units (``SubWidthC``/``SubHeightC``, Table 6-1 of both).
* The HEVC path is checked on x265's output in the tests; the VVC path on SPS
  units built from the syntax tables (no VVC encoder ships in Debian 12). Every
  encode through an adapter re-reads the size from the stream it just wrote and
  fails loudly if it disagrees with the input, so a misread is never silent.
"""
from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

HEVC_SPS = 33  # nal_unit_type of an H.265 SPS (Table 7-1)
VVC_SPS = 15  # nal_unit_type of an H.266 SPS (Table 5)
PREFIX_SEI = {"hevc": 39, "vvc": 23}  # nal_unit_type of a prefix SEI
SIZE_SEI_UUID = uuid.uuid5(uuid.NAMESPACE_URL, "https://bench/picture-size").bytes
SUB_WH = {0: (1, 1), 1: (2, 2), 2: (2, 1), 3: (1, 1)}  # chroma_format_idc -> (SubWidthC, SubHeightC)


class BitstreamError(ValueError):
    """The bytes are not a stream whose picture size can be read."""


@dataclass(frozen=True)
class Picture:
    width: int  # luma samples, after the conformance-window crop
    height: int
    chroma_format_idc: int  # 0 monochrome, 1 4:2:0, 2 4:2:2, 3 4:4:4

    @property
    def chroma(self) -> str:
        return {0: "400", 1: "420", 2: "422", 3: "444"}[self.chroma_format_idc]


def nal_units(data: bytes) -> list[bytes]:
    """The NAL units of an Annex-B stream (start codes removed, emulation bytes kept)."""
    starts = []
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        starts.append(i + 3)
        i = data.find(b"\x00\x00\x01", i + 3)
    units = []
    for k, s in enumerate(starts):
        end = starts[k + 1] - 3 if k + 1 < len(starts) else len(data)
        unit = data[s:end]
        units.append(unit.rstrip(b"\x00") if k + 1 < len(starts) else unit)  # trailing zero / 4-byte start code
    return units


def rbsp(unit: bytes) -> bytes:
    """Remove emulation-prevention bytes (``00 00 03`` -> ``00 00``)."""
    out = bytearray()
    zeros = 0
    for b in unit:
        if zeros >= 2 and b == 3:
            zeros = 0
            continue
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


class BitReader:
    """MSB-first reader of u(n) and ue(v) fields."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def u(self, n: int) -> int:
        value = 0
        for _ in range(n):
            byte = self.pos >> 3
            if byte >= len(self.data):
                raise BitstreamError("parameter set truncated")
            value = (value << 1) | ((self.data[byte] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise BitstreamError("invalid Exp-Golomb code in parameter set")
        return (1 << zeros) - 1 + self.u(zeros)

    def align(self) -> None:
        self.pos = (self.pos + 7) & ~7


def _cropped(width: int, height: int, chroma_format_idc: int, window: tuple[int, int, int, int] | None) -> Picture:
    if chroma_format_idc not in SUB_WH:
        raise BitstreamError(f"invalid chroma_format_idc {chroma_format_idc}")
    if window:
        sw, sh = SUB_WH[chroma_format_idc]
        left, right, top, bottom = window
        width -= sw * (left + right)
        height -= sh * (top + bottom)
    if width <= 0 or height <= 0:
        raise BitstreamError(f"parameter set gives a {width}x{height} picture")
    return Picture(width, height, chroma_format_idc)


def _window(r: BitReader) -> tuple[int, int, int, int] | None:
    return (r.ue(), r.ue(), r.ue(), r.ue()) if r.u(1) else None


def hevc_sps(unit: bytes) -> Picture:
    """Picture of an H.265 SPS NAL unit (2-byte NAL header included)."""
    r = BitReader(rbsp(unit)[2:])
    r.u(4)  # sps_video_parameter_set_id
    max_sub_layers_minus1 = r.u(3)
    r.u(1)  # sps_temporal_id_nesting_flag
    r.u(96)  # general profile (88 bits) + general_level_idc
    present = [(r.u(1), r.u(1)) for _ in range(max_sub_layers_minus1)]
    if max_sub_layers_minus1 > 0:
        r.u(2 * (8 - max_sub_layers_minus1))  # reserved_zero_2bits
    for profile, level in present:
        r.u(88 * profile + 8 * level)
    r.ue()  # sps_seq_parameter_set_id
    chroma_format_idc = r.ue()
    if chroma_format_idc == 3 and r.u(1):  # separate_colour_plane_flag: planes coded as monochrome pictures
        chroma_format_idc = 0
    width, height = r.ue(), r.ue()
    return _cropped(width, height, chroma_format_idc, _window(r))


# H.266 general_constraints_info() bits from gci_intra_only_constraint_flag to
# gci_no_virtual_boundaries_constraint_flag, by group (7.3.3.2): general 3, picture format
# 4+2 bits, NAL unit types 10 (no_mixed_nalu_types_in_pic .. no_idr_rpl), tiles/slices/
# subpictures 6, CTU/partitioning 2+3 bits, intra 6, inter 16, transform/quantisation 13,
# in-loop filters 6 = 71 (the count other VVC parsers skip, e.g. ExoPlayer's).
GCI_FIXED_BITS = 3 + 6 + 10 + 6 + 5 + 6 + 16 + 13 + 6


def vvc_sps(unit: bytes) -> Picture:
    """Picture of an H.266 SPS NAL unit (2-byte NAL header included)."""
    r = BitReader(rbsp(unit)[2:])
    r.u(4)  # sps_seq_parameter_set_id
    r.u(4)  # sps_video_parameter_set_id
    max_sublayers_minus1 = r.u(3)
    chroma_format_idc = r.u(2)
    r.u(2)  # sps_log2_ctu_size_minus5
    if r.u(1):  # sps_ptl_dpb_hrd_params_present_flag -> profile_tier_level(1, max_sublayers_minus1)
        r.u(7 + 1 + 8 + 1 + 1)  # profile, tier, level, frame_only, multilayer
        if r.u(1):  # gci_present_flag
            r.u(GCI_FIXED_BITS)
            r.u(r.u(8))  # gci_num_additional_bits and those bits
        r.align()  # gci_alignment_zero_bit
        sublayer_present = [r.u(1) for _ in range(max_sublayers_minus1)]
        r.align()  # ptl_reserved_zero_bit
        r.u(8 * sum(sublayer_present))
        r.u(32 * r.u(8))  # ptl_num_sub_profiles x general_sub_profile_idc
    r.u(1)  # sps_gdr_enabled_flag
    if r.u(1):  # sps_ref_pic_resampling_enabled_flag
        r.u(1)  # sps_res_change_in_clvs_allowed_flag
    width, height = r.ue(), r.ue()
    return _cropped(width, height, chroma_format_idc, _window(r))


def sps_picture(data: bytes, standard: str) -> Picture:
    """Picture size of the first SPS in Annex-B ``data``; ``standard`` "hevc" or "vvc"."""
    if standard not in PREFIX_SEI:
        raise ValueError(f"standard must be 'hevc' or 'vvc', got {standard!r}")
    sps_type, parse = (HEVC_SPS, hevc_sps) if standard == "hevc" else (VVC_SPS, vvc_sps)
    units = [u for u in nal_units(data) if len(u) > 2]
    if not units:
        raise BitstreamError(f"no {standard.upper()} NAL units (no Annex-B start code) in {len(data)} bytes")
    for unit in units:
        if _nal_type(unit, standard) == sps_type:
            return parse(unit)
    raise BitstreamError(f"no {standard.upper()} sequence parameter set among {len(units)} NAL units")


def _nal_type(unit: bytes, standard: str) -> int:
    return (unit[0] >> 1) & 0x3F if standard == "hevc" else unit[1] >> 3


def _nal_header(nal_type: int, standard: str) -> bytes:
    """Two-byte NAL header, layer 0, TemporalId 0."""
    return bytes([nal_type << 1, 1]) if standard == "hevc" else bytes([0, (nal_type << 3) | 1])


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


def size_sei(width: int, height: int, standard: str) -> bytes:
    """Annex-B prefix-SEI NAL unit (user data unregistered, H.265 D.2.7 / H.274 8.7) carrying
    bench's true picture size (a fixed UUID + two u32 BE). Decoders ignore it."""
    body = SIZE_SEI_UUID + struct.pack(">II", width, height)
    sei = bytes([5, len(body)]) + body + b"\x80"  # payloadType 5, payloadSize, payload, rbsp_trailing_bits
    return b"\x00\x00\x00\x01" + _nal_header(PREFIX_SEI[standard], standard) + escape(sei)


def read_size_sei(data: bytes, standard: str) -> tuple[int, int] | None:
    """(width, height) from bench's size SEI in ``data``, or None if it has none."""
    for unit in nal_units(data):
        if len(unit) > 2 and _nal_type(unit, standard) == PREFIX_SEI[standard]:
            sei = rbsp(unit[2:])
            if len(sei) >= 26 and sei[0] == 5 and sei[1] == 24 and sei[2:18] == SIZE_SEI_UUID:
                return struct.unpack(">II", sei[18:26])
    return None


def insert_before_first_slice(data: bytes, unit: bytes, standard: str) -> bytes:
    """``data`` with the Annex-B ``unit`` inserted before its first VCL NAL unit
    (H.265 types 0..31, H.266 types 0..11)."""
    vcl_below = 32 if standard == "hevc" else 12
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        if i + 4 < len(data) and _nal_type(data[i + 3:i + 5], standard) < vcl_below:
            start = i - 1 if i > 0 and data[i - 1] == 0 else i
            return data[:start] + unit + data[start:]
        i = data.find(b"\x00\x00\x01", i + 3)
    raise BitstreamError("no slice NAL unit in the stream")
