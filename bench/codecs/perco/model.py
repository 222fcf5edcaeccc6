"""PerCo networks on diffusers: hyper-encoder + VQ, and the whole model of one rate point.

:class:`PerCoModel` bundles what one rate point needs: the LDM autoencoder
(``AutoencoderKL``), the :class:`HyperEncoder` (VAE latents -> h x w index map and
back to features), the denoising ``UNet2DConditionModel`` whose ``conv_in`` takes the
latents concatenated with the nearest-upsampled quantised features (4 + C input
channels: the paper's "extended kernel of the first convolution"), a CLIP text encoder
with its tokenizer, and the DDIM scheduler configuration.

Two ways to build it:

* :func:`load_pipeline_folder` reads a diffusers pipeline folder in the layout of the
  community reimplementation (github.com/Nikolai10/PerCo, Apache-2.0; facts learned from
  its public definitions, code written here): ``model_index.json`` and the subfolders
  ``vae/``, ``hyper_enc/``, ``text_encoder/``, ``tokenizer/``, ``unet/``, ``scheduler/``.
  Its ``unet/`` holds SD-2.1's ``conv_in`` (4 -> 320) *and* ``conv_in_extended``
  (4 + 320 -> 320, the one its forward uses); bench loads ``conv_in_extended`` as the
  ``conv_in`` of a diffusers UNet with ``in_channels = 4 + 320``. A folder already saved
  that way (no ``conv_in_extended``) loads too. ``hyper_enc/config.json`` carries
  ``in_channels, num_residual_blocks, num_filters_base, num_filters_out, codebook_dim,
  cfg_ss`` (grid side) and ``cfg_cs`` (codebook size); its weights are named
  ``proj_in.*``, ``resid_blocks.<i>.sequence.<0,1,3,4>.*``, ``down_blocks.<i>.<0,1>.*``,
  ``proj_out.0.*`` and, from vector-quantize-pytorch, ``quantizer.project_in.*``,
  ``quantizer.project_out.*``, ``quantizer._codebook.embed`` (1, V, codebook_dim)
  (plus EMA buffers ``initted``/``cluster_size``/``embed_avg``, unused at inference).
* :func:`build_random` builds the same architecture with random weights: ``size="tiny"``
  (a few hundred thousand parameters per network: what ``--init random`` runs on a CPU)
  or ``size="full"`` (SD-2.1 sizes: UNet ~870M parameters; GPU only in practice). The
  tokenizer under random init is a byte-level CLIP BPE vocabulary (256 byte symbols, their
  end-of-word forms, start/end tokens; no merges) written here, no download.

Codebook search. The paper says the codebook dimension is 32 with inputs projected down
to it, following Yu et al. (2022) (who also l2-normalise codes). vector-quantize-pytorch,
which the paper and the reimplementation use, searches by Euclidean distance unless
``use_cosine_sim=True``; the reimplementation does not set it. ``distance`` selects
``"euclidean"`` or ``"cosine"`` (argmax of cosine similarity); a folder's
``hyper_enc/config.json`` may say ``use_cosine_sim``.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.codecs.base import CodecError

CODED_SIZE = 512  # PerCo codes every image at 512 x 512 (bicubic resize), as the reimplementation
LATENT_CHANNELS = 4
COMPONENTS = ("vae", "hyper_enc", "text_encoder", "tokenizer", "unet", "scheduler")

# Stable Diffusion 2.1's DDIM scheduler settings (v-prediction); used under --init random
SD21_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction",
                      timestep_spacing="leading")


# ---------------------------------------------------------------------------- hyper-encoder
class ChannelNorm(nn.Module):
    """HiFiC's channel normalisation: per pixel, over channels (unbiased variance), affine."""

    def __init__(self, channels: int, eps: float = 1e-3) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x):
        mean = x.mean(dim=1, keepdim=True)
        var = x.var(dim=1, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.gamma + self.beta


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.sequence = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), ChannelNorm(channels), nn.ReLU(),
                                      nn.Conv2d(channels, channels, 3, padding=1), ChannelNorm(channels))

    def forward(self, x):
        return x + self.sequence(x)


class _Codebook(nn.Module):
    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.embed = nn.Parameter(torch.randn(1, size, dim))


class VectorQuantizer(nn.Module):
    """Projection to ``codebook_dim``, nearest code (Euclidean or cosine), projection back."""

    def __init__(self, dim: int, codebook_size: int, codebook_dim: int, distance: str = "euclidean") -> None:
        super().__init__()
        if distance not in ("euclidean", "cosine"):
            raise ValueError(f"distance must be euclidean or cosine, got {distance!r}")
        self.distance = distance
        proj = codebook_dim != dim
        self.project_in = nn.Linear(dim, codebook_dim) if proj else nn.Identity()
        self.project_out = nn.Linear(codebook_dim, dim) if proj else nn.Identity()
        self._codebook = _Codebook(codebook_size, codebook_dim)

    @property
    def size(self) -> int:
        return self._codebook.embed.shape[1]

    def indices(self, x):
        """(N, dim) float -> (N,) int64 code indices."""
        x = self.project_in(x.float())
        codes = self._codebook.embed[0].float()
        if self.distance == "cosine":
            return (F.normalize(x, dim=-1) @ F.normalize(codes, dim=-1).t()).argmax(dim=-1)
        return (2 * x @ codes.t() - codes.pow(2).sum(-1)).argmax(dim=-1)  # argmin of squared distance

    def lookup(self, idx):
        """(...) int64 -> (..., dim) float features."""
        return self.project_out(self._codebook.embed[0][idx])


class HyperEncoder(nn.Module):
    """LDM latents (B, 4, 64, 64) -> features (B, C, grid, grid) -> VQ index map (B, grid, grid)."""

    def __init__(self, in_channels: int = 4, num_residual_blocks: int = 9, num_filters_base: int = 192,
                 num_filters_out: int = 320, codebook_dim: int = 32, grid: int = 64, codebook_size: int = 256,
                 latent_size: int = CODED_SIZE // 8, distance: str = "euclidean") -> None:
        super().__init__()
        n_down = int(round(math.log2(latent_size // grid)))
        if grid < 1 or latent_size // grid != 2 ** n_down or latent_size % grid:
            raise CodecError(f"perco: grid {grid} must be the {latent_size}-pixel latent size divided by a power of 2")
        self.grid, self.out_channels = grid, num_filters_out
        self.proj_in = nn.Sequential(ChannelNorm(in_channels), nn.Conv2d(in_channels, num_filters_base, 3, padding=1),
                                     ChannelNorm(num_filters_base))
        self.resid_blocks = nn.Sequential(*[_Residual(num_filters_base) for _ in range(num_residual_blocks)])
        blocks, prev = [], num_filters_base
        for i in range(n_down):
            nxt = num_filters_base * 2 ** (i + 1)
            blocks.append(nn.Sequential(nn.Conv2d(prev, nxt, 3, stride=2, padding=1), ChannelNorm(nxt), nn.ReLU()))
            prev = nxt
        self.down_blocks = nn.Sequential(*blocks)
        self.proj_out = nn.Sequential(nn.Conv2d(prev, num_filters_out, 1))
        self.quantizer = VectorQuantizer(num_filters_out, codebook_size, codebook_dim, distance)

    @property
    def codebook_size(self) -> int:
        return self.quantizer.size

    def features(self, latents):
        z = self.proj_in(latents)
        z = z + self.resid_blocks(z)  # the residual chain has an outer skip as well
        return self.proj_out(self.down_blocks(z))

    def encode(self, latents):
        """(B, 4, H/8, W/8) -> (B, grid, grid) int64 indices."""
        z = self.features(latents.float())
        b, c, h, w = z.shape
        return self.quantizer.indices(z.permute(0, 2, 3, 1).reshape(-1, c)).view(b, h, w)

    def decode(self, idx):
        """(B, h, w) int64 -> (B, C, h, w) float32 quantised features."""
        return self.quantizer.lookup(idx).permute(0, 3, 1, 2).float()


# ---------------------------------------------------------------------------- the bundle
@dataclass
class PerCoParts:
    vae: Any
    hyper_enc: HyperEncoder
    unet: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict


class PerCoModel(nn.Module):
    """All networks of one rate point (``tokenizer`` and ``scheduler_config`` are plain attributes)."""

    def __init__(self, parts: PerCoParts, source: str) -> None:
        super().__init__()
        self.vae, self.hyper_enc, self.unet, self.text_encoder = (parts.vae, parts.hyper_enc, parts.unet,
                                                                  parts.text_encoder)
        self.tokenizer = parts.tokenizer
        self.scheduler_config = dict(parts.scheduler_config)
        self.source = source  # "random-tiny", "random-full" or the folder's path
        self.scaling_factor = float(getattr(self.vae.config, "scaling_factor", 0.18215))
        self.vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        expected = LATENT_CHANNELS + self.hyper_enc.out_channels
        if self.unet.config.in_channels != expected:
            raise CodecError(f"perco: the UNet takes {self.unet.config.in_channels} input channels, expected "
                             f"{expected} (4 latent + {self.hyper_enc.out_channels} hyper-latent feature channels)")

    @property
    def grid(self) -> int:
        return self.hyper_enc.grid

    @property
    def codebook_size(self) -> int:
        return self.hyper_enc.codebook_size


# ---------------------------------------------------------------------------- random init
def byte_level_tokenizer():
    """A CLIPTokenizer over a byte-level vocabulary (514 tokens, no merges), built offline."""
    from transformers import CLIPTokenizer

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    symbols = [chr(b) if b in printable else chr(next(extra)) for b in range(256)]  # GPT-2's byte->unicode map
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": 256 + i for i, s in enumerate(symbols)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = 512, 513
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "vocab.json").write_text(json.dumps(vocab))
        Path(tmp, "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt"), model_max_length=77)


def random_configs(size: str) -> dict[str, dict]:
    """Architectures under ``--init random``: ``tiny`` (CPU tests) or ``full`` (SD-2.1 sizes)."""
    if size == "tiny":
        return dict(
            vae=dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 16, 16),
                     down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                     layers_per_block=1, norm_num_groups=4, sample_size=CODED_SIZE),
            hyper=dict(num_residual_blocks=1, num_filters_base=16, num_filters_out=64, codebook_dim=32),
            # attention only at the coarsest level (16x16 tokens): fast on a CPU
            unet=dict(sample_size=64, out_channels=4, block_out_channels=(16, 32, 32), layers_per_block=1,
                      down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                      attention_head_dim=4, norm_num_groups=8),
            text=dict(vocab_size=514, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=77, bos_token_id=512, eos_token_id=513,
                      pad_token_id=513))
    if size == "full":
        return dict(
            vae=dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                     down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                     layers_per_block=2, norm_num_groups=32, sample_size=768),
            hyper=dict(num_residual_blocks=9, num_filters_base=192, num_filters_out=320, codebook_dim=32),
            unet=dict(sample_size=96, out_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                      attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True),
            text=dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                      num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
                      bos_token_id=512, eos_token_id=513, pad_token_id=513))
    raise CodecError(f"perco: random_size must be tiny or full, got {size!r}")


def build_random(grid: int, codebook_size: int, size: str = "tiny", distance: str = "cosine") -> PerCoModel:
    """Random-weight model of one rate point (the caller seeds torch's RNG)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = random_configs(size)
    vae = AutoencoderKL(**cfg["vae"])
    hyper = HyperEncoder(grid=grid, codebook_size=codebook_size, distance=distance, **cfg["hyper"])
    unet = UNet2DConditionModel(in_channels=LATENT_CHANNELS + hyper.out_channels, **cfg["unet"])
    text = CLIPTextModel(CLIPTextConfig(**cfg["text"]))
    parts = PerCoParts(vae, hyper, unet, text, byte_level_tokenizer(), dict(SD21_SCHEDULER))
    return PerCoModel(parts, f"random-{size}")


# ---------------------------------------------------------------------------- pipeline folders
_HYPER_KEYS = ("in_channels", "num_residual_blocks", "num_filters_base", "num_filters_out", "codebook_dim")
_IGNORED_VQ_BUFFERS = ("quantizer._codebook.initted", "quantizer._codebook.cluster_size",
                       "quantizer._codebook.embed_avg")


def weight_files(folder: Path) -> list[Path]:
    """Every weight and config file of a pipeline folder that can change results, sorted."""
    out = []
    for comp in COMPONENTS:
        d = folder / comp
        if d.is_dir():
            out += [p for p in sorted(d.iterdir()) if p.is_file() and p.suffix in (".safetensors", ".bin", ".json",
                                                                                  ".txt", ".model")]
    return out


def _state_dict(folder: Path) -> dict:
    """The diffusers weights of ``folder`` (single file or shards; safetensors or .bin; fp32 or fp16 variant)."""
    from safetensors.torch import load_file

    for stem in ("diffusion_pytorch_model", "diffusion_pytorch_model.fp16"):
        index = folder / f"{stem}.safetensors.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state: dict = {}
            for s in shards:
                state.update(load_file(folder / s))
            return state
        if (folder / f"{stem}.safetensors").is_file():
            return load_file(folder / f"{stem}.safetensors")
        if (folder / f"{stem}.bin").is_file():
            return torch.load(folder / f"{stem}.bin", map_location="cpu", weights_only=True)
    raise CodecError(f"perco: no weights (diffusion_pytorch_model[.fp16].safetensors or .bin) in {folder}")


def _load_strict(module: nn.Module, state: dict, what: str, ignore: tuple[str, ...] = ()) -> None:
    state = {k: v for k, v in state.items() if k not in ignore}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        raise CodecError(f"perco: {what} does not match the architecture: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}, wrong shapes {wrong[:5]}")
    module.load_state_dict({k: v.float() for k, v in state.items()})


def load_hyper_encoder(folder: Path, distance: str = "auto") -> HyperEncoder:
    cfg = json.loads((folder / "config.json").read_text())
    try:
        kwargs = {k: int(cfg[k]) for k in _HYPER_KEYS}
        grid, size = int(cfg["cfg_ss"]), int(cfg["cfg_cs"])
    except KeyError as exc:
        raise CodecError(f"perco: {folder / 'config.json'} lacks {exc} (a PerCo hyper-encoder config has "
                         f"{', '.join(_HYPER_KEYS)}, cfg_ss, cfg_cs)") from exc
    if distance == "auto":
        distance = "cosine" if cfg.get("use_cosine_sim") else "euclidean"
    hyper = HyperEncoder(grid=grid, codebook_size=size, distance=distance, **kwargs)
    _load_strict(hyper, _state_dict(folder), f"hyper-encoder {folder}", _IGNORED_VQ_BUFFERS)
    return hyper


def load_unet(folder: Path, feature_channels: int):
    """The UNet with ``conv_in`` taking 4 + ``feature_channels`` channels (see module doc)."""
    from diffusers import UNet2DConditionModel

    cfg = json.loads((folder / "config.json").read_text())
    state = _state_dict(folder)
    if "conv_in_extended.weight" in state:  # the reimplementation's layout: use the extended convolution
        state = {k: v for k, v in state.items() if not k.startswith("conv_in.")}
        state = {("conv_in." + k[len("conv_in_extended."):] if k.startswith("conv_in_extended.") else k): v
                 for k, v in state.items()}
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    cfg["in_channels"] = int(state["conv_in.weight"].shape[1])
    if cfg["in_channels"] != LATENT_CHANNELS + feature_channels:
        raise CodecError(f"perco: {folder}: conv_in takes {cfg['in_channels']} channels, but the hyper-encoder gives "
                         f"{feature_channels} (+4 latent channels)")
    unet = UNet2DConditionModel.from_config(cfg)
    _load_strict(unet, state, f"UNet {folder}")
    return unet


def load_pipeline_folder(folder: str | Path, distance: str = "auto") -> PerCoModel:
    """A PerCo diffusers pipeline folder (see module doc) -> :class:`PerCoModel` (CPU, float32)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(folder).expanduser()
    missing = [c for c in COMPONENTS if not (folder / c).is_dir()]
    if not (folder / "model_index.json").is_file() or missing:
        raise CodecError(f"perco: {folder} is not a PerCo pipeline folder (needs model_index.json and the subfolders "
                         f"{', '.join(COMPONENTS)}; missing: {', '.join(missing) or 'model_index.json'})")
    hyper = load_hyper_encoder(folder / "hyper_enc", distance)
    unet = load_unet(folder / "unet", hyper.out_channels)
    vae = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=torch.float32)
    text = CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True, dtype=torch.float32)
    tok = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    sched = {k: v for k, v in sched.items() if not k.startswith("_")}
    return PerCoModel(PerCoParts(vae, hyper, unet, text, tok, sched), str(folder))
