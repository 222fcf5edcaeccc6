"""The ``vit-adapter`` segmenter backend: a ViT-Adapter variant + its weights, predicting COCO-Stuff.

Selection (options of :class:`ViTAdapterSegmenter`, defaults from the environment):

* variant ``model``: ``$BENCH_VIT_ADAPTER_MODEL`` or ``upernet-beit-l-cocostuff164k``
  (:data:`~.configs.VARIANTS`: also ``mask2former-beit-l-cocostuff164k`` and
  ``mask2former-beitv2-l-cocostuff164k``; ``tiny`` / ``tiny-mask2former`` are test-size models:
  random weights or a file);
* weights ``weights``: ``$BENCH_VIT_ADAPTER_WEIGHTS`` or ``registry`` = the variant's file from
  ``bench.weights`` (must be in place: ``bench weights fetch|import``); a path = that checkpoint;
  ``random`` = seeded random initialisation (seed 0), for smoke runs and benchmarks only: its
  rows say so and its version differs, so they never mix with real ones.

``predict_trainid(rgb)`` -> uint8 (H, W) COCO-Stuff-164k train ids 0..170 (mmseg's class order);
``predict(rgb)`` -> the same mapped to bench's COCO thing label space (``bench.metrics.segmenters``:
the 80 thing classes to their COCO ids by name, the 91 stuff classes to 0), for the ``miou`` metric.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bench.metrics.vit_adapter import configs

ENV_MODEL = "BENCH_VIT_ADAPTER_MODEL"
ENV_WEIGHTS = "BENCH_VIT_ADAPTER_WEIGHTS"


def selection(model: str | None = None, weights: str | None = None) -> tuple[configs.ViTAdapterConfig, str]:
    """(variant config, weights spec: "registry" | "random" | a path) from options, else the environment."""
    name = model or os.environ.get(ENV_MODEL) or configs.DEFAULT
    try:
        cfg = configs.get(name)
    except KeyError as exc:
        raise ValueError(f"{exc.args[0]} (option model / ${ENV_MODEL})") from None
    spec = weights or os.environ.get(ENV_WEIGHTS) or "registry"
    if cfg.random_only and spec == "registry":
        raise ValueError(f"ViT-Adapter variant {name} has no released weights: use weights=random "
                         f"(${ENV_WEIGHTS}=random), a checkpoint path, or a released variant")
    return cfg, spec


def weights_tag(cfg: configs.ViTAdapterConfig, spec: str) -> str:
    """What identifies the weights in a metric version: the registry id, ``random-seed0`` or the file name."""
    if spec == "registry":
        return cfg.weight_id
    if spec == "random":
        return "random-seed0"
    return f"file:{Path(spec).name}"


def checkpoint_path(cfg: configs.ViTAdapterConfig, spec: str) -> Path | None:
    if spec == "random":
        return None
    if spec == "registry":
        from bench import weights

        return weights.path(cfg.weight_id)
    return Path(spec)


class ViTAdapterSegmenter:
    """A ViT-Adapter model ready to segment RGB uint8 images (see module doc)."""

    backend = "vit-adapter"

    def __init__(self, model: str | None = None, weights: str | None = None, device: str = "cpu",
                 min_things: int = 60) -> None:
        import torch

        from bench.metrics import segmenters
        from bench.metrics.vit_adapter import checkpoint
        from bench.metrics.vit_adapter.model import NotImplementedVariant, build

        self.cfg, self.spec = selection(model, weights)
        path = checkpoint_path(self.cfg, self.spec)
        if path is not None and not path.is_file():
            how = (f"`bench weights fetch {self.cfg.weight_id}` (or download it on another machine and "
                   f"`bench weights import FILE`)" if self.spec == "registry" else f"check ${ENV_WEIGHTS}")
            raise segmenters.SegmenterError(
                f"miou: ViT-Adapter checkpoint {path.name} not found at {path}: {how}; "
                f"${ENV_WEIGHTS}=random runs with random weights (smoke tests only)")
        try:
            self.model = build(self.cfg, seed=0, device="cpu")
        except NotImplementedVariant as exc:
            raise segmenters.SegmenterError(f"miou: {exc}") from exc
        self.meta: dict = {}
        if path is not None:
            try:
                sd, self.meta = checkpoint.read_checkpoint(path)
                checkpoint.load(self.model, sd, where=str(path))
                checkpoint.check_classes(self.meta, configs.class_names(), where=str(path))
            except checkpoint.CheckpointError as exc:
                raise segmenters.SegmenterError(f"miou: {exc}") from exc
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        self.path = path
        self.lut, self.mapping = segmenters.thing_lut(list(configs.class_names()), min_things)

    def predict_trainid(self, rgb: np.ndarray) -> np.ndarray:
        return self.model.predict(np.asarray(rgb, dtype=np.uint8))

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        return self.lut[self.predict_trainid(rgb).astype(np.int64)]

    def describe(self) -> dict:
        c = self.cfg
        return {"backend": self.backend, "model": c.name, "head": c.head, "weights": weights_tag(c, self.spec),
                "checkpoint": str(self.path) if self.path else "none (random initialisation, seed 0: NOT a "
                                                                  "trained segmenter; smoke runs only)",
                "published_miou": c.published_miou, "config": c.config_file,
                "inference": (f"keep-ratio resize to {c.img_scale} (bilinear), multiple of {c.size_divisor}, "
                              f"ImageNet mean/std, slide {c.crop}/{c.stride}, bilinear "
                              + ("logits" if c.head == "upernet" else
                                 "Mask2Former semantic scores (sum over queries of softmax(class)[:171] x "
                                 "sigmoid(mask))") + " to (H, W), argmax"),
                "label_space_native": "cocostuff164k-trainid (171 classes, mmseg order)",
                "label_mapping": self.mapping}
