"""Draw the papers' figures and tables from their specs (``reports/<paper>/*.yaml``) and finished runs.

``bench figures NAME | --all [--runs DIR ...] [--out DIR]``. Rows come only from the ``per_set``
tables of the run directories given (a directory without ``per_set.parquet`` is searched for
runs below it): one row per dataset, codec card, point, seed and metric. A curve is a codec card
(or a variant of it: the spec's ``params`` / ``sweep`` overrides, run through a derived card
named ``<card>--<param>-<value>``, written to ``<out>/cards/``); its points are drawn at the
mean bpp over images, mean over the spec's seeds. Published curves from ``results/reference``
are dashed and labelled "published"; rows at an official rate *estimate* (``rate_kind ==
"estimated"``, CDC's) are a dotted line "(estimated rate)" of their own, never joined with the real
rates. Rows computed with random weights are never drawn (as
:mod:`bench.figures` refuses them); a panel left empty for that reason says so.

Every curve with points the spec asks for and no run holds is named under its panel (the exact
points are in :attr:`Drawn.notes`; entries not in bench and caveats go to the figure's footer), and
:attr:`Drawn.commands` holds the ``bench run`` commands that would compute them (grouped by
dataset, codec and seeds; resume makes re-running the points already done free).
"""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import figure_specs
from bench.figures import X_LABEL, draw_line, metric_spec, split_random, y_label
from bench.store import point_str

FORMATS = ("pdf", "svg", "png")
GROUP_COLOURS = {"learned-fr": "tab:red", "classical-fr": "tab:green", "no-reference": "tab:blue"}
PARAM_LABELS = {"steps": "denoising steps (count)", "gamma": "initial noise scale γ (unitless)"}


@dataclass
class Curve:
    """One line of a panel: a codec card (or a variant of it) at its points."""

    cid: str
    label: str
    card: str | None  # base card; None for not_in_bench entries
    codec: str  # the card name rows carry (variant name for overridden params)
    params: dict = field(default_factory=dict)  # overrides of the base card's params
    points: list[str] = field(default_factory=list)  # empty: the card's own points
    seeds: list[int] = field(default_factory=lambda: [0])
    sweep: tuple[str, Any] | None = None  # (param, value) of a swept variant
    not_in_bench: str | None = None
    caveat: str | None = None  # how the card differs from the paper's method


@dataclass
class Drawn:
    """What :func:`draw` produced: the figure, files written, notes and commands for missing points."""

    spec_id: str
    figure: Any = None
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    skipped: str = ""  # why nothing was drawn (kind not_drawn: image grids, configuration tables)


def _short(text: str, n: int = 70) -> str:
    """``text`` cut to about ``n`` characters at a word boundary (panel notes)."""
    return text if len(text) <= n else text[:n].rsplit(" ", 1)[0] + " …"


def variant_name(card: str, params: dict) -> str:
    """``cdc-eps--gamma-0.6--sampler-ddpm``: the card name of ``card`` with ``params`` overridden."""
    return card + "".join(f"--{k}-{point_str(v)}" for k, v in sorted(params.items()))


def _card(name: str):
    from bench import cards

    try:
        return cards.get("codec", name)
    except KeyError:
        return None


def expand(cid: str, entry: dict) -> list[Curve]:
    """The curves of one codec entry of a spec (one per sweep value)."""
    label = entry.get("label", cid)
    if "card" not in entry:
        return [Curve(cid, label, None, cid, not_in_bench=entry["not_in_bench"])]
    card = entry["card"]
    points = [point_str(p) for p in entry.get("points", [])]
    if not points and (found := _card(card)) is not None:
        points = [point_str(p) for p in found.get("points", [])]
    base = dict(entry.get("params", {}))
    seeds = list(entry.get("seeds", [0]))
    extra = entry.get("caveat")
    if "sweep" not in entry:
        codec = variant_name(card, base) if base else card
        return [Curve(cid, label, card, codec, base, points, seeds, None, caveat=extra)]
    param, values = entry["sweep"]["param"], entry["sweep"]["values"]
    out = []
    for v in values:
        params = {**base, param: v}
        out.append(Curve(cid, f"{label} {param}={point_str(v)}", card, variant_name(card, params), params,
                         points, seeds, (param, v), caveat=extra))
    return out


def load_rows(runs: list[str | Path]):
    """All ``per_set`` rows of the run directories (searched recursively), one DataFrame, each with
    the ``half`` width of its 95 % interval over images where the run has per-image values."""
    import pandas as pd

    from bench.figures import with_intervals
    from bench.store import read_table

    frames = []
    for run in runs:
        run = Path(run)
        dirs = [run] if (run / "per_set.parquet").exists() else sorted(p.parent for p in run.rglob("per_set.parquet"))
        for d in dirs:
            per_image = read_table(d, "per_image") if (d / "per_image.parquet").exists() else None
            frames.append(with_intervals(read_table(d, "per_set"), per_image))
    if not frames:
        return pd.DataFrame(columns=["dataset", "codec", "point", "seed", "metric", "value", "mean_bpp",
                                     "n_images", "weights", "rate_kind"])
    df = pd.concat(frames, ignore_index=True)
    df["point"] = df["point"].map(point_str)
    df["rate_kind"] = df["rate_kind"].fillna("real") if "rate_kind" in df.columns else "real"
    return df


class _Todo:
    """Missing points, grouped into ``bench run`` commands."""

    def __init__(self) -> None:
        self.groups: dict[tuple, dict] = {}

    def add(self, dataset: str, codec_arg: str, seeds: list[int], points: list[str], metric: str) -> None:
        g = self.groups.setdefault((dataset, codec_arg, tuple(seeds)), {"points": [], "metrics": []})
        g["points"] += [p for p in points if p not in g["points"]]
        if metric not in g["metrics"]:
            g["metrics"].append(metric)

    def commands(self) -> list[str]:
        out = []
        for (dataset, codec_arg, seeds), g in self.groups.items():
            cmd = f"bench run --dataset {dataset} --codec {codec_arg}"
            if g["points"]:
                cmd += f" --points {','.join(g['points'])}"
            cmd += f" --metrics {','.join(g['metrics'])}"
            if list(seeds) != [0]:
                cmd += f" --seeds {','.join(map(str, seeds))}"
            out.append(cmd)
        return out


class Painter:
    """Draws one spec; shared state: rows, the missing-points list, the derived cards folder."""

    def __init__(self, spec: dict, rows, out_dir: Path | None):
        self.spec = spec
        self.rows, self.random = split_random(rows)
        self.out_dir = out_dir
        self.todo = _Todo()
        self.notes: list[str] = []
        self.footer: dict[str, None] = {}  # figure-wide lines: entries not in bench, caveats (ordered set)
        self.curves = {cid: expand(cid, e) for cid, e in spec.get("codecs", {}).items()}
        self.colours: dict[str, str] = {}  # codec (row name) -> colour, the same in every panel
        self.n_images: set[int] = set()  # image counts behind the curve being drawn (its legend says them)
        self._sweep: dict[tuple, list] = {}  # (codec entry, point) -> [(swept value, metric)] of a panel

    def colour(self, codec: str) -> str:
        """One colour per codec across the figure; a published curve shares its card's colour."""
        return self.colours.setdefault(codec, f"C{len(self.colours) % 10}")

    # -- rows and missing points --------------------------------------------------------
    def codec_arg(self, curve: Curve) -> str:
        """What ``--codec`` takes for ``curve``: the card name, or the path of its derived card."""
        if not curve.params:
            return curve.card
        path = Path(self.out_dir or "reports/out") / "cards" / f"{curve.codec}.yaml"
        base = _card(curve.card)
        if base is not None and self.out_dir is not None:
            body = {k: v for k, v in base.body.items() if k != "reference"}  # published curve: base card's
            body = {**body, "name": curve.codec, "params": {**(base.get("params") or {}), **curve.params},
                    "description": f"{curve.card} with params {curve.params} (derived by bench figures for "
                                   f"{self.spec['id']}); " + str(base.get("description", ""))}
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(body, sort_keys=False, allow_unicode=True))
        return str(path)

    def values(self, dataset: str, curve: Curve, metric: str, rate_kind: str = "real"):
        """``{point: (mean_bpp, value, half)}`` (mean over the curve's seeds present; where several runs hold
        a point, the rows over the most images, one per seed; ``half``: the 95 % interval half-width over
        images, NaN for a mean over seeds or without per-image values), points missing, and how many rows with
        random weights match. ``rate_kind="estimated"``: the rows at an official rate estimate instead
        (CDC's), never mixed with real rates; no missing points are recorded for them."""
        def pick(df):
            kind = df["rate_kind"].fillna("real") if "rate_kind" in df.columns else "real"
            return df[(df["dataset"] == dataset) & (df["codec"] == curve.codec) & (df["metric"] == metric)
                      & (kind == rate_kind)]

        sub = pick(self.rows)
        n_random = len(pick(self.random))
        sub = sub[sub["seed"].isin(curve.seeds)]
        points = curve.points or sorted(sub["point"].unique())
        found, missing = {}, []
        for p in points:
            at = sub[sub["point"] == p]
            # several runs may hold the point: keep the rows over the most images, one per seed
            at = at[at["n_images"] == at["n_images"].max()].drop_duplicates("seed", keep="last")
            if at.empty or set(curve.seeds) - set(at["seed"]):
                missing.append(p)
            if not at.empty:
                # 95 % interval half-width: one seed only (a mean over seeds has none here)
                half = float(at["half"].iloc[0]) if len(at) == 1 and "half" in at.columns else math.nan
                found[p] = (float(at["mean_bpp"].mean()), float(at["value"].mean()), half)
                self.n_images.add(int(at["n_images"].max()))
        if rate_kind != "real":
            return found, [], n_random
        if missing and curve.card:
            self.todo.add(dataset, self.codec_arg(curve), curve.seeds, missing, metric)
        if not curve.points and sub.empty and curve.card:
            self.todo.add(dataset, self.codec_arg(curve), curve.seeds, [], metric)
            missing = ["(card's points)"]
        return found, missing, n_random

    # -- panels ---------------------------------------------------------------------------
    def panel(self, ax, panel: dict) -> None:
        spec = self.spec
        dataset = panel.get("dataset", spec.get("dataset"))
        y = panel["y"]
        x = {**spec.get("x", {"metric": "bpp"}), **panel.get("x", {})}
        cids = panel.get("curves", spec.get("curves", list(spec["codecs"])))
        mspec = metric_spec(y)
        arrow = {True: " ↑", False: " ↓"}.get(getattr(mspec, "higher_better", None), "")
        title = panel.get("title", f"{dataset}: {y}{arrow}")
        ax.set_title(title, fontsize=9)
        note, drawn, n_random, short, bars = [], 0, 0, [], False
        self._sweep = {}
        for cid in cids:
            for curve in self.curves[cid]:
                if curve.card is None:
                    note.append(f"{curve.label}: not in bench ({curve.not_in_bench})")
                    self.footer.setdefault(f"{curve.label}: not in bench ({_short(curve.not_in_bench, 110)})", None)
                    continue
                if curve.caveat:
                    self.footer.setdefault(f"{curve.label}: {_short(curve.caveat, 110)}", None)
                self.n_images = set()
                found, missing, nr = self.values(dataset, curve, y)
                n = "/".join(map(str, sorted(self.n_images)))
                label = f"{curve.label} (n={n})" if n else curve.label
                n_random += nr
                if missing:
                    absent = "" if _card(curve.card) else f" (card {curve.card} is not in this checkout)"
                    note.append(f"{curve.label} [{curve.codec}]: not computed at {', '.join(missing)}{absent}")
                    if curve.label not in short:
                        short.append(curve.label)
                if x["metric"] == "bpp":
                    order = sorted(found, key=lambda p: found[p])
                    if order:
                        bars |= draw_line(ax, [found[p][0] for p in order], [found[p][1] for p in order],
                                          [found[p][2] for p in order], marker="o", ms=3,
                                          lw=1.3, ls="-", label=label, color=self.colour(curve.codec))
                        drawn += 1
                    est = sorted(self.values(dataset, curve, y, "estimated")[0].values())
                    if est:
                        ax.plot([p[0] for p in est], [p[1] for p in est], marker="x", ms=3, lw=1.0, ls=":",
                                label=f"{label} (estimated rate)", color=self.colour(curve.codec))
                        drawn += 1
                else:
                    drawn += self._param_lines(ax, curve, found, x["metric"])
        if x["metric"] == "bpp":
            drawn += self.references(ax, panel, dataset, y, note)
        else:
            drawn += self.flush_sweeps(ax, {cid: e.get("label", cid) for cid, e in spec["codecs"].items()})
        if n_random:
            short.append(f"{n_random} rows with weights=random not drawn")
            note.append(f"{n_random} rows computed with random weights (weights=random) are not drawn: "
                        "smoke tests, not results")
        if not drawn:
            why = "only random-weight rows" if n_random else "no rows in the runs given"
            ax.text(0.5, 0.5, f"empty: {why}", ha="center", va="center", transform=ax.transAxes, fontsize=7,
                    bbox={"facecolor": "white", "edgecolor": "grey"})
        ax.set_xlabel(X_LABEL if x["metric"] == "bpp" else PARAM_LABELS.get(x["metric"], x["metric"]), fontsize=8)
        ax.set_ylabel(y_label(y, mspec, bars), fontsize=8)
        if x.get("scale") == "log" and drawn:
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, alpha=0.3)
        if drawn:
            ax.legend(fontsize=6)
        if panel.get("group") in GROUP_COLOURS:
            for spine in ax.spines.values():
                spine.set_edgecolor(GROUP_COLOURS[panel["group"]])
                spine.set_linewidth(2)
        if short:
            text = "\n".join(textwrap.wrap("not computed: " + "; ".join(short), 70)[:4])
            ax.annotate(text, (0, -0.3), xycoords="axes fraction", fontsize=5.5, va="top", color="dimgrey")
        if note:
            self.notes += [f"{title}: {n}" for n in note]

    def _param_lines(self, ax, curve: Curve, found: dict, param: str) -> int:
        """x = a swept card param: collect (value, metric) per (entry, point); :meth:`flush_sweeps` draws
        one line per point across the sweep's values."""
        if curve.sweep is None or curve.sweep[0] != param:
            return 0
        for p, (_, value, _) in found.items():
            key = (curve.cid, p)
            self._sweep.setdefault(key, []).append((curve.sweep[1], value))
        return 0

    def flush_sweeps(self, ax, labels: dict) -> int:
        n = 0
        for (cid, p), pts in self._sweep.items():
            pts.sort()
            ax.plot([a for a, _ in pts], [b for _, b in pts], marker="o", ms=3, lw=1.3, label=f"{labels[cid]} @ {p}")
            n += 1
        return n

    def references(self, ax, panel: dict, dataset: str, y: str, note: list[str]) -> int:
        from bench import reference

        n = 0
        for name in panel.get("references", self.spec.get("references", [])):
            ref = reference.load(name)
            if y not in ref.metrics or ref.dataset_of(y) != dataset:
                continue
            pts = sorted((r["bpp"], r[y]) for r in ref.rows.values() if r.get(y) == r.get(y))
            labels = [c.label for cs in self.curves.values() for c in cs if c.codec == ref.codec]
            ax.plot([a for a, _ in pts], [b for _, b in pts], ls="--", lw=1.0, marker=".", ms=3,
                    color=self.colour(ref.label), label=f"{labels[0] if labels else ref.label} (published: {name})")
            n += 1
        return n


def _figure_panels(painter: Painter):
    from matplotlib.figure import Figure

    spec = painter.spec
    rows, cols = spec["layout"]["rows"], spec["layout"]["cols"]
    fig = Figure(figsize=(3.8 * cols, 4.0 * rows), dpi=110)
    fig.suptitle(f"{spec['source']['number']} ({spec['source']['paper']}): {spec['title']}", fontsize=10)
    for i, panel in enumerate(spec["panels"]):
        ax = fig.add_subplot(rows, cols, i + 1)
        painter.panel(ax, panel)
    if painter.footer:
        fig.text(0.01, 0.005, "\n".join(painter.footer), fontsize=6, va="bottom", color="dimgrey")
    fig.tight_layout(rect=(0, 0.012 * (len(painter.footer) + 1), 1, 0.96), h_pad=3.0)
    return fig


def _published(entry: dict, columns: list[str]) -> dict[str, float]:
    """The paper's numbers for a table row (``published:`` reference, its single row): bpp + columns."""
    from bench import reference

    if "published" not in entry:
        return {}
    ref = reference.load(entry["published"])
    row = next(iter(ref.rows.values()))
    return {k: v for k, v in row.items() if (k == "bpp" or k in columns) and not math.isnan(v)}


def _cell(ours: str, paper: float | None, fmt: str = ".4g") -> str:
    return ours if paper is None else f"{ours}\n(paper {paper:{fmt}})"


def _figure_table(painter: Painter):
    """A table spec: one row per codec entry at its point, one column per metric (+ mean bpp);
    a row with ``published:`` shows the paper's number under bench's in every cell."""
    from matplotlib.figure import Figure

    spec = painter.spec
    dataset, columns = spec["dataset"], spec["columns"]
    other = spec.get("column_datasets", {})
    header = ["method", f"bpp ({dataset})"] + [
        f"{'↑' if getattr(metric_spec(m), 'higher_better', True) else '↓'}{m}" + (f"\n({other[m]})" if m in other else "")
        for m in columns]
    cells = []
    for cid in spec["rows"]:
        entry = spec["codecs"][cid]
        paper = _published(entry, columns)
        for curve in painter.curves[cid]:
            if curve.card is None:
                cells.append([curve.label, _cell("—", paper.get("bpp"))]
                             + [_cell("not in bench", paper.get(m)) for m in columns])
                painter.notes.append(f"{curve.label}: not in bench ({curve.not_in_bench})")
                continue
            if not entry.get("points"):
                curve.points = [point_str(spec["point"])]
            row, bpp = [curve.label], "missing"
            for m in columns:
                found, _missing, nr = painter.values(other.get(m, dataset), curve, m)
                if found:
                    b, v, _ = next(iter(found.values()))
                    if m not in other:  # bpp of the table's own dataset
                        bpp = f"{b:.4f}"
                    row.append(_cell(f"{v:.4g}", paper.get(m)))
                else:
                    row.append(_cell("random weights" if nr else "missing", paper.get(m)))
            cells.append([row[0], _cell(bpp, paper.get("bpp"))] + row[1:])
    lines = 2 if any("\n" in c for r in cells for c in r) else 1
    fig = Figure(figsize=(2.0 + 1.3 * len(header), 0.6 + 0.35 * lines * (len(cells) + 2)), dpi=110)
    ax = fig.add_subplot()
    ax.axis("off")
    ax.set_title(f"{spec['source']['number']} ({spec['source']['paper']}): {spec['title']} — {dataset}"
                 + ("\ncells: bench's mean (the paper's number below)" if lines == 2 else ""), fontsize=9)
    table = ax.table(cellText=cells, colLabels=header, loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    table.auto_set_column_width(list(range(len(header))))
    for (r, _), cell in table.get_celld().items():
        if (r == 0 and other) or (r > 0 and lines == 2):
            cell.set_height(cell.get_height() * 2)
    return fig


def _figure_metric_list(painter: Painter):
    from matplotlib.figure import Figure

    spec = painter.spec
    cells = []
    for m in spec["metrics"]:
        ms = metric_spec(m["bench"])
        cells.append([m["paper"], m["bench"], m["category"], y_label(m["bench"], ms) if ms else "not registered"])
    fig = Figure(figsize=(11, 0.6 + 0.3 * (len(cells) + 2)), dpi=110)
    ax = fig.add_subplot()
    ax.axis("off")
    ax.set_title(f"{spec['source']['number']} ({spec['source']['paper']}): {spec['title']}", fontsize=9)
    t = ax.table(cellText=cells, colLabels=["paper", "bench metric", "category", "axis label (unit, better)"],
                 loc="center", cellLoc="left")
    t.auto_set_font_size(False)
    t.set_fontsize(7)
    return fig


def draw(spec: dict | str | Path, runs: list[str | Path] = (), out_dir: str | Path | None = None,
         formats: tuple[str, ...] = FORMATS, rows=None) -> Drawn:
    """Draw one spec from the runs' rows (or ``rows``, a per_set DataFrame); write
    ``<out_dir>/<id>.<fmt>`` when ``out_dir`` is given. Never raises for missing data."""
    if not isinstance(spec, dict):
        spec = figure_specs.load_spec(spec)
    result = Drawn(spec["id"])
    if spec["kind"] == "not_drawn":
        result.skipped = f"not drawn by bench: {spec['not_in_bench']}"
        return result
    out = Path(out_dir) if out_dir else None
    painter = Painter(spec, load_rows(list(runs)) if rows is None else rows, out)
    make = {"figure": _figure_panels, "table": _figure_table, "metric_list": _figure_metric_list}[spec["kind"]]
    fig = make(painter)
    result.figure, result.notes, result.commands = fig, painter.notes, painter.todo.commands()
    if out:
        out.mkdir(parents=True, exist_ok=True)
        for fmt in formats:
            path = out / f"{spec['id']}.{fmt}"
            fig.savefig(path)
            result.files.append(path)
    return result
