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

Sizes the standard or encoder cannot code (below ``min_side``, or odd for 4:2:0,
where the conformance window counts in 2-sample units) are padded by edge
replication; their true size travels in a user-data-unregistered SEI NAL unit
that decoders ignore (a few dozen bytes, counted in the rate) and is cropped back.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from bench.codecs import colour
from bench.codecs.base import CodecError
from bench.codecs.external import SubprocessCodec
from bench.codecs.nal import (BitstreamError, Picture, insert_before_first_slice, read_size_sei, size_sei,
                              sps_picture)

CONVERSIONS = ("standard", "compressai-bench")


class YuvProgramCodec(SubprocessCodec):
    """External programs reading/writing planar YUV; see the module docstring."""

    standard: ClassVar[str] = "hevc"  # how the picture size is read back: "hevc" or "vvc"
    min_side: ClassVar[int] = 1  # smaller sides are padded (see module docstring)
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
        self.true_size: tuple[int, int] | None = None  # (width, height) of the image before padding

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
        """The RGB picture handed to the encoder: edge-padded to ``min_side`` and, for
        4:2:0, to even sizes."""
        h, w = rgb.shape[:2]
        self.true_size = (w, h)
        ph, pw = max(h, self.min_side), max(w, self.min_side)
        if self.chroma == "420":
            ph, pw = ph + ph % 2, pw + pw % 2
        return np.pad(rgb, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge") if (ph, pw) != (h, w) else rgb

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
        """Decoded RGB of the YUV frame -> the image returned (cropped to the size SEI's, if any)."""
        size = read_size_sei(data, self.standard)
        if size is None:
            return rgb
        w, h = size
        if not (0 < w <= rgb.shape[1] and 0 < h <= rgb.shape[0]):
            raise CodecError(f"{self.name}: size SEI {w}x{h} does not fit the decoded {rgb.shape[1]}x{rgb.shape[0]} "
                             "picture")
        return rgb[:h, :w]

    def read_output(self, path: Path, data: bytes) -> np.ndarray:
        width, height = self.output_size(data)
        try:
            planes = colour.read_yuv(path, width, height, self.bits, self.chroma)
        except ValueError as exc:
            raise CodecError(f"{self.name}: decoder output does not match the bitstream's picture: {exc}") from None
        return self.finish(self.from_planes(planes), data)

    def decode(self, data: bytes, seed: int = 0) -> np.ndarray:
        self.output_size(data)  # foreign or headless bytes: a clear error before the decoder runs
        return super().decode(data, seed)

    def encode(self, rgb: np.ndarray, point: Any, seed: int = 0) -> bytes:
        data = super().encode(rgb, point, seed)
        pic = self.picture(data)
        if (pic.width, pic.height) != self.frame:
            raise CodecError(f"{self.name}: the encoder's SPS says {pic.width}x{pic.height}, the input was "
                             f"{self.frame[0]}x{self.frame[1]}: bench's {self.standard.upper()} SPS reader and this "
                             "encoder disagree (please report it with the encoder's version)")
        if pic.chroma != self.chroma:
            raise CodecError(f"{self.name}: the stream is {pic.chroma}, the card asks for {self.chroma}")
        if self.true_size != self.frame:
            try:
                data = insert_before_first_slice(data, size_sei(*self.true_size, self.standard), self.standard)
            except BitstreamError as exc:
                raise CodecError(f"{self.name}: {exc}") from None
        return data
