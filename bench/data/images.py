"""Reading images into the one in-memory form bench uses: uint8 RGB (H, W, 3).

Odd inputs are handled by an explicit policy, never silently:
* grayscale (L, I;16 grey excluded) and palette images are expanded to RGB; the
  conversion is returned as a note and recorded with the sample;
* RGBA/LA with a fully opaque alpha channel: alpha is dropped (note);
  with any transparency: ImageError (bench evaluates RGB only);
* 16-bit or float images: ImageError (the protocols are 8-bit; convert first);
* unreadable or truncated files: ImageError naming the file.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


class ImageError(ValueError):
    """An image that cannot be evaluated; the message names the file and the fix."""


def pixel_sha256(rgb: np.ndarray) -> str:
    """sha256 of the decoded pixels (H×W×3 uint8, row-major): an image's identity."""
    return hashlib.sha256(np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()).hexdigest()


def to_rgb(img: Image.Image, where: str) -> tuple[np.ndarray, list[str]]:
    """Convert a decoded Pillow image by the policy above; returns (rgb, notes)."""
    notes: list[str] = []
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F") or (mode == "RGB" and img.getbands() != ("R", "G", "B")):
        raise ImageError(f"{where}: {mode} image with more than 8 bits per sample; bench's protocols use 8-bit RGB. "
                         "Convert it first, e.g. `python -c \"from PIL import Image; "
                         "im=Image.open('in.png'); im.point(lambda v: v/257).convert('RGB').save('out.png')\"`")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3]
        if alpha.min() < 255:
            raise ImageError(f"{where}: image has transparent pixels (alpha < 255); bench evaluates RGB only. "
                             "Flatten it onto a background first")
        notes.append(f"{mode}: fully opaque alpha dropped")
        return np.ascontiguousarray(np.asarray(rgba)[..., :3]), notes
    if mode != "RGB":
        notes.append(f"{mode} converted to RGB")
    return np.ascontiguousarray(np.asarray(img.convert("RGB"))), notes


def read_rgb(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Read ``path`` as uint8 (H, W, 3) RGB; returns (rgb, conversion notes)."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: file not found")
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img, str(path))
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: not a readable image ({exc}). Replace or remove the file") from exc


def write_png(rgb: np.ndarray, path: Path) -> None:
    """Write uint8 RGB losslessly (fast zlib level: these are caches, not deliverables)."""
    Image.fromarray(rgb, "RGB").save(path, format="PNG", compress_level=1)
