"""The bodies of a toy codec (quantise each channel to `point` levels, zlib, a 10-byte header
with magic, size and levels) that the plugin tests put into adapters, as a user would. They
need ``struct``, ``zlib``, ``numpy as np``, ``CodecError`` and ``MAGIC`` (``HEADER``)."""

HEADER = '''import struct
import zlib

MAGIC = b"QNT1"
'''
ENCODE = '''
        h, w = rgb.shape[:2]
        levels = int(point)
        if levels != point or not 2 <= levels <= 256:
            raise CodecError(f"quant: a rate point is a number of levels in [2, 256], got {point!r}")
        q = (rgb.astype(np.uint16) * levels // 256).astype(np.uint8)
        return MAGIC + struct.pack(">HHH", h, w, levels) + zlib.compress(q.tobytes(), 9)'''
DECODE = '''
        if len(data) < 10 or data[:4] != MAGIC:
            raise CodecError(f"quant: not a quant bitstream ({len(data)} bytes)")
        h, w, levels = struct.unpack(">HHH", data[4:10])
        try:
            q = zlib.decompress(data[10:])
        except zlib.error as exc:
            raise CodecError(f"quant: corrupt payload: {exc}") from exc
        if len(q) != h * w * 3 or not 2 <= levels <= 256:
            raise CodecError(f"quant: the payload does not match the header ({h}x{w}, {levels} levels)")
        step = 256 / levels
        rec = np.frombuffer(q, np.uint8).reshape(h, w, 3) * step + step / 2
        return np.clip(np.round(rec), 0, 255).astype(np.uint8)'''
FINGERPRINT = '''return {"zlib": zlib.ZLIB_RUNTIME_VERSION}'''
