"""mIoU: semantic preservation of a set of reconstructions (PerCo Sec. 4.1).

Each reconstruction is segmented by a pretrained semantic segmenter
(``bench.metrics.segmenters``: mmsegmentation's DeepLabV3 COCO-Stuff-164k
when mmcv's ops and its checkpoint are in place, else transformers'
Mask2Former COCO-panoptic) and compared with the image's ground-truth label map
(``Sample.label_map``, from the COCO loader):

* label space: COCO thing category ids (1..90) + 0 = background (no thing:
  stuff or nothing), 255 = ignore. The segmenter's labels are mapped into it by
  name (segmenters module doc): its 80 thing classes to their COCO ids, every
  stuff/other class to 0;
* pixels whose ground truth is 255 are ignored (neither TP, FP nor FN);
* background (0) is a class like the others: COCO's instance annotations are
  exhaustive for the 80 things, so a thing predicted on a background pixel is a
  false positive and counts in that class's union (as in PASCAL VOC's mIoU);
* per class c: intersection and union accumulated over *all images of the set*
  (one confusion matrix), IoU_c = I_c / U_c; mIoU = mean of IoU_c over the
  classes with U_c > 0 (present in the ground truth or the predictions), ×100;
* images without a label map (e.g. coco-mini's 142238 and 439180) are skipped
  and counted in ``extra``; a set where no image has one is an error.

PerCo used ViT-Adapter on COCO-Stuff-164k (171 classes: things + stuff) at
512×512; bench's default ground truth has things only (stuff is not in the
instance annotations) and images at native size, so its numbers are not the
paper's. ``extra`` of each row names the segmenter (backend, model id, label
mapping) that produced it.

``miou_cocostuff`` is PerCo's protocol (Sec. 4.1, Fig. 3/7, Table 1): the same
accumulator in the COCO-Stuff-164k label space (``label_space="cocostuff164k-trainid"``):
the ViT-Adapter segmenter's 171 train ids (``bench.metrics.vit_adapter``; backend
``vit-adapter``, the only one predicting that space) against the 171-class maps of
``Sample.label_maps["cocostuff164k-trainid"]`` (dataset ``coco2017-val512``: 512×512
centre crops, 255 = unlabeled, ignored). Classes count where present (union > 0),
as mmsegmentation's mIoU does (nan-mean over classes). It is a separate registered
name rather than an option of ``miou`` because metrics are chosen by name on the
command line and both columns can then be reported by one run, each with its own
resume key. Its version names the variant and the weights (registry id, file, or
``random-seed0``), so switching either recomputes. ``extra["protocol"]`` says whether
every image was 512×512 (PerCo's setting).
"""
from __future__ import annotations

import numpy as np

from bench import registry
from bench.data.coco import IGNORE, LABEL_SPACE
from bench.data.prepare import STUFF_SPACE
from bench.metrics import segmenters
from bench.metrics.base import SetMetric

LABEL_SPACES = (LABEL_SPACE, STUFF_SPACE)
STUFF_CLASSES = 171
PERCO_SIZE = (512, 512)


class IoUAccumulator:
    """Class-wise intersection/union over many label maps (torchmetrics-like).

    ``update(pred, target)`` with integer arrays of one shape (values in
    ``0..num_classes-1``); ``compute()`` -> ``{"miou", "iou", "intersection",
    "union", "classes"}`` with ``miou`` in [0, 1] (nan if no class is present)
    and per-class dicts for the present classes. ``ignore_index`` pixels of the
    target are dropped; it is never a class.
    """

    def __init__(self, num_classes: int = 256, ignore_index: int | None = IGNORE) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)  # [target, pred]
        self.n_updates = 0

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        pred = np.asarray(pred)
        target = np.asarray(target)
        if pred.shape != target.shape:
            raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
        keep = target != self.ignore_index if self.ignore_index is not None else np.ones(target.shape, bool)
        t = target[keep].astype(np.int64)
        p = pred[keep].astype(np.int64)
        for name, a in (("target", t), ("prediction", p)):
            if a.size and (a.min() < 0 or a.max() >= self.num_classes):
                raise ValueError(f"{name} labels outside 0..{self.num_classes - 1}")
        n = self.num_classes
        self.confusion += np.bincount(t * n + p, minlength=n * n).reshape(n, n)
        self.n_updates += 1

    def compute(self) -> dict:
        inter = np.diag(self.confusion)
        union = self.confusion.sum(0) + self.confusion.sum(1) - inter
        present = union > 0
        if self.ignore_index is not None and 0 <= self.ignore_index < self.num_classes:
            present[self.ignore_index] = False
        classes = np.flatnonzero(present)
        iou = inter[classes] / union[classes]
        return {
            "miou": float(iou.mean()) if classes.size else float("nan"),
            "iou": {int(c): float(v) for c, v in zip(classes, iou)},
            "intersection": {int(c): int(inter[c]) for c in classes},
            "union": {int(c): int(union[c]) for c in classes},
            "classes": [int(c) for c in classes],
        }


class MIoU(SetMetric):
    """Set metrics ``miou`` and ``miou_cocostuff`` (see module doc); ``backend``: auto | transformers |
    mmseg | vit-adapter; ``label_space``: coco-things-catid (``miou``) | cocostuff164k-trainid.

    ``update(sample, recon)`` segments one reconstruction and adds it to the set's confusion
    matrix (images without a label map are counted and skipped); ``compute()`` gives the mIoU."""

    higher_better = True
    learned = True
    mode = "FR"  # against the ground-truth label map, not the original pixels
    needs = ("label_map",)
    value_range = "[0, 100]"
    unit = "%"
    colour_space = "RGB → segmenter input (its own preprocessing)"
    licence = "segmenter weights' licence (bench weights list); transformers/mmsegmentation: Apache-2.0"

    def __init__(self, name: str = "miou", backend: str = "auto", model: str = segmenters.DEFAULT_MODEL,
                 model_dir=None, min_things: int = 60, label_space: str = LABEL_SPACE) -> None:
        if label_space not in LABEL_SPACES:
            raise ValueError(f"miou: label_space {label_space!r} is not one of {LABEL_SPACES}")
        if label_space == STUFF_SPACE and backend != "vit-adapter":
            raise ValueError(f"miou: label space {STUFF_SPACE} needs the vit-adapter backend (171 classes)")
        self.name = name
        self.backend = backend
        self.model = model
        self.model_dir = model_dir
        self.min_things = min_things
        self.label_space = label_space
        self._segmenters: dict = {}
        self.reset()
        if label_space == STUFF_SPACE:
            self.convention = ("PerCo: ViT-Adapter (COCO-Stuff-164k) train ids vs COCO-Stuff 171-class maps "
                               "(512×512, 255 ignored); IoU per class over the whole set; mean over classes "
                               "present in GT or prediction, ×100")
        else:
            self.convention = ("segment recon, map model labels to COCO thing ids by name (stuff -> 0 background); "
                               "IoU per class over the whole set (0 = background is a class, 255 ignored); "
                               "mean over present classes, ×100")

    @property
    def stuff(self) -> bool:
        return self.label_space == STUFF_SPACE

    def _vit_adapter(self):
        """(variant config, weights spec) for the vit-adapter backend."""
        from bench.metrics.vit_adapter import configs
        from bench.metrics.vit_adapter import segmenter as va

        try:
            return va.selection(self.model if self.model in configs.VARIANTS else None)
        except ValueError as exc:
            raise segmenters.SegmenterError(f"{self.name}: {exc}") from None

    @property
    def weights(self) -> tuple[str, ...]:
        """bench.weights ids to check before a run: the mmseg checkpoint when that backend runs
        from bench.weights; the transformers model's entry if bench.weights has one and no local
        directory overrides it."""
        import os

        backend = segmenters.resolve_backend(self.backend)
        if backend == "mmseg":
            return () if os.environ.get("BENCH_MMSEG_CHECKPOINT") else (segmenters.MMSEG_WEIGHT_ID,)
        if backend == "vit-adapter":
            try:
                cfg, spec = self._vit_adapter()
            except ValueError:
                return ()  # available() explains
            return (cfg.weight_id,) if spec == "registry" else ()
        if self.model_dir or os.environ.get("BENCH_MIOU_MODEL_DIR"):
            return ()
        wid = segmenters.WEIGHT_IDS.get(self.model)
        if not wid:
            return ()
        try:
            from bench import weights

            weights.path(wid)
        except FileNotFoundError:
            return (wid,)  # known but missing: require() will say where to put it
        except (ImportError, KeyError):
            return ()  # no such entry (or no registry): the segmenter's own error explains
        return (wid,)

    def available(self) -> tuple[bool, str]:
        import importlib.util
        from pathlib import Path

        backend = segmenters.resolve_backend(self.backend)
        if backend == "vit-adapter":
            for mod in ("torch", "timm"):
                if importlib.util.find_spec(mod) is None:
                    return False, f"the vit-adapter segmenter needs {mod}: pip install {mod}"
            try:
                cfg, spec = self._vit_adapter()
            except ValueError as exc:
                return False, str(exc)
            if not cfg.implemented:
                return False, (f"ViT-Adapter variant {cfg.name} ({cfg.head} head) is not implemented yet; "
                               "use upernet-beit-l-cocostuff164k")
            if spec not in ("registry", "random") and not Path(spec).is_file():
                return False, f"ViT-Adapter checkpoint {spec} not found ($BENCH_VIT_ADAPTER_WEIGHTS)"
            return True, ""
        if backend == "mmseg":
            ok, why = segmenters.mmseg_available()
            if not ok:
                return ok, why
            config, checkpoint, _ = segmenters.mmseg_files()
            for what, p in (("config", config), ("checkpoint", checkpoint)):
                if p is None or not p.is_file():
                    return False, f"mmseg {what} {p or '(none)'} missing (BENCH_MMSEG_{what.upper()})"
            return True, ""
        if importlib.util.find_spec("transformers") is None:
            return False, "transformers is not installed: pip install transformers"
        path, how = segmenters.model_dir_for(self.model, self.model_dir)
        if not (path / "config.json").is_file():
            return False, (f"segmenter {self.model} not in {path} ({how}): download it from "
                           f"https://huggingface.co/{self.model} there or set BENCH_MIOU_MODEL_DIR")
        return True, ""

    def version(self) -> str:

        backend = segmenters.resolve_backend(self.backend)
        if backend == "mmseg":
            config, checkpoint, _ = segmenters.mmseg_files()
            model = f"{config.name if config else '?'}+{checkpoint.name if checkpoint else '?'}"
        elif backend == "vit-adapter":
            from bench.metrics.vit_adapter.segmenter import weights_tag

            cfg, spec = self._vit_adapter()
            model = f"{cfg.name}+{weights_tag(cfg, spec)}:vit-adapter-port-1"
        else:
            model = self.model
        if self.stuff:
            return f"miou-cocostuff-1:{backend}:{model}:{STUFF_SPACE}:ignore={IGNORE}:present=union>0"
        return f"miou-1:{backend}:{model}:{LABEL_SPACE}:ignore={IGNORE}:bg=class:min_things={self.min_things}"

    def segmenter(self, device: str):
        if device not in self._segmenters:
            self._segmenters[device] = segmenters.build_segmenter(self.backend, device, self.model,
                                                                  self.model_dir, self.min_things)
        return self._segmenters[device]

    def reset(self) -> None:
        self._acc = IoUAccumulator(256, IGNORE)
        self._labelled = 0
        self._skipped: list[str] = []
        self._sizes: set[tuple[int, int]] = set()

    def _target(self, sample):
        if self.stuff:
            return (getattr(sample, "label_maps", None) or {}).get(STUFF_SPACE)
        return sample.label_map

    def update(self, sample, recon) -> None:
        target = self._target(sample)
        if target is None:
            self._skipped.append(sample.id)
            return
        if recon.shape[:2] != target.shape:
            raise ValueError(f"{self.name}: image {sample.id}: reconstruction {recon.shape[:2]} and label map "
                             f"{target.shape} differ in size")
        seg = self.segmenter(self.device)
        pred = seg.predict_trainid(recon) if self.stuff else seg.predict(recon)
        if pred.shape != target.shape:
            raise ValueError(f"{self.name}: segmenter returned {pred.shape} for image {sample.id} of "
                             f"{target.shape}")
        self._acc.update(pred, target)
        self._labelled += 1
        self._sizes.add(tuple(target.shape))

    def compute(self) -> dict:
        if not self._labelled:
            if self.stuff:
                raise ValueError(f"{self.name}: none of the {len(self._skipped)} images has a COCO-Stuff label map "
                                 f"(label_maps[{STUFF_SPACE!r}]); use the prepared dataset coco2017-val512 "
                                 "(`bench datasets prepare coco2017-val512`)")
            raise ValueError(f"miou: none of the {len(self._skipped)} images has a ground-truth label map; "
                             "use a dataset with segmentation annotations (e.g. coco-mini, coco-val2017)")
        res = self._acc.compute()
        extra = {"segmenter": self.segmenter(self.device).describe()}
        if self.stuff:
            from bench.metrics.vit_adapter.configs import class_names

            names = class_names()
            perco = self._sizes == {PERCO_SIZE}
            extra.update({
                "label_space": STUFF_SPACE,
                "ignore_index": IGNORE,
                "n_classes": len(res["classes"]),
                "iou_per_class": {f"{c} {names[c]}": round(v, 6) for c, v in res["iou"].items()},
                "image_sizes": sorted(f"{h}x{w}" for h, w in self._sizes),
                "protocol": ("PerCo: 512×512 images, COCO-Stuff 171 classes" if perco else
                             "NOT PerCo's 512×512 setting: images of other sizes"),
            })
        else:
            extra.update({
                "label_space": LABEL_SPACE,
                "ignore_index": IGNORE,
                "background": "0 = no COCO thing; counted as a class",
                "n_classes": len(res["classes"]),
                "iou_per_class": {str(c): round(v, 6) for c, v in res["iou"].items()},
            })
        extra.update({"n_skipped_no_label_map": len(self._skipped), "skipped": self._skipped[:50]})
        return {"value": 100.0 * res["miou"], "n_images": self._labelled, "extra": extra}


registry.add("metric", "miou", MIoU())
# the variant and weights come from $BENCH_VIT_ADAPTER_MODEL / $BENCH_VIT_ADAPTER_WEIGHTS (defaults: UperNet, registry)
registry.add("metric", "miou_cocostuff", MIoU(name="miou_cocostuff", backend="vit-adapter", label_space=STUFF_SPACE))
