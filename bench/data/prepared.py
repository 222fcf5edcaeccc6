"""Loader of prepared sets (``loader: prepared``): the folder ``bench datasets prepare`` writes.

Streams: ``items()`` reads only the manifest; ``load(item)`` decodes one PNG (and its
label maps), checks its pixel sha256 against the manifest and raises ImageError naming
the file if it differs or cannot be read (the runner reports it and goes on).

Samples carry ``captions`` (from ``captions.json``) and label maps: ``label_map`` is
the COCO *thing* map in :data:`bench.data.coco.LABEL_SPACE` (what the mIoU metric
reads); ``label_maps`` holds every map by label space, e.g. ``coco-things-catid`` and
``cocostuff164k-trainid`` (COCO-Stuff 164k, 171 classes 0..170, 255 ignore).
"""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from bench.data.images import ImageError
from bench.data.loaders import DatasetError, Item, Loader, Sample
from bench.data.prepare import (
    MANIFEST,
    STUFF_SPACE,
    THINGS_SPACE,
    manifest_digest,
    read_manifest,
)
from bench.hashing import sha256_bytes
from bench.registry import register


@register("dataset", "prepared")
class PreparedLoader(Loader):
    """A prepared folder (images/, labels/, captions.json, manifest.json); see bench.data.prepare."""

    name = "prepared"

    def __init__(self, card, data_dir=None) -> None:
        super().__init__(card, data_dir)
        spec = card.get("prepare") or {}
        provides = set()
        if spec.get("captions"):
            provides.add("captions")
        if spec.get("instances"):
            provides.add("label_map")
        self.provides = frozenset(provides)
        self._manifest: dict | None = None
        self._captions: dict[str, list[str]] | None = None
        self._by_id: dict[str, dict] | None = None

    def manifest(self) -> dict | None:
        if self._manifest is None:
            self._manifest = read_manifest(self.data_dir)
        return self._manifest

    def items(self) -> list[Item]:
        m = self.manifest()
        if not m:
            return []
        return [Item(e["id"], self.data_dir / e["file"], e["pixel_sha256"]) for e in m["images"]]

    def status(self) -> tuple[str, str]:
        """(state, text): state is ``prepared``, ``partial``, ``differs`` or ``missing``."""
        m = self.manifest()
        if not m:
            from bench.data.prepare import card_archives

            archives = card_archives(self.card)
            known = sum(a.size or 0 for a in archives)
            unknown = sum(not a.size for a in archives)
            size = (f"{len(archives)} archive(s)" + (f", {known / 1e9:.1f} GB" if known else "")
                    + (f", size of {unknown} not published" if unknown else ""))
            return "missing", (f"not prepared in {self.data_dir}: `bench datasets prepare {self.card.name}` "
                               f"(downloads {size}; or --from DIR with them)")
        digest = manifest_digest(m)
        want = self.card.get("manifest_sha256")
        text = f"{m['count']} images in {self.data_dir}, manifest {digest[:12]}…"
        if not m.get("complete"):
            return "partial", text + f" (incomplete: {'; '.join(m.get('problems', []))[:200]})"
        if want and want != digest:
            return "differs", text + f" != card's {want[:12]}…: not the same pixels"
        return "prepared", text + (" = card's" if want else " (card records none yet)")

    def check(self) -> None:
        state, text = self.status()
        if state == "missing":
            from bench.data.prepare import card_archives, how_to_get

            raise DatasetError(f"dataset {self.card.name!r}: {text}\n" + how_to_get(
                self.card, self.data_dir, card_archives(self.card)).split("\n", 1)[1])
        if state == "differs":
            raise DatasetError(f"dataset {self.card.name!r}: {text}. Re-run `bench datasets prepare "
                               f"{self.card.name}` from the official archives, or pass --data-dir to the right copy")
        missing = [it for it in self.items() if not it.path.is_file()]
        if missing:
            raise DatasetError(f"dataset {self.card.name!r}: {len(missing)} prepared files missing in "
                               f"{self.data_dir} (first: {missing[0].path}); re-run `bench datasets prepare "
                               f"{self.card.name}` (it redoes only those)")

    def annotations_fingerprint(self) -> dict:
        m = self.manifest() or {}
        return {"manifest_sha256": manifest_digest(m) if m else None} if self.provides else {}

    def _caption_map(self) -> dict[str, list[str]]:
        if self._captions is None:
            path = self.data_dir / "captions.json"
            self._captions = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        return self._captions

    def _entry(self, item_id: str) -> dict:
        if self._by_id is None:
            self._by_id = {e["id"]: e for e in (self.manifest() or {}).get("images", [])}
        if item_id not in self._by_id:
            raise ImageError(f"{item_id}: not in {self.data_dir / MANIFEST}")
        return self._by_id[item_id]

    def load(self, item: Item) -> Sample:
        sample = super().load(item)  # decodes and checks the pixel sha256
        sample.captions = list(self._caption_map().get(item.id, []))
        labels = self._entry(item.id).get("labels") or {}
        maps = {}
        for space, digest in labels.items():
            path = self.data_dir / "labels" / space / f"{item.id}.png"
            try:
                with Image.open(path) as im:
                    arr = np.asarray(im)
            except OSError as exc:
                raise ImageError(f"{path}: unreadable label map ({exc}); re-run prepare") from exc
            if sha256_bytes(np.ascontiguousarray(arr).tobytes()) != digest or arr.shape != sample.rgb.shape[:2]:
                raise ImageError(f"{path}: label map differs from the manifest; re-run prepare")
            maps[space] = arr
        sample.label_maps = maps
        sample.label_map = maps.get(THINGS_SPACE)
        return sample


__all__ = ["STUFF_SPACE", "THINGS_SPACE", "PreparedLoader"]
