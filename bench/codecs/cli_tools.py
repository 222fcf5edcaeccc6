"""Classical codecs through their reference command-line tools (Debian packages):
libavif's avifenc/avifdec and libjxl's cjxl/djxl.
"""
from __future__ import annotations

from bench.codecs.base import CodecError
from bench.codecs.subprocess_base import SubprocessCodec
from bench.registry import register


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
