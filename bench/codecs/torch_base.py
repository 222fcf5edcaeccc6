"""TorchCodec: the base of every learned codec adapter (CompressAI zoo, MS-ILLM, HiFiC, CDC, PerCo).

What a family writes (see ``bench/codecs/zoo`` for a complete one)::

    class MyCodec(TorchCodec):
        name = "my-codec"; family = "my"; libraries = ("compressai",)
        pad_multiple = 64                               # inputs padded to a multiple of this
        reduced_precision = ("g_a", "g_s")              # submodules that may run in --dtype
        def weight_table(self): return {1: "my-q1", 2: "my-q2"}   # rate point -> weight id(s)
        def build_model(self, point, files): ...         # nn.Module; files=None under --init random
        def encode_tensor(self, model, x, point, seed): ...   # -> ([Section, ...], decoder dims)
        def decode_tensor(self, model, container, generator): ...  # -> (1, 3, Hp, Wp) in [0, 1]

and a light ``weights.py`` beside it whose ``WEIGHTS`` lists the files (URL,
sha256 or its 8-hex prefix, licence, place): :mod:`bench.weights` merges it into
the one table that ``bench weights list|fetch|import|verify`` show.

The base does the rest:

* **Weights as data, lazy build.** ``weight_table()`` maps each rate point to
  weight ids of the registry. The model of a point is built on the first
  encode/decode at that point (``model(point)``), after :func:`bench.weights.require`
  has checked its files: a missing or wrong file raises :class:`WeightsMissing`
  (a :class:`CodecError`) naming the URL, the expected sha256 and the exact path.
  Nothing is downloaded during a run (``weights.no_downloads`` guards the build).
  Models are cached per point (at most ``max_cached_models``; ``None`` = all).
* **init.** ``init="pretrained"`` loads the files; ``init="random"`` builds the same
  architecture with seeded random weights and reads no file. The seed depends only
  on ``family``, ``arch`` and the point (:meth:`random_seed`), so a fresh instance
  rebuilds the very same network and decodes another instance's bytes. ``weights``
  is ``"pretrained"`` or ``"random"`` accordingly.
* **device**: ``cpu``, ``cuda`` or ``cuda:N`` (checked when a model is built: no CUDA
  -> clear error). Networks are built on the CPU (so random init is identical on
  every device) and moved to ``device``.
* **dtype**: ``float32`` (default), ``bfloat16``, ``float16`` (CUDA only: CPU half
  kernels are slow and partial, so ``float16`` with ``device=cpu`` is refused at
  construction; use ``bfloat16`` on CPU). *Precision rule*: only the submodules
  named in ``reduced_precision`` run in ``dtype`` (their input is cast to ``dtype``,
  their output back to float32). Name there only transforms whose output never
  has to be recomputed identically on the other side: analysis transforms (their
  result reaches the decoder only as integers inside the bitstream) and the
  final synthesis (its output is the reconstruction). Everything that yields
  entropy-coding parameters - hyper-synthesis, context models, CDF tables, means
  and scales - stays float32 on both sides and is evaluated per image with the
  same shapes in encoder and decoder, so both derive bit-identical CDF indexes.
  Consequences: bytes written under one dtype decode under another; bytes and
  reconstructions do depend on dtype (it is in the fingerprint); bytes are not
  guaranteed to decode on another device type (float32 convolutions differ in
  the last bits between CPU and CUDA), so the device type is in the fingerprint.
* **Padding**: inputs are padded to a multiple of ``pad_multiple`` with
  ``pad_mode`` (``"replicate"``: edge pixels, the default; ``"zeros"``: black),
  at the bottom/right or, with ``pad_center``, split evenly around the image
  (CompressAI's evaluation convention); decode crops back to the original
  height and width, which the container stores.
* **Container**: the bytes are a :mod:`bench.codecs.container` holding the codec id
  (``container_id``), the point, (H, W, *decoder dims), the weights identity
  (``model_id``: the 8-hex sha256 prefix, or "random") and the family's sections;
  a decoder with other weights or another codec refuses the bytes with a clear
  error. ``bits_breakdown`` reports payload / side / container bits.
* **Batched decode**: ``decode_batch(datas, seeds)`` decodes items that share point
  and dims together: ``decode_tensors`` gets up to ``decode_batch_size`` of them.
  Its default calls ``decode_tensor`` one by one; a family overrides it to run one
  forward pass (keeping entropy decoding per item, see the precision rule).
  ``batch_decode_exact = True`` states that item i's pixels are *identical* to
  ``decode(datas[i], seeds[i])`` (a test must show it): only then does the runner decode
  the bitstreams of a ``--batch`` together, so a result never depends on the batch size.
  The zoo sets it on the CPU (per-image entropy decoding, one synthesis pass: equal there;
  on CUDA not yet shown, so one by one there until tests/test_batching.py's GPU test passes).
  CDC and PerCo leave it False (their batched sampling moves pixels by up to one level)
  and so does MS-ILLM (its decoder is run one image at a time on purpose: a batched pass
  changed one pixel by one level); ``decode_batch`` still serves callers that accept that.
* **Seeds**: ``generator(seed)`` is a ``torch.Generator`` on the device seeded with
  ``seed``; stochastic decoders (``stochastic = True``) draw all their noise from the
  generator passed to ``decode_tensor``/``decode_tensors`` (one per item:
  ``batch_noise`` stacks per-item draws), so N seeds give N samples of one
  bitstream and a sample does not depend on what else shares its batch.
* **fingerprint(point)** (cheap: no model is built) = versions of torch and of
  ``libraries``, dtype, device type, and the point's weights: under
  ``init="pretrained"`` each file's expected sha256 (or prefix) from the table and
  the actual file's sha256 when present (hashed once per process); under
  ``init="random"`` ``{"init": "random", "seed": ...}``.
* **provenance()**: library versions, dtype, device, init and every weight file's
  path, expected and actual sha256.

torch (and the family's libraries) are imported when a model is built, never at
import time: ``bench codecs list`` must stay fast.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from bench import weights
from bench.codecs.base import Codec, CodecError, check_recon, check_rgb
from bench.codecs.container import Container, ContainerError, Section, bits_breakdown, unpack
from bench.data.images import ImageError, check_pixels
from bench.hashing import sha256_file_cached

DTYPES = ("float32", "float16", "bfloat16")
RANS_SLACK_PER_PIXEL = 8  # zero bytes after an entropy-coded string, per padded image pixel (rans_input)
PAD_MODES = {"replicate": "replicate", "zeros": "constant"}
_DEVICE = re.compile(r"^(cpu|cuda(:[0-9]+)?)$")


def rans_input(data: bytes, height: int, width: int) -> bytes:
    """``data`` followed by ``RANS_SLACK_PER_PIXEL`` zero bytes per pixel of the padded
    ``height`` x ``width`` image, for CompressAI's rANS decoder (``compressai.ans``).

    That decoder reads its input through a raw pointer with no bounds check: a string shorter
    than the symbols it is asked to decode makes it read past the buffer, and a big enough
    overrun kills the process (SIGSEGV; measured with an emptied hyper-latent string of a
    768x512 image). The container's CRC-32 keeps damaged bytes away from it; this keeps
    crafted ones (valid CRC, edited sections) in bounds. A valid string is consumed to its
    end and never reaches the zeros, so decoding valid bytes is unchanged. Why 8 bytes a pixel:
    the zoo's latents hold at most 1.25 symbols per pixel (320 channels at 1/16 x 1/16) and a
    symbol's renormalisation reads at most one 32-bit word; bypass-coded symbols read more,
    but a zero-filled state decodes the first symbol, which is not the bypass escape. An
    engineering bound, not a proof: tests/test_hostile_bitstreams.py forges sections with
    Hypothesis and runs the regression that crashed (1 byte a pixel was already enough)."""
    return bytes(data) + bytes(RANS_SLACK_PER_PIXEL * height * width)


class WeightsMissing(CodecError):
    """Pretrained weight files are not in place; the message names each file's URL,
    expected sha256 and exact path. ``missing`` lists the weight ids."""

    def __init__(self, message: str, missing: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.missing = list(missing)


@functools.lru_cache(maxsize=None)
def library_version(dist: str) -> str | None:
    """Installed version of a distribution (no import), or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=None)
def _cast_class():
    import torch

    class CastTo(torch.nn.Module):
        """Runs ``inner`` in ``dtype``: input cast to it, output back to float32."""

        def __init__(self, inner: torch.nn.Module, dtype: torch.dtype) -> None:
            super().__init__()
            self.inner = inner.to(dtype)
            self.dtype = dtype

        def forward(self, x):
            return self.inner(x.to(self.dtype)).to(torch.float32)

    return CastTo


class TorchCodec(Codec):
    """Base of learned codec adapters (see the module docstring)."""

    family: ClassVar[str] = ""  # e.g. "zoo": part of the random-init seed
    libraries: ClassVar[tuple[str, ...]] = ()  # distributions (besides torch) whose versions can change results
    pad_multiple: ClassVar[int] = 64
    pad_mode: ClassVar[str] = "replicate"  # one of PAD_MODES
    pad_center: ClassVar[bool] = False  # True: pad evenly around the image, else bottom/right
    reduced_precision: ClassVar[tuple[str, ...]] = ()  # submodule names allowed to run in dtype
    decode_batch_size: ClassVar[int] = 8
    batch_decode_exact: ClassVar[bool] = False  # True: decode_batch's pixels == decode's (tested); see module doc
    max_cached_models: ClassVar[int | None] = None

    def __init__(self, device: str = "cpu", dtype: str = "float32", init: str = "pretrained", **params: Any) -> None:
        super().__init__(device, dtype, init, **params)
        if not isinstance(device, str) or not _DEVICE.match(device):
            raise CodecError(f"{self.name}: device must be cpu, cuda or cuda:N, got {device!r}")
        if dtype not in DTYPES:
            raise CodecError(f"{self.name}: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if dtype == "float16" and device == "cpu":
            raise CodecError(f"{self.name}: dtype float16 needs a CUDA device (CPU half-precision kernels are slow "
                             "and incomplete); on CPU use --dtype bfloat16 or float32")
        self._models: OrderedDict[Any, Any] = OrderedDict()

    # ------------------------------------------------------------------ what a family defines
    @property
    def arch(self) -> str:
        """The architecture (part of the random-init seed); default: the adapter name."""
        return self.name

    @property
    def container_id(self) -> str:
        """The short codec id written into (and required from) every container."""
        return self.name

    def weight_table(self) -> Mapping[Any, str | tuple[str, ...]]:
        """Rate point -> weight id (or ids) in :mod:`bench.weights`; its keys are the valid points."""
        raise NotImplementedError

    def build_model(self, point: Any, files: list[Path] | None) -> Any:
        """The network of ``point`` (a torch.nn.Module, built on the CPU in float32): loaded from
        ``files`` (the point's weight files, in ``weight_table`` order), or, with ``files=None``
        (``init="random"``), left with the random initial weights (the base seeds torch's RNG)."""
        raise NotImplementedError

    def prepare(self, model: Any, point: Any) -> None:
        """Hook after the build, still on the CPU in float32 (e.g. compute entropy-coder tables)."""

    def encode_tensor(self, model: Any, x: Any, point: Any, seed: int) -> tuple[list[Section], tuple[int, ...]]:
        """``x``: (1, 3, Hp, Wp) float32 in [0, 1] on the device, already padded.
        Returns the sections and the dims the decoder needs besides (H, W)."""
        raise NotImplementedError

    def decode_tensor(self, model: Any, container: Container, generator: Any) -> Any:
        """One container -> (1, 3, Hp, Wp) float tensor in [0, 1] (padded size)."""
        raise NotImplementedError

    def decode_tensors(self, model: Any, containers: list[Container], generators: list[Any]) -> Any:
        """Containers with the same point and dims -> (B, 3, Hp, Wp). Default: one by one."""
        import torch

        return torch.cat([self.decode_tensor(model, c, g) for c, g in zip(containers, generators)])

    # ------------------------------------------------------------------ points and weights
    @property
    def weights(self) -> str:
        return "random" if self.init == "random" else "pretrained"

    @classmethod
    def available(cls, **params: Any) -> tuple[bool, str]:
        missing = [d for d in ("torch", *cls.libraries) if library_version(d) is None]
        if missing:
            return False, f"needs the Python packages {', '.join(missing)} (pip install {' '.join(missing)})"
        return True, ""

    def points(self) -> tuple:
        return tuple(self.weight_table())

    def point_key(self, point: Any) -> Any:
        """``point`` as the key of ``weight_table`` (3.0 -> 3); CodecError listing valid points."""
        table = self.weight_table()
        if not isinstance(point, bool) and point in table:
            return next(k for k in table if k == point)
        raise CodecError(f"{self.name}: no rate point {point!r}; valid points: "
                         f"{', '.join(map(str, table))}")

    def weight_ids(self, point: Any) -> tuple[str, ...]:
        ids = self.weight_table()[self.point_key(point)]
        return (ids,) if isinstance(ids, str) else tuple(ids)

    def required_weights(self, points: Sequence[Any] | None = None) -> list[str]:
        """Weight ids the given points (default: all) need; none under ``init="random"``.
        A runner can pass them to :func:`bench.weights.require` before any work."""
        if self.init == "random":
            return []
        return list(dict.fromkeys(i for p in (self.points() if points is None else points)
                                  for i in self.weight_ids(p)))

    def random_seed(self, point: Any) -> int:
        """The random-init seed of ``point``: from family, arch and point only."""
        text = f"{self.family}/{self.arch}/{self.point_key(point)!r}"
        return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)

    def model_id(self, point: Any) -> str:
        """Short weights identity written into the container: "random", or the 8-hex
        sha256 prefix of the point's weight file (of all its files' prefixes when several).
        An unverified entry (no digest published) is identified by the prefix of the file
        in place ("" while it is absent: such bytes cannot be decoded here anyway, and the
        model build then names the missing file)."""
        if self.init == "random":
            return "random"
        prefixes = [self._file_prefix(i) for i in self.weight_ids(point)]
        return prefixes[0] if len(prefixes) == 1 else hashlib.sha256("+".join(prefixes).encode()).hexdigest()[:8]

    @staticmethod
    def _file_prefix(weight_id: str) -> str:
        entry = weights.entry(weight_id)
        if entry.sha256_prefix or entry.sha256:
            return entry.sha256_prefix or entry.sha256[:8]
        path = weights.path(weight_id)
        return weights.sha256_file(path)[:8] if path.is_file() else ""

    # ------------------------------------------------------------------ the model
    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]

    def model(self, point: Any) -> Any:
        """The network of ``point``, built (and checked) on first use, then cached."""
        key = self.point_key(point)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        files = None
        if self.init == "pretrained":
            ids = self.weight_ids(key)
            try:
                weights.require(ids)
            except weights.WeightsError as exc:
                raise WeightsMissing(f"{self.name}: rate point {key!r} needs pretrained weights. {exc}",
                                     exc.missing) from exc
            files = [weights.path(i) for i in ids]
        torch = self._torch()
        with torch.random.fork_rng(devices=[]), weights.no_downloads():
            torch.manual_seed(self.random_seed(key))
            try:
                model = self.build_model(key, files)
            except (CodecError, weights.WeightsError):
                raise
            except Exception as exc:  # a damaged or foreign file (e.g. an unverified entry's): name it
                if not files:
                    raise
                ids = list(self.weight_ids(key))
                raise CodecError(
                    f"{self.name}: cannot load the weight file(s) of rate point {key!r} "
                    f"({', '.join(map(str, files))}): {type(exc).__name__}: {str(exc)[:300]}. The file is damaged or "
                    f"not the expected checkpoint: delete it and get it again with `bench weights fetch "
                    f"{' '.join(ids)}` (or `bench weights import FILE` with the official file)") from exc
        model.eval().requires_grad_(False)
        self.prepare(model, key)
        model = self.apply_precision(model.to(self.device))
        self._models[key] = model
        if self.max_cached_models is not None:
            while len(self._models) > self.max_cached_models:
                self._models.popitem(last=False)
        return model

    def _torch(self):
        import torch

        if self.device_type == "cuda":
            if not torch.cuda.is_available():
                raise CodecError(f"{self.name}: device {self.device!r} requested, but this torch sees no CUDA device "
                                 "(torch.cuda.is_available() is False); use --device cpu")
            index = int(self.device.split(":")[1]) if ":" in self.device else 0
            if index >= torch.cuda.device_count():
                raise CodecError(f"{self.name}: device {self.device!r} requested, but only "
                                 f"{torch.cuda.device_count()} CUDA device(s) are visible")
        return torch

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)

    def apply_precision(self, model: Any) -> Any:
        """Wrap the ``reduced_precision`` submodules to run in ``dtype`` (see the precision rule)."""
        if self.dtype == "float32":
            return model
        cast = _cast_class()
        for name in self.reduced_precision:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            sub = getattr(parent, child, None)
            if sub is not None:
                setattr(parent, child, cast(sub, self.torch_dtype))
        return model

    def generator(self, seed: int):
        """A ``torch.Generator`` on the device, seeded with ``seed``."""
        torch = self._torch()
        g = torch.Generator(device=self.device)
        g.manual_seed(int(seed))
        return g

    def batch_noise(self, shape: Sequence[int], generators: Sequence[Any], dtype: Any = None):
        """Standard normal noise of ``(len(generators), *shape)``: item i drawn from generator i."""
        import torch

        return torch.stack([torch.randn(tuple(shape), generator=g, device=self.device,
                                        dtype=dtype or torch.float32) for g in generators])

    # ------------------------------------------------------------------ pixels
    def padding(self, h: int, w: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) padding of an h x w image."""
        k = self.pad_multiple
        ph, pw = -h % k, -w % k
        top, left = (ph // 2, pw // 2) if self.pad_center else (0, 0)
        return left, pw - left, top, ph - top

    def to_tensor(self, rgb: np.ndarray):
        """uint8 (H, W, 3) -> padded (1, 3, Hp, Wp) float32 in [0, 1] on the device."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.array(rgb, dtype=np.uint8, copy=True)).to(self.device)  # own writable copy
        x = x.permute(2, 0, 1).unsqueeze(0).to(torch.float32).div_(255.0).contiguous()
        pad = self.padding(*rgb.shape[:2])
        if any(pad):
            mode = PAD_MODES[self.pad_mode]
            x = F.pad(x, pad, mode=mode, **({"value": 0.0} if mode == "constant" else {}))
        return x

    def to_rgb(self, x, h: int, w: int) -> np.ndarray:
        """(B, 3, Hp, Wp) in [0, 1] -> cropped uint8 (B, h, w, 3) (rounded, as CompressAI's evaluation)."""
        import torch

        left, _, top, _ = self.padding(h, w)
        x = x[:, :, top:top + h, left:left + w].to(torch.float32).clamp(0, 1).mul(255).round()
        return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    # ------------------------------------------------------------------ the Codec contract
    def encode(self, rgb: np.ndarray, point: Any, seed: int = 0) -> bytes:
        check_rgb(rgb)
        key = self.point_key(point)
        model = self.model(key)
        torch = self._torch()
        h, w = rgb.shape[:2]
        with torch.inference_mode():
            sections, dims = self.encode_tensor(model, self.to_tensor(rgb), key, seed)
        return Container(self.container_id, key, (h, w, *map(int, dims)), self.model_id(key), tuple(sections)).pack()

    def read(self, data: bytes) -> Container:
        """Parse stored bytes and check they are this codec's, written with these weights."""
        c = unpack(data, self.container_id)
        try:
            expected = self.model_id(c.point)
        except CodecError as exc:
            raise ContainerError(f"{self.name}: the bytes name rate point {c.point!r}, which this adapter does not "
                                 f"have ({exc})") from exc
        if c.model != expected:
            what = "seeded random weights (--init random)" if c.model == "random" else f"weights {c.model}"
            raise ContainerError(f"{self.name}: these bytes were written with {what}, but this instance has "
                                 f"{'seeded random weights' if expected == 'random' else 'weights ' + expected} at "
                                 f"point {c.point!r}: decode with the encoder's weights and --init")
        if len(c.dims) < 2 or min(c.dims[:2]) < 1:
            raise ContainerError(f"{self.name}: the container's dims {c.dims} lack a valid height and width")
        try:  # a crafted header must not make the decoder allocate a giant picture
            check_pixels(c.dims[0], c.dims[1], self.name, "the container claims an image")
        except ImageError as exc:
            raise ContainerError(str(exc)) from None
        return c

    def decode(self, data: bytes, seed: int = 0) -> np.ndarray:
        return self.decode_batch([data], [seed])[0]

    def decode_batch(self, datas: Sequence[bytes], seeds: Sequence[int] | None = None) -> list[np.ndarray]:
        """Decode many bitstreams; those with the same point and dims go through
        ``decode_tensors`` together (``decode_batch_size`` at a time). Item i is what
        ``decode(datas[i], seeds[i])`` gives."""
        seeds = [0] * len(datas) if seeds is None else list(seeds)
        if len(seeds) != len(datas):
            raise CodecError(f"{self.name}: decode_batch got {len(datas)} bitstreams but {len(seeds)} seeds")
        containers = [self.read(d) for d in datas]
        groups: dict[tuple, list[int]] = {}
        for i, c in enumerate(containers):
            groups.setdefault((c.point, c.dims), []).append(i)
        out: list[np.ndarray | None] = [None] * len(datas)
        for (point, dims), idx in groups.items():
            model = self.model(point)
            torch = self._torch()
            h, w = dims[:2]
            for start in range(0, len(idx), self.decode_batch_size):
                chunk = idx[start:start + self.decode_batch_size]
                gens = [self.generator(seeds[i]) for i in chunk]
                try:
                    with torch.inference_mode():
                        x = self.decode_tensors(model, [containers[i] for i in chunk], gens)
                except CodecError:
                    raise
                except Exception as exc:  # the network or entropy decoder rejected the bytes
                    raise CodecError(f"{self.name}: decoding failed at point {point!r}: "
                                     f"{type(exc).__name__}: {exc}") from exc
                left, right, top, bottom = self.padding(h, w)
                hp, wp = h + top + bottom, w + left + right
                if tuple(x.shape) != (len(chunk), 3, hp, wp):
                    raise CodecError(f"{self.name}: the decoder produced {tuple(x.shape)}, expected "
                                     f"{(len(chunk), 3, hp, wp)} for a {h}x{w} image")
                for i, img in zip(chunk, self.to_rgb(x, h, w)):
                    out[i] = check_recon(self.name, (h, w, 3), img)
        return out  # type: ignore[return-value]

    def bits_breakdown(self, data: bytes) -> dict[str, int]:
        return bits_breakdown(data)

    # ------------------------------------------------------------------ resume keys and records
    def library_versions(self) -> dict[str, str | None]:
        return {d: library_version(d) for d in ("torch", *self.libraries)}

    def fingerprint(self, point: Any) -> dict[str, Any]:
        """See the module docstring. A point the adapter lacks does not raise here (its
        units fail at encode with the list of valid points)."""
        fp: dict[str, Any] = {"libraries": self.library_versions(), "dtype": self.dtype,
                              "device": self.device_type}
        try:
            key = self.point_key(point)
        except CodecError:
            fp["weights"] = {"invalid point": repr(point)}
            return fp
        if self.init == "random":
            fp["weights"] = {"init": "random", "seed": self.random_seed(key)}
            return fp
        files = {}
        for wid in self.weight_ids(key):
            w, p = weights.entry(wid), weights.path(wid)
            files[wid] = {"expected": w.sha256 or w.sha256_prefix,
                          "sha256": sha256_file_cached(p) if p.is_file() else None}
        fp["weights"] = files
        return fp

    def provenance(self) -> dict[str, Any]:
        prov: dict[str, Any] = {"libraries": self.library_versions(), "dtype": self.dtype, "device": self.device,
                                "init": self.init}
        if self.init == "pretrained":
            prov["weights"] = weights.provenance(self.required_weights())
        return prov
