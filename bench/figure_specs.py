"""Declarative specs of the papers' figures and tables (``reports/<paper>/*.yaml``): schema and loading.

A spec says what a paper figure shows, not how bench draws it::

    id: perco-fig3                       # = file stem
    title: "..."
    kind: figure                         # figure | table | metric_list | not_drawn (+ not_in_bench: why)
    source: {paper: perco-iclr2024, number: "Figure 3", where: "Sec. 4.2, p. 6"}
    layout: {rows: 2, cols: 4}
    x: {metric: bpp, scale: log}         # default x of every panel; metric: bpp or a swept card param
    dataset: kodak                       # default dataset of every panel
    codecs:                              # curves, by id
      msillm: {card: msillm, label: MS-ILLM}
      cdc-ddpm: {card: cdc-eps, params: {sampler: ddpm}, sweep: {param: gamma, values: [0.6, 1.0]}}
      text-sketch: {not_in_bench: "no adapter yet: ..."}   # drawn nowhere, listed in the panel note
    curves: [msillm, cdc-ddpm]           # default curves of every panel (default: all codecs)
    references: [kodak/msillm]           # published curves (results/reference), dashed
    panels:
      - {y: lpips, dataset: kodak, group: learned-fr, title: "..."}
    notes: "how the spec was read from the paper; what is inferred"

Codec entries: ``card`` (a bench codec card), optional ``label``, ``points`` (default: the
card's), ``seeds`` (default [0]), ``params`` (card param overrides: a variant card), ``sweep``
(``{param, values}``: one variant per value), ``caveat`` (how the card differs from the paper's
method; shown in the panel note), or ``not_in_bench`` (a reason) instead of ``card``; in a
table, ``published`` (a reference of results/reference holding the paper's row) puts the
published number beside bench's in every cell, for rows bench cannot run too.
A table spec has ``rows`` (codec ids), ``columns`` (metrics), ``point`` (the rate point of
every row unless the codec entry gives ``points``), one ``dataset`` and optionally
``column_datasets`` (``{metric: dataset}`` for columns computed on another set).

:func:`load_spec` returns the validated mapping; errors are :class:`SpecError` naming the
file and the key. Whether the named metrics, datasets and cards exist is checked by
:func:`check_names` (needs the registries).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPORTS_DIR = Path(__file__).resolve().parent.parent / "reports"
KINDS = ("figure", "table", "metric_list", "not_drawn")
GROUPS = ("learned-fr", "classical-fr", "no-reference", None)
TOP_KEYS = {"id", "title", "kind", "source", "layout", "x", "dataset", "codecs", "curves", "references",
            "panels", "notes", "rows", "columns", "column_datasets", "point", "metrics", "not_in_bench"}
CODEC_KEYS = {"card", "label", "points", "seeds", "params", "sweep", "not_in_bench", "caveat", "published"}
PANEL_KEYS = {"y", "dataset", "x", "curves", "references", "group", "title", "note"}


class SpecError(ValueError):
    """A malformed spec; the message names the file and the key."""


def spec_paths(root: Path = REPORTS_DIR) -> list[Path]:
    """Every spec file under ``root`` (``reports/<paper>/*.yaml``), in paper order (fig3 before fig10)."""
    import re

    def key(p: Path):
        return [p.parent.name] + [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.stem)]
    return sorted(root.glob("*/*.yaml"), key=key)


def find_spec(name: str, root: Path = REPORTS_DIR) -> Path:
    """The spec file of ``name`` (``perco-fig3``) or a path to one."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    matches = [p for p in spec_paths(root) if p.stem == name]
    if not matches:
        known = ", ".join(p.stem for p in spec_paths(root))
        raise SpecError(f"no figure spec named {name!r} under {root} (known: {known})")
    return matches[0]


def _need(cond: bool, path: Path, key: str, why: str) -> None:
    if not cond:
        raise SpecError(f"{path}: key {key}: {why}")


def _list(value: Any) -> bool:
    return isinstance(value, list)


def _check_codec(path: Path, cid: str, entry: Any) -> None:
    key = f"codecs.{cid}"
    _need(isinstance(entry, dict), path, key, "must be a mapping (card: ..., or not_in_bench: reason)")
    unknown = set(entry) - CODEC_KEYS
    _need(not unknown, path, key, f"unknown keys {sorted(unknown)} (allowed: {sorted(CODEC_KEYS)})")
    _need("card" in entry or "not_in_bench" in entry, path, key, "give card: (a bench codec card) or not_in_bench: (why it cannot be run yet)")
    if "not_in_bench" in entry:
        _need(isinstance(entry["not_in_bench"], str) and len(entry["not_in_bench"]) > 10, path,
              f"{key}.not_in_bench", "must be a sentence saying why")
    if "card" in entry:
        _need(isinstance(entry["card"], str), path, f"{key}.card", "must be a card name")
    if "published" in entry:
        _need(isinstance(entry["published"], str), path, f"{key}.published", "must be a reference name")
    for k in ("points", "seeds"):
        if k in entry:
            _need(_list(entry[k]) and entry[k], path, f"{key}.{k}", "must be a non-empty list")
    if "seeds" in entry:
        _need(all(isinstance(s, int) for s in entry["seeds"]), path, f"{key}.seeds", "must be integers")
    if "params" in entry:
        _need(isinstance(entry["params"], dict), path, f"{key}.params", "must be a mapping of card params")
    if "sweep" in entry:
        sw = entry["sweep"]
        _need(isinstance(sw, dict) and set(sw) == {"param", "values"} and _list(sw["values"]) and sw["values"],
              path, f"{key}.sweep", "must be {param: NAME, values: [...]}")


def validate(spec: Any, path: Path) -> dict:
    """``spec`` checked against the schema (see the module docstring); returns it."""
    _need(isinstance(spec, dict), path, "(top)", "a spec is a mapping")
    unknown = set(spec) - TOP_KEYS
    _need(not unknown, path, "(top)", f"unknown keys {sorted(unknown)} (allowed: {sorted(TOP_KEYS)})")
    for key in ("id", "title", "kind", "source"):
        _need(key in spec, path, key, "missing")
    _need(spec["id"] == path.stem, path, "id", f"must equal the file name {path.stem!r}")
    _need(spec["kind"] in KINDS, path, "kind", f"must be one of {KINDS}")
    src = spec["source"]
    _need(isinstance(src, dict) and {"paper", "number", "where"} <= set(src), path, "source",
          "must give paper, number and where (section/page)")
    kind = spec["kind"]
    if kind == "not_drawn":
        _need(isinstance(spec.get("not_in_bench"), str), path, "not_in_bench",
              "a figure bench does not draw (qualitative image grids, configuration tables) says why")
        return spec
    if kind == "metric_list":
        _need(_list(spec.get("metrics")) and spec["metrics"], path, "metrics", "a non-empty list")
        for i, m in enumerate(spec["metrics"]):
            _need(isinstance(m, dict) and {"paper", "bench", "category"} <= set(m), path, f"metrics[{i}]",
                  "needs paper (name in the paper), bench (metric name) and category")
        return spec
    codecs = spec.get("codecs")
    _need(isinstance(codecs, dict) and codecs, path, "codecs", "a non-empty mapping of curve id -> entry")
    for cid, entry in codecs.items():
        _check_codec(path, cid, entry)
    for key in ("curves", "references"):
        if key in spec:
            _need(_list(spec[key]), path, key, "must be a list")
    for cid in spec.get("curves", []):
        _need(cid in codecs, path, "curves", f"{cid!r} is not a key of codecs")
    if kind == "table":
        for key in ("rows", "columns", "dataset"):
            _need(key in spec, path, key, "missing (a table has rows, columns and one dataset)")
        for cid in spec["rows"]:
            _need(cid in codecs, path, "rows", f"{cid!r} is not a key of codecs")
        for m, d in spec.get("column_datasets", {}).items():
            _need(m in spec["columns"] and isinstance(d, str), path, f"column_datasets.{m}",
                  "must map a column (metric) to a dataset card")
        _need("point" in spec or all("points" in codecs[c] or "not_in_bench" in codecs[c] for c in spec["rows"]),
              path, "point", "give the rate point of the rows (point:) or points: per codec")
        return spec
    layout = spec.get("layout")
    _need(isinstance(layout, dict) and {"rows", "cols"} <= set(layout), path, "layout", "needs rows and cols")
    panels = spec.get("panels")
    _need(_list(panels) and panels, path, "panels", "a non-empty list")
    _need(len(panels) <= layout["rows"] * layout["cols"], path, "layout",
          f"{layout['rows']}x{layout['cols']} holds fewer than {len(panels)} panels")
    x = spec.get("x", {"metric": "bpp"})
    _need(isinstance(x, dict) and "metric" in x and x.get("scale", "linear") in ("linear", "log"), path, "x",
          "must be {metric: bpp|PARAM, scale: linear|log}")
    for i, panel in enumerate(panels):
        key = f"panels[{i}]"
        _need(isinstance(panel, dict) and "y" in panel, path, key, "needs y (a bench metric)")
        unknown = set(panel) - PANEL_KEYS
        _need(not unknown, path, key, f"unknown keys {sorted(unknown)} (allowed: {sorted(PANEL_KEYS)})")
        _need(panel.get("dataset", spec.get("dataset")), path, f"{key}.dataset", "no dataset here nor at the top")
        _need(panel.get("group") in GROUPS, path, f"{key}.group", f"must be one of {GROUPS[:-1]}")
        for cid in panel.get("curves", []):
            _need(cid in codecs, path, f"{key}.curves", f"{cid!r} is not a key of codecs")
    return spec


def load_spec(path: str | Path) -> dict:
    """The spec at ``path`` (or named ``path`` under ``reports/``), validated."""
    path = find_spec(str(path)) if not Path(path).is_file() else Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from exc
    return validate(data, path)


def metric_names(spec: dict) -> set[str]:
    """Every bench metric a spec draws (y of panels, table columns, metric_list's bench names)."""
    if spec["kind"] == "metric_list":
        return {m["bench"] for m in spec["metrics"]}
    if spec["kind"] == "table":
        return set(spec["columns"])
    return {p["y"] for p in spec.get("panels", [])}


def dataset_names(spec: dict) -> set[str]:
    """Every dataset card a spec draws from."""
    names = {p.get("dataset", spec.get("dataset")) for p in spec.get("panels", [])}
    names |= set(spec.get("column_datasets", {}).values())
    if spec.get("dataset"):
        names.add(spec["dataset"])
    return {n for n in names if n}


def check_names(spec: dict, path: Path, pending_cards: dict[str, str] | None = None) -> list[str]:
    """Problems with the names ``spec`` uses: metrics not registered, dataset or codec cards missing,
    references not under results/reference. ``pending_cards`` (card -> where it is being written)
    are accepted when absent. Returns messages naming the file and key (empty: all fine)."""
    from bench import cards, reference, registry

    problems = []
    metrics = set(registry.entries("metric"))
    for m in sorted(metric_names(spec) - metrics):
        problems.append(f"{path}: metric {m!r} is not in bench's metric registry (bench metrics list)")
    data = set(cards.cards("dataset"))
    for d in sorted(dataset_names(spec) - data):
        problems.append(f"{path}: dataset card {d!r} does not exist (datasets/*.yaml)")
    codec_cards = set(cards.cards("codec"))
    for cid, entry in spec.get("codecs", {}).items():
        card = entry.get("card")
        if card and card not in codec_cards and card not in (pending_cards or {}):
            problems.append(f"{path}: codecs.{cid}.card {card!r} is not a codec card (codecs/*.yaml); "
                            "or mark the entry not_in_bench: with the reason")
    refs = set(reference.available())
    named = [e["published"] for e in spec.get("codecs", {}).values() if "published" in e]
    for ref in named + spec.get("references", []) + [r for p in spec.get("panels", []) for r in p.get("references", [])]:
        if ref not in refs:
            problems.append(f"{path}: reference {ref!r} is not under results/reference (known: {sorted(refs)})")
    return problems
