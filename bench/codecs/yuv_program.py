"""Base class for external encoders/decoders that exchange raw planar YUV files
(x265 + libde265's dec265, VTM's EncoderApp/DecoderApp).

The RGB image is converted with :mod:`bench.codecs.colour` under the card's
``conversion``:

- ``"standard"``: ``matrix`` (bt709 | bt601), ``range`` (full | limited), ``bits``
  (8 | 10), ``chroma`` (444 | 420), rounding to nearest; 4:2:0 chroma upsampled
  bilinearly on the way back;
- ``"compressai-bench"``: exactly what ``compressai.utils.bench`` does around VTM
  (BT.709, chroma centred on code 127.5, truncation; 4:4:4 8 bit only), so that a
  card reproducing CompressAI's published VTM curve converts the same pixels.

The stored bytes are exactly the encoder's output file (Annex-B stream). The
decoder writes a header-less ``.yuv``; its size is read from the stream's SPS
(:mod:`bench.codecs.nal`), and every encode checks that this read gives back the
input's size, so a misread can never pass silently.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from bench.codecs import colour
from bench.codecs.base import CodecError
from bench.codecs.external import SubprocessCodec
from bench.codecs.nal import BitstreamError, Picture, sps_picture

CONVERSIONS = ("standard", "compressai-bench")


class YuvProgramCodec(SubprocessCodec):
    """External programs reading/writing planar YUV; see the module docstring."""

    standard: ClassVar[str] = "hevc"  # how the picture size is read back: "hevc" or "vvc"
    input_suffix = ".yuv"
    output_suffix = ".yuv"

    def __init__(self, device: str = "cpu", conversion: str = "standard", matrix: str = "bt709", range: str = "full",
                 bits: int = 8, chroma: str = "444", **params: Any) -> None:
        super().__init__(device, conversion=conversion, matrix=matrix, range=range, bits=bits, chroma=chroma, **params)
        if conversion not in CONVERSIONS:
            raise CodecError(f"{self.name}: conversion must be one of {', '.join(CONVERSIONS)}, got {conversion!r}")
        try:
            colour._check(matrix, range, int(bits))
        except ValueError as exc:
            raise CodecError(f"{self.name}: {exc}") from None
        if int(bits) not in (8, 10) or str(chroma) not in colour.CHROMAS:
            raise CodecError(f"{self.name}: bits must be 8 or 10 and chroma 444 or 420, got {bits!r}, {chroma!r}")
        if conversion == "compressai-bench" and (int(bits), str(chroma)) != (8, "444"):
            raise CodecError(f"{self.name}: conversion compressai-bench is 4:4:4 8 bit only, got {chroma} {bits} bit")
        self.conversion, self.matrix, self.range = conversion, matrix, range
        self.bits, self.chroma = int(bits), str(chroma)
        self.frame: tuple[int, int] | None = None  # (width, height) of the YUV file written last

    # -- RGB <-> YUV ----------------------------------------------------------
    def to_planes(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.conversion == "compressai-bench":
            return colour.compressai_rgb_to_planes(rgb)
        return colour.rgb_to_planes(rgb, self.matrix, self.range, self.bits, self.chroma)

    def from_planes(self, planes: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        if self.conversion == "compressai-bench":
            return colour.compressai_planes_to_rgb(planes)
        return colour.planes_to_rgb(planes, self.matrix, self.range, self.bits)

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """The RGB picture handed to the encoder (subclasses may pad it)."""
        return rgb

    def write_input(self, rgb: np.ndarray, path: Path) -> None:
        rgb = self.prepare(rgb)
        self.frame = (rgb.shape[1], rgb.shape[0])
        colour.write_yuv(path, self.to_planes(rgb), self.bits)

    # -- reading back ------------------------------------------------------------
    def picture(self, data: bytes) -> Picture:
        """Size and chroma format the decoder will output for ``data`` (CodecError if unreadable)."""
        try:
            return sps_picture(data, self.standard)
        except BitstreamError as exc:
            raise CodecError(f"{self.name}: cannot read the picture size from the bitstream: {exc}") from None

    def output_size(self, data: bytes) -> tuple[int, int]:
        """(width, height) of the decoder's YUV output for ``data``."""
        pic = self.picture(data)
        return pic.width, pic.height

    def finish(self, rgb: np.ndarray, data: bytes) -> np.ndarray:
        """Decoded RGB of the YUV frame -> the image returned (subclasses may crop)."""
        return rgb

    def read_output(self, path: Path, data: bytes) -> np.ndarray:
        width, height = self.output_size(data)
        try:
            planes = colour.read_yuv(path, width, height, self.bits, self.chroma)
        except ValueError as exc:
            raise CodecError(f"{self.name}: decoder output does not match the bitstream's picture: {exc}") from None
        return self.finish(self.from_planes(planes), data)

    def encode(self, rgb: np.ndarray, point: Any, seed: int = 0) -> bytes:
        data = super().encode(rgb, point, seed)
        size = self.output_size(data)
        if size != self.frame:
            raise CodecError(f"{self.name}: the encoder's SPS says {size[0]}x{size[1]}, the input was "
                             f"{self.frame[0]}x{self.frame[1]}: bench's {self.standard.upper()} SPS reader and this "
                             "encoder disagree (please report it with the encoder's version)")
        if self.picture(data).chroma != self.chroma:
            raise CodecError(f"{self.name}: the stream is {self.picture(data).chroma}, the card asks for {self.chroma}")
        return data
