"""The codec adapter contract.

An adapter turns an RGB image into bytes and those bytes, alone, back into an
RGB image of the same size:

    data = codec.encode(rgb, point, seed)   # rgb: uint8 (H, W, 3); -> bytes
    recon = codec.decode(data, seed)        # -> uint8 (H, W, 3), same H, W

* Everything the decoder needs (size, model id, caption, ...) must be inside
  ``data``: the harness decodes in a fresh call with nothing else passed.
* Rate is measured by the harness from ``len(data)``; an adapter never reports
  its own rate. An adapter whose official code only estimates rate sets
  ``rate_kind = "estimated"``.
* Padding/cropping to a block size is the adapter's job and is undone on decode.
* ``version`` is part of every result's resume key: bump it when a change to
  the adapter changes its bytes or reconstructions.
* ``fingerprint(point)`` is the rest of the resume key: everything outside the card
  and the adapter's code that can change bytes or pixels (library versions,
  external programs' sha256, weight files' sha256, dtype). The runner computes
  it once per card and point per invocation; a unit stored under another fingerprint is
  recomputed.
* The harness builds one instance for encoding and a separate, fresh instance
  (from the same card) for decoding, so no instance state can carry the image
  from encoder to decoder.
* ``uses_captions = True``: ``encode(rgb, point, seed, captions=[...])`` also takes the
  dataset's ground-truth captions of the image (an empty list where the dataset has none);
  the runner passes them. Whatever the encoder uses of them must go into the bytes.
* ``weights`` labels where a learned adapter's parameters came from:
  ``"none"`` (no learned parameters), ``"pretrained"`` (official files,
  checked by sha256) or ``"random"`` (``--init random``: seeded random weights
  for smoke tests; figures, golden and reference comparisons refuse such rows).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np


INITS = ("pretrained", "random")


class CodecError(RuntimeError):
    """An adapter failed on an input; the message says why and what to do."""


class Codec(ABC):
    """Base class of all codec adapters (see module docstring for the contract)."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    rate_kind: ClassVar[str] = "real"  # "real" (bytes on disk) or "estimated"
    point_name: ClassVar[str] = "quality"  # what a rate point means for this adapter
    higher_point_is_better: ClassVar[bool] = True  # False for distances/quantizers (bigger = fewer bits)
    default_points: ClassVar[tuple] = ()
    stochastic: ClassVar[bool] = False  # True: decode(data, seed) depends on seed
    lossless: ClassVar[bool] = False  # True: decode(encode(rgb)) == rgb (a card's `lossless:` overrides it)
    uses_captions: ClassVar[bool] = False  # True: encode() takes captions=[...] (see module docstring)
    description: ClassVar[str] = ""

    def __init__(self, device: str = "cpu", dtype: str = "float32", init: str = "pretrained", **params: Any) -> None:
        """``device``/``dtype``/``init`` are the run's settings (``--device``, ``--dtype``,
        ``--init``); adapters without learned parameters ignore them. ``params`` come
        from the card."""
        if init not in INITS:
            raise CodecError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        self.device = device
        self.dtype = dtype
        self.init = init
        self.params = params

    @property
    def weights(self) -> str:
        """"none", "pretrained" or "random" (see module docstring)."""
        return "none"

    @classmethod
    def available(cls, **params: Any) -> tuple[bool, str]:
        """``(True, "")`` if usable here with the card's ``params``, else ``(False, reason and remedy)``."""
        return True, ""

    @abstractmethod
    def encode(self, rgb: np.ndarray, point: Any, seed: int = 0) -> bytes:
        """uint8 (H, W, 3) RGB at rate ``point`` -> the bitstream (everything the decoder needs)."""

    @abstractmethod
    def decode(self, data: bytes, seed: int = 0) -> np.ndarray:
        """The bitstream alone -> uint8 (H, W, 3) RGB of the original size."""

    def bits_breakdown(self, data: bytes) -> dict[str, int] | None:
        """Optional split of ``8*len(data)`` into payload / side / container bits."""
        return None

    def provenance(self) -> dict[str, Any]:
        """What produced the bytes: library versions, binary paths and hashes."""
        return {}

    def required_weights(self, points: Any = None) -> list[str]:
        """Weight ids (``bench.weights``) that encoding/decoding at ``points`` needs; the
        runner checks them all before any work. No learned parameters: none."""
        return []

    def fingerprint(self, point: Any) -> dict[str, Any]:
        """What the resume key of a unit at rate ``point`` covers beyond the card's
        parameters and ``version``: library/program/weight versions that can change
        bytes or pixels (a learned codec: the sha256 of that point's weight file, so
        a new file recomputes only its point). JSON-able; must not build a model.
        Default: ``provenance()``; override to leave out what cannot change results
        (e.g. a program's path when its sha256 is there)."""
        return self.provenance()


def check_rgb(rgb: np.ndarray) -> None:
    """Raise CodecError unless ``rgb`` is uint8 of shape (H, W, 3)."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        got = f"{getattr(rgb, 'dtype', type(rgb))} {getattr(rgb, 'shape', '')}"
        raise CodecError(f"codecs take uint8 RGB arrays of shape (H, W, 3); got {got}")


def check_recon(codec_name: str, original_shape: tuple, recon: np.ndarray) -> np.ndarray:
    """Enforce the reconstruction contract; returns ``recon`` as contiguous uint8."""
    if not isinstance(recon, np.ndarray) or recon.dtype != np.uint8:
        raise CodecError(f"codec {codec_name!r} decoded to {type(recon)}/{getattr(recon, 'dtype', '?')}, not uint8")
    if recon.shape != tuple(original_shape):
        raise CodecError(
            f"codec {codec_name!r} decoded an image of shape {recon.shape}, but the original is "
            f"{tuple(original_shape)}: adapters must undo any padding or cropping on decode"
        )
    return np.ascontiguousarray(recon)
