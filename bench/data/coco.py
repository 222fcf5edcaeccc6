"""MS-COCO loader: images + official captions + semantic label maps rasterised
from the instance annotations.

One loader (``loader: coco``) serves every COCO-format set; the card says where
the files are, relative to the data directory::

    images_dir: val2017                              # folder of the JPEGs
    captions: annotations/captions_val2017.json      # required
    instances: annotations/instances_val2017.json    # optional: label maps
    annotation_sha256: {<relative path>: <sha256>}   # optional: verified on first use
    images: [{id, file, coco_id, pixel_sha256}, ...] # optional: fixed list + pixel hashes

Without an ``images`` list, the image list is the captions file's ``images``
(sorted by COCO id) and the expected pixel hashes are unknown (not verified).

Sample fields
-------------
* ``id``: the file stem, e.g. ``000000000139``.
* ``captions``: every caption of the image in the captions file (COCO val2017
  has 5 for most images, up to 7 for a few), ordered by annotation id,
  whitespace stripped.
* ``label_map``: uint8 (H, W), the semantic map of the 80 COCO *thing*
  categories, in the label space :data:`LABEL_SPACE`:

  - pixel value = the COCO ``category_id`` (1..90, sparse: 80 ids are used);
  - ``0`` (:data:`BACKGROUND`) = no thing annotation covers the pixel (stuff or
    nothing). COCO's instance annotations are exhaustive for the 80 classes
    (crowds included, ``iscrowd=1`` regions are painted with their category),
    so 0 is a real class ("not a thing"), not an unknown;
  - ``255`` (:data:`IGNORE`) = void/unlabeled, ignored by mIoU. Instance-derived
    maps contain none; the value is reserved for maps from other sources.

  Overlapping instances: annotations are painted from the largest area to the
  smallest (ties: by annotation id), so a small object in front of a larger one
  keeps its pixels. Polygons and RLE are decoded with pycocotools, COCO's own
  rasteriser (``annToMask``).

  ``label_map`` is None when the image has no record in the instances file
  (no annotations available: e.g. coco-mini's 142238 and 439180), and all zeros
  when the image has a record but no annotations (COCO val2017 has 48 such
  images with no object of the 80 classes). Without pycocotools the label map
  is None and the sample carries a note saying so.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bench.data.images import ImageError
from bench.data.loaders import DatasetError, Item, Loader, Sample
from bench.hashing import sha256_file, sha256_file_cached
from bench.registry import register

BACKGROUND = 0
IGNORE = 255
LABEL_SPACE = "coco-things-catid"  # uint8: COCO category id for things, 0 background, 255 ignore

# The 80 COCO thing categories: (category_id, name), as in instances_*2017.json.
COCO_THINGS: tuple[tuple[int, str], ...] = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
    (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"),
    (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"),
    (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"),
    (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"),
    (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
    (89, "hair drier"), (90, "toothbrush"),
)

ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"


def rasterise(annotations: list[dict], height: int, width: int) -> np.ndarray:
    """uint8 (H, W) thing label map from COCO instance annotations (see module doc)."""
    from pycocotools import mask as mask_utils

    label = np.full((height, width), BACKGROUND, dtype=np.uint8)
    for ann in sorted(annotations, key=lambda a: (-float(a.get("area", 0.0)), a.get("id", 0))):
        seg = ann["segmentation"]
        if isinstance(seg, list):  # polygons
            if not seg:
                continue
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
        elif isinstance(seg.get("counts"), list):  # uncompressed RLE (crowds)
            rle = mask_utils.frPyObjects(seg, height, width)
        else:  # compressed RLE
            rle = seg
        m = mask_utils.decode(rle).astype(bool)
        if m.shape != (height, width):
            raise ValueError(f"annotation {ann.get('id')}: mask {m.shape} does not match image {height}x{width}")
        cat = int(ann["category_id"])
        if not 0 < cat < IGNORE:
            raise ValueError(f"annotation {ann.get('id')}: category id {cat} outside 1..254")
        label[m] = cat
    return label


def captions_by_image(data: dict) -> dict[int, list[str]]:
    """COCO id -> every caption of the image in a COCO captions JSON (``captions_*.json``),
    ordered by annotation id, whitespace stripped (the rule of :class:`CocoLoader`)."""
    caps: dict[int, list[tuple[int, str]]] = {}
    for a in data.get("annotations", []):
        caps.setdefault(int(a["image_id"]), []).append((int(a.get("id", 0)), str(a["caption"]).strip()))
    return {k: [c for _, c in sorted(v)] for k, v in caps.items()}


@register("dataset", "coco")
class CocoLoader(Loader):
    """COCO images with their captions and thing label maps (see module doc)."""

    name = "coco"
    provides = frozenset({"captions", "label_map"})

    def __init__(self, card, data_dir=None) -> None:
        super().__init__(card, data_dir)
        self._captions: dict[int, list[str]] | None = None
        self._image_recs: dict[str, dict] | None = None
        self._instances: dict[int, list[dict]] | None = None
        self._instance_images: dict[int, dict] | None = None

    # ------------------------------------------------------------------ files
    @property
    def images_dir(self) -> Path:
        return self.data_dir / str(self.card.get("images_dir", "images"))

    def annotation_path(self, key: str) -> Path | None:
        rel = self.card.get(key)
        return self.data_dir / rel if rel else None

    LABEL_MAP_VERSION = "1"  # bump when rasterise() changes its output

    def annotations_fingerprint(self) -> dict:
        """sha256 of the caption and instance files (when present) and the label-map rule."""
        out: dict = {"label_map_version": self.LABEL_MAP_VERSION}
        for key in ("captions", "instances"):
            path = self.annotation_path(key)
            out[key] = sha256_file_cached(path) if path is not None and path.is_file() else None
        return out

    def _read_json(self, key: str) -> Any:
        path = self.annotation_path(key)
        if path is None or not path.is_file():
            self._missing_annotations([key])
        expected = (self.card.get("annotation_sha256") or {}).get(self.card.get(key))
        if expected:
            got = sha256_file(path)
            if got != expected:
                raise DatasetError(f"dataset {self.card.name!r}: {path} differs from the card (sha256 {got[:16]}…, "
                                   f"expected {expected[:16]}…): a different or modified annotation file; "
                                   f"replace it with the official one ({self.card.get('annotations_url', ANNOTATIONS_URL)})")
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    def _missing_annotations(self, keys: list[str]) -> None:
        env = self.card.get("env")
        paths = [self.annotation_path(k) for k in keys]
        lines = [f"dataset {self.card.name!r}: annotation file(s) missing in {self.data_dir}:"]
        lines += [f"  {p}" for p in paths if p is not None]
        url = self.card.get("annotations_url")
        if url:
            lines.append(f"They are in {url} (unzip it into {self.data_dir}).")
        where = "--data-dir DIR" + (f" or set {env}=DIR" if env else "")
        lines.append(f"Place them there (or pass {where}).")
        raise DatasetError("\n".join(lines))

    # ------------------------------------------------------------------ index
    def _load_captions(self) -> None:
        if self._captions is not None:
            return
        data = self._read_json("captions")
        self._captions = captions_by_image(data)
        self._image_recs = {Path(im["file_name"]).stem: im for im in data.get("images", [])}

    def _load_instances(self) -> None:
        if self._instances is not None:
            return
        data = self._read_json("instances")
        self._instance_images = {int(im["id"]): im for im in data.get("images", [])}
        inst: dict[int, list[dict]] = {}
        for a in data.get("annotations", []):
            inst.setdefault(int(a["image_id"]), []).append(a)
        self._instances = inst

    def items(self) -> list[Item]:
        listed = self.card.get("images")
        if listed:
            return [Item(str(e["id"]), self.data_dir / e["file"], e.get("pixel_sha256"), e.get("url")
                         or (f"{self.card.get('url_base')}{Path(e['file']).name}" if self.card.get("url_base") else None))
                    for e in listed]
        path = self.annotation_path("captions")
        if path is None or not path.is_file():
            return []  # check() says what is missing
        self._load_captions()
        recs = sorted(self._image_recs.values(), key=lambda im: int(im["id"]))
        return [Item(Path(im["file_name"]).stem, self.images_dir / im["file_name"], None, im.get("coco_url"))
                for im in recs]

    def check(self) -> None:
        missing = [k for k in ("captions", "instances") if self.card.get(k)
                   and not self.annotation_path(k).is_file()]
        if missing:
            self._missing_annotations(missing)
        super().check()
        count = self.card.get("count")
        if count and len(self.items()) != int(count):
            raise DatasetError(f"dataset {self.card.name!r}: {len(self.items())} images listed in {self.data_dir}, "
                               f"the card says {count}: wrong annotation file?")

    # ------------------------------------------------------------------ samples
    def load(self, item: Item) -> Sample:
        sample = super().load(item)
        self._load_captions()
        rec = self._image_recs.get(item.id)
        if rec is None:
            raise ImageError(f"{item.path}: image {item.id} has no record in {self.annotation_path('captions')}")
        h, w = sample.rgb.shape[:2]
        if (int(rec["height"]), int(rec["width"])) != (h, w):
            raise ImageError(f"{item.path}: decoded size {w}x{h} differs from its COCO record "
                             f"{rec['width']}x{rec['height']}: a different file")
        coco_id = int(rec["id"])
        sample.captions = list(self._captions.get(coco_id, []))
        if self.card.get("instances"):
            sample.label_map = self._label_map(coco_id, h, w, sample.notes)
        return sample

    def _label_map(self, coco_id: int, h: int, w: int, notes: list[str]) -> np.ndarray | None:
        try:
            import pycocotools  # noqa: F401
        except ImportError:
            notes.append("no label map: pycocotools is not installed (pip install pycocotools)")
            return None
        self._load_instances()
        if coco_id not in self._instance_images:
            return None  # no annotations available for this image
        return rasterise(self._instances.get(coco_id, []), h, w)

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """Always usable for images and captions; label maps also need pycocotools
        (without it each sample says so in its notes)."""
        return True, ""
