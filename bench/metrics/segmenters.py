"""Semantic segmenters for the ``miou`` metric, behind one interface.

A segmenter maps one RGB uint8 (H, W, 3) image to a label map (H, W) uint8 in
the ground-truth label space of bench's COCO loader (``bench.data.coco``):
COCO thing category id (1..90) where it sees one of the 80 thing classes, 0
(background) everywhere else. ``describe()`` says which model produced it.

Label mapping (model label set -> ground truth), by class *name*:
  * a model label whose normalised name (lower case, ``_``/``-`` as spaces, a
    trailing ``merged``/``other``/``stuff`` dropped, a few spelling aliases such
    as aeroplane→airplane, motorbike→motorcycle, sofa→couch, tvmonitor→tv) is
    one of the 80 COCO thing names -> that thing's COCO category id;
  * every other label (stuff: sky, wall, road, ...; "other" classes) -> 0.
  For COCO-trained models this is exact: COCO panoptic (133 classes = 80 things
  + 53 merged stuff; e.g. ``facebook/mask2former-swin-large-coco-panoptic``)
  and COCO-Stuff-164k (171 classes = 80 things + 91 stuff; PerCo's ViT-Adapter,
  mmseg's ``COCOStuffDataset``) both name the 80 things as COCO does, so 80/80
  thing classes map one to one. A model covering fewer than ``min_things``
  thing classes is refused (it was not trained on COCO): give ``min_things=0``
  to use it anyway (its row's ``extra`` lists the coverage).

Backends
  * ``transformers`` (default): any ``*ForSemanticSegmentation`` (SegFormer,
    UperNet, BEiT, DPT) or universal-segmentation model (Mask2Former,
    MaskFormer, OneFormer) loaded from a local directory holding
    ``config.json``, ``preprocessor_config.json`` and the weights, with the
    processor's ``post_process_semantic_segmentation`` at the image's own size.
    One image per forward pass: batching would pad images of different sizes,
    and the post-processing resizes padded masks without cropping them.
    Default model: ``facebook/mask2former-swin-large-coco-panoptic`` (trained
    on COCO train2017, the split PerCo's segmenter was trained on).
    Directory: ``model_dir`` option, else ``$BENCH_MIOU_MODEL_DIR``, else the
    ``bench.weights`` entry of the model (if it has one), else
    ``~/.cache/bench/models/<org>--<name>``.
  * ``mmseg`` (optional): an mmsegmentation 1.x config + checkpoint. Default:
    mmseg's own DeepLabV3 R-101 trained on COCO-Stuff-164k (171 classes; the
    config ``deeplabv3/deeplabv3_r101-d8_4xb4-320k_coco-stuff164k-512x512.py``
    shipped inside the mmsegmentation package, the checkpoint from
    ``bench.weights`` id ``seg-deeplabv3-r101-cocostuff164k``); override with
    ``$BENCH_MMSEG_CONFIG`` / ``$BENCH_MMSEG_CHECKPOINT``. PerCo used
    ViT-Adapter on COCO-Stuff-164k; ViT-Adapter's released segmentation code
    targets mmseg 0.x / mmcv-full 1.x with its own compiled ops, so bench runs
    it through its own port instead (``vit-adapter`` below). The backend needs mmcv's compiled ops (``mmcv.ops``): mmcv
    2.1.0 is on PyPI only as source, its setup.py forces -std=c++17 while
    torch 2.14's headers need C++20 (building with -std=c++20 works, ~22 min on
    2 cores); mmcv-lite is not enough (``mmseg.apis`` imports ``mmcv.ops``).

  * ``vit-adapter``: PerCo's segmenter, ViT-Adapter-L trained on COCO-Stuff-164k
    (171 classes), rebuilt in plain PyTorch in ``bench.metrics.vit_adapter`` and loading
    the released checkpoint unchanged (``bench weights fetch
    vit-adapter-upernet-beit-l-cocostuff164k``). Variant ``$BENCH_VIT_ADAPTER_MODEL``
    (default ``upernet-beit-l-cocostuff164k``; or ``mask2former-beit-l-cocostuff164k``,
    ``mask2former-beitv2-l-cocostuff164k``), weights ``$BENCH_VIT_ADAPTER_WEIGHTS`` (``registry`` default, a
    path, or ``random`` for smoke runs). Its ``predict_trainid`` gives the 171-class
    train ids that ``miou_cocostuff`` compares with COCO-Stuff maps; ``predict`` maps
    them to the thing label space above for ``miou``.

``auto`` (the ``miou`` metric's default) picks vit-adapter when its released
checkpoint is in place, else mmseg when ``mmcv.ops`` imports and its checkpoint is in
place, else transformers; ``$BENCH_MIOU_BACKEND`` forces one. Rows say which one ran (``extra["segmenter"]``), and the backend is
part of the metric version, so switching recomputes instead of mixing.
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Protocol

import numpy as np

from bench.data.coco import BACKGROUND, COCO_THINGS, LABEL_SPACE
from bench.metrics.base import MetricError

DEFAULT_MODEL = "facebook/mask2former-swin-large-coco-panoptic"
# bench.weights ids for transformers model directories (used if bench.weights has the entry)
WEIGHT_IDS = {DEFAULT_MODEL: "mask2former-swin-large-coco-panoptic"}
UNIVERSAL_TYPES = ("mask2former", "maskformer", "oneformer")
MMSEG_WHY = ("mmsegmentation needs mmcv's compiled ops (mmcv.ops), which do not import here: mmcv 2.1.0 is on PyPI "
             "only as source and its setup.py forces -std=c++17 while torch 2.14 needs C++20 (building it with "
             "-std=c++20 works, ~22 min on 2 cores); mmcv-lite is not enough")

_ALIASES = {
    "aeroplane": "airplane", "motorbike": "motorcycle", "sofa": "couch", "tvmonitor": "tv", "tv monitor": "tv",
    "television": "tv", "diningtable": "dining table", "pottedplant": "potted plant", "hair dryer": "hair drier",
    "cellphone": "cell phone", "mobile phone": "cell phone", "doughnut": "donut", "hotdog": "hot dog",
    "sportsball": "sports ball", "teddybear": "teddy bear", "wineglass": "wine glass",
}
_SUFFIX = re.compile(r"\s+(merged|other|stuff)$")


class SegmenterError(MetricError):
    """A segmenter that cannot be built (weights missing, backend unavailable); says what to do."""


class Segmenter(Protocol):
    backend: str

    def predict(self, rgb: np.ndarray) -> np.ndarray: ...  # uint8 (H, W) in LABEL_SPACE

    def describe(self) -> dict: ...


def normalise(name: str) -> str:
    n = re.sub(r"[_\-]+", " ", str(name).strip().lower())
    n = re.sub(r"\s+", " ", n)
    n = _SUFFIX.sub("", n)
    return _ALIASES.get(n, n)


def thing_lut(names: Sequence[str], min_things: int = 60) -> tuple[np.ndarray, dict]:
    """(lookup table model index -> GT label uint8, mapping summary) for model labels ``names``."""
    by_name = {name: cid for cid, name in COCO_THINGS}
    lut = np.full(max(len(names), 1), BACKGROUND, dtype=np.uint8)
    matched: dict[int, str] = {}
    for i, raw in enumerate(names):
        cid = by_name.get(normalise(raw))
        if cid is not None:
            lut[i] = cid
            matched.setdefault(cid, str(raw))
    if len(matched) < min_things:
        raise SegmenterError(f"the segmenter's {len(names)} labels name only {len(matched)} of the 80 COCO thing "
                             f"classes (need {min_things}): it was not trained on COCO. Use a COCO model, or "
                             "min_things=0 to score it anyway")
    summary = {
        "rule": "model label name == COCO thing name -> COCO category id; other labels -> 0 (background)",
        "gt_label_space": LABEL_SPACE,
        "n_model_labels": len(names),
        "things_matched": len(matched),
        "things_unmatched": [name for cid, name in COCO_THINGS if cid not in matched],
        "model_labels_to_background": len(names) - int((lut[: len(names)] != BACKGROUND).sum()),
    }
    return lut, summary


# ---------------------------------------------------------------------------- transformers
def model_dir_for(model_id: str, model_dir: str | os.PathLike | None = None) -> tuple[Path, str]:
    """(directory, how it was found) for a transformers model; not checked for existence."""
    if model_dir:
        return Path(model_dir), "option model_dir"
    if os.environ.get("BENCH_MIOU_MODEL_DIR"):
        return Path(os.environ["BENCH_MIOU_MODEL_DIR"]), "$BENCH_MIOU_MODEL_DIR"
    wid = WEIGHT_IDS.get(model_id)
    if wid:
        try:
            from bench import weights

            p = Path(weights.path(wid))
            return (p if p.suffix == "" else p.parent), f"bench.weights {wid}"
        except (ImportError, KeyError):  # no weights registry or no such entry: fall through
            pass
    return Path.home() / ".cache" / "bench" / "models" / model_id.replace("/", "--"), "default cache"


class TransformersSegmenter:
    """A transformers segmentation model + its image processor (see module doc)."""

    backend = "transformers"

    def __init__(self, model, processor, model_id: str, device: str = "cpu", min_things: int = 60,
                 source: str = "") -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.model_id = model_id
        self.source = source
        id2label = model.config.id2label
        names = [id2label[i] for i in range(len(id2label))]
        self.lut, self.mapping = thing_lut(names, min_things)

    @classmethod
    def from_dir(cls, model_id: str = DEFAULT_MODEL, model_dir=None, device: str = "cpu",
                 min_things: int = 60) -> TransformersSegmenter:
        path, how = model_dir_for(model_id, model_dir)
        need = ("config.json", "preprocessor_config.json")
        if not path.is_dir() or any(not (path / f).is_file() for f in need) or not (
                list(path.glob("*.safetensors")) or list(path.glob("*.bin"))):
            raise SegmenterError(
                f"miou: segmenter {model_id} not found in {path} ({how}). Download config.json, "
                f"preprocessor_config.json and model.safetensors from https://huggingface.co/{model_id} into that "
                "directory (or set BENCH_MIOU_MODEL_DIR=DIR); nothing is downloaded at run time")
        os.environ["HF_HUB_OFFLINE"] = "1"
        from transformers import (
            AutoConfig,
            AutoImageProcessor,
            AutoModelForSemanticSegmentation,
            AutoModelForUniversalSegmentation,
        )

        config = AutoConfig.from_pretrained(path, local_files_only=True)
        auto = AutoModelForUniversalSegmentation if config.model_type in UNIVERSAL_TYPES \
            else AutoModelForSemanticSegmentation
        model = auto.from_pretrained(path, local_files_only=True)
        processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        return cls(model, processor, model_id, device, min_things, source=f"{path} ({how})")

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        torch = self.torch
        h, w = rgb.shape[:2]
        inputs = self.processor(images=np.array(rgb, dtype=np.uint8, copy=True), return_tensors="pt")
        inputs = {k: (v.to(self.device) if hasattr(v, "to") else v) for k, v in inputs.items()}
        with torch.inference_mode():
            out = self.model(**inputs)
        seg = self.processor.post_process_semantic_segmentation(out, target_sizes=[(h, w)])[0]
        return self.lut[seg.cpu().numpy().astype(np.int64)]

    def describe(self) -> dict:
        import importlib.metadata as md

        return {"backend": self.backend, "model": self.model_id, "model_type": self.model.config.model_type,
                "transformers": md.version("transformers"), "weights_from": self.source,
                "inference": "one image per pass; processor defaults; post_process_semantic_segmentation at (H, W)",
                "label_mapping": self.mapping}


# ---------------------------------------------------------------------------- mmsegmentation
MMSEG_WEIGHT_ID = "seg-deeplabv3-r101-cocostuff164k"
MMSEG_CONFIG = "deeplabv3/deeplabv3_r101-d8_4xb4-320k_coco-stuff164k-512x512.py"


@cache
def mmseg_available() -> tuple[bool, str]:
    import importlib.util

    if importlib.util.find_spec("mmcv") is None or importlib.util.find_spec("mmseg") is None:
        return False, f"mmsegmentation/mmcv are not installed; and: {MMSEG_WHY}"
    try:
        import mmcv.ops  # noqa: F401
        import mmseg.apis  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, or an ops library that fails to load (OSError, ...)
        return False, f"{MMSEG_WHY} ({type(exc).__name__}: {exc})"
    return True, ""


def mmseg_files(config=None, checkpoint=None) -> tuple[Path | None, Path | None, str]:
    """(config, checkpoint, where they came from); either may be None or not exist."""
    import importlib.util

    how = []
    config = config or os.environ.get("BENCH_MMSEG_CONFIG")
    if config:
        how.append("config given")
    else:
        spec = importlib.util.find_spec("mmseg")
        if spec is not None and spec.submodule_search_locations:
            config = Path(next(iter(spec.submodule_search_locations))) / ".mim" / "configs" / MMSEG_CONFIG
            how.append("config from the mmseg package")
    checkpoint = checkpoint or os.environ.get("BENCH_MMSEG_CHECKPOINT")
    if checkpoint:
        how.append("checkpoint given")
    else:
        try:
            from bench import weights

            checkpoint = weights.path(MMSEG_WEIGHT_ID)
            how.append(f"checkpoint bench.weights {MMSEG_WEIGHT_ID}")
        except (ImportError, KeyError):
            checkpoint = None
    return (Path(config) if config else None, Path(checkpoint) if checkpoint else None, ", ".join(how))


class MMSegSegmenter:
    """An mmsegmentation 1.x model (config + checkpoint); class names from its dataset_meta."""

    backend = "mmseg"

    def __init__(self, config=None, checkpoint=None, device: str = "cpu", min_things: int = 60) -> None:
        ok, why = mmseg_available()
        if not ok:
            raise SegmenterError(f"miou: mmseg backend unavailable: {why}")
        config, checkpoint, how = mmseg_files(config, checkpoint)
        if config is None or not config.is_file():
            raise SegmenterError(f"miou: mmseg config {config or '(none)'} not found: set BENCH_MMSEG_CONFIG to a "
                                 "COCO-Stuff-164k config")
        if checkpoint is None or not checkpoint.is_file():
            raise SegmenterError(f"miou: mmseg checkpoint {checkpoint or '(none)'} not found: `bench weights fetch "
                                 f"{MMSEG_WEIGHT_ID}` or set BENCH_MMSEG_CHECKPOINT")
        from mmseg.apis import init_model

        self.model = init_model(str(config), str(checkpoint), device=device)
        self.config, self.checkpoint, self.source = str(config), str(checkpoint), how
        self.lut, self.mapping = thing_lut(list(self.model.dataset_meta["classes"]), min_things)

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        from mmseg.apis import inference_model

        result = inference_model(self.model, np.ascontiguousarray(rgb[..., ::-1]))  # mmseg takes BGR arrays
        return self.lut[result.pred_sem_seg.data[0].cpu().numpy().astype(np.int64)]

    def describe(self) -> dict:
        import importlib.metadata as md

        return {"backend": self.backend, "model": Path(self.config).stem, "config": self.config,
                "checkpoint": self.checkpoint, "weights_from": self.source, "mmseg": md.version("mmsegmentation"),
                "inference": "mmseg inference_model with the config's test pipeline",
                "label_mapping": self.mapping}


# ---------------------------------------------------------------------------- selection
BACKENDS = ("auto", "transformers", "mmseg", "vit-adapter")


def vit_adapter_checkpoint_present() -> bool:
    """Whether the default ViT-Adapter variant's released checkpoint is in bench's weight cache
    (or ``$BENCH_VIT_ADAPTER_WEIGHTS`` names an existing file). No torch import."""
    from bench.metrics.vit_adapter import segmenter as va

    try:
        cfg, spec = va.selection()
        path = va.checkpoint_path(cfg, spec)
    except (ValueError, KeyError, ImportError):
        return False
    return path is not None and path.is_file()


def resolve_backend(backend: str = "auto") -> str:
    """``auto``: vit-adapter when its released checkpoint is in place, else mmseg when mmcv.ops
    imports and its checkpoint is in place, else transformers. ``$BENCH_MIOU_BACKEND`` overrides
    ``auto``."""
    if backend not in BACKENDS:
        raise SegmenterError(f"unknown segmenter backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = os.environ.get("BENCH_MIOU_BACKEND", "auto")
        if backend not in BACKENDS:
            raise SegmenterError(f"BENCH_MIOU_BACKEND={backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        import importlib.util

        if vit_adapter_checkpoint_present():
            return "vit-adapter"
        if importlib.util.find_spec("mmcv") is None:
            return "transformers"  # the cheap common case: no import of torch here
        _, checkpoint, _ = mmseg_files()
        return "mmseg" if checkpoint is not None and checkpoint.is_file() and mmseg_available()[0] else "transformers"
    return backend


def build_segmenter(backend: str = "auto", device: str = "cpu", model: str = DEFAULT_MODEL,
                    model_dir=None, min_things: int = 60) -> Segmenter:
    """The segmenter ``miou`` uses (tests monkeypatch this function)."""
    backend = resolve_backend(backend)
    if backend == "mmseg":
        return MMSegSegmenter(device=device, min_things=min_things)
    if backend == "vit-adapter":
        # ``model`` here is the transformers model id unless it names a ViT-Adapter variant
        from bench.metrics.vit_adapter.configs import VARIANTS
        from bench.metrics.vit_adapter.segmenter import ViTAdapterSegmenter

        return ViTAdapterSegmenter(model if model in VARIANTS else None, device=device, min_things=min_things)
    return TransformersSegmenter.from_dir(model, model_dir, device, min_things)
