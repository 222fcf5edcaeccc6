"""Byte-stream builders for tests and the fake VTM / bpgenc programs they run: an H.266 SPS
written from the syntax table (7.3.2.4), a BPG file from the BPG specification (0.9.1).
Independent of bench.codecs.nal's reader except for ``escape`` (emulation prevention),
which the reader's own tests check."""
from __future__ import annotations

from bench.codecs.nal import GCI_FIXED_BITS, escape

class Bits:
    """MSB-first writer of u(n) / ue(v) fields (the test's own, independent of bench.codecs.nal)."""

    def __init__(self):
        self.bits: list[int] = []

    def u(self, n, v):
        self.bits += [(v >> (n - 1 - i)) & 1 for i in range(n)]
        return self

    def ue(self, v):
        code = v + 1
        n = code.bit_length()
        return self.u(n - 1, 0).u(n, code)

    def align(self):
        while len(self.bits) % 8:
            self.bits.append(0)
        return self

    def rbsp(self):  # rbsp_trailing_bits
        self.bits.append(1)
        return self.align()

    def bytes(self):
        out = bytearray()
        for i in range(0, len(self.bits), 8):
            out.append(int("".join(map(str, self.bits[i:i + 8])), 2))
        return bytes(out)


def vvc_sps_unit(width, height, chroma=3, window=None, gci=False, sublayers=0, rpr=False):
    """An H.266 SPS NAL unit (Annex-B, with start code) per 7.3.2.4 up to the conformance window."""
    b = Bits().u(4, 0).u(4, 0).u(3, sublayers).u(2, chroma).u(2, 2).u(1, 1)
    b.u(7, 1).u(1, 0).u(8, 51).u(1, 1).u(1, 0)  # profile_tier_level: profile, tier, level, frame_only, multilayer
    b.u(1, int(gci))
    if gci:
        b.u(GCI_FIXED_BITS, (1 << GCI_FIXED_BITS) - 1).u(8, 3).u(3, 0b101)  # every flag set, 3 additional bits
    b.align()
    present = [1] * sublayers
    for p in present:
        b.u(1, p)
    b.align()
    for _ in present:
        b.u(8, 48)
    b.u(8, 1).u(32, 0xDEADBEEF)  # one sub-profile
    b.u(1, 0).u(1, int(rpr))
    if rpr:
        b.u(1, 0)
    b.ue(width).ue(height).u(1, int(window is not None))
    for off in window or ():
        b.ue(off)
    b.u(1, 1).u(7, 0)  # some further fields, then stop
    return b"\x00\x00\x00\x01" + bytes([0x00, (15 << 3) | 1]) + escape(b.rbsp().bytes())


def escape_payload(payload: bytes) -> bytes:
    """Escape plus a non-zero last byte (a NAL unit cannot end in 0x00)."""
    return escape(payload + b"\x80")


def ue7(v):
    out = [v & 0x7F]
    v >>= 7
    while v:
        out.append(0x80 | (v & 0x7F))
        v >>= 7
    return bytes(reversed(out))


def bpg_file(width, height, hevc_header=b"\x93\x40", hevc_data=b"\x40\x01\x0c" * 10, extension=b"", alpha=b""):
    """A BPG file per the spec (0.9.1 section 3): 4:4:4, 8 bit, YCbCr."""
    picture = ue7(len(hevc_header)) + hevc_header + hevc_data
    head = b"BPG\xfb" + bytes([(3 << 5) | (bool(alpha) << 4) | 0, (0 << 4) | (bool(extension) << 3)])
    head += ue7(width) + ue7(height) + ue7(len(picture))
    if extension:
        head += ue7(len(extension))
    if alpha:
        head += ue7(len(alpha))
    return head + extension + picture + alpha
