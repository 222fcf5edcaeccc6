"""CDC networks (Yang & Mandt, NeurIPS 2023), written here from the paper and the public
definitions so that the released checkpoints load with ``strict=True``.

Facts taken from ``buggyyang/CDC_compression`` at commit
00b10de91f734ec95dde3b210493ddbeda914dd4 (code MIT; no code copied):

* ``xparam/test_xparam.py`` and ``epsilonparam/test_epsilonparam.py``: the configurations
  (:data:`CONFIGS` ``"x"`` and ``"eps"``), schedules (x: cosine, 8193 steps, x0-prediction,
  time input ``index/8193``; eps: linear, 20000 steps, noise prediction, time input
  ``i/sample_steps``), the sampler defaults and the [-1, 1] pixel range;
* ``*/modules/unet.py``, ``*/modules/network_components.py``: the U-Net (six levels, two
  ResNet blocks + linear attention each, channel-wise LayerNorm ``g``/``b``), its time MLP
  ``Linear(1, 4d) - GELU - Linear(4d, d)``, and ``FlexiblePrior`` (Ballé 2018 factorised
  density with parameters ``affine.i.weight/bias``, ``a.i``, ``_medians``);
* ``xparam/modules/compress_modules.py`` (``ResnetCompressor``: 2-slot encoder/decoder
  units, 64-channel context) and ``epsilonparam/modules/compress_modules.py``
  (``BigCompressor``: 3-slot units with an empty middle slot, 3-channel context); the
  hyper-latent is rounded around the prior's medians and the latent around the predicted
  mean, whose scale is clamped at 0.1 (mean-scale Gaussian conditional);
* ``*/modules/denoising_diffusion.py``: the buffers saved with the model (``train_*``;
  x-param also ``train_snr``) and the DDIM update.

The official code only *estimates* the rate (−log2 likelihoods). Here the latent is coded
for real with CompressAI's rANS coder: ``y`` with CompressAI's ``GaussianConditional``
(means and scales from the hyper-decoder, float32), ``z`` with CDF tables computed from the
checkpoint's ``FlexiblePrior`` (:class:`FactorizedTables`). Neither coder holds state-dict
entries, so the module's keys are exactly the release's.

Tensors: images (B, 3, H, W) float32 in [-1, 1] with H, W multiples of 64; latent
(B, 4d, H/16, W/16); hyper-latent (B, 4d, H/64, W/64).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SOURCE = ("buggyyang/CDC_compression", "00b10de91f734ec95dde3b210493ddbeda914dd4")


@dataclass(frozen=True)
class Config:
    """One architecture: ``param`` "x" (x0-prediction) or "eps" (noise prediction)."""

    param: str
    dim: int = 64  # U-Net and compressor base width
    dim_mults: tuple = (1, 2, 3, 4, 5, 6)  # U-Net levels
    context_dim_mults: tuple = (1, 2, 3, 4)
    comp_dim_mults: tuple = (1, 2, 3, 4)  # compressor analysis levels
    hyper_dims_mults: tuple = (4, 4, 4)
    timesteps: int = 8193
    schedule: str = "cosine"

    @property
    def context_channels(self) -> int:
        """Channels of the full-resolution context: x-param 64 (= dim), eps-param 3."""
        return self.dim if self.param == "x" else 3


CONFIGS = {
    "x": Config("x", timesteps=8193, schedule="cosine"),
    "eps": Config("eps", timesteps=20000, schedule="linear"),
}
# Tiny instances for tests and smoke runs (--init random only): same structure, dim 4 (~0.2 M parameters).
TINY = {k: Config(c.param, dim=4, timesteps=c.timesteps, schedule=c.schedule) for k, c in CONFIGS.items()}


# ---------------------------------------------------------------------------- building blocks
class LayerNorm(nn.Module):
    """Normalises over channels (biased variance, eps 1e-5); parameters ``g``, ``b`` (1, C, 1, 1)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.b = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, x):
        var, mean = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.g + self.b


class Block(nn.Module):
    def __init__(self, dim: int, dim_out: int, large: bool = False) -> None:
        super().__init__()
        k = 7 if large else 3
        self.block = nn.Sequential(nn.Conv2d(dim, dim_out, k, padding=k // 2), LayerNorm(dim_out), nn.ReLU())

    def forward(self, x):
        return self.block(x)


class ResnetBlock(nn.Module):
    """Two conv-LayerNorm-ReLU blocks; the time embedding (if any) is added between them."""

    def __init__(self, dim: int, dim_out: int, time_dim: int | None = None, large: bool = False) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.LeakyReLU(0.2), nn.Linear(time_dim, dim_out)) if time_dim else None
        self.block1 = Block(dim, dim_out, large)
        self.block2 = Block(dim_out, dim_out)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x, t=None):
        h = self.block1(x)
        if self.mlp is not None and t is not None:
            h = h + self.mlp(t)[:, :, None, None]
        return self.block2(h) + self.res_conv(x)


class LinearAttention(nn.Module):
    """One-head linear attention (keys softmaxed over positions), head width = channels."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = dim ** -0.5
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1, bias=False)
        self.to_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = (t.reshape(b, c, h * w) for t in self.to_qkv(x).chunk(3, dim=1))
        k = k.softmax(dim=-1)
        ctx = torch.bmm(k, v.transpose(1, 2))  # (b, d, e) = sum_n k[d, n] v[e, n]
        out = torch.bmm(ctx.transpose(1, 2), q * self.scale)  # (b, e, n) = sum_d ctx[d, e] q[d, n]
        return self.to_out(out.reshape(b, c, h, w))


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.norm = LayerNorm(dim)

    def forward(self, x):
        return self.fn(self.norm(x))


class Residual(nn.Module):
    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


class Downsample(nn.Module):
    def __init__(self, dim: int, dim_out: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim_out or dim, 3, 2, 1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, dim: int, dim_out: int | None = None) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(dim, dim_out or dim, 4, 2, 1)

    def forward(self, x):
        return self.conv(x)


def _attention(dim: int) -> nn.Module:
    return Residual(PreNorm(dim, LinearAttention(dim)))


# ---------------------------------------------------------------------------- U-Net denoiser
class Unet(nn.Module):
    """Denoiser ``f(x_t, t, context)``: x_t (B, 3, H, W), t (B, 1) in [0, 1], context = the
    compressor's decoder outputs, highest resolution first. Returns (B, 3, H, W)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        d = cfg.dim
        dims = [3, *(d * m for m in cfg.dim_mults)]
        ctx_dims = [cfg.context_channels, *(d * m for m in cfg.context_dim_mults)]
        in_out = list(zip(dims[:-1], dims[1:]))
        n = len(in_out)
        self.time_mlp = nn.Sequential(nn.Linear(1, d * 4), nn.GELU(), nn.Linear(d * 4, d))
        self.downs = nn.ModuleList()
        for i, (a, b) in enumerate(in_out):
            last = i == n - 1
            extra = ctx_dims[i] if (not last and i < len(ctx_dims) - 1) else 0
            self.downs.append(nn.ModuleList([
                ResnetBlock(a + extra, b, d, large=i == 0), ResnetBlock(b, b, d), _attention(b),
                Downsample(b) if not last else nn.Identity()]))
        mid = dims[-1]
        self.mid_block1 = ResnetBlock(mid, mid, d)
        self.mid_attn = _attention(mid)
        self.mid_block2 = ResnetBlock(mid, mid, d)
        self.ups = nn.ModuleList()
        for a, b in reversed(in_out[1:]):
            self.ups.append(nn.ModuleList([ResnetBlock(b * 2, a, d), ResnetBlock(a, a, d), _attention(a), Upsample(a)]))
        self.final_conv = nn.Sequential(LayerNorm(d), nn.Conv2d(d, 3, 7, padding=3))

    def forward(self, x, time, context):
        t = self.time_mlp(time)
        skips = []
        for i, (res1, res2, attn, down) in enumerate(self.downs):
            if i < len(context):
                x = torch.cat([x, context[i]], dim=1)
            x = attn(res2(res1(x, t), t))
            skips.append(x)
            x = down(x)
        x = self.mid_block2(self.mid_attn(self.mid_block1(x, t)), t)
        for res1, res2, attn, up in self.ups:
            x = torch.cat((x, skips.pop()), dim=1)
            x = up(attn(res2(res1(x, t), t)))
        return self.final_conv(x)


# ---------------------------------------------------------------------------- entropy model of z
class FlexiblePrior(nn.Module):
    """Ballé et al. 2018 (App. 6.1) factorised density per channel; ``cdf_logits(v)`` is the
    logit of P(Z <= v) for v (B, C, H, W). Parameters as in the release."""

    def __init__(self, channels: int, dims=(3, 3, 3), init_scale: float = 10.0) -> None:
        super().__init__()
        dims = [1, *dims, 1]
        self.chain = len(dims) - 1
        scale = init_scale ** (1 / self.chain)
        self.affine = nn.ModuleList()
        for i in range(self.chain):
            m = _Affine(channels, dims[i], dims[i + 1])
            nn.init.constant_(m.weight, float(np.log(np.expm1(1 / scale / dims[i + 1]))))
            nn.init.uniform_(m.bias, -0.5, 0.5)
            self.affine.append(m)
        self.a = nn.ParameterList([nn.Parameter(torch.zeros(channels, 1, 1, 1, dims[i + 1]))
                                   for i in range(self.chain - 1)])
        self._medians = nn.Parameter(torch.zeros(1, channels, 1, 1))

    @property
    def medians(self):
        return self._medians.detach()

    def cdf_logits(self, v):
        x = v.transpose(0, 1).unsqueeze(-1)  # (C, B, H, W, 1)
        for i in range(self.chain - 1):
            x = self.affine[i](x)
            x = x + torch.tanh(self.a[i]) * torch.tanh(x)
        return self.affine[-1](x).squeeze(-1).transpose(0, 1)

    def likelihood(self, v, floor: float = 1e-9):
        """P(round(Z) = v) for values v on the medians' lattice (the release's formula)."""
        lower, upper = self.cdf_logits(v - 0.5), self.cdf_logits(v + 0.5)
        sign = -torch.sign(lower + upper)
        return (torch.sigmoid(upper * sign) - torch.sigmoid(lower * sign)).abs().clamp_min(floor)


class _Affine(nn.Module):
    def __init__(self, channels: int, fan_in: int, fan_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, 1, 1, fan_in, fan_out))
        self.bias = nn.Parameter(torch.empty(channels, 1, 1, 1, fan_out))

    def forward(self, x):
        return torch.matmul(x, F.softplus(self.weight)) + self.bias


def gaussian_likelihood(v, mean, scale, floor: float = 1e-9):
    """P(round(Y - mean) = v - mean) under N(mean, scale) (the release's formula)."""
    x = (v - mean).abs()
    c = -(2 ** -0.5)
    upper = 0.5 * torch.erfc(c * (0.5 - x) / scale)
    lower = 0.5 * torch.erfc(c * (-0.5 - x) / scale)
    return (upper - lower).clamp_min(floor)


# ---------------------------------------------------------------------------- compressor
class Compressor(nn.Module):
    """Analysis ``enc``, hyper-analysis ``hyper_enc``, hyper-synthesis ``hyper_dec`` (mean,
    scale), ``prior`` for z, and the context decoder ``dec`` (outputs for the U-Net)."""

    SCALE_MIN = 0.1

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        d = cfg.dim
        slot = cfg.param == "eps"  # BigCompressor keeps an (empty) VBR slot in every unit
        mid = (nn.Identity(),) if slot else ()
        self.slot = slot
        dims = [3, *(d * m for m in cfg.comp_dim_mults)]
        if cfg.param == "x":
            rdims = [*(d * m for m in reversed(cfg.comp_dim_mults)), cfg.context_channels]
        else:
            rdims = list(reversed([cfg.context_channels, *(d * m for m in cfg.comp_dim_mults)]))
        hdims = [dims[-1], *(d * m for m in cfg.hyper_dims_mults)]
        rhdims = list(reversed([dims[-1] * 2, *(d * m for m in cfg.hyper_dims_mults)]))
        self.enc = nn.ModuleList(nn.ModuleList([ResnetBlock(a, b, None, i == 0), *mid, Downsample(b)])
                                 for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])))
        pairs = list(zip(rdims[:-1], rdims[1:]))
        self.dec = nn.ModuleList()
        for i, (a, b) in enumerate(pairs):
            last = i == len(pairs) - 1
            self.dec.append(nn.ModuleList([ResnetBlock(a, a if last else b), *mid, Upsample(a if last else b, b)]))
        pairs = list(zip(hdims[:-1], hdims[1:]))
        self.hyper_enc = nn.ModuleList(
            nn.ModuleList([nn.Conv2d(a, b, 3, 1, 1) if i == 0 else nn.Conv2d(a, b, 5, 2, 2), *mid,
                           nn.LeakyReLU(0.2) if i < len(pairs) - 1 else nn.Identity()])
            for i, (a, b) in enumerate(pairs))
        pairs = list(zip(rhdims[:-1], rhdims[1:]))
        self.hyper_dec = nn.ModuleList(
            nn.ModuleList([nn.Conv2d(a, b, 3, 1, 1) if i == len(pairs) - 1 else nn.ConvTranspose2d(a, b, 5, 2, 2, 1),
                           *mid, nn.LeakyReLU(0.2) if i < len(pairs) - 1 else nn.Identity()])
            for i, (a, b) in enumerate(pairs))
        self.prior = FlexiblePrior(hdims[-1])

    @staticmethod
    def _run(units, x):
        for unit in units:
            for layer in unit:
                x = layer(x)
        return x

    def analysis(self, x):
        """x (B, 3, H, W) in [-1, 1] -> (latent y, hyper-latent z), unquantised."""
        y = self._run(self.enc, x)
        return y, self._run(self.hyper_enc, y)

    def hyper_synthesis(self, z_hat):
        """z_hat -> (mean, scale) of y, scale clamped at 0.1 (float32, as in the release)."""
        mean, scale = self._run(self.hyper_dec, z_hat).chunk(2, 1)
        return mean, scale.clamp(min=self.SCALE_MIN)

    def context(self, y_hat):
        """y_hat -> U-Net conditioning, highest resolution first."""
        out = []
        x = y_hat
        for unit in self.dec:
            x = self._run([unit], x)
            out.append(x)
        return out[::-1]


class CDC(nn.Module):
    """``denoise_fn`` (U-Net), ``context_fn`` (compressor) and the diffusion schedule buffers
    saved with the released model (names as in the release)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.denoise_fn = Unet(cfg)
        self.context_fn = Compressor(cfg)
        betas = cosine_betas(cfg.timesteps) if cfg.schedule == "cosine" else linear_betas(cfg.timesteps)
        ac = np.cumprod(1.0 - betas, axis=0)

        def f(a):
            return torch.tensor(a, dtype=torch.float32)

        if cfg.param == "x":
            self.register_buffer("train_snr", f(ac / (1 - ac)))
        self.register_buffer("train_betas", f(betas))
        self.register_buffer("train_alphas_cumprod", f(ac))
        self.register_buffer("train_sqrt_alphas_cumprod", f(np.sqrt(ac)))
        self.register_buffer("train_sqrt_one_minus_alphas_cumprod", f(np.sqrt(1.0 - ac)))
        self.register_buffer("train_sqrt_recip_alphas_cumprod", f(np.sqrt(1.0 / ac)))
        self.register_buffer("train_sqrt_recipm1_alphas_cumprod", f(np.sqrt(1.0 / ac - 1)))

    def denoise(self, x, time, context):
        """The U-Net in its own dtype (``--dtype``); inputs cast to it, output back to float32."""
        dt = self.denoise_fn.final_conv[1].weight.dtype
        return self.denoise_fn(x.to(dt), time.to(dt), [c.to(dt) for c in context]).float()


def cosine_betas(n: int, s: float = 0.008) -> np.ndarray:
    """Nichol & Dhariwal's cosine schedule (float64), betas clipped at 0.999."""
    x = np.linspace(0, n + 1, n + 1)
    ac = np.cos(((x / (n + 1)) + s) / (1 + s) * np.pi * 0.5) ** 2
    ac = ac / ac[0]
    return np.clip(1 - ac[1:] / ac[:-1], 0, 0.999)


def linear_betas(n: int) -> np.ndarray:
    scale = 1000 / n
    return np.linspace(scale * 1e-4, scale * 0.02, n)


# ---------------------------------------------------------------------------- entropy coding tables
class FactorizedTables:
    """rANS tables for z from a :class:`FlexiblePrior` (computed once on the CPU in float32,
    identically in encoder and decoder). Symbols are ``round(z - median)``; per channel the
    pmf covers every integer whose probability tail exceeds ``tail_mass``; values outside go
    through the coder's bypass (escape) path."""

    PRECISION = 16

    def __init__(self, prior: FlexiblePrior, tail_mass: float = 1e-9, search: int = 512) -> None:
        from compressai._CXX import pmf_to_quantized_cdf

        with torch.no_grad():
            med = prior.medians.detach().float().cpu()  # (1, C, 1, 1)
            c = med.shape[1]
            k = torch.arange(-search, search + 1, dtype=torch.float32)
            v = med.reshape(c, 1) + k.reshape(1, -1)  # (C, K)
            grid = v.t().reshape(-1, c, 1, 1)  # (K, C, 1, 1)
            lo_cdf = torch.sigmoid(prior.cdf_logits(grid - 0.5)).reshape(-1, c).t()  # P(Z <= v - .5)
            hi_cdf = torch.sigmoid(prior.cdf_logits(grid + 0.5)).reshape(-1, c).t()
            pmf_all = prior.likelihood(grid, floor=0.0).reshape(-1, c).t()
        self.offsets, self.cdfs, self.lengths = [], [], []
        for ch in range(c):
            keep = ((hi_cdf[ch] > tail_mass / 2) & (lo_cdf[ch] < 1 - tail_mass / 2)).nonzero().flatten()
            a, b = (int(keep[0]), int(keep[-1])) if len(keep) else (search, search)
            pmf = pmf_all[ch, a:b + 1].double()
            tail = max(0.0, 1.0 - float(pmf.sum()))
            probs = torch.cat([pmf, torch.tensor([tail], dtype=torch.float64)]).clamp_min(0)
            cdf = pmf_to_quantized_cdf(probs.tolist(), self.PRECISION)
            self.offsets.append(a - search)
            self.cdfs.append(list(cdf))
            self.lengths.append(len(cdf))
        width = max(self.lengths)
        self.cdfs = [cdf + [0] * (width - len(cdf)) for cdf in self.cdfs]

    def encode(self, symbols) -> bytes:
        """symbols: int tensor (1, C, h, w) -> bytes."""
        from compressai.ans import RansEncoder

        s = symbols.to(torch.int32).cpu()
        idx = torch.arange(s.shape[1], dtype=torch.int32).reshape(1, -1, 1, 1).expand_as(s)
        return RansEncoder().encode_with_indexes(s.reshape(-1).tolist(), idx.reshape(-1).tolist(),
                                                 self.cdfs, self.lengths, self.offsets)

    def decode(self, data: bytes, shape) -> torch.Tensor:
        """bytes -> int32 symbols of ``shape`` (1, C, h, w) on the CPU."""
        from compressai.ans import RansDecoder

        idx = torch.arange(shape[1], dtype=torch.int32).reshape(1, -1, 1, 1).expand(*shape)
        out = RansDecoder().decode_with_indexes(data, idx.reshape(-1).tolist(), self.cdfs, self.lengths,
                                                self.offsets)
        return torch.tensor(out, dtype=torch.int32).reshape(shape)


def gaussian_conditional():
    """CompressAI's GaussianConditional with scales 0.1 ... 256 (64 log-spaced levels; the
    release clamps scales at 0.1), tables built; used on the CPU in float32."""
    from compressai.entropy_models import GaussianConditional

    table = torch.exp(torch.linspace(math.log(0.1), math.log(256.0), 64)).tolist()
    gc = GaussianConditional(table, scale_bound=0.1)
    gc.update()
    return gc
