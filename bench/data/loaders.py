"""Dataset loaders: a dataset card + a data directory -> Samples.

Loader contract (registry kind "dataset"): ``Loader(card, data_dir)`` with
``items()`` -> list of ``Item`` (cheap: ids and files, no decoding), and
``load(item)`` -> ``Sample`` (decodes and verifies; raises ImageError for that
image only). ``check()`` raises DatasetError listing every missing file.

Where data lives: ``--data-dir`` if given, else the card's ``env`` variable,
else ``$BENCH_DATA/<name>``, else ``~/.cache/bench/datasets/<name>``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.cards import Card
from bench.data.images import ImageError, pixel_sha256, read_rgb
from bench.registry import register

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


class DatasetError(FileNotFoundError):
    """Data missing or unusable; the message names each file and where it goes."""


@dataclass
class Item:
    id: str
    path: Path
    pixel_sha256: str | None = None  # expected, from the card
    url: str | None = None


@dataclass
class Sample:
    """One evaluation image. ``rgb``: uint8 (H, W, 3). ``id`` is the dataset's
    name for it; ``sha256`` the hash of its pixels (its identity)."""

    id: str
    rgb: np.ndarray
    sha256: str
    captions: list[str] = field(default_factory=list)
    label_map: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    label_maps: dict[str, np.ndarray] = field(default_factory=dict)  # every map by label space (prepared sets)


def default_data_dir(card: Card) -> Path:
    env = card.get("env")
    if env and os.environ.get(env):
        return Path(os.environ[env])
    if os.environ.get("BENCH_DATA"):
        return Path(os.environ["BENCH_DATA"]) / card.name
    return Path.home() / ".cache" / "bench" / "datasets" / card.name


class Loader:
    """Base loader: a fixed list of files (card ``images``) in one folder."""

    name = ""
    provides: frozenset[str] = frozenset()  # what samples carry besides pixels: "captions", "label_map"

    def __init__(self, card: Card, data_dir: str | Path | None = None) -> None:
        self.card = card
        self.data_dir = Path(data_dir) if data_dir else self.default_dir()

    def default_dir(self) -> Path:
        return default_data_dir(self.card)

    def items(self) -> list[Item]:
        base = self.card.get("url_base")
        return [
            Item(str(e["id"]), self.data_dir / e["file"], e.get("pixel_sha256"),
                 e.get("url") or (f"{base}{e['file']}" if base else None))
            for e in self.card.get("images", [])
        ]

    def check(self) -> None:
        """Raise DatasetError naming every missing file, its source and where to put it."""
        missing = [it for it in self.items() if not it.path.is_file()]
        if not missing:
            return
        env = self.card.get("env")
        lines = [f"dataset {self.card.name!r}: {len(missing)} of {len(self.items())} files missing in {self.data_dir}"]
        for it in missing[:10]:
            lines.append(f"  {it.path.name}" + (f"  <- {it.url}" if it.url else ""))
        if len(missing) > 10:
            lines.append(f"  ... and {len(missing) - 10} more")
        where = "--data-dir DIR" + (f" or set {env}=DIR" if env else "")
        lines.append(f"Place the files in {self.data_dir} (or pass {where}).")
        if self.card.get("source"):
            lines.append(f"Source: {self.card.get('source')}")
        raise DatasetError("\n".join(lines))

    def annotations_fingerprint(self) -> dict:
        """Identity of what samples carry besides pixels (caption and annotation files):
        part of the key of set metrics that use them. Plain image sets: ``{}``."""
        return {}

    def load(self, item: Item) -> Sample:
        rgb, notes = read_rgb(item.path)
        digest = pixel_sha256(rgb)
        if item.pixel_sha256 and digest != item.pixel_sha256:
            raise ImageError(f"{item.path}: pixels differ from dataset {self.card.name!r}'s card "
                             f"(expected pixel sha256 {item.pixel_sha256[:16]}…, got {digest[:16]}…): "
                             "a different or modified file; replace it with the official one")
        return Sample(item.id, rgb, digest, notes=notes)


@register("dataset", "files")
class FilesLoader(Loader):
    """The card lists its images (id, file, pixel_sha256); they are verified on load."""

    name = "files"


@register("dataset", "folder")
class FolderLoader(Loader):
    """Every image file directly inside ``data_dir`` (sorted by name); no hashes.
    Use with ``--dataset folder --data-dir DIR`` for your own images."""

    name = "folder"

    def items(self) -> list[Item]:
        if not self.data_dir.is_dir():
            return []
        return [Item(p.stem, p) for p in sorted(self.data_dir.iterdir())
                if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]

    def check(self) -> None:
        if not self.data_dir.is_dir():
            raise DatasetError(f"dataset folder {self.data_dir} does not exist: pass --data-dir DIR with your images")
        if not self.items():
            raise DatasetError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {self.data_dir}")


@register("dataset", "skimage-samples")
class SkimageSamples(Loader):
    """Photos that scikit-image ships inside its wheel (no download)."""

    name = "skimage-samples"

    def default_dir(self) -> Path:
        import skimage.data

        return Path(skimage.data.__file__).parent

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import skimage.data  # noqa: F401
        except ImportError:
            return False, "scikit-image is not installed: pip install scikit-image"
        return True, ""


def open_dataset(card: Card, data_dir: Any = None) -> Loader:
    """The loader a dataset card names, on ``data_dir`` (or its default)."""
    from bench import registry

    loader_cls = registry.get("dataset", card.target).obj
    return loader_cls(card, data_dir)
