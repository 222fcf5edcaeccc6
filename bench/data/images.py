"""Reading images into the one in-memory form bench uses: uint8 RGB (H, W, 3).

Odd inputs are handled by an explicit policy, never silently (README, "Bad input"):

* **size**: an image of more than ``max_pixels()`` pixels (default ``DEFAULT_MAX_PIXELS`` =
  64 Mpx, 192 MiB as uint8 RGB; ``BENCH_MAX_PIXELS=N`` changes it, ``0`` = no limit) is
  refused with ImageError from its header alone, before any pixel is decoded, so a
  20,000 x 20,000 file (or a few-kB decompression bomb claiming that size) never allocates
  1.2 GB. bench sets Pillow's own bomb limit aside while opening and applies this one;
* **tiny images** (1x1, 2x2, ...) are read like any other; codecs that cannot code them
  pad (and crop back) or fail the unit with a CodecError, and metrics that need a
  minimum size leave those images out with a message (the runner's rules);
* grayscale (L, 1) and palette images are expanded to RGB; the conversion is
  returned as a note and recorded with the sample;
* RGBA/LA/PA with a fully opaque alpha channel: alpha is dropped (note);
  with any transparency: ImageError (bench evaluates RGB only);
* more than 8 bits per sample (16-bit grey or RGB(A) PNG/TIFF, 32-bit integer, float):
  ImageError (the protocols are 8-bit; convert first). Pillow would otherwise read a
  16-bit RGB PNG as 8-bit by dropping the low byte, silently;
* CMYK (print JPEGs, some photo collections): converted by Pillow's formula, without colour
  management, with a note. That is what the reference protocols evaluate (CompressAI's
  bench, clean-fid and pyiqa call ``convert("RGB")``), so a dataset holding CMYK files keeps
  them and its numbers stay comparable; a colour-managed viewer may show other colours.
  CIELAB and HSV images: ImageError (no such conversion to trust; convert them first);
* EXIF orientation: **not applied**. Pixels are evaluated as stored, exactly as the
  reference protocols read images (CompressAI's bench, clean-fid and pyiqa open files
  with Pillow and never call ``ImageOps.exif_transpose``); an orientation tag other
  than 1 (upright) adds a note naming it, so a rotated camera JPEG is visible in the
  run's notes. Codecs see the same stored pixels, so rate and quality are unaffected;
* unreadable or truncated files: ImageError naming the file.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64 * 2 ** 20  # 67,108,864 pixels: 8192 x 8192, or a 12,000 x 5,500 panorama
MAX_PIXELS_ENV = "BENCH_MAX_PIXELS"
DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
UNMANAGED_MODES = ("LAB", "HSV")  # refused: convert them with a colour-managed tool first
EXIF_ORIENTATION = 0x0112
ORIENTATIONS = {2: "mirrored", 3: "rotated 180°", 4: "flipped vertically", 5: "mirrored and rotated 90° CCW",
                6: "rotated 90° CW", 7: "mirrored and rotated 90° CW", 8: "rotated 90° CCW"}


class ImageError(ValueError):
    """An image that cannot be evaluated; the message names the file and the fix."""


def max_pixels() -> int | None:
    """The pixel limit of :func:`read_rgb` (``BENCH_MAX_PIXELS``; 0 or "none" = no limit)."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    if raw.lower() in ("0", "none"):
        return None
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        raise ImageError(f"{MAX_PIXELS_ENV}={raw!r} is not a number of pixels (e.g. {DEFAULT_MAX_PIXELS}, "
                         "or 0 for no limit)") from None
    if value < 0:
        raise ImageError(f"{MAX_PIXELS_ENV}={raw!r} must be >= 0 (0 = no limit)")
    return value or None


def check_pixels(height: int, width: int, where: str, what: str = "image") -> None:
    """ImageError when ``height x width`` is above :func:`max_pixels` (message: the size, the
    limit, the memory it would take, and how to raise the limit)."""
    limit = max_pixels()
    if limit is not None and height * width > limit:
        raise ImageError(f"{where}: {what} of {width}x{height} = {height * width:,} pixels is above bench's limit of "
                         f"{limit:,} pixels (it would take {3 * height * width / 2 ** 30:.1f} GiB as 8-bit RGB). "
                         f"Downscale or crop it, or raise the limit: {MAX_PIXELS_ENV}={height * width} "
                         f"(0 = no limit)")


def pixel_sha256(rgb: np.ndarray) -> str:
    """sha256 of the decoded pixels (H×W×3 uint8, row-major): an image's identity."""
    return hashlib.sha256(np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()).hexdigest()


def sample_bits(img: Image.Image) -> int:
    """Bits per sample the file stores, from the undecoded image's tiles (8 when unknown).
    Pillow decodes 16-bit RGB(A) PNG and TIFF to 8-bit modes, so the mode alone cannot tell."""
    if img.mode in DEEP_MODES:
        return 32 if img.mode in ("I", "F") else 16
    for tile in getattr(img, "tile", None) or ():
        args = tile[3] if len(tile) > 3 else None
        rawmode = args if isinstance(args, str) else args[0] if isinstance(args, tuple) and args and \
            isinstance(args[0], str) else ""
        if ";16" in rawmode:
            return 16
        if ";32" in rawmode:
            return 32
    return 8


def to_rgb(img: Image.Image, where: str, bits: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Convert a decoded Pillow image by the policy above; returns (rgb, notes). ``bits``:
    :func:`sample_bits` of the image before it was loaded (tiles are gone after loading)."""
    notes: list[str] = []
    mode = img.mode
    bits = bits if bits is not None else sample_bits(img)
    if bits > 8 or mode in DEEP_MODES:
        raise ImageError(f"{where}: {mode} image with {bits if bits > 8 else 'more than 8'} bits per sample "
                         "(more than 8 bits); bench's protocols use 8-bit RGB. "
                         "Convert it first, e.g. `python -c \"from PIL import Image; "
                         "im=Image.open('in.png'); im.point(lambda v: v/257).convert('RGB').save('out.png')\"` "
                         "(grey), or `convert in.png -depth 8 out.png` (ImageMagick)")
    if mode in UNMANAGED_MODES:
        raise ImageError(f"{where}: {mode} image; converting it to RGB needs colour management (its ICC "
                         "profile), which bench does not do. Convert it to 8-bit sRGB first, e.g. "
                         "`convert in.jpg -profile sRGB.icc out.png` (ImageMagick)")
    orientation = _orientation(img)
    if orientation not in (None, 1):
        notes.append(f"EXIF orientation {orientation} ({ORIENTATIONS.get(orientation, 'unknown')}) not applied: "
                     "pixels evaluated as stored, as CompressAI, clean-fid and pyiqa read them")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3]
        if alpha.min() < 255:
            raise ImageError(f"{where}: image has transparent pixels (alpha < 255); bench evaluates RGB only. "
                             "Flatten it onto a background first")
        notes.append(f"{mode}: fully opaque alpha dropped")
        return np.ascontiguousarray(np.asarray(rgba)[..., :3]), notes
    if mode == "CMYK":
        notes.append("CMYK converted to RGB by Pillow's formula, without colour management (as CompressAI, "
                     "clean-fid and pyiqa read it)")
    elif mode != "RGB":
        notes.append(f"{mode} converted to RGB")
    return np.ascontiguousarray(np.asarray(img.convert("RGB"))), notes


def _orientation(img: Image.Image) -> int | None:
    try:
        value = img.getexif().get(EXIF_ORIENTATION)
    except Exception:  # noqa: BLE001 - a damaged EXIF block is no reason to refuse the pixels
        return None
    return value if isinstance(value, int) else None


def open_image(path: Path | BinaryIO) -> Image.Image:
    """``Image.open`` with Pillow's decompression-bomb check set aside (bench applies its own
    limit, :func:`check_pixels`, with its own message and setting). Header only: no pixel
    is decoded yet. Not thread-safe (it sets Pillow's module-level limit for the call)."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        return Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def read_rgb(path: str | Path | BinaryIO, where: str | None = None) -> tuple[np.ndarray, list[str]]:
    """Read ``path`` (a file, or an open binary file such as an archive member's bytes named
    ``where`` in messages) as uint8 (H, W, 3) RGB by the policy above; returns (rgb, notes)."""
    if isinstance(path, (str, os.PathLike)):
        path = Path(path)
        if not path.is_file():
            raise ImageError(f"{path}: file not found")
    where = where or str(path)
    try:
        with open_image(path) as img:
            check_pixels(img.height, img.width, where)
            bits = sample_bits(img)
            img.load()
            return to_rgb(img, where, bits)
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, MemoryError,
            Image.DecompressionBombError) as exc:
        raise ImageError(f"{where}: not a readable image ({type(exc).__name__}: {exc}). "
                         "Replace or remove the file") from exc


def write_png(rgb: np.ndarray, path: Path) -> None:
    """Write uint8 RGB losslessly (fast zlib level: these are caches, not deliverables)."""
    Image.fromarray(rgb, "RGB").save(path, format="PNG", compress_level=1)
