"""Classical anchors through in-process libraries: Pillow (JPEG, WebP, AVIF) and
imagecodecs (JPEG XL). Each decodes with the same library from the bytes alone.
"""
from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, features

from bench.codecs.base import Codec, CodecError, check_rgb
from bench.data.images import check_pixels, open_image
from bench.registry import register

_SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}


def _pillow_decode(data: bytes) -> np.ndarray:
    """Decode with Pillow; a header claiming more pixels than bench's limit
    (:func:`bench.data.images.max_pixels`) is refused before any pixel is decoded."""
    try:
        with open_image(io.BytesIO(data)) as img:
            check_pixels(img.height, img.width, "Pillow", "the bitstream's header claims an image")
            return np.asarray(img.convert("RGB"))
    except Exception as exc:
        raise CodecError(f"Pillow could not decode the stored bitstream ({len(data)} bytes): {exc}") from exc


def _pillow_encode(rgb: np.ndarray, fmt: str, **options: Any) -> bytes:
    check_rgb(rgb)
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format=fmt, **options)
    return buf.getvalue()


def _check_quality(name: str, point: Any, lo: int = 0, hi: int = 100) -> int:
    q = int(point)
    if q != point or not lo <= q <= hi:
        raise CodecError(f"{name}: rate point must be an integer quality in [{lo}, {hi}], got {point!r}")
    return q


def _pillow_provenance(feature: str | None = None, **settings: Any) -> dict[str, Any]:
    """Pillow's version, the version of the library behind ``feature`` (as Pillow reports it)
    and the adapter's byte-changing ``settings``: what goes into every unit's resume key
    (``Codec.fingerprint``), so nothing volatile."""
    prov: dict[str, Any] = {"pillow": Image.__version__}
    if feature:
        prov[feature] = features.version(feature)
    return {**prov, **settings}


def _scan_end(data: bytes, start: int) -> int:
    """Index of the first marker after entropy-coded data at ``start``: an 0xFF not followed by
    a stuffed 0x00 or a restart marker RST0..7 (``len(data)`` if there is none). Jumps from
    0xFF to 0xFF with ``bytes.find`` (a byte-by-byte Python loop cost ~5 ms per Kodak image)."""
    n = len(data)
    j = data.find(b"\xff", start)
    while 0 <= j < n - 1:
        nxt = data[j + 1]
        if nxt != 0x00 and not 0xD0 <= nxt <= 0xD7:
            return j
        j = data.find(b"\xff", j + 2)
    return n - 1 if j == n - 1 else n


def jpeg_segments(data: bytes) -> dict[str, int]:
    """Split a baseline/progressive JPEG into header (markers) and entropy-coded bits.

    Returns ``{"payload": bits, "side": bits, "container": bits}`` where payload is
    the entropy-coded scan data, side the tables (DQT, DHT, SOF, SOS headers) and
    container the SOI/EOI/APPn/COM segments.
    """
    side = container = payload = 0
    i = 2  # SOI
    container += 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise ValueError("not a JPEG marker stream")
        marker = data[i + 1]
        if marker == 0xD9:  # EOI
            container += 2
            i += 2
            break
        length = int.from_bytes(data[i + 2:i + 4], "big")
        seg = 2 + length
        if 0xE0 <= marker <= 0xEF or marker == 0xFE:
            container += seg
        else:
            side += seg
        i += seg
        if marker == 0xDA:  # SOS: entropy-coded data follows up to the next non-RST marker
            j = _scan_end(data, i)
            payload += j - i
            i = j
    payload += max(0, n - i)
    return {"payload": 8 * payload, "side": 8 * side, "container": 8 * container}


@register("codec", "pillow-jpeg")
class PillowJPEG(Codec):
    """JPEG (libjpeg via Pillow). ``subsampling``: "4:2:0" (Pillow's default) or "4:4:4".

    Pillow's defaults (4:2:0, baseline, standard Huffman tables, quality = ``point``) are what
    CompressAI's bench used for its published Kodak curve (``results/reference/kodak``); Pillow
    then (7.1.2, 2020) bundled IJG libjpeg 9d, Pillow >= 9 bundles libjpeg-turbo, which gives
    the same rates (within 0.3 %) and 0.07-0.13 dB more PSNR at the same quality."""

    name = "pillow-jpeg"
    default_points = (10, 20, 30, 50, 70, 90)

    def __init__(self, device: str = "cpu", subsampling: str = "4:2:0", optimize: bool = False, **params):
        super().__init__(device, subsampling=subsampling, optimize=optimize, **params)
        if subsampling not in _SUBSAMPLING:
            raise CodecError(f"pillow-jpeg: subsampling must be one of {list(_SUBSAMPLING)}, got {subsampling!r}")
        self.subsampling = _SUBSAMPLING[subsampling]
        self.subsampling_name = subsampling
        self.optimize = bool(optimize)

    def encode(self, rgb, point, seed=0):
        q = _check_quality(self.name, point, 1, 100)
        return _pillow_encode(rgb, "JPEG", quality=q, subsampling=self.subsampling, optimize=self.optimize)

    def decode(self, data, seed=0):
        return _pillow_decode(data)

    def bits_breakdown(self, data):
        return jpeg_segments(data)

    def provenance(self):
        return _pillow_provenance("jpg", libjpeg_turbo=_turbo_version(), subsampling=self.subsampling_name,
                                  optimize=self.optimize)


def _turbo_version() -> str | None:
    """libjpeg-turbo's version if Pillow's libjpeg is libjpeg-turbo (Pillow >= 9 wheels), else None
    (e.g. IJG libjpeg 9: ``features.version("jpg")`` then names it)."""
    try:
        return features.version_feature("libjpeg_turbo") if features.check_feature("libjpeg_turbo") else None
    except ValueError:  # a Pillow that does not know the feature
        return None


@register("codec", "pillow-webp")
class PillowWebP(Codec):
    """Lossy WebP (libwebp via Pillow, always 4:2:0). ``method``: 0 (fast) .. 6 (slowest);
    default 4 = Pillow's default, the setting of CompressAI's published Kodak curve (which it
    reproduces exactly); method 6 is its own card, ``webp-m6``."""

    name = "pillow-webp"
    default_points = (10, 30, 50, 70, 90)

    def __init__(self, device: str = "cpu", method: int = 4, **params):
        super().__init__(device, method=method, **params)
        self.method = int(method)

    @classmethod
    def available(cls, **params):
        return (True, "") if features.check("webp") else (False, "this Pillow build has no WebP support")

    def encode(self, rgb, point, seed=0):
        q = _check_quality(self.name, point)
        return _pillow_encode(rgb, "WEBP", quality=q, method=self.method, lossless=False)

    def decode(self, data, seed=0):
        return _pillow_decode(data)

    def provenance(self):
        return _pillow_provenance("webp", subsampling="4:2:0", method=self.method)


@register("codec", "pillow-avif")
class PillowAVIF(Codec):
    """AVIF (libavif via Pillow >= 11.2). ``subsampling``: "4:2:0" or "4:4:4"; ``speed`` 0..10."""

    name = "pillow-avif"
    default_points = (20, 40, 60, 75, 90)

    def __init__(self, device: str = "cpu", subsampling: str = "4:2:0", speed: int = 6, **params):
        super().__init__(device, subsampling=subsampling, speed=speed, **params)
        if subsampling not in ("4:2:0", "4:2:2", "4:4:4"):
            raise CodecError(f"pillow-avif: unsupported subsampling {subsampling!r}")
        self.subsampling = subsampling
        self.speed = int(speed)

    @classmethod
    def available(cls, **params):
        if features.check("avif"):
            return True, ""
        return False, "this Pillow build has no AVIF support: install Pillow >= 11.2 wheels from PyPI"

    def encode(self, rgb, point, seed=0):
        q = _check_quality(self.name, point)
        return _pillow_encode(rgb, "AVIF", quality=q, subsampling=self.subsampling, speed=self.speed)

    def decode(self, data, seed=0):
        return _pillow_decode(data)

    def provenance(self):
        return _pillow_provenance("avif", subsampling=self.subsampling)


@register("codec", "imagecodecs-jxl")
class ImagecodecsJXL(Codec):
    """JPEG XL (libjxl via imagecodecs). Rate point = Butteraugli ``distance``
    (0.5 high quality .. 15 very low); ``effort`` 1..9."""

    name = "imagecodecs-jxl"
    point_name = "distance"
    higher_point_is_better = False
    default_points = (0.5, 1.0, 2.0, 4.0, 8.0)

    def __init__(self, device: str = "cpu", effort: int = 7, **params):
        super().__init__(device, effort=effort, **params)
        self.effort = int(effort)

    @classmethod
    def available(cls, **params):
        try:
            import imagecodecs
        except ImportError:
            return False, "imagecodecs is not installed: pip install imagecodecs"
        if not imagecodecs.JPEGXL.available:
            return False, "this imagecodecs build has no JPEG XL support"
        return True, ""

    def encode(self, rgb, point, seed=0):
        import imagecodecs

        check_rgb(rgb)
        distance = float(point)
        if not 0.0 < distance <= 25.0:
            raise CodecError(f"{self.name}: rate point is a distance in (0, 25], got {point!r}")
        return bytes(imagecodecs.jpegxl_encode(rgb, distance=distance, effort=self.effort))

    def decode(self, data, seed=0):
        import imagecodecs

        try:
            out = np.asarray(imagecodecs.jpegxl_decode(data))
        except Exception as exc:
            raise CodecError(f"libjxl could not decode the stored bitstream: {exc}") from exc
        if out.ndim == 2:
            out = np.repeat(out[..., None], 3, axis=2)
        return np.ascontiguousarray(out[..., :3].astype(np.uint8, copy=False))

    def provenance(self):
        import imagecodecs

        return {"imagecodecs": imagecodecs.__version__, "libjxl": imagecodecs.jpegxl_version()}
