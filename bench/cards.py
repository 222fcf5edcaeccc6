"""Cards: declarative YAML configurations of codecs (``codecs/``) and datasets
(``datasets/``), one file each.

A codec card::

    name: jpeg                 # what users type (--codec jpeg)
    adapter: pillow-jpeg       # registered codec adapter
    params: {subsampling: "4:2:0"}
    points: [10, 30, 50, 70, 90]
    colour: "RGB -> YCbCr (JFIF, BT.601 full range), 4:2:0, 8 bit"
    description: ...

A dataset card names its ``loader`` (registered dataset loader) plus the
loader's fields (files, pixel hashes, source URLs, licence, protocol).

Card directories searched, in order: ``$BENCH_CARDS`` (os.pathsep-separated
roots, each holding ``codecs/`` and/or ``datasets/``), then the repository root
of this checkout, then the packages that installed plugins name in the
entry-point group ``bench.cards`` (``my_codec = "my_codec"``: the folder of
package ``my_codec`` holds ``codecs/*.yaml`` and/or ``datasets/*.yaml``, shipped as
package data). A name found in an earlier root wins: a plugin card cannot replace a
built-in one. A card's ``result_hash`` (sha256 of its adapter and parameters, not its prose)
keys resume; ``hash`` (the whole card) goes into provenance.
"""
from __future__ import annotations

import difflib
import importlib.util
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from bench import registry
from bench.hashing import sha256_json

REPO_ROOT = Path(__file__).resolve().parent.parent
CARD_DIRS = {"codec": "codecs", "dataset": "datasets"}
# Card fields that decide results (the rest is prose or defaults the run overrides).
RESULT_FIELDS = {"codec": ("adapter", "params"), "dataset": ("loader", "protocol", "transform")}


class CardError(ValueError):
    """A malformed card; the message names the file."""


@dataclass(frozen=True)
class Card:
    kind: str  # "codec" or "dataset"
    name: str
    body: dict = field(hash=False)
    path: str = ""

    @property
    def target(self) -> str:
        """The registered adapter (codec) or loader (dataset) this card configures."""
        return self.body["adapter" if self.kind == "codec" else "loader"]

    @property
    def hash(self) -> str:
        """sha256 of the whole card (provenance: any edit changes it)."""
        return sha256_json(self.body)

    @property
    def result_hash(self) -> str:
        """sha256 of the fields that can change results (``RESULT_FIELDS``): part of every
        unit's resume key. Prose (description, colour, licence, URLs) and the default
        points (a point is part of each unit's coordinates anyway) are left out."""
        return sha256_json({k: self.body.get(k) for k in RESULT_FIELDS[self.kind]})

    def get(self, key: str, default: Any = None) -> Any:
        return self.body.get(key, default)


CARDS_ENTRY_POINT_GROUP = "bench.cards"
_plugin_roots: list[Path] | None = None


def plugin_roots() -> list[Path]:
    """Folders of the packages named in the entry-point group ``bench.cards`` (found
    without importing them); a name that does not resolve goes to ``registry.plugin_errors``."""
    global _plugin_roots
    if _plugin_roots is None:
        from importlib.metadata import entry_points

        found: list[Path] = []
        for ep in entry_points(group=CARDS_ENTRY_POINT_GROUP):
            name = ep.value.split(":")[0].strip()
            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError) as exc:
                spec, why = None, str(exc)
            else:
                why = "no such package"
            if spec is None or not (spec.submodule_search_locations or spec.origin):
                registry.plugin_errors.append(f"card plugin {ep.name!r} ({ep.value}): {why}")
                continue
            locations = list(spec.submodule_search_locations or [])
            found.append(Path(locations[0]) if locations else Path(spec.origin).parent)
        _plugin_roots = found
    return _plugin_roots


def roots() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("BENCH_CARDS", "").split(os.pathsep) if p]
    return [*extra, REPO_ROOT, *plugin_roots()]


# Card schema: field -> what it must be. Prose fields are strings. A field outside the schema
# is refused (a typo such as `param:` would otherwise be ignored silently), unless the card's
# adapter or loader class lists it in its ``card_fields`` (a plugin's own fields).
_SCALAR = (int, float, str)
PROSE = ("description", "colour", "licence", "license", "padding", "binaries", "weight_files", "environment",
         "notes", "reference", "all_points", "source", "protocol", "env", "url_base", "annotations_url",
         "captions", "instances", "images_dir", "identity", "homepage", "citation", "url")
SCHEMA: dict[str, dict[str, tuple[tuple[type, ...], str]]] = {
    "codec": {"name": ((str,), "a non-empty string"), "adapter": ((str,), "the name of a registered codec adapter"),
              "params": ((dict,), "a mapping of the adapter's parameters"),
              "points": ((list,), "a non-empty list of rate points (numbers or strings)"),
              "point_name": ((str,), "a string"), "lossless": ((bool,), "true or false"),
              "stochastic": ((bool, str), "true/false or a sentence"),
              "nominal_bpp": ((dict,), "a mapping point -> bpp")},
    "dataset": {"name": ((str,), "a non-empty string"), "loader": ((str,), "the name of a registered dataset loader"),
                "images": ((list,), "a list of {id, file[, pixel_sha256, url]} mappings"),
                "count": ((int,), "an integer"), "transform": ((list,), "a list of operations"),
                "prepare": ((dict,), "a mapping"), "archives": ((list,), "a list"),
                "annotation_sha256": ((dict,), "a mapping file -> sha256"),
                "manifest_sha256": ((str, type(None)), "a sha256 string or null")},
}


def _kind_of(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"[:80]


def validate(kind: str, body: Any, where: str) -> None:
    """CardError naming ``where``, the field and what it must be, for a malformed card body."""
    key = "adapter" if kind == "codec" else "loader"
    if not isinstance(body, dict):
        raise CardError(f"{where}: a {kind} card is a YAML mapping (`name: ...`, `{key}: ...`), got {_kind_of(body)}")
    missing = [k for k in ("name", key) if k not in body]
    if missing:
        raise CardError(f"{where}: a {kind} card needs at least `name:` and `{key}:`; missing "
                        f"{', '.join(f'`{k}:`' for k in missing)}")
    schema = SCHEMA[kind]
    problems = []
    for field_, value in body.items():
        if not isinstance(field_, str):
            problems.append(f"field names are strings, got {_kind_of(field_)}")
        elif field_ in schema:
            types, what = schema[field_]
            bad = not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
            if not bad and field_ in ("name", key) and not value.strip():
                bad = True
            if not bad and field_ == "points":
                bad = not value or not all(isinstance(p, _SCALAR) and not isinstance(p, bool) for p in value)
            if not bad and field_ == "images":
                bad = not all(isinstance(e, dict) and "id" in e and "file" in e for e in value)
            if bad:
                problems.append(f"`{field_}:` must be {what}, got {_kind_of(value)}")
        elif field_ in PROSE and not isinstance(value, str):
            problems.append(f"`{field_}:` must be a string (prose), got {_kind_of(value)}")
    unknown = [f for f in body if isinstance(f, str) and f not in schema and f not in PROSE]
    if unknown:
        unknown = [f for f in unknown if f not in _declared_fields(kind, body.get(key))]
    for f in unknown:
        close = difflib.get_close_matches(f, [*schema, *PROSE], n=1)
        problems.append(f"unknown field `{f}:`" + (f" (did you mean `{close[0]}:`?)" if close else "") +
                        f"; a {kind} card has {', '.join(schema)} and prose fields ({', '.join(PROSE[:6])}, ...)")
    if problems:
        raise CardError(f"{where}: " + "; ".join(problems))


def _declared_fields(kind: str, target: Any) -> tuple[str, ...]:
    """Extra card fields the card's adapter/loader class reads (``card_fields``); () if unknown."""
    try:
        return tuple(getattr(registry.get(kind, str(target)).obj, "card_fields", ()))
    except Exception:  # noqa: BLE001 - an unknown adapter is reported where the card is used
        return ()


def parse(kind: str, path: Path) -> Card:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CardError(f"{path}: cannot read the {kind} card: {exc}") from exc
    try:
        body = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CardError(f"{path}: not valid YAML: {exc}") from exc
    validate(kind, body, str(path))
    return Card(kind, str(body["name"]), body, str(path))


@lru_cache(maxsize=None)
def _cards(kind: str, roots_key: tuple[str, ...]) -> dict[str, Card]:
    found: dict[str, Card] = {}
    for root in map(Path, roots_key):
        folder = root / CARD_DIRS[kind]
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else ():
            card = parse(kind, path)
            found.setdefault(card.name, card)  # earlier roots win
    return found


def cards(kind: str) -> dict[str, Card]:
    """All cards of ``kind`` by name, plus a default card for each registered
    target that no card configures (so a plugin adapter works without a card)."""
    found = dict(_cards(kind, tuple(map(str, roots()))))
    configured = {c.target for c in found.values()}
    key = "adapter" if kind == "codec" else "loader"
    for name, entry in registry.entries(kind).items():
        if name not in configured and name not in found:
            body = {"name": name, key: name}
            if kind == "codec":
                body["points"] = list(getattr(entry.obj, "default_points", ()))
            found[name] = Card(kind, name, body, f"<default card of {entry.source} {kind} {name}>")
    return found


def get(kind: str, name: str) -> Card:
    return registry.lookup(cards(kind), kind, name)


def load_file(kind: str, path: str | Path) -> Card:
    """A card given by path (e.g. ``--codec my_codec.yaml``)."""
    return parse(kind, Path(path))
