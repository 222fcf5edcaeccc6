"""CDC decoding by iterative denoising (DDIM / DDPM) on the released schedules.

Facts from ``buggyyang/CDC_compression`` (commit 00b10de9, ``*/modules/denoising_diffusion.py``
and the test scripts): decoding starts from γ·N(0, I) (``init=randn*gamma``), the N test steps
are ``linspace(0, T-1, N)`` of the T training steps, ᾱ_prev of the first step is 1; the
x-param model predicts x0 (clipped to [-1, 1]) and gets the time ``index/T``; the ε-param
model predicts the noise, is not clipped (``clip_noise="none"``) and gets ``i/N`` (the
position in the test schedule). The update is DDIM's with η (σ as in DDIM); η = 0 is the
official deterministic sampler, η = 1 ancestral (DDPM) sampling on the same schedule.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from bench.codecs.cdc.model import CDC


def sample(model: CDC, context: list, init, steps: int, eta: float, noise_fn=None):
    """Iterative decoding from ``init`` (B, 3, H, W) float32 (γ·N(0, I)) conditioned on
    ``context``; ``eta`` 0 = DDIM (deterministic after the initial noise), 1 = DDPM
    (ancestral: fresh noise from ``noise_fn(shape)`` at every step). Returns x0 (B, 3, H, W),
    not yet clamped. Steps are spread evenly over the training steps (``linspace``), as in
    the release; x-param clips its x0 prediction to [-1, 1], eps-param does not (its
    released ``clip_noise="none"``)."""
    cfg = model.cfg
    T = cfg.timesteps
    dev = init.device
    if cfg.param == "x" and steps == 1:
        idx = torch.tensor([T - 1], device=dev)
    else:
        idx = torch.linspace(0, T - 1, steps, device=dev).long()
    ac = model.train_alphas_cumprod.to(dev)[idx]
    ac_prev = F.pad(ac[:-1], (1, 0), value=1.0)
    sigma = torch.sqrt((1 - ac_prev) / (1 - ac)) * torch.sqrt(1 - ac / ac_prev)
    x = init
    b = x.shape[0]
    for i in reversed(range(steps)):
        if cfg.param == "x":
            time = torch.full((b, 1), float(idx[i]) / T, device=dev)
            x0 = model.denoise(x, time, context).clamp(-1.0, 1.0)
            eps = (x / ac[i].sqrt() - x0) / torch.sqrt(1.0 / ac[i] - 1)
        else:
            time = torch.full((b, 1), i / steps, device=dev)
            eps = model.denoise(x, time, context)
            x0 = x / ac[i].sqrt() - torch.sqrt(1.0 / ac[i] - 1) * eps
        s = eta * sigma[i]
        x = ac_prev[i].sqrt() * x0 + torch.sqrt((1 - ac_prev[i] - s * s).clamp(min=0)) * eps
        if eta > 0 and i > 0:
            x = x + s * noise_fn(tuple(x.shape[1:]))
    return x
