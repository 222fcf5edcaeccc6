"""MS-ILLM (and its No-GAN models) as a bench codec: real rANS bitstreams, decoded from bytes alone.

One adapter, ``msillm``, configured by its card's ``params``: ``variant`` (``msillm``: the
GAN-trained models, points ``vlo1``, ``vlo2``, 1..6; ``noganms``: the same network trained
without the GAN, points 1..6) and ``size`` (``full``, the released network; ``tiny``, a
few channels of the same structure, for tests and smoke runs with ``--init random``
only). The rate point is the release's quality (see :mod:`bench.codecs.msillm.weights`
for the training target bpp of each).

Coding follows the release's ``HiFiCAutoencoder.compress``/``decompress``: RGB in [0, 1]
straight into the network; reflect padding at the bottom and right to a multiple of 64
(an image smaller than its padding is reflected repeatedly; a side of 1 pixel is
repeated); y = encoder(x), z = hyper_analysis(y); z coded by CompressAI's
EntropyBottleneck, y by its GaussianConditional with the means and scales the
hyper-synthesis computes from the decoded z; the decoder's output is cropped, clamped to
[0, 1] and rounded to 8 bits. The stored bytes are a :mod:`bench.codecs.container` with
section ``y`` (latent, payload), section ``z`` (hyper-latent, side information) and dims
(H, W, h, w): the original size and the hyper-latent size (h, w) = (ceil(H/64), ceil(W/64)),
checked against each other on decode. The release's evaluation counts the pickled size
of its compressed object instead (about 127 bytes of Python pickle around the same two
strings); :func:`release_bits` computes that number for comparisons with its published
rates.

Precision: ``encoder``, ``hyper_analysis`` (encoder only) and ``decoder`` (synthesis) may
run in ``--dtype``; the hyper-synthesis and entropy models stay float32 (see
:mod:`bench.codecs.torch_base`). A full model has 181 M parameters (0.73 GB in float32):
at most two are kept in memory.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from bench.codecs.base import CodecError
from bench.codecs.container import Container, ContainerError, Section
from bench.codecs.torch_base import TorchCodec, rans_input
from bench.codecs.msillm import weights as msillm_weights
from bench.registry import register

VARIANTS = {"msillm": "msillm", "noganms": "msillm:nogan"}  # variant -> container codec id
SIZES = ("full", "tiny")
FACTOR = 64


@register("codec", "msillm")
class MSILLMCodec(TorchCodec):
    """MS-ILLM / No-GAN (params: ``variant``, ``size``); point = the release's quality."""

    name = "msillm"
    family = "msillm"
    libraries = ("compressai",)
    point_name = "quality"
    default_points = ("vlo1", "vlo2", 1, 2, 3, 4, 5, 6)
    description = "MS-ILLM (Muckley et al., ICML 2023): HiFiC mean-scale hyperprior, real rANS bitstreams"
    pad_multiple = FACTOR
    pad_mode = "replicate"  # not used: to_tensor pads by reflection, as the release does
    pad_center = False  # the release pads at the bottom and right
    reduced_precision = ("encoder", "hyper_analysis", "decoder")
    max_cached_models = 2

    def __init__(self, device: str = "cpu", dtype: str = "float32", init: str = "pretrained",
                 variant: str = "msillm", size: str = "full") -> None:
        super().__init__(device, dtype, init, variant=variant, size=size)
        if variant not in VARIANTS:
            raise CodecError(f"{self.name}: unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
        if size not in SIZES:
            raise CodecError(f"{self.name}: size must be one of {', '.join(SIZES)}, got {size!r}")
        if size != "full" and init != "random":
            raise CodecError(f"{self.name}: size {size!r} exists only with seeded random weights (--init random); "
                             "the released weights are for size 'full'")
        self.variant, self.size = variant, size

    @property
    def arch(self) -> str:
        return f"{self.variant}-{self.size}"

    @property
    def container_id(self) -> str:
        return VARIANTS[self.variant] + ("" if self.size == "full" else f":{self.size}")

    def weight_table(self) -> dict[Any, str]:
        return {p: msillm_weights.weight_id(self.variant, p) for p in msillm_weights.TARGETS[self.variant]}

    # ------------------------------------------------------------------ the network
    def build_model(self, point: Any, files: list[Path] | None) -> Any:
        from bench.codecs.msillm import model as msillm_model

        with _quiet():
            net = msillm_model.MSILLM(msillm_model.CONFIGS[self.size])
        if files is not None:
            try:
                msillm_model.load_checkpoint(net, files[0])
            except ValueError as exc:
                raise CodecError(f"{self.name}: rate point {point!r}: {exc}") from exc
        return net

    def prepare(self, model: Any, point: Any) -> None:
        # As the release's evaluation (model.update()): keep the CDF tables a file carries,
        # compute them where it has none (always so for random weights).
        model.update(force=False)

    def to_tensor(self, rgb):
        """uint8 (H, W, 3) -> (1, 3, Hp, Wp) float32 in [0, 1], reflect-padded at the bottom/right."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.array(rgb, dtype=np.uint8, copy=True)).to(self.device)
        x = x.permute(2, 0, 1).unsqueeze(0).to(torch.float32).div_(255.0)
        _, right, _, bottom = self.padding(*rgb.shape[:2])
        while right or bottom:  # reflect needs pad < size: extend step by step
            h, w = x.shape[-2:]
            step_r, step_b = min(right, w - 1), min(bottom, h - 1)
            if (right and step_r == 0) or (bottom and step_b == 0):  # a 1-pixel side cannot be reflected
                return F.pad(x, (0, right, 0, bottom), mode="replicate").contiguous()
            x = F.pad(x, (0, step_r, 0, step_b), mode="reflect")
            right, bottom = right - step_r, bottom - step_b
        return x.contiguous()

    # ------------------------------------------------------------------ bytes
    def encode_tensor(self, model, x, point, seed):
        y, z, z_shape = model.compress_one(x)
        return [Section("y", y), Section("z", z, side=True)], z_shape

    def _parts(self, c: Container) -> tuple[bytes, bytes, tuple[int, int]]:
        if [s.name for s in c.sections] != ["y", "z"] or len(c.dims) != 4:
            raise ContainerError(f"{self.name}: a container has sections ['y', 'z'] and 4 dims; these bytes have "
                                 f"{[s.name for s in c.sections]} and dims {c.dims}")
        h, w, zh, zw = c.dims
        if (zh, zw) != (-(-h // FACTOR), -(-w // FACTOR)):
            raise ContainerError(f"{self.name}: hyper-latent size {zh}x{zw} does not fit a {h}x{w} image "
                                 f"(expected {-(-h // FACTOR)}x{-(-w // FACTOR)}): corrupted header")
        hp, wp = zh * FACTOR, zw * FACTOR  # the padded image
        return rans_input(c.section("y"), hp, wp), rans_input(c.section("z"), hp, wp), (zh, zw)

    def decode_tensor(self, model, container, generator):
        return model.decoder(model.decompress_latent(*self._parts(container))).clamp_(0, 1)

    # decode_tensors: the base's, one image at a time. A batched decoder pass is not bit-identical
    # to single ones (CPU convolutions pick other kernels for B > 1: measured 1 pixel of 3 x 40x70
    # images off by one level), and decode_batch must equal decode.


# ---------------------------------------------------------------------------- the release's rate
class HyperpriorCompressedOutput(NamedTuple):
    """Field for field the release's compressed object (neuralcompression/_outputs/_hyperprior_output.py)."""

    latent_strings: list
    hyper_latent_strings: list
    image_size: tuple
    padded_size: tuple


RELEASE_MODULE = "neuralcompression._outputs._hyperprior_output"  # where the release's class lives


def release_bits(data: bytes) -> int:
    """Bits the release's evaluation (projects/illm/eval_folder_example.py) would count for
    these bytes: ``8 * len(pickle.dumps(HyperpriorCompressedOutput(...)))`` of the same
    strings and sizes (``neuralcompression.metrics.pickle_size_of``; pickle protocol 4,
    Python 3.8-3.13's default). The class is pickled by reference (module and name, each a
    short string with a 1-byte length), so the release's size is this module's pickle plus
    the difference in module-name length."""
    from bench.codecs.container import unpack

    c = unpack(data)
    h, w = c.dims[:2]
    out = HyperpriorCompressedOutput([c.section("y")], [c.section("z")], (h, w),
                                     (-(-h // FACTOR) * FACTOR, -(-w // FACTOR) * FACTOR))
    extra = len(RELEASE_MODULE) - len(HyperpriorCompressedOutput.__module__)
    return 8 * (len(pickle.dumps(out, protocol=4)) + extra)


class _quiet:
    """Silence compressai 1.2.8's torch.jit.script FutureWarning while building."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", FutureWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
