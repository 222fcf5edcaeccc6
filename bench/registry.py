"""One registry for every pluggable part of bench: codecs, metrics, datasets.

Entries are registered with :func:`register` (built-ins) or through the
entry-point groups ``bench.codecs``, ``bench.metrics`` and ``bench.datasets``
of any installed package (plugins). An entry point may name a class (it is
registered under its ``name`` attribute or the entry-point name) or a module
(importing it runs its ``@register`` decorators).

Every entry can say whether it is usable on this machine: ``available()``
returns ``(True, "")`` or ``(False, "why not, and what to do")``.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable

KINDS = ("codec", "metric", "dataset")
ENTRY_POINT_GROUPS = {kind: f"bench.{kind}s" for kind in KINDS}

# Packages whose modules register the built-in entries of each kind. Every
# module in them is imported on first use of that kind, so modules there must
# keep heavy imports (torch, pyiqa, ...) inside functions.
_BUILTIN_PACKAGES = {"codec": "bench.codecs", "metric": "bench.metrics", "dataset": "bench.data"}


class UnknownNameError(KeyError):
    """A name that is not registered; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


@dataclass
class Entry:
    kind: str
    name: str
    obj: Any
    source: str = "builtin"  # "builtin" or the distribution that provided it
    meta: dict = field(default_factory=dict)

    def available(self, **params: Any) -> tuple[bool, str]:
        """Whether the object runs here; ``params`` (a codec card's params, e.g. program paths)
        are passed on when given."""
        check: Callable[..., tuple[bool, str]] | None = getattr(self.obj, "available", None)
        if check is None:
            return True, ""
        try:
            return check(**params) if params else check()
        except Exception as exc:  # an availability probe must never crash a listing
            return False, f"availability check failed: {exc}"


_entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
_loaded: set[str] = set()
plugin_errors: list[str] = []


def register(kind: str, name: str | None = None, **meta: Any):
    """Class/function decorator: ``@register("codec", "pillow-jpeg")``."""
    if kind not in KINDS:
        raise ValueError(f"unknown registry kind {kind!r}; kinds are {', '.join(KINDS)}")

    def deco(obj):
        key = name or getattr(obj, "name", None) or obj.__name__
        _entries[kind][key] = Entry(kind, key, obj, meta=meta)
        return obj

    return deco


def add(kind: str, name: str, obj: Any, source: str = "builtin", **meta: Any) -> Entry:
    """Register ``obj`` imperatively (used for cards and plugins)."""
    entry = Entry(kind, name, obj, source=source, meta=meta)
    _entries[kind][name] = entry
    return entry


def _load(kind: str) -> None:
    if kind in _loaded:
        return
    _loaded.add(kind)
    package = importlib.import_module(_BUILTIN_PACKAGES[kind])
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUPS[kind]):
        try:
            obj = ep.load()
        except Exception as exc:
            plugin_errors.append(f"plugin {ep.name!r} ({ep.value}) failed to load: {exc}")
            continue
        if isinstance(obj, type) or callable(obj):
            dist = getattr(ep, "dist", None)
            src = f"plugin:{dist.name}" if dist is not None else "plugin"
            add(kind, getattr(obj, "name", None) or ep.name, obj, source=src)
        # a module: importing it ran its @register decorators


def entries(kind: str) -> dict[str, Entry]:
    """All entries of ``kind``, built-ins and plugins, by name."""
    _load(kind)
    return dict(_entries[kind])


def get(kind: str, name: str) -> Entry:
    """The entry ``name`` of ``kind``; raises UnknownNameError listing valid names."""
    return lookup(entries(kind), kind, name)


def lookup(table: dict, kind: str, name: str):
    """``table[name]``, or UnknownNameError with close matches and every valid name."""
    if name in table:
        return table[name]
    close = difflib.get_close_matches(name, list(table), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownNameError(f"unknown {kind} {name!r}.{hint} Valid {kind}s: {', '.join(sorted(table))}")
