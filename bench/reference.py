"""Published reference curves, and whether a finished run reproduces them.

A reference is two files in ``results/reference/<dataset>/``:

* ``<name>.csv`` — one row per published rate point: ``point`` (the codec's rate point as
  the bench card names it, e.g. JPEG quality), ``bpp`` (mean over the images) and one column
  per metric, named as the bench metric that computes the published convention (``psnr``,
  ``ms_ssim_rgb``, ...), mean over the images. Empty cells are not compared.
* ``<name>.yaml`` — where it comes from and how to compare: ``codec`` (the bench card that
  uses the published settings), ``dataset`` (bench dataset card), ``n_images`` (images
  the published means are over; ``{dataset: n}`` with ``column_datasets``), ``source`` (URL), ``notes`` (how the numbers were computed),
  ``tolerance``: ``bpp_rel`` (relative) and, per metric column, ``<metric>_abs`` or
  ``<metric>_rel``, with the reason in ``notes``; and where the numbers are printed, one of
  (``SOURCE_KINDS``): a released file (``repository``, ``path``, ``commit``) or a paper
  (``paper``: its id, e.g. ``perco-iclr2024``; ``where``: table or figure and page).
  Optional: ``rate_kind`` (``real``, the default, or ``estimated`` for a paper whose bpp is its
  entropy model's estimate, e.g. CDC): only the run's rows of that kind are compared;
  ``column_datasets`` (``{metric: dataset}``) for a paper table whose columns were measured on
  different sets (PerCo Table 1: mIoU and CLIP score on COCO val2017 at 512, the rest on MS-COCO
  30k); ``codec: null`` with ``method`` (a label) for a published method that is not a bench
  codec (drawn in figures and tables, never compared with a run).

:func:`compare` checks a run's ``per_set`` table point by point: mean bpp and each metric mean
at every published point present in the run, for the reference's codec card. Rows made with
random weights (``weights == "random"``: ``--init random`` smoke tests) are never compared; a
table without a ``weights`` column counts as ``"none"`` (no learned parameters). A point
whose mean is over another number of images than the reference's fails (no partial runs).

    python -m bench.reference RUN_DIR [--reference compressai-webp] [--codec webp]
"""
from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REFERENCE_DIR = Path(__file__).resolve().parent.parent / "results" / "reference"
SIDECAR_KEYS = ("codec", "dataset", "n_images", "source", "notes", "tolerance")
SOURCE_KINDS = {"release": ("repository", "path", "commit"), "paper": ("paper", "where")}
RATE = "bpp"


class ReferenceError(ValueError):
    """A reference that cannot be loaded, or a run that must not be compared with it."""


@dataclass(frozen=True)
class Reference:
    """One published curve: its rows (``{point: {column: value}}``) and its sidecar."""

    name: str
    path: Path
    rows: dict[str, dict[str, float]]
    meta: dict[str, Any]

    @property
    def codec(self) -> str:
        return self.meta["codec"]

    @property
    def dataset(self) -> str:
        return self.meta["dataset"]

    @property
    def label(self) -> str:
        """The bench card, or the published method's name when it is not a bench codec."""
        return self.meta["codec"] or self.meta["method"]

    def n_images(self, quantity: str) -> int:
        """Images the published mean of ``quantity`` is over (``n_images``: a number, or
        ``{dataset: number}`` when ``column_datasets`` puts columns on other sets)."""
        n = self.meta["n_images"]
        return int(n[self.dataset_of(quantity)] if isinstance(n, dict) else n)

    def dataset_of(self, quantity: str) -> str:
        """The dataset a column was measured on (``column_datasets``; bpp: the reference's own)."""
        return (self.meta.get("column_datasets") or {}).get(quantity, self.dataset)

    @property
    def metrics(self) -> list[str]:
        """The metric columns (all but point and bpp)."""
        first = next(iter(self.rows.values()), {})
        return [c for c in first if c != RATE]

    def tolerance(self, quantity: str) -> tuple[str, float]:
        """``("rel" | "abs", value)`` for ``bpp`` or a metric column."""
        tol = self.meta["tolerance"]
        for kind in ("rel", "abs"):
            if f"{quantity}_{kind}" in tol:
                return kind, float(tol[f"{quantity}_{kind}"])
        raise ReferenceError(f"reference {self.name}: no tolerance for {quantity!r} "
                             f"(give {quantity}_abs or {quantity}_rel in {self.path.with_suffix('.yaml')})")


def available(dataset: str | None = None, root: Path = REFERENCE_DIR) -> list[str]:
    """Names of the references (``<dataset>/<name>``), optionally of one dataset."""
    pattern = f"{dataset}/*.csv" if dataset else "*/*.csv"
    return sorted(f"{p.parent.name}/{p.stem}" for p in root.glob(pattern))


def load(name: str | Path, root: Path = REFERENCE_DIR) -> Reference:
    """A reference by name (``compressai-webp``, ``kodak/compressai-webp``) or CSV path."""
    path = Path(name)
    if path.suffix != ".csv":
        matches = [root / f"{n}.csv" for n in available(root=root) if n == str(name) or n.split("/")[1] == str(name)]
        if len(matches) != 1:
            known = ", ".join(available(root=root)) or "none"
            raise ReferenceError(f"no single reference named {str(name)!r} under {root} (known: {known})")
        path = matches[0]
    sidecar = path.with_suffix(".yaml")
    if not path.is_file() or not sidecar.is_file():
        raise ReferenceError(f"a reference needs {path} and {sidecar}")
    meta = yaml.safe_load(sidecar.read_text()) or {}
    missing = [k for k in SIDECAR_KEYS if k not in meta]
    if not any(all(k in meta for k in keys) for keys in SOURCE_KINDS.values()):
        missing.append(" or ".join("+".join(keys) for keys in SOURCE_KINDS.values()))
    if meta.get("codec", "") is None and not meta.get("method"):
        missing.append("method (codec is null: name the published method)")
    if missing:
        raise ReferenceError(f"{sidecar}: missing keys {', '.join(missing)}")
    rows: dict[str, dict[str, float]] = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or reader.fieldnames[:2] != ["point", RATE]:
            raise ReferenceError(f"{path}: the columns must start with point,{RATE} (got {reader.fieldnames})")
        for row in reader:
            point = _point_key(row.pop("point"))
            rows[point] = {k: float(v) if v not in ("", None) else math.nan for k, v in row.items()}
    ref = Reference(path.stem, path, rows, meta)
    for quantity in [RATE, *ref.metrics]:
        ref.tolerance(quantity)  # every column says how close is close enough
    return ref


def _point_key(point: Any) -> str:
    """Rate points as bench writes them (``bench.store.point_str``): "50", "0.5"."""
    from bench.store import point_str

    text = str(point).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return point_str(number)


@dataclass(frozen=True)
class PointCheck:
    """One compared number: ``deviation`` is ours/theirs - 1 (``rel``) or ours - theirs (``abs``)."""

    point: str
    quantity: str  # "bpp" or a metric name
    ours: float
    theirs: float
    deviation: float
    kind: str  # "rel" or "abs"
    tolerance: float
    n_images: int
    passed: bool
    why: str = ""


@dataclass
class Comparison:
    """The outcome of :func:`compare`."""

    reference: Reference
    codec: str
    checks: list[PointCheck] = field(default_factory=list)
    not_in_run: list[str] = field(default_factory=list)  # "point quantity" published but not in the run
    refused: int = 0  # rows left out because they were made with random weights

    @property
    def passed(self) -> bool:
        """True if something was compared and every compared number is within tolerance."""
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[PointCheck]:
        return [c for c in self.checks if not c.passed]

    def max_deviation(self, quantity: str) -> float:
        """Largest |deviation| of ``quantity`` over the compared points (nan if none)."""
        devs = [abs(c.deviation) for c in self.checks if c.quantity == quantity]
        return max(devs) if devs else math.nan

    def report(self) -> str:
        head = (f"{self.codec} vs {self.reference.name} ({self.reference.meta['source']}): "
                f"{'PASS' if self.passed else 'FAIL'}, {len(self.checks)} numbers compared, "
                f"{len(self.failures)} outside tolerance")
        lines = [head]
        for c in self.checks:
            unit = "×" if c.kind == "rel" else ""
            lines.append(f"  {c.point:>6} {c.quantity:<12} ours {c.ours:.6g} theirs {c.theirs:.6g} "
                         f"dev {c.deviation:+.3g}{unit} (tol {c.tolerance:g}) {'ok' if c.passed else 'FAIL'}"
                         + (f" — {c.why}" if c.why else ""))
        for q in [RATE, *self.reference.metrics]:
            lines.append(f"  max |deviation| {q}: {self.max_deviation(q):.3g}")
        if self.refused:
            lines.append(f"  {self.refused} rows with random weights left out (never compared)")
        return "\n".join(lines)


def compare(run_dir: str | Path, reference: Reference | str, codec: str | None = None,
            points: list[Any] | None = None, metrics: list[str] | None = None) -> Comparison:
    """Compare the run in ``run_dir`` (its ``per_set.parquet``) with ``reference`` for the card
    ``codec`` (default: the reference's own card), at ``points`` / for ``metrics`` (default: every
    published one present in the run). Raises :class:`ReferenceError` when the run holds only
    random-weight rows for that codec, or nothing of the reference's dataset and codec."""
    from bench.store import read_table

    ref = load(reference) if isinstance(reference, (str, Path)) else reference
    codec = codec or ref.codec
    if codec is None:
        raise ReferenceError(f"reference {ref.name} is {ref.label!r}, not a bench codec: nothing to compare "
                             "(give --codec CARD to compare a card with it)")
    table = read_table(run_dir, "per_set")
    weights = table["weights"].fillna("none") if "weights" in table.columns else None
    datasets = {ref.dataset_of(q) for q in [RATE, *ref.metrics]}
    table = table[(table["codec"] == codec) & table["dataset"].isin(datasets) & (table["aggregate"] == "mean")]
    if "rate_kind" in table.columns:  # real and estimated rates are never mixed (see bench.store)
        table = table[table["rate_kind"].fillna("real") == ref.meta.get("rate_kind", "real")]
    out = Comparison(ref, codec)
    if weights is not None:
        random = weights.loc[table.index] == "random"
        out.refused = int(random.sum())
        if out.refused and out.refused == len(table):
            raise ReferenceError(f"{run_dir}: every {codec} row on {ref.dataset} was made with random weights "
                                 "(--init random): smoke-test rows are never compared with published curves")
        table = table[~random]
    if table.empty:
        raise ReferenceError(f"{run_dir}: no {codec} rows on {ref.dataset} to compare with {ref.name}")
    wanted_points = {_point_key(p) for p in points} if points is not None else None
    wanted_metrics = set(metrics) if metrics is not None else None
    table = table.assign(point=table["point"].map(_point_key))
    for point, published in ref.rows.items():
        if wanted_points is not None and point not in wanted_points:
            continue
        here = table[table["point"] == point]
        for quantity, theirs in published.items():
            if math.isnan(theirs) or (quantity != RATE and wanted_metrics is not None
                                      and quantity not in wanted_metrics):
                continue
            here_q = here[here["dataset"] == ref.dataset_of(quantity)]
            rows = here_q if quantity == RATE else here_q[here_q["metric"] == quantity]
            if rows.empty:
                out.not_in_run.append(f"{point} {quantity}")
                continue
            column = "mean_bpp" if quantity == RATE else "value"
            ours = float(rows.groupby("seed")[column].first().mean())  # deterministic codecs: one seed
            n = int(rows["n_images"].min())
            out.checks.append(_check(ref, point, quantity, ours, theirs, n))
    return out


def _check(ref: Reference, point: str, quantity: str, ours: float, theirs: float, n_images: int) -> PointCheck:
    kind, tol = ref.tolerance(quantity)
    deviation = ours / theirs - 1.0 if kind == "rel" else ours - theirs
    why = ""
    expected = ref.n_images(quantity)
    if n_images != expected:
        why = f"mean over {n_images} images, the reference's is over {expected}"
    elif not math.isfinite(ours):
        why = "not a finite number"
    passed = not why and abs(deviation) <= tol
    return PointCheck(point, quantity, ours, theirs, deviation, kind, tol, n_images, passed, why)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Compare a finished bench run with published reference curves.")
    ap.add_argument("run_dir", help="a finished run directory (its per_set.parquet)")
    ap.add_argument("--reference", action="append", help="reference name (repeatable) [default: every reference "
                    "whose codec card is in the run]")
    ap.add_argument("--codec", help="compare this card instead of the reference's own")
    args = ap.parse_args(argv)
    from bench.store import read_table

    names = args.reference
    if not names:
        table = read_table(args.run_dir, "per_set")
        in_run = set(zip(table["dataset"], table["codec"]))
        names = [r.path for r in map(load, available()) if (r.dataset, args.codec or r.codec) in in_run]
        if not names:
            raise SystemExit(f"no reference matches a dataset and codec of {args.run_dir}")
    ok = True
    for name in names:
        result = compare(args.run_dir, name, codec=args.codec)
        print(result.report())
        ok &= result.passed
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
