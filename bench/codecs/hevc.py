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
least one 64x64 CTU (and even sizes for 4:2:0): smaller inputs are padded (see
:mod:`bench.codecs.yuv_program`).
"""
from __future__ import annotations

from typing import Any


from bench.codecs.base import CodecError
from bench.codecs.yuv_program import YuvProgramCodec
from bench.registry import register

COLORMATRIX = {"bt709": "bt709", "bt601": "bt470bg"}


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
    min_side = 64  # x265's default CTU: the smallest picture it codes
    decoder_damage_markers = ("WARNING", "ERROR", "error")  # dec265 conceals and exits 0; it does say so

    def __init__(self, device: str = "cpu", preset: str = "placebo", tune: str = "ssim", qp_offset: int = 1,
                 matrix: str = "bt601", **params: Any) -> None:
        super().__init__(device, preset=preset, tune=tune, qp_offset=qp_offset, matrix=matrix, **params)
        self.preset, self.tune, self.qp_offset = str(preset), str(tune), int(qp_offset)

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
