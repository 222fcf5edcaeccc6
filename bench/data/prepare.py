"""``bench datasets prepare NAME``: official archives -> a prepared folder + manifest.

A dataset card with a ``prepare:`` section says where its pixels come from and a
``transform:`` list says what is done to them (both are part of the protocol; the
transform and selection are also in the card's result hash)::

    prepare:
      kind: images | coco | files      # a glob of image files / COCO JSON index / the card's `images` list
      archives: [{file, url, sha256, size, digest_source}]
      images: {archive: NAME, glob: "DIV2K_valid_HR/*.png"}         # kind images
      images: {archive: NAME, dir: val2014}                          # kind coco
      index: {archive: NAME, member: annotations/captions_val2014.json}   # kind coco: images, sizes
      captions / instances: {archive, member}                        # kind coco, optional
      stuff: {archive: NAME, dir: val2017}                           # COCO-Stuff 164k PNG label maps
      select: {rule: all | min_size_gt | random, ...}
      expect: {count: N, size: [W, H]}
    transform:
      - {op: resize_shorter, size: 768, filter: bicubic}
      - {op: center_crop, size: [768, 768]}
    manifest_sha256: <hex or null>

Determinism. Decoding: Pillow (its bundled libjpeg-turbo / zlib), converted to
uint8 RGB by :func:`bench.data.images.read_rgb` (its policy: bit depth, pixel limit, modes). Resizing: ``PIL.Image.resize`` on the
uint8 RGB image with the named filter (antialiased, ``reducing_gap=None``), with
torchvision's size rules so that ``Resize(N)`` + ``CenterCrop`` on a PIL image
gives the same pixels: the longer side becomes ``int(N * long / short)``; a crop
starts at ``int(round((H - h) / 2))``. Label maps use the same geometry with
``NEAREST``. The pixel sha256 of every prepared image is in the manifest; two
machines that print the same manifest sha256 evaluate on the same pixels.

Layout of a prepared folder (``data_dir``)::

    images/<id>.png                 lossless PNG of the prepared pixels
    labels/<label space>/<id>.png   uint8 label maps, when the set has them
    captions.json                   {id: [caption, ...]}, when the set has them
    manifest.json                   per image: id, file, source, width, height, pixel_sha256, label hashes
    downloads/                      archives fetched by prepare (not when --from gives them)
    .prepare/done.jsonl             resume journal; removed when the manifest is written

The manifest sha256 is the sha256 of the canonical JSON of ``{"images": [{id, file,
width, height, pixel_sha256, labels}], "captions_sha256"}`` (sources and versions
are recorded but left out, so an archive and an extracted folder give the same hash).
"""
from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import tarfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.cards import Card
from bench.data.download import Archive, DownloadError, download
from bench.data.images import ImageError, pixel_sha256, read_rgb
from bench.data.loaders import DatasetError, default_data_dir
from bench.hashing import sha256_bytes, sha256_json

MANIFEST = "manifest.json"
JOURNAL = ".prepare/done.jsonl"
FILTERS = {"nearest": Image.Resampling.NEAREST, "box": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR,
           "hamming": Image.Resampling.HAMMING, "bicubic": Image.Resampling.BICUBIC,
           "lanczos": Image.Resampling.LANCZOS}
THINGS_SPACE = "coco-things-catid"  # = bench.data.coco.LABEL_SPACE (asserted there is no drift in the tests)
STUFF_SPACE = "cocostuff164k-trainid"

# COCO-Stuff 164k: stuffthingmaps PNGs hold (category id - 1); 255 = unlabeled. The 171 ids in use
# (80 things of 1..90, 91 stuff of 92..182) are renumbered 0..170 in id order, as mmsegmentation's
# coco_stuff164k converter does (the label space ViT-Adapter and the mmseg COCO-Stuff models predict).
_UNUSED_THING_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91}
STUFF_IDS = tuple(i for i in range(1, 183) if i not in _UNUSED_THING_IDS)
assert len(STUFF_IDS) == 171
STUFF_LUT = np.full(256, 255, dtype=np.uint8)
for _train_id, _cat in enumerate(STUFF_IDS):
    STUFF_LUT[_cat - 1] = _train_id

ProgressFn = Callable[[str, int, int | None], None]  # (stage, done, total)


# ---------------------------------------------------------------------------- sources
class Source:
    """Files of one archive (or of the folder it was extracted to): names relative to its root."""

    where: str = ""

    def names(self) -> list[str]:
        raise NotImplementedError

    def read(self, name: str) -> bytes:
        raise NotImplementedError


class ZipSource(Source):
    def __init__(self, path: Path) -> None:
        self.where, self.zf = str(path), zipfile.ZipFile(path)

    def names(self) -> list[str]:
        return [i.filename for i in self.zf.infolist() if not i.is_dir()]

    def read(self, name: str) -> bytes:
        return self.zf.read(name)


class TarSource(Source):
    def __init__(self, path: Path) -> None:
        self.where, self.tf = str(path), tarfile.open(path)
        self.members = {m.name.lstrip("./"): m for m in self.tf.getmembers() if m.isfile()}

    def names(self) -> list[str]:
        return list(self.members)

    def read(self, name: str) -> bytes:
        f = self.tf.extractfile(self.members[name])
        assert f is not None
        return f.read()


class DirSource(Source):
    """An extracted archive: ``root`` holds the archive's top-level entries."""

    def __init__(self, root: Path) -> None:
        self.where, self.root = str(root), root

    def names(self) -> list[str]:
        return [str(p.relative_to(self.root)).replace(os.sep, "/") for p in self.root.rglob("*") if p.is_file()]

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()


def open_archive(path: Path) -> Source:
    if zipfile.is_zipfile(path):
        return ZipSource(path)
    if tarfile.is_tarfile(path):
        return TarSource(path)
    raise DatasetError(f"{path}: neither a zip nor a tar archive")


# ---------------------------------------------------------------------------- the protocol
def resize_shorter(img: Image.Image, size: int, resample: int) -> Image.Image:
    """Shorter side -> ``size``; longer side -> ``int(size * long / short)`` (torchvision's rule)."""
    w, h = img.size
    if w <= h:
        new = (size, int(size * h / w))
    else:
        new = (int(size * w / h), size)
    return img if new == (w, h) else img.resize(new, resample, reducing_gap=None)


def center_crop(img: Image.Image, cw: int, ch: int) -> Image.Image:
    """``cw``×``ch`` window at ``int(round((W - cw) / 2)), int(round((H - ch) / 2))``; error if too small."""
    w, h = img.size
    if cw > w or ch > h:
        raise ImageError(f"image {w}x{h} is smaller than the crop {cw}x{ch}")
    left, top = int(round((w - cw) / 2.0)), int(round((h - ch) / 2.0))
    return img.crop((left, top, left + cw, top + ch))


def apply_transform(img: Image.Image, ops: list[dict], label: bool = False) -> Image.Image:
    """Apply the card's ``transform`` ops in order; label maps (``label=True``) use NEAREST."""
    for op in ops or []:
        kind = op["op"]
        resample = FILTERS["nearest"] if label else FILTERS[str(op.get("filter", "bicubic"))]
        if kind == "resize":
            w, h = op["size"]
            if img.size != (w, h):
                img = img.resize((int(w), int(h)), resample, reducing_gap=None)
        elif kind == "resize_shorter":
            img = resize_shorter(img, int(op["size"]), resample)
        elif kind == "center_crop":
            w, h = op["size"]
            img = center_crop(img, int(w), int(h))
        else:
            raise DatasetError(f"unknown transform op {kind!r} (resize, resize_shorter, center_crop)")
    return img


def select(ids: list[str], rule: dict | None, sizes: dict[str, tuple[int, int]] | None = None) -> list[str]:
    """The ids the protocol keeps, sorted. Rules: ``all``; ``min_size_gt`` (width > W and
    height > H); ``random`` (``n`` ids of the lowest sha256("<seed>:<id>"): a seeded choice
    that depends on no library's random generator)."""
    rule = rule or {"rule": "all"}
    ids = sorted(ids)
    kind = rule.get("rule", "all")
    if kind == "all":
        return ids
    if kind == "min_size_gt":
        assert sizes is not None
        return [i for i in ids if sizes[i][0] > int(rule["width"]) and sizes[i][1] > int(rule["height"])]
    if kind == "random":
        seed, n = str(rule["seed"]), int(rule["n"])
        if n > len(ids):
            raise DatasetError(f"select: {n} images asked for, only {len(ids)} available")
        ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
        return sorted(ranked[:n])
    if kind == "ids":  # a given list: file stems, or COCO image ids (the number at the end of a stem)
        wanted = {str(i).strip() for i in rule["ids"] if str(i).strip()}
        keep = [i for i in ids if i in wanted or i.rsplit("_", 1)[-1].lstrip("0") in {w.lstrip("0") for w in wanted}]
        return keep
    raise DatasetError(f"unknown selection rule {kind!r} (all, min_size_gt, random, ids)")


# ---------------------------------------------------------------------------- plan
@dataclass
class Job:
    """One image to prepare: where its bytes are and what else it carries."""

    id: str
    source: Source
    name: str  # member name in ``source``
    stuff: tuple[Source, str] | None = None
    coco_id: int | None = None
    size: tuple[int, int] | None = None  # (w, h) from the index, where known


@dataclass
class Plan:
    jobs: list[Job]
    captions: dict[str, list[str]] = field(default_factory=dict)
    instances: dict[int, list[dict]] | None = None  # coco id -> annotations (things maps)
    notes: list[str] = field(default_factory=list)


def card_archives(card: Card) -> list[Archive]:
    spec = card.get("prepare") or {}
    if spec.get("kind") == "files":
        base = card.get("url_base")
        return [Archive(Path(e["file"]).name, e.get("url") or (f"{base}{e['file']}" if base else None))
                for e in card.get("images", [])]
    return [Archive.from_card(a) for a in spec.get("archives", [])]


def downloads_dir(data_dir: Path) -> Path:
    return data_dir / "downloads"


def _find(archive: Archive, from_paths: list[Path], data_dir: Path) -> Path | None:
    for p in from_paths:
        if p.is_file() and p.name == archive.file:
            return p
        if p.is_dir() and (p / archive.file).is_file():
            return p / archive.file
    cand = downloads_dir(data_dir) / archive.file
    return cand if cand.is_file() else None


def _verify(archive: Archive, path: Path, data_dir: Path) -> None:
    """Check ``path`` against the card's digest once: the result is remembered in
    ``.prepare/verified.json`` by (path, size, mtime), so a resumed prepare does not re-hash
    gigabytes. Raises DatasetError naming the file."""
    memo_path = data_dir / ".prepare" / "verified.json"
    memo = json.loads(memo_path.read_text()) if memo_path.is_file() else {}
    st = path.stat()
    stamp = [str(path.resolve()), st.st_size, st.st_mtime_ns, archive.sha256]
    if memo.get(archive.file) == stamp:
        return
    try:
        archive.check(path)
    except DownloadError as exc:
        raise DatasetError(str(exc)) from exc
    memo[archive.file] = stamp
    memo_path.parent.mkdir(parents=True, exist_ok=True)
    memo_path.write_text(json.dumps(memo))


def how_to_get(card: Card, data_dir: Path, missing: list[Archive], reasons: dict[str, str] | None = None) -> str:
    """The one message for missing sources: each archive, its URL and digest, and where to put it."""
    reasons = reasons or {}
    lines = [f"dataset {card.name!r}: {len(missing)} source file(s) not available:"]
    for a in missing:
        digest = a.sha256 or "unknown (no published digest: printed on first download)"
        lines.append(f"  - {a.file}" + (f" ({a.size:,} bytes)" if a.size else ""))
        lines.append(f"      url:    {a.url or 'none (obtain it by hand)'}")
        lines.append(f"      sha256: {digest}")
        if a.file in reasons:
            lines.append(f"      error:  {reasons[a.file]}")
    lines.append(f"Place them in {downloads_dir(data_dir)} (or pass --from DIR: a folder holding the archives or "
                 f"their extracted contents), then run `bench datasets prepare {card.name}` again.")
    if card.get("source"):
        lines.append(f"Source: {card.get('source')}")
    return "\n".join(lines)


def resolve_sources(card: Card, data_dir: Path, from_paths: Iterable[Path], fetch: bool = True,
                    progress: ProgressFn | None = None) -> dict[str, Source]:
    """Each archive of the card as a Source: a given or downloaded archive (verified), or an
    extracted folder among ``from_paths``. Raises DatasetError listing everything missing."""
    from_paths = [Path(p) for p in from_paths]
    found: dict[str, Source] = {}
    missing: list[Archive] = []
    archives = card_archives(card)
    kind = (card.get("prepare") or {}).get("kind")
    for a in archives:
        path = _find(a, from_paths, data_dir)
        if path is not None:
            if kind != "files":  # single image files are verified by their pixel hashes instead
                _verify(a, path, data_dir)
                found[a.file] = open_archive(path)
            else:
                found[a.file] = DirSource(path.parent)
            continue
        folder = next((p for p in from_paths if p.is_dir() and kind != "files" and _folder_has(card, a, p)), None)
        if folder is not None:
            found[a.file] = DirSource(folder)
            continue
        missing.append(a)
    reasons: dict[str, str] = {}
    if missing and fetch:
        still = []
        offline = ""
        for a in missing:
            if offline or not a.url:
                reasons[a.file] = offline or "no URL"
                still.append(a)
                continue
            dest = downloads_dir(data_dir) / a.file
            try:
                download(a, dest, (lambda d, t, f=a.file: progress(f"download {f}", d, t)) if progress else None)
            except DownloadError as exc:
                reasons[a.file] = str(exc)
                if isinstance(exc.__cause__, OSError) and not hasattr(exc.__cause__, "code"):
                    offline = f"not tried: network unreachable ({exc})"
                still.append(a)
                continue
            found[a.file] = DirSource(dest.parent) if kind == "files" else open_archive(dest)
        missing = still
    if missing:
        raise DatasetError(how_to_get(card, data_dir, missing, reasons))
    return found


def _folder_has(card: Card, archive: Archive, folder: Path) -> bool:
    """Does ``folder`` hold what the card reads from ``archive`` (its extracted contents)?"""
    spec = card.get("prepare") or {}
    for key in ("images", "index", "captions", "instances", "stuff"):
        for s in _as_list(spec.get(key)):
            if s.get("archive") != archive.file:
                continue
            rel = s.get("member") or s.get("dir")
            if rel and (folder / rel).exists():
                return True
            if s.get("glob") and any(fnmatch.fnmatch(str(p.relative_to(folder)).replace(os.sep, "/"), s["glob"])
                                     for p in folder.rglob("*") if p.is_file()):
                return True
    return False


def _junk(name: str) -> bool:
    """macOS resource forks and metadata that some re-zipped copies carry."""
    return "__MACOSX/" in name or Path(name).name.startswith("._")


def _as_list(value: Any) -> list[dict]:
    return [] if not value else list(value) if isinstance(value, list) else [value]


def _member_json(sources: dict[str, Source], s: dict) -> Any:
    return json.loads(sources[s["archive"]].read(s["member"]))


def plan(card: Card, sources: dict[str, Source]) -> Plan:
    """Which images, from where, with which captions/annotations (the card's selection applied)."""
    spec = card.get("prepare") or {}
    kind = spec.get("kind", "images")
    if kind == "files":
        jobs = []
        for e in card.get("images", []):
            src = sources[Path(e["file"]).name]
            jobs.append(Job(str(e["id"]), src, Path(e["file"]).name))
        return Plan(jobs)
    if kind == "images":
        by_id: dict[str, tuple[Source, str]] = {}
        for s in _as_list(spec["images"]):
            src = sources[s["archive"]]
            names = src.names()
            matched = sorted(n for n in names if fnmatch.fnmatch(n, s["glob"]) and not _junk(n))
            if not matched:
                raise DatasetError(f"dataset {card.name!r}: no file in {src.where} matches {s['glob']!r} (it holds "
                                   f"e.g. {', '.join(sorted(names)[:5]) or 'nothing'}): a different archive or layout")
            for n in matched:
                i = str(s.get("id_prefix", "")) + Path(n).stem
                if i in by_id:
                    raise DatasetError(f"dataset {card.name!r}: two source files give image id {i!r}: "
                                       f"{by_id[i][1]} and {n}")
                by_id[i] = (src, n)
        sizes = None
        if (spec.get("select") or {}).get("rule") == "min_size_gt":
            sizes = {i: Image.open(io.BytesIO(src.read(n))).size for i, (src, n) in by_id.items()}
        keep = select(list(by_id), spec.get("select"), sizes)
        return Plan([Job(i, *by_id[i]) for i in keep])
    if kind == "coco":
        index = _member_json(sources, spec["index"])
        recs = {Path(im["file_name"]).stem: im for im in index["images"]}
        sizes = {i: (int(r["width"]), int(r["height"])) for i, r in recs.items()}
        keep = select(list(recs), spec.get("select"), sizes)
        notes = []
        rule = spec.get("select") or {}
        if rule.get("rule") == "min_size_gt":  # the paper's wording admits readings: count each, for the record
            W, H = int(rule["width"]), int(rule["height"])
            notes.append(f"of {len(sizes)} images: {len(keep)} have width > {W} and height > {H}; "
                         f"{sum(w >= W and h >= H for w, h in sizes.values())} have both >= ; "
                         f"{sum(w * h > W * H for w, h in sizes.values())} have more than {W}x{H} pixels")
        img = spec["images"]
        src = sources[img["archive"]]
        prefix = img.get("dir", "").rstrip("/")
        stuff = spec.get("stuff")
        jobs = []
        for i in keep:
            r = recs[i]
            name = f"{prefix}/{r['file_name']}" if prefix else r["file_name"]
            st = None
            if stuff:
                sdir = stuff.get("dir", "").rstrip("/")
                st = (sources[stuff["archive"]], f"{sdir}/{i}.png" if sdir else f"{i}.png")
            jobs.append(Job(i, src, name, st, int(r["id"]), sizes[i]))
        p = Plan(jobs, notes=notes)
        if spec.get("captions"):
            cap = index if spec["captions"] == spec["index"] else _member_json(sources, spec["captions"])
            from bench.data.coco import captions_by_image

            wanted = {j.coco_id: j.id for j in jobs}
            p.captions = {wanted[c]: v for c, v in captions_by_image(cap).items() if c in wanted}
        if spec.get("instances"):
            inst = _member_json(sources, spec["instances"])
            wanted_ids = {j.coco_id for j in jobs}
            p.instances = {c: [] for c in (int(im["id"]) for im in inst["images"]) if c in wanted_ids}
            for a in inst.get("annotations", []):
                if int(a["image_id"]) in p.instances:
                    p.instances[int(a["image_id"])].append(a)
            del inst
        return p
    raise DatasetError(f"{card.path}: unknown prepare kind {kind!r} (images, coco, files)")


# ---------------------------------------------------------------------------- prepare
@dataclass
class Result:
    data_dir: Path
    manifest_sha256: str
    count: int
    written: int
    reused: int
    complete: bool
    problems: list[str]
    notes: list[str] = field(default_factory=list)


def manifest_digest(manifest: dict) -> str:
    """sha256 of what decides "same evaluation set": ids, files, sizes, pixel and label hashes, captions."""
    keep = ("id", "file", "width", "height", "pixel_sha256", "labels")
    return sha256_json({"images": [{k: e.get(k) for k in keep} for e in manifest["images"]],
                        "captions_sha256": manifest.get("captions_sha256")})


def read_manifest(data_dir: Path) -> dict | None:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_png(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    img.save(tmp, format="PNG", compress_level=1)
    os.replace(tmp, path)


def _prepare_one(job: Job, ops: list[dict], out_dir: Path, image_rel: str, plan_: Plan) -> dict:
    data = job.source.read(job.name)
    where = f"{job.source.where}:{job.name}"
    rgb, notes = read_rgb(io.BytesIO(data), where)  # the images policy: bit depth, size limit, modes
    src = Image.fromarray(rgb, "RGB")
    orig = src.size
    if job.size is not None and tuple(job.size) != orig:
        raise ImageError(f"{where}: decoded size {orig[0]}x{orig[1]} differs from the index {job.size[0]}x{job.size[1]}")
    try:
        out = apply_transform(src, ops)
    except ImageError as exc:
        raise ImageError(f"{where}: {exc}") from exc
    arr = np.asarray(out)
    _write_png(out, out_dir / image_rel)
    entry = {"id": job.id, "file": image_rel, "source": job.name, "orig_size": list(orig),
             "width": out.size[0], "height": out.size[1], "pixel_sha256": pixel_sha256(arr), "notes": notes}
    labels = {}
    if plan_.instances is not None and job.coco_id is not None:
        from bench.data.coco import rasterise

        h, w = orig[1], orig[0]
        if job.coco_id in plan_.instances:
            lm = Image.fromarray(rasterise(plan_.instances[job.coco_id], h, w), "L")
            lm = apply_transform(lm, ops, label=True)
            _write_png(lm, out_dir / "labels" / THINGS_SPACE / f"{job.id}.png")
            labels[THINGS_SPACE] = sha256_bytes(np.asarray(lm).tobytes())
    if job.stuff is not None:
        ssrc, sname = job.stuff
        try:
            raw = np.asarray(Image.open(io.BytesIO(ssrc.read(sname))))
        except KeyError as exc:
            raise ImageError(f"{ssrc.where}:{sname}: COCO-Stuff label map missing") from exc
        if raw.ndim != 2 or raw.shape != (orig[1], orig[0]):
            raise ImageError(f"{ssrc.where}:{sname}: label map {raw.shape} does not match image {orig[0]}x{orig[1]}")
        lm = apply_transform(Image.fromarray(STUFF_LUT[raw], "L"), ops, label=True)
        _write_png(lm, out_dir / "labels" / STUFF_SPACE / f"{job.id}.png")
        labels[STUFF_SPACE] = sha256_bytes(np.asarray(lm).tobytes())
    if labels:
        entry["labels"] = labels
    return entry


def with_ids(card: Card, ids: list[str], origin: str) -> Card:
    """``card`` with its selection replaced by a given id list (e.g. a published 30k list):
    the manifest records the list's sha256 and origin; the expected count becomes its length."""
    body = json.loads(json.dumps(card.body))
    body["prepare"]["select"] = {"rule": "ids", "ids": list(ids), "origin": origin,
                                 "sha256": sha256_bytes("\n".join(ids).encode())}
    body["prepare"].setdefault("expect", {})["count"] = len(set(ids))
    body["manifest_sha256"] = None  # another selection: the card's hash does not apply
    return Card(card.kind, card.name, body, card.path)


def prepare(card: Card, data_dir: str | Path | None = None, from_paths: Iterable[str | Path] = (),
            fetch: bool = True, progress: ProgressFn | None = None) -> Result:
    """Build the prepared folder of ``card`` in ``data_dir`` (default: the card's data dir):
    sources resolved (``--from`` paths, then ``downloads/``, then the network), images
    selected and transformed, each written once (an interrupted run resumes from the
    journal), then ``manifest.json``. A corrupt source image is reported and left out
    (``complete`` is then False), the others are prepared."""
    spec = card.get("prepare")
    if not spec:
        raise DatasetError(f"dataset {card.name!r} has no `prepare:` section: nothing to prepare")
    out_dir = Path(data_dir) if data_dir else default_data_dir(card)
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = resolve_sources(card, out_dir, from_paths, fetch, progress)
    p = plan(card, sources)
    ops = card.get("transform") or []
    files_kind = spec.get("kind") == "files"
    journal = out_dir / JOURNAL
    journal.parent.mkdir(parents=True, exist_ok=True)
    stamp = journal.with_name("transform.json")  # the journal is only valid for the protocol that wrote it
    if not stamp.is_file() or json.loads(stamp.read_text()) != ops:
        journal.unlink(missing_ok=True)
        stamp.write_text(json.dumps(ops))
    done: dict[str, dict] = {}
    previous = read_manifest(out_dir) or {}
    same_protocol = previous.get("protocol", {}).get("transform") == ops
    recorded = list(previous.get("images", [])) if same_protocol else []
    if journal.is_file():
        for line in journal.read_text().splitlines():
            try:
                recorded.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by the interruption
    for e in recorded:  # finished earlier (this run's journal or a previous manifest): keep if still on disk
        if (out_dir / e["file"]).is_file() and all(
                (out_dir / "labels" / s / f"{e['id']}.png").is_file() for s in e.get("labels", {})):
            done[e["id"]] = e
    entries, problems, written, reused = [], [], 0, 0
    with open(journal, "a", encoding="utf-8") as log:
        for k, job in enumerate(p.jobs):
            if job.id in done:
                entries.append(done[job.id])
                reused += 1
            else:
                rel = Path(job.name).name if files_kind else f"images/{job.id}.png"
                if files_kind:
                    rel = str(Path(rel).with_suffix(".png"))
                try:
                    e = _prepare_one(job, ops, out_dir, rel, p)
                except ImageError as exc:
                    problems.append(str(exc))
                    continue
                log.write(json.dumps(e) + "\n")
                log.flush()
                entries.append(e)
                written += 1
            if progress:
                progress("prepare", k + 1, len(p.jobs))
    expect = spec.get("expect") or {}
    complete = not problems
    if expect.get("count") and len(entries) != int(expect["count"]):
        complete = False
        problems.append(f"{len(entries)} images prepared, the protocol gives {expect['count']}")
    if expect.get("size"):
        w, h = expect["size"]
        odd = [e["id"] for e in entries if (e["width"], e["height"]) != (int(w), int(h))]
        if odd:
            complete = False
            problems.append(f"{len(odd)} images are not {w}x{h}: {', '.join(odd[:5])}")
    for e in entries:  # files-kind cards list expected pixel hashes: check them
        want = next((i.get("pixel_sha256") for i in card.get("images", []) if str(i["id"]) == e["id"]), None) \
            if files_kind else None
        if want and want != e["pixel_sha256"]:
            complete = False
            problems.append(f"{e['id']}: pixels differ from the card (a different file)")
    manifest: dict[str, Any] = {
        "dataset": card.name, "count": len(entries), "complete": complete,
        "protocol": {"prepare": {k: spec.get(k) for k in ("kind", "select", "expect")},
                     "transform": ops, "archives": [a.__dict__ for a in card_archives(card)] if not files_kind else []},
        "versions": {"pillow": Image.__version__, "numpy": np.__version__},
        "images": sorted(entries, key=lambda e: e["id"]),
    }
    if p.captions or (spec.get("captions") and entries):
        caps = {e["id"]: p.captions.get(e["id"], []) for e in manifest["images"]}
        blob = json.dumps(caps, sort_keys=True, ensure_ascii=False).encode()
        (out_dir / "captions.json").write_bytes(blob)
        manifest["captions_sha256"] = sha256_bytes(blob)
    if problems:
        manifest["problems"] = problems
    if p.notes:
        manifest["notes"] = p.notes
    manifest["manifest_sha256"] = digest = manifest_digest(manifest)
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out_dir / MANIFEST)
    if complete:
        journal.unlink(missing_ok=True)
    for stray in out_dir.glob("**/*.png.tmp"):  # left by a run killed mid-write
        stray.unlink(missing_ok=True)
    return Result(out_dir, digest, len(entries), written, reused, complete, problems, p.notes)
