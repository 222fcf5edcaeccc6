"""Curve regression of a finished run against golden tables (``bench regress``).

A golden is a CSV (or a folder of them: every ``<dataset>_*.csv`` in it, e.g. ``results/golden``):

* per image (``image_id, codec, point, bits, bpp, metric, value``, as ``kodak_per_image.csv``):
  each of the run's (image, codec, point, metric) rows is compared — bits exactly, bpp and value
  within tolerance — and so are the per-point means over the images the run covers;
* per point (``codec, point, metric, mean_bpp, value, n_images``, as ``kodak_per_point.csv``): the
  run's per-point means are compared where the run covers as many images as the golden mean (a
  run on fewer images is compared per image only, and the output says so).

Tolerances (:data:`TOLERANCES`): ``bits`` exact, ``bpp``/``mean_bpp`` relative 1e-8 (the CSVs keep
9 significant digits), metric values ``bench.golden.TOLERANCE`` (rel 1e-4 or abs 1e-6: float
reductions across CPUs); per metric or quantity overridable (``--tolerance lpips=abs:1e-3``).
Stochastic codecs (several seeds per point in the run): the seed mean is compared, with the
absolute tolerance widened to 3 standard errors of a difference of two seed means,
``3 * sd * sqrt(2 / n_seeds)`` (sd over the run's seeds, or the golden's ``seed_sd`` column if larger).

Every run row must be in the golden (a new codec or point is a failure unless ``allow_new``);
golden rows the run did not recompute are not looked at. ``update`` rewrites the golden rows of
the run's (image,) codec, point and metric keys on purpose, keeping every other row's text.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from bench import golden as goldenmod

IMAGE_KEYS = ["image_id", "codec", "point", "metric"]
POINT_KEYS = ["codec", "point", "metric"]
IMAGE_COLUMNS = ["image_id", "codec", "point", "bits", "bpp", "metric", "value"]
POINT_COLUMNS = ["codec", "point", "metric", "mean_bpp", "value", "n_images"]
TOLERANCES: dict[str, dict] = {"bits": {}, "bpp": {"rel": 1e-8}, "mean_bpp": {"rel": 1e-8},
                               "default": dict(goldenmod.TOLERANCE)}
SEED_SIGMAS = 3.0
STORED_REL = 1e-8  # relative precision of a value written with %.9g: smaller changes are storage, not movement


class RegressError(ValueError):
    """A golden or run that cannot be compared; says why."""


@dataclass
class Report:
    """Diffs per golden file (``bench.golden.Diff``), notes, and the verdict."""

    diffs: list[tuple[str, goldenmod.Diff]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    allow_new: bool = False

    @property
    def failures(self) -> list[tuple[str, goldenmod.Diff]]:
        return [(f, d) for f, d in self.diffs if not d.ok and (d.quantity != "row" or not self.allow_new)]

    @property
    def moved(self) -> list[tuple[str, goldenmod.Diff]]:
        """Compared quantities that differ by more than the golden CSV's 9 significant digits can hold
        (within tolerance or not), failures and largest relative change first."""
        rows = [(f, d) for f, d in self.diffs if not d.ok or _rel(d) > STORED_REL]
        return sorted(rows, key=lambda fd: (fd[1].ok, -_rel(fd[1])))

    @property
    def compared(self) -> int:
        return sum(d.quantity != "row" for _, d in self.diffs)


def _rel(d: goldenmod.Diff) -> float:
    if d.quantity == "row":
        return math.inf
    return abs(d.value - d.golden) / max(abs(d.golden), 1e-300)


def tolerance_for(quantity: str, metric: str | None, overrides: dict[str, dict] | None = None) -> dict:
    """Tolerance of ``quantity`` (``bits``, ``bpp``, ``mean_bpp`` or ``value`` of ``metric``)."""
    table = {**TOLERANCES, **(overrides or {})}
    if quantity != "value":
        return table[quantity]
    return table.get(metric, table["default"])


def parse_tolerance(items: list[str]) -> dict[str, dict]:
    """``["lpips=abs:1e-3", "psnr=rel:1e-5,abs:1e-4", "bits=rel:1e-3"]`` -> overrides."""
    out = {}
    for item in items:
        name, _, spec = item.partition("=")
        try:
            out[name.strip()] = {k.strip(): float(v) for k, v in (p.split(":") for p in spec.split(","))}
        except ValueError:
            raise RegressError(f"--tolerance {item!r}: write NAME=rel:1e-4 or NAME=abs:0.01[,rel:...]") from None
        if not out[name.strip()] or set(out[name.strip()]) - {"rel", "abs"}:
            raise RegressError(f"--tolerance {item!r}: only rel and abs are known")
    return out


def golden_files(path: Path, dataset: str) -> list[Path]:
    """The golden CSVs of ``path`` (a file, or a folder's ``<dataset>_*.csv``)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob(f"{dataset}_*.csv"))
        if not files:
            raise RegressError(f"no golden {dataset}_*.csv in {path}")
        return files
    if not path.is_file():
        raise RegressError(f"golden {path} does not exist (bench regress RUN --golden {path} --update creates it)")
    return [path]


def kind_of(path: Path) -> str:
    """``"per_image"`` or ``"per_point"``: from the columns, or for a new file from its name."""
    if path.is_file():
        cols = path.open().readline().strip().split(",")
        if "image_id" in cols:
            return "per_image"
        if "mean_bpp" in cols:
            return "per_point"
        raise RegressError(f"{path}: neither a per-image ({','.join(IMAGE_COLUMNS)}) nor a per-point "
                           f"({','.join(POINT_COLUMNS)}) golden")
    return "per_point" if path.stem.endswith("per_point") else "per_image"


def run_rows(run_dir):
    """The run's per_image rows (all weights, random included: determinism checks use them), seeds
    averaged per (image, codec, point, metric), with ``n_seeds`` and ``seed_sd``."""
    from bench.store import read_table

    df = read_table(run_dir, "per_image").astype({"point": str})
    g = df.groupby(IMAGE_KEYS, as_index=False)
    out = g.agg(bits=("bits", "mean"), bpp=("bpp", "mean"), value=("value", "mean"), n_seeds=("seed", "nunique"),
                seed_sd=("value", "std"), dataset=("dataset", "first"))
    out["seed_sd"] = out["seed_sd"].fillna(0.0)
    return out


def point_rows(rows):
    """Per-point means over the images of ``rows`` (what the plots draw); seed spread of the point
    means kept in ``seed_sd`` (approximated by the mean per-image sd / sqrt(n_images))."""
    g = rows.groupby(POINT_KEYS, as_index=False)
    out = g.agg(mean_bpp=("bpp", "mean"), value=("value", "mean"), n_images=("image_id", "nunique"),
                n_seeds=("n_seeds", "max"), seed_sd=("seed_sd", "mean"))
    out["seed_sd"] = out["seed_sd"] / out["n_images"].clip(lower=1) ** 0.5
    return out


def _widen(overrides):
    def widen(row: dict, quantity: str, tol: dict) -> dict:
        tol = tolerance_for(quantity, row.get("metric"), overrides)
        n = row.get("n_seeds", 1) or 1
        if quantity == "value" and n > 1:
            sd = max(float(row.get("seed_sd", 0.0) or 0.0), float(row.get("seed_sd_golden", 0.0) or 0.0))
            tol = {**tol, "abs": max(tol.get("abs", 0.0), SEED_SIGMAS * sd * math.sqrt(2 / n))}
        return tol
    return widen


def _read(path: Path):
    import pandas as pd

    return pd.read_csv(path, dtype={"point": str})


def compare(run_dir, golden_path, overrides: dict[str, dict] | None = None, allow_new: bool = False) -> Report:
    """Compare a run with the golden file(s) at ``golden_path`` (see module doc)."""
    import pandas as pd

    rows = run_rows(run_dir)
    datasets = sorted(set(rows["dataset"]))
    if len(datasets) != 1:
        raise RegressError(f"run holds datasets {datasets}; regress compares one")
    report = Report(allow_new=allow_new)
    widen = _widen(overrides)
    per_image = [p for p in golden_files(Path(golden_path), datasets[0]) if kind_of(p) == "per_image"]
    per_point = [p for p in golden_files(Path(golden_path), datasets[0]) if kind_of(p) == "per_point"]
    gi = pd.concat([_read(p).assign(_file=p.name) for p in per_image], ignore_index=True) if per_image else None
    gp = pd.concat([_read(p).assign(_file=p.name) for p in per_point], ignore_index=True) if per_point else None
    for name, g, keys in (("per-image", gi, IMAGE_KEYS), ("per-point", gp, POINT_KEYS)):
        if g is not None and g.duplicated(keys).any():
            dup = g[g.duplicated(keys, keep=False)].iloc[0]
            raise RegressError(f"{name} goldens {', '.join(sorted(set(g['_file'])))} both hold "
                               f"{', '.join(str(dup[k]) for k in keys)}")
    quantities = {"bits": {}, "bpp": {}, "value": {}}  # tolerances come from widen()
    if gi is not None:
        for d in goldenmod.diff_rows(rows, gi.drop(columns="_file"), IMAGE_KEYS, quantities, widen):
            report.diffs.append(("per image", d))
        # per-point means over the images the run covers, on both sides
        covered = gi.merge(rows[IMAGE_KEYS], on=IMAGE_KEYS)
        if not covered.empty:
            gold_pts = point_rows(covered.assign(n_seeds=1, seed_sd=0.0))
            for d in goldenmod.diff_rows(point_rows(rows).drop(columns="n_images"), gold_pts, POINT_KEYS,
                                         {"mean_bpp": {}, "value": {}}, widen):
                if d.quantity != "row":  # rows absent per image were reported per image
                    report.diffs.append(("per point (images run)", d))
    if gp is not None:
        run_pts = point_rows(rows)
        merged = run_pts.merge(gp[POINT_KEYS + ["n_images"]], on=POINT_KEYS, how="left", suffixes=("", "_golden"))
        fewer = merged[merged["n_images_golden"].notna() & (merged["n_images"] != merged["n_images_golden"])]
        if not fewer.empty:
            report.notes.append(f"{len(fewer)} point mean(s) are over other images than the per-point golden's "
                                f"(e.g. {fewer.iloc[0]['codec']} {fewer.iloc[0]['point']} {fewer.iloc[0]['metric']}: "
                                f"{int(fewer.iloc[0]['n_images'])} images, golden "
                                f"{int(fewer.iloc[0]['n_images_golden'])}): not compared with the per-point golden"
                                + ("; compared per image and with the per-image golden's means over the same images"
                                   if gi is not None else "; give a per-image golden to compare them"))
        same = merged[~merged.index.isin(fewer.index)][run_pts.columns]
        for d in goldenmod.diff_rows(same, gp.drop(columns="_file"), POINT_KEYS, {"mean_bpp": {}, "value": {}},
                                     widen):
            if d.quantity == "row" and gi is not None:
                continue  # reported per image
            report.diffs.append(("per point", d))
    if report.compared == 0:
        report.notes.append("nothing was compared: the run shares no (codec, point, metric) with the golden")
    return report


def update(run_dir, golden_path) -> list[str]:
    """Rewrite (or create) the golden rows of the run's keys; returns one line per file written.
    A per-point golden row is only rewritten from a run that covers as many images as it does;
    for stochastic codecs the seed means are written with ``n_seeds`` and ``seed_sd`` columns."""
    rows = run_rows(run_dir)
    path = Path(golden_path)
    dataset = str(rows["dataset"].iloc[0])
    files = golden_files(path, dataset) if path.exists() else [path]
    done = []
    for f in files:
        kind = kind_of(f)
        if kind == "per_image":
            new, keys, cols = rows, IMAGE_KEYS, list(IMAGE_COLUMNS)
            new = new.assign(bits=new["bits"].round().astype("int64"))
        else:
            new, keys, cols = point_rows(rows), POINT_KEYS, list(POINT_COLUMNS)
            if f.exists():
                old = _read(f)
                m = new.merge(old[keys + ["n_images"]], on=keys, how="inner", suffixes=("", "_old"))
                bad = m[m["n_images"] != m["n_images_old"]]
                if not bad.empty:
                    raise RegressError(f"{f}: the run covers {int(bad.iloc[0]['n_images'])} images at "
                                       f"{bad.iloc[0]['codec']} {bad.iloc[0]['point']} {bad.iloc[0]['metric']}, the "
                                       f"golden mean {int(bad.iloc[0]['n_images_old'])}: run all of them to update it")
        if (rows["n_seeds"] > 1).any():
            cols += ["n_seeds", "seed_sd"]
        n = _merge(f, new[cols], keys)
        done.append(f"{f}: {n} row(s) written")
    return done


def _merge(path: Path, new, keys: list[str]) -> int:
    """Write ``new`` into the CSV at ``path`` (created if absent): rows with ``new``'s keys replaced,
    every other row's text kept (read as strings), sorted by ``keys``."""
    import pandas as pd

    text = io.StringIO()
    new.to_csv(text, index=False, float_format="%.9g")
    fresh = pd.read_csv(io.StringIO(text.getvalue()), dtype=str, keep_default_na=False)
    if path.exists():
        old = pd.read_csv(path, dtype=str, keep_default_na=False)
        for col in fresh.columns.difference(old.columns):
            old[col] = ""
        fresh = fresh.reindex(columns=old.columns, fill_value="")
        replaced = old.merge(fresh[keys], on=keys, how="left", indicator=True)["_merge"] == "both"
        merged = pd.concat([old[~replaced.to_numpy()], fresh])
    else:
        merged = fresh
    path.parent.mkdir(parents=True, exist_ok=True)
    merged.sort_values(keys, kind="stable").to_csv(path, index=False)
    return len(fresh)
