"""CompressAI zoo models as a bench codec: real rANS bitstreams from ``compress()``.

One adapter, ``compressai-zoo``, configured by its card's ``params``: ``arch`` (one of
:data:`ARCHS`) and ``metric`` (``mse`` or ``ms-ssim``, what the weights were trained
for); the rate point is the zoo's quality (1..8; cheng2020: 1..6). The stored bytes
are a :mod:`bench.codecs.container` with the strings ``compress()`` returns -
section ``y`` (latent, payload) and, for the hyperprior models, ``z``
(hyper-latent, side information) - and the latent shape ``compress()`` returns,
which ``decompress(strings, shape)`` needs; nothing else reaches the decoder.

Settings follow CompressAI's own evaluation (``compressai.utils.eval_model``, the
source of its published Kodak curves): RGB in [0, 1] straight into the network,
zero padding to a multiple of 64 split evenly around the image, the default
(rANS) entropy coder, reconstruction clamped to [0, 1] and rounded to 8 bits.
CompressAI counts only the strings; bench's rate also counts the container
(about 35 bytes an image, shown as ``container`` bits in the breakdown).

Precision: ``g_a``/``h_a`` (analysis, encoder only) and ``g_s`` (synthesis) may run
in ``--dtype``; the hyper-synthesis, context model and entropy models stay
float32 (see :mod:`bench.codecs.torch_base`). mbt2018 and cheng2020 decode their
latent with an autoregressive context model, position by position on the CPU:
slow (CompressAI warns against GPU inference for them).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.codecs.base import CodecError
from bench.codecs.container import Container, ContainerError, Section
from bench.codecs.torch_base import TorchCodec, rans_input
from bench.codecs.zoo import weights as zoo_weights
from bench.registry import register

# architecture -> short id used in the container's codec id
ARCHS = {
    "bmshj2018-factorized": "bf",
    "bmshj2018-hyperprior": "bh",
    "mbt2018-mean": "mm",
    "mbt2018": "mj",
    "cheng2020-anchor": "ca",
    "cheng2020-attn": "ct",
}
# compress()'s strings, in order: (section name, side information?)
STRINGS = (("y", False), ("z", True))


@register("codec", "compressai-zoo")
class CompressAIZoo(TorchCodec):
    """CompressAI model zoo (params: ``arch``, ``metric``); point = quality."""

    name = "compressai-zoo"
    family = "zoo"
    libraries = ("compressai",)
    point_name = "quality"
    default_points = (1, 2, 3, 4, 5, 6, 7, 8)
    description = "CompressAI model zoo (learned, real rANS bitstreams)"
    pad_multiple = 64
    pad_mode = "zeros"
    pad_center = True
    reduced_precision = ("g_a", "h_a", "g_s")

    @property
    def batch_decode_exact(self) -> bool:  # type: ignore[override]
        """Batched synthesis gives the pixels of single decodes on the CPU (tests/test_batching.py);
        on CUDA that is not shown yet (convolution kernels may change with the batch size)."""
        return self.device_type == "cpu"

    def __init__(self, device: str = "cpu", dtype: str = "float32", init: str = "pretrained",
                 arch: str = "bmshj2018-hyperprior", metric: str = "mse") -> None:
        super().__init__(device, dtype, init, arch=arch, metric=metric)
        if arch not in ARCHS:
            raise CodecError(f"{self.name}: unknown arch {arch!r}; valid: {', '.join(ARCHS)}")
        if metric not in zoo_weights.METRICS:
            raise CodecError(f"{self.name}: metric must be one of {', '.join(zoo_weights.METRICS)}, got {metric!r}")
        self._arch, self.metric = arch, metric
        self.n_strings = 1 if arch == "bmshj2018-factorized" else 2

    @property
    def arch(self) -> str:
        return self._arch

    @property
    def container_id(self) -> str:
        return f"zoo:{ARCHS[self._arch]}" + (":ms" if self.metric == "ms-ssim" else "")

    def weight_table(self) -> dict[int, str]:
        return {q: zoo_weights.weight_id(self._arch, self.metric, q)
                for q in zoo_weights.qualities(self._arch, self.metric)}

    def build_model(self, point: int, files: list[Path] | None) -> Any:
        import warnings

        with warnings.catch_warnings():  # compressai 1.2.8 uses torch.jit.script, deprecated in torch 2.14
            warnings.simplefilter("ignore", FutureWarning)
            from compressai.zoo import image_models

        if files is None:  # init="random": the zoo's architecture for this quality, seeded random weights
            return image_models[self._arch](quality=point, metric=self.metric, pretrained=False)
        import torch
        from compressai.zoo.image import model_architectures
        from compressai.zoo.pretrained import load_pretrained

        state = torch.load(files[0], map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        return model_architectures[self._arch].from_state_dict(load_pretrained(state))

    def prepare(self, model: Any, point: int) -> None:
        # Pretrained files carry their CDF tables (update() keeps them); random weights need them computed.
        model.update(force=self.init == "random")

    def encode_tensor(self, model, x, point, seed):
        out = model.compress(x)
        strings = out["strings"]
        if len(strings) != self.n_strings or any(len(s) != 1 for s in strings):
            raise CodecError(f"{self.name}: {self._arch}.compress() returned {len(strings)} string lists, "
                             f"expected {self.n_strings} of one string each")
        sections = [Section(name, bytes(s[0]), side) for (name, side), s in zip(STRINGS, strings)]
        return sections, tuple(int(d) for d in out["shape"])

    def _strings(self, c: Container) -> tuple[list[list[bytes]], list[int]]:
        expected = [name for name, _ in STRINGS[:self.n_strings]]
        if [s.name for s in c.sections] != expected or len(c.dims) != 4:
            raise ContainerError(f"{self.name}: a {self._arch} container has sections {expected} and 4 dims; "
                                 f"these bytes have {[s.name for s in c.sections]} and dims {c.dims}")
        h, w, lh, lw = c.dims
        left, right, top, bottom = self.padding(h, w)
        hp, wp = h + top + bottom, w + left + right
        stride = self.latent_stride
        if (lh, lw) != (hp // stride, wp // stride):  # else the entropy decoder reads a latent of any size
            raise ContainerError(f"{self.name}: latent size {lh}x{lw} does not fit a {h}x{w} image (expected "
                                 f"{hp // stride}x{wp // stride} for {self._arch}): corrupted header")
        return [[rans_input(c.section(name), hp, wp)] for name in expected], [lh, lw]

    @property
    def latent_stride(self) -> int:
        """Downsampling from the padded image to the shape ``compress()`` returns: the latent
        ``y`` (1/16) for the factorized prior, the hyper-latent ``z`` (1/64) for the others."""
        return 16 if self._arch == "bmshj2018-factorized" else 64

    def decode_tensor(self, model, container, generator):
        strings, shape = self._strings(container)
        return model.decompress(strings, shape)["x_hat"]

    def decode_tensors(self, model, containers, generators):
        """Entropy decoding one image at a time (exactly as the encoder computed the CDF
        indexes), then one batched synthesis ``g_s`` over all latents."""
        if len(containers) == 1:
            return self.decode_tensor(model, containers[0], generators[0])
        import torch

        latents: list = []
        synthesis = model.g_s
        model.g_s = _capture_class()(latents)  # decompress() ends with g_s(y_hat): keep y_hat instead
        try:
            for c in containers:
                strings, shape = self._strings(c)
                model.decompress(strings, shape)
        finally:
            model.g_s = synthesis
        return synthesis(torch.cat(latents)).clamp_(0, 1)


_CAPTURE = None


def _capture_class():
    """A module standing in for ``g_s`` that records its input (torch imported on first use)."""
    global _CAPTURE
    if _CAPTURE is None:
        import torch

        class Capture(torch.nn.Module):
            def __init__(self, into: list) -> None:
                super().__init__()
                self.into = into

            def forward(self, y):
                self.into.append(y)
                return y.new_zeros(1)

        _CAPTURE = Capture
    return _CAPTURE
