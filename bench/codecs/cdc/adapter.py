"""CDC (Yang & Mandt, "Lossy Image Compression with Conditional Diffusion Models",
NeurIPS 2023) as a bench codec, with a real bitstream.

One adapter, ``cdc``, configured by its card's ``params``:

* ``param``: ``x`` (x0-prediction, cosine schedule, 8193 training steps) or ``eps``
  (noise prediction, linear schedule, 20000 steps);
* ``rho``: the LPIPS weight of the released model, 0.0 or 0.9;
* ``sampler``: ``ddim`` (deterministic given the initial noise; the official test
  scripts' choice) or ``ddpm`` (ancestral: fresh noise at every step, i.e. the DDIM
  update with η = 1 on the same strided schedule — the ε code's own ``ddpm`` branch
  references posterior coefficients it never defines and cannot run);
* ``steps``: denoising steps (official defaults: x 65, ε 200; the paper used 500 for ε);
* ``gamma``: the initial noise scale γ: decoding starts from γ·N(0, I) (official 0.8;
  the paper's Fig. 4 sweeps it);
* ``size``: ``full`` (the released architecture) or ``tiny`` (dim 4, same structure, for
  tests and smoke runs; ``--init random`` only);
* ``random_size``: the size built under ``--init random`` when ``size`` is ``full``
  (``tiny`` by default, as PerCo's: a random full-size network decodes a Kodak image in
  minutes on a CPU and says nothing more than a tiny one; ``full`` to time it).

The rate point is β (the rate weight of the released file; the table is in
``weights.py``). Encoding: pixels in [0, 1] padded to a multiple of 64 (edge pixels,
bottom/right), mapped to [-1, 1]; latent ``y`` and hyper-latent ``z`` are entropy coded
with CompressAI's rANS coder into sections ``y`` (payload) and ``z`` (side). Decoding
reads only those bytes, the container's (H, W), the card and the seed; output clamped to
[-1, 1] -> [0, 1], cropped back.

Rates: bench's rate is real (8 x stored bytes). The official code only *estimates* bpp
(−log2 of the entropy models' likelihoods, divided by the padded H·W); :meth:`estimated_bits`
recomputes that estimate from the stored bytes (numerator only: bench divides by the
original H·W), and the runner stores it as separate ``rate_kind = estimated`` rows.

Stochastic: decoding draws the initial noise (and, for DDPM, the per-step noise) from a
``torch.Generator`` seeded with ``seed`` on the device: N seeds give N samples of one
bitstream. (With ``gamma: 0`` and DDIM the decode is deterministic; every seed then gives
the same image.)

Precision: only the U-Net (``denoise_fn``) runs in ``--dtype``; analysis, hyper-synthesis,
entropy coding and the context decoder stay float32, so bytes decode under any dtype.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from bench.codecs.base import CodecError
from bench.codecs.cdc import weights as cdc_weights
from bench.codecs.container import Container, ContainerError, Section
from bench.codecs.torch_base import TorchCodec, rans_input
from bench.registry import register

SAMPLERS = {"ddim": 0.0, "ddpm": 1.0}  # sampler -> eta
DEFAULT_STEPS = {"x": 65, "eps": 200}  # xparam/test_xparam.py, epsilonparam/test_epsilonparam.py
DEFAULT_GAMMA = 0.8
SIZES = ("full", "tiny")


@register("codec", "cdc")
class CDC(TorchCodec):
    """CDC diffusion decoder (params: ``param``, ``rho``, ``sampler``, ``steps``, ``gamma``,
    ``size``); point = β of the released checkpoint."""

    name = "cdc"
    family = "cdc"
    libraries = ("compressai",)
    point_name = "beta"
    description = "CDC conditional diffusion decoder (Yang & Mandt 2023), real rANS bitstream"
    stochastic = True
    pad_multiple = 64
    pad_mode = "replicate"
    decode_batch_size: ClassVar[int] = 4
    max_cached_models: ClassVar[int | None] = 3  # a card's points: the runner alternates points per image

    def __init__(self, device: str = "cpu", dtype: str = "float32", init: str = "pretrained", param: str = "x",
                 rho: float = 0.9, sampler: str = "ddim", steps: int | None = None, gamma: float = DEFAULT_GAMMA,
                 size: str = "full", random_size: str = "tiny") -> None:
        steps = DEFAULT_STEPS.get(param, 0) if steps is None else steps
        super().__init__(device, dtype, init, param=param, rho=rho, sampler=sampler, steps=steps, gamma=gamma,
                         size=size, random_size=random_size)
        if param not in cdc_weights.PARAMS:
            raise CodecError(f"cdc: param must be one of {', '.join(cdc_weights.PARAMS)}, got {param!r}")
        if float(rho) not in cdc_weights.RHOS:
            raise CodecError(f"cdc: rho must be one of {', '.join(map(str, cdc_weights.RHOS))}, got {rho!r}")
        if sampler not in SAMPLERS:
            raise CodecError(f"cdc: sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise CodecError(f"cdc: steps must be a positive integer, got {steps!r}")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 <= gamma <= 10:
            raise CodecError(f"cdc: gamma must be a number in [0, 10], got {gamma!r}")
        if size not in SIZES:
            raise CodecError(f"cdc: size must be one of {', '.join(SIZES)}, got {size!r}")
        if size == "tiny" and init != "random":
            raise CodecError("cdc: size 'tiny' is a test architecture without released weights: use --init random")
        if random_size not in SIZES:
            raise CodecError(f"cdc: random_size must be one of {', '.join(SIZES)}, got {random_size!r}")
        if init == "random" and size == "full":
            size = random_size
        self.param, self.rho, self.sampler = param, float(rho), sampler
        self.steps, self.gamma, self.size = steps, float(gamma), size

    # ------------------------------------------------------------------ identity
    @property
    def arch(self) -> str:
        return f"cdc-{self.param}-{self.size}"

    @property
    def container_id(self) -> str:
        return f"cdc:{self.param}:{self.rho:g}" + ("" if self.size == "full" else ":tiny")

    def weight_table(self) -> dict[float, str]:
        return {b: cdc_weights.weight_id(self.param, self.rho, b) for b in cdc_weights.betas(self.param, self.rho)}

    def fingerprint(self, point: Any) -> dict[str, Any]:
        fp = super().fingerprint(point)
        fp["decoder"] = {"sampler": self.sampler, "steps": self.steps, "gamma": self.gamma, "size": self.size}
        return fp

    # ------------------------------------------------------------------ the network
    def config(self):
        from bench.codecs.cdc import model as m

        return (m.CONFIGS if self.size == "full" else m.TINY)[self.param]

    def build_model(self, point: Any, files: list[Path] | None) -> Any:
        from bench.codecs.cdc import model as m

        net = m.CDC(self.config())
        if files is not None:
            load_checkpoint(net, files[0], self.param)
        return net

    def prepare(self, model: Any, point: Any) -> None:
        from bench.codecs.cdc import model as m

        # Entropy-coder tables: plain attributes (not submodules), so the state dict stays the release's.
        object.__setattr__(model, "z_tables", m.FactorizedTables(model.context_fn.prior))
        object.__setattr__(model, "y_coder", m.gaussian_conditional())

    def apply_precision(self, model: Any) -> Any:
        if self.dtype != "float32":
            model.denoise_fn.to(self.torch_dtype)
        return model

    # ------------------------------------------------------------------ coding
    def encode_tensor(self, model, x, point, seed):
        import torch

        cf = model.context_fn
        y, z = cf.analysis(x * 2.0 - 1.0)
        med = cf.prior.medians
        z_sym = torch.round(z - med)
        mean, scale = cf.hyper_synthesis(z_sym + med)
        z_bytes = model.z_tables.encode(z_sym)
        gc = model.y_coder
        y_bytes = gc.compress(y.cpu(), gc.build_indexes(scale.cpu()), means=mean.cpu())[0]
        return [Section("y", bytes(y_bytes), False), Section("z", bytes(z_bytes), True)], ()

    def _latents(self, model, c: Container):
        """Entropy-decode one container: (y_hat, z_hat, mean, scale) on the device, float32."""
        import torch

        if [s.name for s in c.sections] != ["y", "z"] or len(c.dims) != 2:
            raise ContainerError(f"cdc: a CDC container has sections ['y', 'z'] and 2 dims; these bytes have "
                                 f"{[s.name for s in c.sections]} and dims {c.dims}")
        cfg = self.config()
        left, right, top, bottom = self.padding(*c.dims[:2])
        hp, wp = c.dims[0] + top + bottom, c.dims[1] + left + right
        cf = model.context_fn
        z_ch = cfg.dim * cfg.hyper_dims_mults[-1]
        z_sym = model.z_tables.decode(rans_input(c.section("z"), hp, wp), (1, z_ch, hp // 64, wp // 64)).to(self.device)
        z_hat = z_sym.float() + cf.prior.medians
        mean, scale = cf.hyper_synthesis(z_hat)
        gc = model.y_coder
        y_hat = gc.decompress([rans_input(c.section("y"), hp, wp)], gc.build_indexes(scale.cpu()), means=mean.cpu())
        return y_hat.to(self.device, torch.float32), z_hat, mean, scale

    def decode_tensor(self, model, container, generator):
        return self.decode_tensors(model, [container], [generator])

    def decode_tensors(self, model, containers, generators):
        """Entropy decoding per item (float32, as the encoder), then one batched context
        decoder and sampler run; item i's noise comes from generator i only."""
        import torch

        from bench.codecs.cdc.sampler import sample

        y_hat = torch.cat([self._latents(model, c)[0] for c in containers])
        context = model.context_fn.context(y_hat)
        h, w = context[0].shape[-2:]
        init = self.gamma * self.batch_noise((3, h, w), generators)
        x = sample(model, context, init, self.steps, SAMPLERS[self.sampler],
                   noise_fn=lambda shape: self.batch_noise(shape, generators))
        return x.clamp_(-1.0, 1.0).add_(1.0).mul_(0.5)

    def estimated_bits(self, data: bytes) -> float:
        """The official rate estimate for these bytes, in bits: −log2 of the hyper-prior's
        likelihood of z_hat plus the Gaussian conditional's likelihood of y_hat (both decoded
        from ``data``), as ``Compressor.bpp`` computes it times the padded H·W."""
        import torch

        from bench.codecs.cdc import model as m

        c = self.read(data)
        model = self.model(c.point)
        try:
            with torch.inference_mode():
                y_hat, z_hat, mean, scale = self._latents(model, c)
                bits = -model.context_fn.prior.likelihood(z_hat).log2().sum()
                bits = bits - m.gaussian_likelihood(y_hat, mean, scale).log2().sum()
        except CodecError:
            raise
        except Exception as exc:  # corrupt entropy-coded data
            raise CodecError(f"cdc: cannot decode the latents for the rate estimate: {type(exc).__name__}: "
                             f"{exc}") from exc
        return float(bits)


def load_checkpoint(net: Any, path: str | Path, param: str) -> None:
    """Load a released file into ``net`` strictly (CodecError naming missing/unexpected keys).
    x-param: the ``ema`` entry's ``ema_model.*`` weights (what the official test uses);
    ε-param: ``model``. ``loss_fn_vgg.*`` (the LPIPS training loss of ρ = 0.9 files) is dropped."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable, or not a torch file
        raise CodecError(f"cdc: cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(ckpt, dict):
        raise CodecError(f"cdc: {path} holds a {type(ckpt).__name__}, expected the release's dict")
    if param == "x":
        if "ema" not in ckpt:
            raise CodecError(f"cdc: {path} has no 'ema' entry (keys {sorted(ckpt)}); x-param files hold "
                             "{'step', 'model', 'ema'} and decoding uses the EMA weights")
        state = {k[len("ema_model."):]: v for k, v in ckpt["ema"].items() if k.startswith("ema_model.")}
    else:
        if "model" not in ckpt:
            raise CodecError(f"cdc: {path} has no 'model' entry (keys {sorted(ckpt)})")
        state = dict(ckpt["model"])
    state = {k: v for k, v in state.items() if not k.startswith("loss_fn_vgg.")}
    missing, unexpected = [], []
    try:
        result = net.load_state_dict(state, strict=False)
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    except RuntimeError as exc:  # shape mismatch
        raise CodecError(f"cdc: {path} does not fit the {param}-parameterisation network: {exc}") from exc
    if missing or unexpected:
        raise CodecError(f"cdc: {path} does not match the {param}-parameterisation network: "
                         f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}")
