"""PerCo decoding: DDIM (deterministic, eta = 0) with classifier-free guidance on the text only.

At every step the UNet sees the noisy latents concatenated with the quantised
hyper-latent features, upsampled (nearest) to the latent grid, in *both* branches of
classifier-free guidance; only the text differs: the caption vs the empty caption ""
(the reimplementation's negative prompt; the paper uses a learned constant embedding,
which the released folders do not carry)::

    eps = eps(x_t, z_l, "") + s * (eps(x_t, z_l, caption) - eps(x_t, z_l, ""))

with s = ``guidance_scale`` (paper and reimplementation: 3.0; s <= 1 disables guidance).
The scheduler is diffusers' ``DDIMScheduler`` with the model's configuration
(SD-2.1: v-prediction, scaled-linear betas, "leading" spacing, steps_offset 1). The only
randomness is the initial latent noise, one draw per item from that item's generator, so
a sample does not depend on the rest of its batch.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def encode_text(model, captions: Sequence[str], dtype) -> torch.Tensor:
    """Captions -> (B, 77, D) text-encoder hidden states (SD: the last hidden state)."""
    tok = model.tokenizer(list(captions), padding="max_length", max_length=model.tokenizer.model_max_length,
                          truncation=True, return_tensors="pt")
    ids = tok.input_ids.to(next(model.text_encoder.parameters()).device)
    return model.text_encoder(ids)[0].to(dtype)


def sample(model, features: torch.Tensor, captions: Sequence[str], noise: torch.Tensor, steps: int,
           guidance_scale: float, dtype) -> torch.Tensor:
    """Quantised features (B, C, h, w), captions, initial noise (B, 4, H/8, W/8) -> images (B, 3, H, W) in [0, 1].

    The networks run in ``dtype`` (their weights already are); latents and scheduler
    arithmetic stay float32."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(model.scheduler_config)
    scheduler.set_timesteps(int(steps), device=noise.device)
    guided = guidance_scale > 1.0
    text = encode_text(model, captions, dtype)
    if guided:
        empty = encode_text(model, [""], dtype).expand(len(captions), -1, -1)
        text = torch.cat([empty, text])
    local = F.interpolate(features.float(), size=noise.shape[-2:], mode="nearest").to(dtype)
    if guided:
        local = torch.cat([local, local])
    latents = noise.float() * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = torch.cat([latents, latents]) if guided else latents
        x = scheduler.scale_model_input(x, t)
        out = model.unet(torch.cat([x.to(dtype), local], dim=1), t, encoder_hidden_states=text).sample.float()
        if guided:
            uncond, cond = out.chunk(2)
            out = uncond + guidance_scale * (cond - uncond)
        latents = scheduler.step(out, t, latents, eta=0.0).prev_sample
    images = model.vae.decode((latents / model.scaling_factor).to(dtype)).sample.float()
    return (images / 2 + 0.5).clamp_(0, 1)
