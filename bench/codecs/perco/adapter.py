"""PerCo (Careil et al., ICLR 2024) as a bench codec: VQ hyper-latent + zlib caption, diffusion decoder.

Encoding (``encode(rgb, point, seed, captions=None)``):

1. ``resolution: 512`` (default): the image is resized to 512 x 512 (PIL bicubic), as the
   community reimplementation does for every input (the paper trains and evaluates COCO at
   512 x 512). ``resolution: native``: the image is coded at its own size, edge-padded to a
   multiple of 64 (the UNet is convolutional; the index grid scales with the image, so the
   spatial bpp of the padded image is the nominal one; the paper's Kodak results at 768 x 512
   suggest it coded Kodak natively). The original H x W, the coded size and the mode are in
   the container's dims, so nobody mistakes rows for native-resolution coding or vice versa;
2. LDM autoencoder latents (4 x 64 x 64), scaled by the VAE's ``scaling_factor``:
   ``encoder_latent: mode`` (default) takes the posterior mean, so the bytes do not depend on
   the seed and ``--seeds`` gives N decoder samples of one bitstream; ``sample`` draws from
   the posterior with the encode seed, as the reimplementation's ``compress`` does (SD's
   posterior is narrow: the index map rarely changes);
3. hyper-encoder + vector quantiser -> an h x w index map over a codebook of V entries,
   coded uniformly: h*w*ceil(log2 V) bits, row-major, most significant bit first,
   zero-padded to a whole byte (for all seven rate settings the count is already a
   multiple of 8): section ``z`` (payload);
4. the caption, UTF-8, compressed losslessly with ``zlib`` (level 9): section ``caption``
   (side information, so the breakdown shows index-map and caption bits apart). An empty
   caption is stored as 0 bytes (no zlib header). Caption source (card param ``caption``):
   ``blip2`` (the paper: BLIP-2 on the 512 x 512 image, at most ``max_caption_tokens``
   tokens), ``dataset`` (the first ground-truth caption the dataset gives for the image,
   else none) or ``none``. Under ``--init random`` BLIP-2 is not built unless
   ``captioner_under_random: true``: ``blip2`` then behaves as ``dataset``.

Container: codec id ``perco``, the point (canonical float, e.g. 0.0019), dims
``(H, W, coded H, coded W, h, w, mode)`` (mode 0: resized to 512 x 512, 1: native, padded),
the weights identity (``random`` or an 8-hex digest of the
pipeline folder's files) and the sections ``z`` and ``caption``.

Decoding (``decode(data, seed)``): index map -> quantised features; DDIM with
classifier-free guidance on the text only (:mod:`bench.codecs.perco.sampler`);
``steps: auto`` = the paper's 20 steps below 0.05 bpp and 5 at or above; the initial
noise is drawn from the seed, so N seeds give N samples of one bitstream (``stochastic``).
The decoder works at the coded size. The harness requires the input's H x W: a 512 x 512
decode is resized back with bicubic interpolation (antialiased) before rounding to 8 bits
(the reconstruction carries both resizes; metrics compare it with the original); a native
decode is cropped.

Points are the paper's nominal spatial bpp at 512 x 512 (caption not included), named as
in its Table 2; the exact values' roundings are accepted too (``weights.ALIASES``):
0.1250, 0.0937|0.0938, 0.0507|0.0508, 0.0313, 0.0098, 0.0024, 0.0019|0.0020.

Weights: ``init: pretrained`` loads a diffusers pipeline folder per point (card param
``pipelines: {point: folder}``, default ``$BENCH_WEIGHTS/perco/<point>/``; see
:mod:`bench.codecs.perco.weights` and :mod:`bench.codecs.perco.model`); ``init: random``
builds seeded random networks of size ``random_size`` (``tiny`` by default: CPU-fast
smoke tests; ``full``: SD-2.1 sizes).

Precision: the VAE, UNet and text encoder run in ``--dtype``; the hyper-encoder, the
codebook look-up, the latents and the scheduler arithmetic stay float32.
"""
from __future__ import annotations

import hashlib
import math
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from bench import weights
from bench.codecs.base import CodecError, check_rgb
from bench.codecs.container import Container, ContainerError, Section
from bench.codecs.perco import weights as perco_weights
from bench.codecs.torch_base import TorchCodec, WeightsMissing
from bench.hashing import sha256_file_cached
from bench.registry import register

CODED = 512
RESOLUTIONS = (512, "native")
MODE_RESIZED, MODE_NATIVE = 0, 1
NATIVE_MULTIPLE = 64  # VAE /8, hyper-encoder down to /8 more, SD-2.1 UNet /8: latents multiple of 8
CAPTION_SOURCES = ("blip2", "dataset", "none")
LOW_RATE_STEPS, HIGH_RATE_STEPS, STEP_SWITCH_BPP = 20, 5, 0.05  # paper, App. A
DEFAULT_BLIP2 = "Salesforce/blip2-opt-2.7b-coco"  # the reimplementation's captioner (src/config.py)


def canonical_point(point: Any) -> str | None:
    """The rate setting's name ("0.0019") for any spelling of it (0.0019, "0.0020", 0.002), else None."""
    if isinstance(point, bool):
        return None
    try:
        value = float(point)
    except (TypeError, ValueError):
        return None
    for name in (*perco_weights.RATES, *perco_weights.ALIASES):
        if abs(value - float(name)) < 1e-9:
            return perco_weights.ALIASES.get(name, name)
    return None


def index_bits(codebook_size: int) -> int:
    """Bits per index under uniform coding: ceil(log2 V) (at least 1)."""
    return max(1, math.ceil(math.log2(codebook_size)))


def pack_indices(idx: np.ndarray, bits: int) -> bytes:
    """Row-major indices, ``bits`` each, most significant bit first, zero-padded to a byte."""
    flat = np.asarray(idx, dtype=np.int64).ravel()
    if flat.size and (flat.min() < 0 or flat.max() >= 1 << bits):
        raise CodecError(f"perco: index out of range for {bits}-bit coding")
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    return np.packbits(((flat[:, None] >> shifts) & 1).astype(np.uint8).ravel()).tobytes()


def unpack_indices(data: bytes, count: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_indices`; ContainerError unless ``data`` has exactly the right length."""
    need = -(-count * bits // 8)
    if len(data) != need:
        raise ContainerError(f"perco: the index map section has {len(data)} bytes, expected {need} "
                             f"({count} indices x {bits} bits)")
    bitarr = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:count * bits].reshape(count, bits)
    return (bitarr.astype(np.int64) << np.arange(bits - 1, -1, -1, dtype=np.int64)).sum(axis=1)


def compress_caption(caption: str) -> bytes:
    return zlib.compress(caption.encode("utf-8"), 9) if caption else b""


def decompress_caption(data: bytes) -> str:
    if not data:
        return ""
    try:
        return zlib.decompress(data).decode("utf-8")
    except (zlib.error, UnicodeDecodeError) as exc:
        raise ContainerError(f"perco: the caption section is not zlib-compressed UTF-8 text ({exc})") from exc


@register("codec", "perco")
class PerCo(TorchCodec):
    """PerCo: point = nominal spatial bpp at 512x512 (see the module docstring)."""

    name = "perco"
    family = "perco"
    libraries = ("diffusers", "transformers")
    point_name = "bpp"
    stochastic = True
    uses_captions = True
    default_points = (0.0019, 0.0313, 0.125)
    description = "PerCo (ICLR 2024): VQ hyper-latent + zlib caption, SD-2.1 diffusion decoder (community weights)"
    pad_multiple = 1  # no padding: every image is resized to 512x512
    decode_batch_size = 4
    # the runner codes every point of an image before the next image, so cache the card's three points
    # (a full model is ~5 GB in float32, ~2.6 GB in float16; encoder and decoder instances each hold theirs)
    max_cached_models = 3

    def __init__(self, device: str = "cpu", dtype: str = "float32", init: str = "pretrained", caption: str = "blip2",
                 steps: Any = "auto", guidance_scale: float = 3.0, pipelines: Mapping | None = None,
                 random_size: str = "tiny", vq_distance: str = "auto", encoder_latent: str = "mode",
                 blip2: str = DEFAULT_BLIP2, captioner_under_random: bool = False,
                 max_caption_tokens: int = 32, resolution: Any = 512) -> None:
        super().__init__(device, dtype, init, caption=caption, steps=steps, guidance_scale=guidance_scale,
                         pipelines=pipelines, random_size=random_size, vq_distance=vq_distance,
                         encoder_latent=encoder_latent, blip2=blip2, captioner_under_random=captioner_under_random,
                         max_caption_tokens=max_caption_tokens, resolution=resolution)
        if caption not in CAPTION_SOURCES:
            raise CodecError(f"perco: caption must be one of {', '.join(CAPTION_SOURCES)}, got {caption!r}")
        if not (steps == "auto" or (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1)):
            raise CodecError(f"perco: steps must be 'auto' or a positive int, got {steps!r}")
        if random_size not in ("tiny", "full"):
            raise CodecError(f"perco: random_size must be tiny or full, got {random_size!r}")
        if vq_distance not in ("auto", "euclidean", "cosine"):
            raise CodecError(f"perco: vq_distance must be auto, euclidean or cosine, got {vq_distance!r}")
        if encoder_latent not in ("sample", "mode"):
            raise CodecError(f"perco: encoder_latent must be sample or mode, got {encoder_latent!r}")
        if resolution not in RESOLUTIONS and str(resolution) not in map(str, RESOLUTIONS):
            raise CodecError(f"perco: resolution must be 512 or native, got {resolution!r}")
        self.resolution = "native" if str(resolution) == "native" else 512
        self.caption_source, self.steps, self.guidance_scale = caption, steps, float(guidance_scale)
        self.random_size, self.vq_distance, self.encoder_latent = random_size, vq_distance, encoder_latent
        self.blip2, self.captioner_under_random = blip2, bool(captioner_under_random)
        self.max_caption_tokens = int(max_caption_tokens)
        self.pipelines: dict[str, Path] = {}
        for p, folder in (pipelines or {}).items():
            name = canonical_point(p)
            if name is None:
                raise CodecError(f"perco: pipelines names rate point {p!r}, which is not one of "
                                 f"{', '.join(perco_weights.RATES)}")
            self.pipelines[name] = Path(str(folder)).expanduser()
        self._captioner = None

    # ------------------------------------------------------------------ points and weights
    @property
    def arch(self) -> str:
        return f"perco-{self.random_size}" if self.init == "random" else "perco"

    def weight_table(self) -> dict[float, tuple]:
        # no bench.weights entries (no published digests): folders are found by folder_for()
        return {float(name): () for name in perco_weights.RATES}

    def point_key(self, point: Any) -> float:
        name = canonical_point(point)
        if name is None:
            valid = ", ".join(n + "".join(f"|{a}" for a, c in perco_weights.ALIASES.items() if c == n)
                              for n in perco_weights.RATES)
            raise CodecError(f"{self.name}: no rate point {point!r}; valid points (nominal spatial bpp): {valid}")
        return float(name)

    @staticmethod
    def rate(point: Any) -> tuple[int, int]:
        """(grid side, codebook size V) of a point."""
        return perco_weights.RATES[canonical_point(point)]

    def steps_for(self, point: Any) -> int:
        if self.steps != "auto":
            return int(self.steps)
        return HIGH_RATE_STEPS if float(self.point_key(point)) >= STEP_SWITCH_BPP else LOW_RATE_STEPS

    def folder_for(self, point: Any) -> Path:
        name = canonical_point(point)
        return self.pipelines.get(name) or weights.bench_dir() / "perco" / name

    def _folder_files(self, point: Any) -> tuple[Path, list[Path]]:
        from bench.codecs.perco.model import weight_files

        folder = self.folder_for(point)
        files = weight_files(folder) if folder.is_dir() else []
        if not any(f.suffix in (".safetensors", ".bin") for f in files):
            name = canonical_point(point)
            release = perco_weights.RELEASED.get(name)
            where = (f"the community reimplementation released this point: {release}" if release else
                     f"no public folder exists for {name} (released: {', '.join(perco_weights.RELEASED)}); "
                     "train one with the reimplementation")
            raise WeightsMissing(f"{self.name}: rate point {name} needs a PerCo diffusers pipeline folder at {folder} "
                                 f"(subfolders vae, hyper_enc, text_encoder, tokenizer, unet, scheduler); {where}. "
                                 "Official PerCo weights are unreleased. Give another folder with the card param "
                                 f"pipelines: {{{name}: /path}}, or smoke-test with --init random", [name])
        return folder, files

    def model_id(self, point: Any) -> str:
        self.point_key(point)  # CodecError for a point this adapter lacks (read() reports it as bad bytes)
        if self.init == "random":
            return "random"
        folder, files = self._folder_files(point)
        text = "".join(f"{p.relative_to(folder)}={sha256_file_cached(p)};" for p in files)
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    def fingerprint(self, point: Any) -> dict[str, Any]:
        """Base fingerprint plus the coding resolution (so every row records the resize) and, under
        pretrained weights, the pipeline folder's file hashes (and the captioner's name)."""
        fp = super().fingerprint(point)
        fp["coded_at"] = (f"{CODED}x{CODED} (input resized, PIL bicubic; output resized back, bicubic)"
                          if self.resolution == CODED else
                          f"native (edge-padded to a multiple of {NATIVE_MULTIPLE}; output cropped)")
        if self.init == "pretrained" and canonical_point(point) is not None:
            folder, files = self._folder_files(point)
            fp["weights"] = {"folder_digest": self.model_id(point),
                             "files": {str(p.relative_to(folder)): sha256_file_cached(p) for p in files}}
            if self.caption_source == "blip2":
                fp["captioner"] = self.blip2
        return fp

    def provenance(self) -> dict[str, Any]:
        prov = super().provenance()
        prov["resize"] = (f"input resized to {CODED}x{CODED} (PIL bicubic) before coding; decoded at {CODED}x{CODED}, "
                          "resized back to the input's HxW (bicubic, antialiased)" if self.resolution == CODED else
                          f"native resolution, edge-padded to a multiple of {NATIVE_MULTIPLE}, cropped on decode")
        prov["caption"] = self.effective_caption_source
        prov["sampler"] = {"scheduler": "DDIM eta=0", "steps": self.steps, "guidance_scale": self.guidance_scale,
                           "guidance_on": "text only"}
        if self.init == "random":
            prov["random_size"] = self.random_size
        else:
            prov["pipelines"] = {n: str(self.folder_for(n)) for n in perco_weights.RATES
                                 if self.folder_for(n).is_dir()}
        return prov

    # ------------------------------------------------------------------ the model
    def build_model(self, point: Any, files: list[Path] | None) -> Any:
        from bench.codecs.perco import model as perco_model

        grid, size = self.rate(point)
        if self.init == "random":
            distance = "cosine" if self.vq_distance == "auto" else self.vq_distance
            return perco_model.build_random(grid, size, self.random_size, distance)
        folder, _ = self._folder_files(point)
        m = perco_model.load_pipeline_folder(folder, self.vq_distance)
        allowed = {size} | ({8196} if size == 8192 else set())  # the paper/reimplementation print 8196
        if m.grid != grid or m.codebook_size not in allowed:
            raise CodecError(f"{self.name}: {folder} has a {m.grid}x{m.grid} grid with {m.codebook_size} codes, but "
                             f"point {canonical_point(point)} is {grid}x{grid} with {size} codes")
        return m

    def apply_precision(self, model: Any) -> Any:
        if self.dtype != "float32":
            for part in (model.vae, model.unet, model.text_encoder):
                part.to(self.torch_dtype)
        return model

    # ------------------------------------------------------------------ captions
    @property
    def effective_caption_source(self) -> str:
        if self.caption_source == "blip2" and self.init == "random" and not self.captioner_under_random:
            return "dataset"
        return self.caption_source

    def caption_for(self, rgb512: np.ndarray, captions: Sequence[str] | None) -> str:
        """The caption to transmit (see the module docstring)."""
        source = self.effective_caption_source
        if source == "none":
            return ""
        if source == "dataset":
            return str(captions[0]).strip() if captions else ""
        return self.blip2_caption(rgb512)

    def blip2_caption(self, rgb512: np.ndarray) -> str:
        """BLIP-2 caption of the 512x512 image (local files only; clear error when absent)."""
        torch = self._torch()
        if self._captioner is None:
            from transformers import Blip2ForConditionalGeneration, Blip2Processor

            try:
                with weights.no_downloads():
                    processor = Blip2Processor.from_pretrained(self.blip2, local_files_only=True)
                    net = Blip2ForConditionalGeneration.from_pretrained(self.blip2, local_files_only=True)
            except (OSError, ValueError) as exc:
                raise WeightsMissing(f"{self.name}: caption source blip2 needs the BLIP-2 model {self.blip2!r} "
                                     "(a local folder, or in the Hugging Face cache; huggingface.co/"
                                     f"{DEFAULT_BLIP2}); or set the card param caption: dataset|none ({exc})",
                                     [self.blip2]) from exc
            net = net.eval().requires_grad_(False).to(self.device)
            if self.dtype != "float32":
                net = net.to(self.torch_dtype)
            self._captioner = (processor, net)
        processor, net = self._captioner
        with torch.inference_mode():
            inputs = processor(images=rgb512, return_tensors="pt").to(self.device)
            if self.dtype != "float32":
                inputs["pixel_values"] = inputs["pixel_values"].to(self.torch_dtype)
            # at most max_caption_tokens new tokens (the reimplementation's 32; transformers >= 4.46 puts the
            # query-token placeholders into the prompt, so max_length would count them)
            ids = net.generate(**inputs, max_new_tokens=self.max_caption_tokens)
        return processor.batch_decode(ids, skip_special_tokens=True)[0].strip()

    # ------------------------------------------------------------------ coding
    @staticmethod
    def resize_to_coded(rgb: np.ndarray) -> np.ndarray:
        from PIL import Image

        if rgb.shape[:2] == (CODED, CODED):
            return np.ascontiguousarray(rgb)
        return np.asarray(Image.fromarray(rgb).resize((CODED, CODED), Image.BICUBIC))

    def encode(self, rgb: np.ndarray, point: Any, seed: int = 0, captions: Sequence[str] | None = None) -> bytes:
        """uint8 (H, W, 3) -> container bytes; ``captions``: the dataset's captions of this image (may be empty)."""
        check_rgb(rgb)
        key = self.point_key(point)
        model = self.model(key)
        torch = self._torch()
        h, w = rgb.shape[:2]
        small = self.resize_to_coded(rgb)
        caption = self.caption_for(small, captions)
        if self.resolution == CODED:
            coded, mode = small, MODE_RESIZED
        else:
            coded, mode = np.pad(rgb, ((0, -h % NATIVE_MULTIPLE), (0, -w % NATIVE_MULTIPLE), (0, 0)), mode="edge"), \
                MODE_NATIVE
        ch, cw = coded.shape[:2]
        with torch.inference_mode():
            x = torch.from_numpy(coded.copy()).to(self.device).permute(2, 0, 1)[None].float().div(127.5).sub(1)
            vae_dtype = next(model.vae.parameters()).dtype
            dist = model.vae.encode(x.to(vae_dtype)).latent_dist
            lat = dist.sample(generator=self.generator(seed)) if self.encoder_latent == "sample" else dist.mode()
            idx = model.hyper_enc.encode(lat.float() * model.scaling_factor)[0].cpu().numpy()
        grid = self.grid_shape(model, ch, cw)
        if idx.shape != grid:
            raise CodecError(f"{self.name}: the hyper-encoder gave a {idx.shape} index map, expected {grid}")
        sections = (Section("z", pack_indices(idx, index_bits(model.codebook_size))),
                    Section("caption", compress_caption(caption), side=True))
        return Container(self.container_id, key, (h, w, ch, cw, *grid, mode), self.model_id(key), sections).pack()

    @staticmethod
    def grid_shape(model: Any, ch: int, cw: int) -> tuple[int, int]:
        """Index-map shape of a coded ch x cw image (the grid side at 512 x 512 scales with the size)."""
        per_cell = CODED // model.grid  # pixels per index-map cell
        return ch // per_cell, cw // per_cell

    def parse(self, container: Container, model: Any) -> tuple[np.ndarray, str]:
        """The index map (g, g) and the caption of a container; ContainerError when malformed."""
        names = [s.name for s in container.sections]
        dims = tuple(container.dims)
        ok = names == ["z", "caption"] and len(dims) == 7
        if ok:
            h, w, ch, cw, gh, gw, mode = dims
            expected = ((CODED, CODED) if mode == MODE_RESIZED else
                        (h + -h % NATIVE_MULTIPLE, w + -w % NATIVE_MULTIPLE) if mode == MODE_NATIVE else None)
            ok = (ch, cw) == expected and (gh, gw) == self.grid_shape(model, ch, cw)
        if not ok:
            raise ContainerError(f"{self.name}: a PerCo container has sections ['z', 'caption'] and dims (H, W, coded H, "
                                 f"coded W, grid H, grid W, mode) consistent with a {model.grid}x{model.grid} grid at "
                                 f"{CODED}x{CODED} (mode 0: resized to {CODED}x{CODED}; 1: native, padded to "
                                 f"{NATIVE_MULTIPLE}); these bytes have {names} and dims {dims}")
        g = (gh, gw)
        idx = unpack_indices(container.section("z"), gh * gw, index_bits(model.codebook_size))
        if idx.size and idx.max() >= model.codebook_size:
            raise ContainerError(f"{self.name}: index {int(idx.max())} in the bytes exceeds the codebook "
                                 f"({model.codebook_size} codes)")
        return idx.reshape(g), decompress_caption(container.section("caption"))

    def decode_tensors(self, model, containers, generators):
        """One sampling run for the batch; returns (B, 3, H, W) in [0, 1] at the original size."""
        import torch
        import torch.nn.functional as F

        from bench.codecs.perco.sampler import sample

        parsed = [self.parse(c, model) for c in containers]
        idx = torch.from_numpy(np.stack([p[0] for p in parsed])).to(self.device)
        feats = model.hyper_enc.decode(idx)
        h, w, ch, cw, _, _, mode = containers[0].dims  # decode_batch groups containers by dims
        noise = self.batch_noise((4, ch // model.vae_factor, cw // model.vae_factor), generators)
        images = sample(model, feats, [p[1] for p in parsed], noise, self.steps_for(containers[0].point),
                        self.guidance_scale, self.torch_dtype)
        if mode == MODE_NATIVE:
            return images[:, :, :h, :w].clamp_(0, 1)
        if (h, w) != (ch, cw):
            images = F.interpolate(images, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
        return images.clamp_(0, 1)

    def read_caption_and_indices(self, data: bytes) -> tuple[np.ndarray, str]:
        """What the bytes carry (for tests and inspection): the index map and the caption."""
        c = self.read(data)
        return self.parse(c, self.model(c.point))
