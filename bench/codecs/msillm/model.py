"""The MS-ILLM network: HiFiC's autoencoder with a mean-scale hyperprior, written here.

MS-ILLM (Muckley et al., "Improving Statistical Fidelity for Neural Image Compression
with Implicit Local Likelihood Models", ICML 2023) keeps HiFiC's autoencoder (Mentzer et
al., NeurIPS 2020) and changes its training (a local-likelihood discriminator); the
No-GAN models are the same network trained without the GAN. Every released file
(``msillm_quality_vlo1/vlo2/1..6``, ``noganms_quality_1..6``) is the release's
``HiFiCAutoencoder()`` with its defaults, i.e. :data:`FULL` here; the vlo models differ
only in their weights.

The facts this module is written from (no code of the release is used; parameter names
and shapes match its state dicts so that its files load with ``strict=True``; the full
key list with shapes and sources is ``release_keys.txt`` beside this file):

* facebookresearch/NeuralCompression @ 3f122808255a2278eea049119367eb3abc434862,
  ``neuralcompression/models/_hific_encoder_decoder.py`` (last changed 7b135405):
  encoder = conv 7x7 (3->60), then 3x3 stride-2 convs 60->120->240->480->960, each
  followed by ChannelNorm2D and ReLU, then conv 3x3 960->220 (no norm); generator =
  ChannelNorm(220), conv 3x3 220->960, ChannelNorm(960); 9 residual blocks (conv, norm,
  ReLU, conv, norm; x + f(x)) with an extra skip around the whole stack; four 3x3
  stride-2 transposed convs (output_padding 1) 960->480->240->120->60 each with norm
  and ReLU; conv 7x7 60->3 (no output activation).
* ``neuralcompression/layers/_channel_norm.py``: ChannelNorm2D normalises over the
  channel axis with the *unbiased* variance (``torch.var`` default), epsilon 1e-3, affine
  ``gamma``/``beta`` of shape (1, C, 1, 1).
* ``neuralcompression/models/_hific_autoencoder.py`` (last changed 7b135405):
  latent_features 220, hyper_features 320, 9 residual blocks; ``hyper_analysis`` =
  conv3x3 s1 (220->320), ReLU, conv5x5 s2, ReLU, conv5x5 s2; ``hyper_synthesis_mean`` and
  ``hyper_synthesis_scale`` = deconv5x5 s2 (output_padding 1), ReLU, deconv5x5 s2, ReLU,
  conv3x3 s1 (320->220), no final activation; ``hyper_bottleneck`` =
  CompressAI ``EntropyBottleneck(320)``; ``latent_bottleneck`` = CompressAI
  ``GaussianConditional(scale_table=None)`` with the means; the image is padded to a
  multiple of 64 (``neuralcompression/functional/_pad_image.py``: reflect, bottom and
  right); compress(): y = encoder(x); z = hyper_analysis(y); z coded by the bottleneck and
  decoded; means/scales from the decoded z; y coded with indexes from the scales and
  the means; decompress() derives the latent sizes from the padded size, runs the
  decoder and crops/clamps to [0, 1]. The class derives from CompressAI's
  ``CompressionModel``, whose ``load_state_dict`` resizes the CDF buffers to the file's.
* The release pins compressai 1.2.4 (``projects/illm/requirements.txt``), whose
  EntropyBottleneck names its parameters ``_matrix{i}``, ``_bias{i}``, ``_factor{i}``;
  compressai >= 1.2.7 names them ``matrices.{i}``, ``biases.{i}``, ``factors.{i}`` and its
  ``CompressionModel.load_state_dict`` renames the old keys (``remap_old_keys``). So the
  release files load here strictly, and :func:`release_state_dict` gives a state dict
  under the release's names.

Contracts: input (B, 3, H, W) float32 in [0, 1] with H, W multiples of 64; latent y
(B, 220, H/16, W/16); hyper-latent z (B, 320, H/64, W/64); reconstruction (B, 3, H, W),
not clamped (the adapter clamps).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.models import CompressionModel
from torch import Tensor, nn

FACTOR = 64  # total downsampling of the hyper-latent: inputs are padded to a multiple of it
LATENT_FACTOR = 16


@dataclass(frozen=True)
class Config:
    """Widths of the network. :data:`FULL` is the released one; :data:`TINY` is for tests
    with random weights only (same structure, a few channels)."""

    latent_features: int = 220
    hyper_features: int = 320
    residual_blocks: int = 9
    channels: tuple[int, ...] = (60, 120, 240, 480, 960)  # encoder widths; the generator runs them backwards


FULL = Config()
TINY = Config(latent_features=6, hyper_features=4, residual_blocks=9, channels=(2, 3, 4, 4, 8))
CONFIGS = {"full": FULL, "tiny": TINY}


class ChannelNorm2d(nn.Module):
    """Normalise each pixel over channels (mean, unbiased variance, eps 1e-3), then scale
    by ``gamma`` and shift by ``beta`` (both (1, C, 1, 1))."""

    def __init__(self, channels: int, eps: float = 1e-3) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError("channel normalisation needs at least 2 channels")
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        centred = x - x.mean(dim=1, keepdim=True)
        return self.gamma * centred * torch.rsqrt(x.var(dim=1, keepdim=True) + self.eps) + self.beta


def _conv_norm_relu(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2), ChannelNorm2d(cout),
                         nn.ReLU())


def _up_norm_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1), ChannelNorm2d(cout),
                         nn.ReLU())


class Encoder(nn.Module):
    """(B, 3, H, W) -> (B, latent, H/16, W/16)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        widths = cfg.channels
        layers = [_conv_norm_relu(3, widths[0], 7, 1)]
        layers += [_conv_norm_relu(a, b, 3, 2) for a, b in zip(widths, widths[1:])]
        layers.append(nn.Conv2d(widths[-1], cfg.latent_features, 3, padding=1))
        self.blocks = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)


class ResidualBlock(nn.Module):
    """x + (conv, norm, ReLU, conv, norm)(x), width preserved."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.sequence = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), ChannelNorm2d(channels), nn.ReLU(),
                                      nn.Conv2d(channels, channels, 3, padding=1), ChannelNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.sequence(x)


class Generator(nn.Module):
    """(B, latent, h, w) -> (B, 3, 16h, 16w), unbounded (clamp afterwards)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        widths = tuple(reversed(cfg.channels))
        self.block_0 = nn.Sequential(ChannelNorm2d(cfg.latent_features),
                                     nn.Conv2d(cfg.latent_features, widths[0], 3, padding=1), ChannelNorm2d(widths[0]))
        self.resid_blocks = nn.Sequential(*(ResidualBlock(widths[0]) for _ in range(cfg.residual_blocks)))
        layers: list[nn.Module] = [_up_norm_relu(a, b) for a, b in zip(widths, widths[1:])]
        layers.append(nn.Conv2d(widths[-1], 3, 7, padding=3))
        self.blocks = nn.Sequential(*layers)

    def forward(self, y: Tensor) -> Tensor:
        h = self.block_0(y)
        return self.blocks(h + self.resid_blocks(h))


def _hyper_synthesis(cfg: Config) -> nn.Sequential:
    c = cfg.hyper_features
    return nn.Sequential(nn.ConvTranspose2d(c, c, 5, stride=2, padding=2, output_padding=1), nn.ReLU(inplace=True),
                         nn.ConvTranspose2d(c, c, 5, stride=2, padding=2, output_padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(c, cfg.latent_features, 3, padding=1))


class MSILLM(CompressionModel):
    """The whole codec: analysis/synthesis transforms, mean-scale hyperprior, entropy models.

    Entropy coding (CompressAI's rANS) works on one image at a time: :meth:`compress_one`
    and :meth:`decompress_latent` take batch size 1, :attr:`decoder` takes any batch."""

    def __init__(self, cfg: Config = FULL) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.hyper_features
        self.encoder = Encoder(cfg)
        self.decoder = Generator(cfg)
        self.hyper_analysis = nn.Sequential(
            nn.Conv2d(cfg.latent_features, c, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 5, stride=2, padding=2), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 5, stride=2, padding=2))
        self.hyper_synthesis_mean = _hyper_synthesis(cfg)
        self.hyper_synthesis_scale = _hyper_synthesis(cfg)
        self.hyper_bottleneck = EntropyBottleneck(c)
        self.latent_bottleneck = GaussianConditional(None)

    def _means_scales(self, z_hat: Tensor) -> tuple[Tensor, Tensor]:
        return self.hyper_synthesis_mean(z_hat), self.hyper_synthesis_scale(z_hat)

    def compress_one(self, x: Tensor) -> tuple[bytes, bytes, tuple[int, int]]:
        """x (1, 3, H, W), H and W multiples of 64 -> (latent string, hyper-latent string,
        hyper-latent (h, w) = (H/64, W/64)). Needs :meth:`update` first."""
        if x.shape[0] != 1 or x.shape[-2] % FACTOR or x.shape[-1] % FACTOR:
            raise ValueError(f"compress_one takes one image padded to a multiple of {FACTOR}, got {tuple(x.shape)}")
        y = self.encoder(x).float()
        z = self.hyper_analysis(y).float()
        z_shape = tuple(int(d) for d in z.shape[-2:])
        z_strings = self.hyper_bottleneck.compress(z)
        z_hat = self.hyper_bottleneck.decompress(z_strings, z_shape)
        means, scales = self._means_scales(z_hat)
        y_strings = self.latent_bottleneck.compress(y, self.latent_bottleneck.build_indexes(scales), means=means)
        return bytes(y_strings[0]), bytes(z_strings[0]), z_shape  # type: ignore[return-value]

    def decompress_latent(self, y_string: bytes, z_string: bytes, z_shape: tuple[int, int]) -> Tensor:
        """The strings of one image -> the quantised latent (1, latent, 4h, 4w), float32."""
        z_hat = self.hyper_bottleneck.decompress([z_string], tuple(z_shape))
        means, scales = self._means_scales(z_hat)
        return self.latent_bottleneck.decompress([y_string], self.latent_bottleneck.build_indexes(scales), means=means)


# compressai >= 1.2.7 name -> the release's (compressai 1.2.4) name of the EntropyBottleneck parameters
_NEW_TO_RELEASE = {"matrices.": "_matrix", "biases.": "_bias", "factors.": "_factor"}


def release_name(key: str) -> str:
    """``hyper_bottleneck.matrices.0`` -> ``hyper_bottleneck._matrix0`` (other keys unchanged)."""
    head, _, leaf = key.rpartition(".")
    mod, _, kind = head.rpartition(".")
    if f"{kind}." in _NEW_TO_RELEASE and leaf.isdigit():
        return f"{mod}.{_NEW_TO_RELEASE[kind + '.']}{leaf}" if mod else f"{_NEW_TO_RELEASE[kind + '.']}{leaf}"
    return key


def release_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """``model.state_dict()`` under the release's key names (what its files contain)."""
    return {release_name(k): v for k, v in model.state_dict().items()}


def load_checkpoint(model: MSILLM, path) -> MSILLM:
    """Load a release file (a plain state dict, ``torch.save``d) strictly into ``model``.
    ValueError names the file and what is wrong when it is not a state dict of this network."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise ValueError(f"{path}: not a plain state dict (the MS-ILLM release files are one); "
                         f"got {type(state).__name__}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: not an MS-ILLM state dict: {exc}") from exc
    return model
