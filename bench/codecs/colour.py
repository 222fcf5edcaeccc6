"""RGB <-> Y'CbCr conversion and planar YUV files, for codecs that take YCbCr
(VTM, BPG, ffmpeg-based tools).

Contracts
---------
* RGB is uint8 (H, W, 3), non-linear (gamma-encoded) R'G'B' as stored in PNGs;
  no transfer function is applied (as in every codec pipeline we compare with).
* ``matrix``: ``"bt709"`` (Kr=0.2126, Kb=0.0722; ITU-R BT.709-6 item 3.2) or
  ``"bt601"`` (Kr=0.299, Kb=0.114; ITU-R BT.601-7, also JFIF/JPEG).
* ``range``:
  ``"full"``: Y = round((2^n-1)·E'Y), C = round((2^n-1)·E'C + 2^(n-1))
  (ITU-T H.273 VideoFullRangeFlag=1; 8 bit: the JFIF convention);
  ``"limited"`` ("studio"): Y = round((219·E'Y + 16)·2^(n-8)),
  C = round((224·E'C + 128)·2^(n-8)); 8 bit: Y 16..235, C 16..240;
  10 bit: Y 64..940, C 64..960 (BT.709 item 4.6, BT.2100).
  E'Y in [0, 1], E'Cb/E'Cr in [-0.5, 0.5]. Codes are clipped to [0, 2^n-1].
* ``bits``: 8 (planes are uint8) or 10 (uint16, values < 1024). Any 8..16 works.
* ``chroma``: ``"444"`` (Cb, Cr have the luma size) or ``"420"`` (Cb, Cr have
  size (ceil(H/2), ceil(W/2))). Downsampling averages each 2×2 block of the
  full-resolution chroma (before rounding to integers); for odd H or W the last
  row/column is replicated, so the edge block averages the pixels it has.
  The 4:2:0 sample thus sits at the centre of its 2×2 block (JPEG/MPEG-1
  siting); MPEG-2/H.264/VVC's default left siting is not modelled.
  Upsampling: ``"nearest"`` repeats each sample over its 2×2 block;
  ``"bilinear"`` interpolates between sample centres (half-pixel offset, edge
  samples replicated), then crops to (H, W).
* Planes are a tuple ``(Y, Cb, Cr)`` of 2-D arrays. A planar ``.yuv`` file holds
  the Y plane, then Cb, then Cr, row-major, no header; samples are bytes for
  8 bit and little-endian uint16 for more (what VTM's ``--InputBitDepth=10``
  and ffmpeg's ``yuv420p10le``/``yuv444p10le`` read and write).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

MATRICES: dict[str, tuple[float, float]] = {"bt709": (0.2126, 0.0722), "bt601": (0.299, 0.114)}
RANGES = ("full", "limited")
CHROMAS = ("444", "420")
UPSAMPLING = ("nearest", "bilinear")


def _check(matrix: str, range: str, bits: int) -> tuple[float, float]:
    if matrix not in MATRICES:
        raise ValueError(f"matrix must be one of {', '.join(MATRICES)}, got {matrix!r}")
    if range not in RANGES:
        raise ValueError(f"range must be 'full' or 'limited', got {range!r}")
    if not isinstance(bits, (int, np.integer)) or not 8 <= bits <= 16:
        raise ValueError(f"bits must be an integer in 8..16, got {bits!r}")
    return MATRICES[matrix]


def _dtype(bits: int) -> type:
    return np.uint8 if bits == 8 else np.uint16


def _scale(range: str, bits: int) -> tuple[float, float, float, float]:
    """(y_gain, y_offset, c_gain, c_offset) mapping E'Y in [0,1] / E'C in [-.5,.5] to codes."""
    if range == "full":
        top = 2.0 ** bits - 1
        return top, 0.0, top, 2.0 ** (bits - 1)
    k = 2.0 ** (bits - 8)
    return 219 * k, 16 * k, 224 * k, 128 * k


def rgb_to_ycbcr_float(rgb: np.ndarray, matrix: str = "bt709") -> np.ndarray:
    """uint8 (H, W, 3) RGB -> float64 (H, W, 3) (E'Y in [0,1], E'Cb, E'Cr in [-0.5, 0.5])."""
    kr, kb = _check(matrix, "full", 8)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    e = rgb.astype(np.float64) / 255.0
    y = kr * e[..., 0] + (1 - kr - kb) * e[..., 1] + kb * e[..., 2]
    cb = (e[..., 2] - y) / (2 * (1 - kb))
    cr = (e[..., 0] - y) / (2 * (1 - kr))
    return np.stack([y, cb, cr], axis=-1)


def _quantise(x: np.ndarray, gain: float, offset: float, bits: int) -> np.ndarray:
    return np.clip(np.rint(x * gain + offset), 0, 2 ** bits - 1).astype(_dtype(bits))


def rgb_to_planes(rgb: np.ndarray, matrix: str = "bt709", range: str = "full", bits: int = 8,
                  chroma: str = "444") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 (H, W, 3) RGB -> integer planes (Y, Cb, Cr): uint8 for 8 bit, else uint16.
    Y is (H, W); Cb, Cr are (H, W) for "444", (ceil(H/2), ceil(W/2)) for "420"
    (2×2 mean of the unrounded chroma, edges replicated; see module docstring)."""
    _check(matrix, range, bits)
    if chroma not in CHROMAS:
        raise ValueError(f"chroma must be '444' or '420', got {chroma!r}")
    f = rgb_to_ycbcr_float(rgb, matrix)
    yg, yo, cg, co = _scale(range, bits)
    cb, cr = f[..., 1], f[..., 2]
    if chroma == "420":
        cb, cr = downsample_420(cb), downsample_420(cr)
    return _quantise(f[..., 0], yg, yo, bits), _quantise(cb, cg, co, bits), _quantise(cr, cg, co, bits)


def planes_to_rgb(planes: tuple[np.ndarray, np.ndarray, np.ndarray], matrix: str = "bt709", range: str = "full",
                  bits: int = 8, upsample: str = "bilinear") -> np.ndarray:
    """Integer planes (Y (H, W), Cb, Cr either (H, W) or (ceil(H/2), ceil(W/2))) ->
    uint8 (H, W, 3) RGB (rounded, clipped to 0..255). 4:2:0 chroma is upsampled with
    ``upsample`` ("nearest" or "bilinear")."""
    kr, kb = _check(matrix, range, bits)
    y, cb, cr = planes
    h, w = y.shape
    if cb.shape != cr.shape:
        raise ValueError(f"Cb {cb.shape} and Cr {cr.shape} differ in size")
    yg, yo, cg, co = _scale(range, bits)
    ey = (y.astype(np.float64) - yo) / yg
    ecb = (cb.astype(np.float64) - co) / cg
    ecr = (cr.astype(np.float64) - co) / cg
    if cb.shape == (h, w):
        pass
    elif cb.shape == ((h + 1) // 2, (w + 1) // 2):
        ecb, ecr = upsample_420(ecb, (h, w), upsample), upsample_420(ecr, (h, w), upsample)
    else:
        raise ValueError(f"chroma planes {cb.shape} fit neither 4:4:4 nor 4:2:0 for luma {y.shape}")
    r = ey + 2 * (1 - kr) * ecr
    b = ey + 2 * (1 - kb) * ecb
    g = (ey - kr * r - kb * b) / (1 - kr - kb)
    rgb = np.stack([r, g, b], axis=-1) * 255.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def rgb_to_ycbcr(rgb: np.ndarray, matrix: str = "bt709", range: str = "full", bits: int = 8) -> np.ndarray:
    """4:4:4 shortcut: uint8 (H, W, 3) RGB -> (H, W, 3) Y, Cb, Cr codes (uint8 or uint16)."""
    return np.stack(rgb_to_planes(rgb, matrix, range, bits, "444"), axis=-1)


def ycbcr_to_rgb(ycc: np.ndarray, matrix: str = "bt709", range: str = "full", bits: int = 8) -> np.ndarray:
    """4:4:4 shortcut: (H, W, 3) Y, Cb, Cr codes -> uint8 (H, W, 3) RGB."""
    return planes_to_rgb((ycc[..., 0], ycc[..., 1], ycc[..., 2]), matrix, range, bits)


def downsample_420(plane: np.ndarray) -> np.ndarray:
    """Float (H, W) -> float (ceil(H/2), ceil(W/2)): mean of each 2×2 block; an odd last
    row/column is replicated (so an edge block is the mean of the pixels it covers)."""
    h, w = plane.shape
    p = np.pad(plane.astype(np.float64), ((0, h % 2), (0, w % 2)), mode="edge")
    return (p[0::2, 0::2] + p[1::2, 0::2] + p[0::2, 1::2] + p[1::2, 1::2]) / 4.0


def upsample_420(plane: np.ndarray, shape: tuple[int, int], method: str = "bilinear") -> np.ndarray:
    """Float (ceil(H/2), ceil(W/2)) -> float ``shape`` = (H, W). "nearest": each sample
    fills its 2×2 block; "bilinear": sample i sits at full-resolution position 2i+0.5,
    values in between are interpolated linearly, beyond the outer samples replicated."""
    h, w = shape
    if plane.shape != ((h + 1) // 2, (w + 1) // 2):
        raise ValueError(f"a 4:2:0 chroma plane for {shape} is {((h + 1) // 2, (w + 1) // 2)}, got {plane.shape}")
    plane = plane.astype(np.float64)
    if method == "nearest":
        return plane.repeat(2, 0).repeat(2, 1)[:h, :w]
    if method != "bilinear":
        raise ValueError(f"upsample must be one of {', '.join(UPSAMPLING)}, got {method!r}")

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(n_out) - 0.5) / 2.0, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, pos - lo

    r0, r1, fr = axis(h, plane.shape[0])
    c0, c1, fc = axis(w, plane.shape[1])
    rows = plane[r0] * (1 - fr)[:, None] + plane[r1] * fr[:, None]
    return rows[:, c0] * (1 - fc)[None, :] + rows[:, c1] * fc[None, :]


def write_yuv(path: str | Path, planes: tuple[np.ndarray, np.ndarray, np.ndarray], bits: int = 8) -> None:
    """Write Y, Cb, Cr (in that order, no header) to ``path``: bytes for 8 bit, else
    little-endian uint16. Values must fit ``bits``."""
    with open(path, "wb") as f:
        for p in planes:
            if p.ndim != 2 or p.size and int(p.max()) >= 2 ** bits:
                raise ValueError(f"plane {p.shape} does not hold {bits}-bit samples")
            f.write(np.ascontiguousarray(p, dtype=np.uint8 if bits == 8 else "<u2").tobytes())


def read_yuv(path: str | Path, width: int, height: int, bits: int = 8,
             chroma: str = "444") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one frame written by :func:`write_yuv` (or VTM/ffmpeg): planes (Y, Cb, Cr)
    as uint8 (8 bit) or uint16 (native order). ValueError if the size does not match."""
    if chroma not in CHROMAS:
        raise ValueError(f"chroma must be '444' or '420', got {chroma!r}")
    cw, ch = (width, height) if chroma == "444" else ((width + 1) // 2, (height + 1) // 2)
    sample = 1 if bits == 8 else 2
    data = Path(path).read_bytes()
    expected = (width * height + 2 * cw * ch) * sample
    if len(data) != expected:
        raise ValueError(f"{path}: {len(data)} bytes, but one {width}x{height} {chroma} {bits}-bit frame "
                         f"is {expected} bytes")
    arr = np.frombuffer(data, dtype=np.uint8 if bits == 8 else "<u2")
    n = width * height
    y = arr[:n].reshape(height, width)
    cb = arr[n:n + cw * ch].reshape(ch, cw)
    cr = arr[n + cw * ch:].reshape(ch, cw)
    dt = _dtype(bits)
    return y.astype(dt), cb.astype(dt), cr.astype(dt)


# --------------------------------------------------------------------------- CompressAI's bench convention
def compressai_rgb_to_planes(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 (H, W, 3) RGB -> uint8 4:4:4 planes exactly as ``compressai.utils.bench``
    prepares VTM's input (1.2.8, ``VTM._run_impl``): float32 RGB/255, BT.709
    ``compressai.transforms.functional.rgb2ycbcr`` (Y = Kr R + Kg G + Kb B,
    Cb = 0.5 (B - Y) / (1 - Kb) + 0.5, Cr likewise: chroma centred on 0.5, i.e. code
    127.5, not 128), clipped to [0, 1], times 255 and *truncated* (``astype(uint8)``)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    f = np.float32  # torch float32 tensors with Python-float scalars: each scalar is rounded to float32
    (kr, kb), kg = MATRICES["bt709"], 0.7152
    e = rgb.astype(f) / f(255)
    r, g, b = e[..., 0], e[..., 1], e[..., 2]
    y = f(kr) * r + f(kg) * g + f(kb) * b
    cb = f(0.5) * (b - y) / f(1 - kb) + f(0.5)
    cr = f(0.5) * (r - y) / f(1 - kr) + f(0.5)
    return tuple((np.clip(p, 0, 1) * np.float32(255)).astype(np.uint8) for p in (y, cb, cr))


def compressai_planes_to_rgb(planes: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """uint8 4:4:4 planes -> uint8 (H, W, 3) RGB as ``compressai.utils.bench`` reads VTM's
    output: planes/255 in float32, ``ycbcr2rgb`` (R = Y + (2 - 2 Kr)(Cr - 0.5),
    B = Y + (2 - 2 Kb)(Cb - 0.5), G = (Y - Kr R - Kb B) / Kg), clipped to [0, 1], times
    255 and truncated."""
    f = np.float32
    (kr, kb), kg = MATRICES["bt709"], 0.7152
    y, cb, cr = (p.astype(f) / f(255) for p in planes)
    if not (y.shape == cb.shape == cr.shape):
        raise ValueError(f"CompressAI's convention is 4:4:4: planes {y.shape}, {cb.shape}, {cr.shape}")
    r = y + f(2 - 2 * kr) * (cr - f(0.5))
    b = y + f(2 - 2 * kb) * (cb - f(0.5))
    g = (y - f(kr) * r - f(kb) * b) / f(kg)
    return (np.clip(np.stack([r, g, b], axis=-1), 0, 1) * f(255.0)).astype(np.uint8)
