"""CLIP score: how well a reconstruction matches the image's ground-truth captions.

    clip_score = mean over the image's captions c of 100 * max(cos(E_img(recon), E_txt(c)), 0)

* Model: CLIP ViT-B/32 with OpenAI's weights (PerCo App. A: "CLIP backbone
  ViT-B/32"), built with open_clip as ``ViT-B-32-quickgelu`` (OpenAI's
  checkpoints use QuickGELU) and loaded from the local file
  ``bench.weights.path("clip-vit-b-32-openai")`` (OpenAI's TorchScript
  ``ViT-B-32.pt``, or a plain state dict / safetensors file with the same keys).
  Nothing is fetched from the network: ``HF_HUB_OFFLINE=1`` is set before
  open_clip is imported.
* Image preprocessing: open_clip's eval transform for the model (Pillow bicubic
  resize of the shorter side to 224 with antialiasing, centre crop 224×224,
  OpenAI mean/std), applied to the uint8 reconstruction.
* Text: the caption as is (no "A photo depicts" prefix), open_clip's tokenizer,
  77 tokens, truncated.
* Score: 100·max(cos, 0) — Hessel et al.'s CLIP-S without the 2.5 factor, the
  scale of PerCo Table 1 (~28–30 on COCO).
* Several captions (COCO: 5 per image). PerCo scores against one ground-truth
  caption per image but does not say which. The default rule ``mean`` scores
  the reconstruction against every caption and averages the per-caption scores:
  the expectation of the single-caption score over the caption choice, with
  lower variance and no arbitrary pick. ``first`` (the caption with the lowest
  annotation id) and ``max`` are available as options (``ClipScore(caption_rule=...)``).
* No-reference w.r.t. the original image: ``ref`` is not used.

The score is averaged over images in the tables (the paper's convention).
"""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence

from bench import registry
from bench.metrics.base import MetricError, PerImageMetric

WEIGHTS_ID = "clip-vit-b-32-openai"
MODEL_NAME = "ViT-B-32-quickgelu"
CAPTION_RULES = ("mean", "first", "max")
_DROP_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")  # constants, not weights


def load_openai_state_dict(path) -> dict:
    """State dict from OpenAI's TorchScript ``ViT-B-32.pt``, a torch state dict
    (possibly under ``state_dict``, keys possibly prefixed ``module.``) or a safetensors file."""
    import torch

    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        sd = load_file(path)
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.load is deprecated; OpenAI's file is TorchScript
                sd = torch.jit.load(path, map_location="cpu").state_dict()
        except RuntimeError:
            sd = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(sd, dict) and "state_dict" in sd:
                sd = sd["state_dict"]
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if k not in _DROP_KEYS}


def openai_vit_b32():
    """The default model constructor: ViT-B/32 (QuickGELU) + OpenAI weights from bench.weights."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import open_clip

    from bench import weights

    weights.require([WEIGHTS_ID])  # missing or wrong sha256: WeightsError naming URL, sha256 and path
    path = weights.path(WEIGHTS_ID)
    model = open_clip.create_model(MODEL_NAME, pretrained=None)
    missing, unexpected = model.load_state_dict(load_openai_state_dict(path), strict=False)
    if missing or unexpected:
        raise MetricError(f"clip_score: {path} is not a CLIP ViT-B/32 checkpoint "
                          f"(missing keys {missing[:5]}, unexpected {unexpected[:5]})")
    return model


class ClipScore(PerImageMetric):
    """Per-image metric ``clip_score`` (see module doc). ``model_factory()`` returns an
    open_clip CLIP model with its weights loaded (default: :func:`openai_vit_b32`);
    tests pass a random-weight model's constructor."""

    mode = "NR"
    higher_better = True
    uses_captions = True
    learned = True
    licence = "open_clip: MIT; CLIP weights: OpenAI (MIT)"
    value_range = "[0, 100] (COCO: ~28–30 in PerCo Table 1)"
    colour_space = "RGB → CLIP input (bicubic 224, OpenAI mean/std); vs ground-truth captions"

    def __init__(self, name: str = "clip_score", caption_rule: str = "mean",
                 model_factory: Callable | None = None, model_name: str = MODEL_NAME,
                 batch_size: int = 32) -> None:
        if caption_rule not in CAPTION_RULES:
            raise ValueError(f"caption_rule must be one of {CAPTION_RULES}, not {caption_rule!r}")
        self.name = name
        self.caption_rule = caption_rule
        self.model_factory = model_factory
        self.model_name = model_name
        self.batch_size = batch_size
        self.weights: tuple[str, ...] = () if model_factory else (WEIGHTS_ID,)
        self.convention = (f"open_clip {model_name} + OpenAI weights; Pillow bicubic shorter side→224, centre crop, "
                           f"OpenAI mean/std; 100·max(cos, 0) of recon vs each ground-truth caption, "
                           f"{caption_rule} over the image's captions (COCO: 5); reference image unused")

    def available(self) -> tuple[bool, str]:
        import importlib.util

        if importlib.util.find_spec("open_clip") is None:
            return False, "open_clip is not installed: pip install 'open_clip_torch>=2.24'"
        if self.model_factory is None:
            try:
                from bench import weights

                if not weights.path(WEIGHTS_ID).is_file():
                    return False, f"weight file missing: {weights.path(WEIGHTS_ID)} (bench weights: {WEIGHTS_ID})"
            except (ImportError, KeyError) as exc:  # weights registry absent or id unknown
                return False, f"weights {WEIGHTS_ID!r} not resolvable: {exc}"
        return True, ""

    def check_size(self, height: int, width: int) -> None:
        return None  # any size: resized to 224

    def version(self) -> str:
        import importlib.metadata as md

        try:
            oc = md.version("open_clip_torch")
        except md.PackageNotFoundError:
            oc = "missing"
        model = "openai" if self.model_factory is None else f"injected:{getattr(self.model_factory, '__name__', '?')}"
        return f"open_clip-{oc}:{self.model_name}:{model}:{WEIGHTS_ID}:rule={self.caption_rule}:pil-bicubic-224"

    # ------------------------------------------------------------------ scoring
    def build(self, device: str = "cpu") -> Callable:
        """``scorer(recon, ref, captions) -> (B,)``: recon (B, 3, H, W) in [0, 1];
        captions a list of str (B = 1) or a list of B lists."""
        scorer = ClipScorer(self.model_factory or openai_vit_b32, self.model_name, device, self.caption_rule,
                            self.batch_size)

        def score(recon, ref, captions):
            return scorer(recon, captions)

        score.scorer = scorer
        return score


class ClipScorer:
    """A built CLIP model on ``device``; ``score_arrays(images, captions)`` is the batched entry.

    Reference-side features are computed once: the reference of clip_score is the image's
    ground-truth captions (the reference image is unused), and every codec point of an image
    is scored against the same captions, so each caption's normalised text embedding is kept
    in an LRU of ``text_cache_size`` captions (≈ 2 KB each for ViT-B/32; bounded, so memory
    stays flat over a dataset) and the text encoder sees a caption once while the batches of
    its image's codec points pass. ``text_forwards`` counts the captions it encoded."""

    text_cache_size: int = 4096

    def __init__(self, factory: Callable, model_name: str, device: str, rule: str, batch_size: int) -> None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        import open_clip
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.model = factory().to(self.device).float().eval()
        size = self.model.visual.image_size
        self.preprocess = open_clip.image_transform(size, is_train=False)  # OpenAI mean/std, bicubic, shortest
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.rule = rule
        self.batch_size = batch_size
        self._text: OrderedDict = OrderedDict()  # caption -> normalised embedding (1-D, on device)
        self.text_forwards = 0

    def __call__(self, recon, captions):
        torch = self.torch
        imgs = (recon.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        caps = [captions] if imgs.shape[0] == 1 and captions and isinstance(captions[0], str) else captions
        return torch.as_tensor(self.score_arrays(list(imgs), caps), dtype=torch.float32)

    def score_arrays(self, images: Sequence, captions: Sequence[Sequence[str]]):
        """images: uint8 (H, W, 3) arrays (any sizes); captions: one list per image -> np.ndarray (N,)."""
        import numpy as np
        from PIL import Image

        torch = self.torch
        if len(images) != len(captions):
            raise MetricError(f"clip_score: {len(images)} images but {len(captions)} caption lists")
        for i, caps in enumerate(captions):
            if not caps or any(not isinstance(c, str) for c in caps):
                raise MetricError(f"clip_score: image {i} has no ground-truth caption")
        chosen = [list(c[:1]) if self.rule == "first" else list(c) for c in captions]
        flat = [c for caps in chosen for c in caps]
        with torch.inference_mode():
            img_feats = []
            for s in range(0, len(images), self.batch_size):
                batch = torch.stack([self.preprocess(Image.fromarray(np.asarray(im, dtype=np.uint8), "RGB"))
                                     for im in images[s:s + self.batch_size]]).to(self.device)
                img_feats.append(self.model.encode_image(batch).float())
            fi = torch.nn.functional.normalize(torch.cat(img_feats), dim=-1)
            ft = self.text_features(flat)
            out = []
            start = 0
            for i, caps in enumerate(chosen):
                cos = ft[start:start + len(caps)] @ fi[i]
                start += len(caps)
                per_caption = 100.0 * cos.clamp(min=0)
                out.append(per_caption.max() if self.rule == "max" else per_caption.mean())
            return torch.stack(out).cpu().numpy().astype(np.float64)

    def text_features(self, captions: Sequence[str]):
        """Normalised text embeddings (len(captions), D) float32 on the device; captions not in
        the LRU are encoded (each once, ``batch_size`` per forward pass) and remembered."""
        torch = self.torch
        new = [c for c in dict.fromkeys(captions) if c not in self._text]
        with torch.inference_mode():
            for s in range(0, len(new), self.batch_size):
                chunk = new[s:s + self.batch_size]
                feats = torch.nn.functional.normalize(
                    self.model.encode_text(self.tokenizer(chunk).to(self.device)).float(), dim=-1)
                self.text_forwards += len(chunk)
                for caption, f in zip(chunk, feats):
                    self._text[caption] = f
        rows = []
        for caption in captions:
            self._text.move_to_end(caption)
            rows.append(self._text[caption])
        while len(self._text) > max(self.text_cache_size, len(set(captions))):
            self._text.popitem(last=False)
        return torch.stack(rows)


registry.add("metric", "clip_score", ClipScore())
