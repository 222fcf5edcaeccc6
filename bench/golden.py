"""Golden tables for CI regression on metric curves.

The golden experiment is JPEG (4:2:0) and WebP at qualities 10, 50, 90 and HEVC intra
(the ``hevc-x265`` card: Debian's x265 and libde265) at BPG qualities 42, 32, 22 on the
24 Kodak images with the nine non-learned full-reference metrics. MAD costs
~20 s per 768×512 pair on CPU, so it is computed on ``MAD_IMAGES`` only.

``results/golden/kodak_per_image.csv`` holds every (image, codec, point,
metric) value and its bits; ``results/golden/kodak_per_point.csv`` the mean
over images per point (what the plots draw). ``compare`` recomputes any subset
and checks it against the golden rows within ``TOLERANCE``: bits must match
exactly (same encoder build), metric values within rel 1e-4 or abs 1e-6 (float
reductions differ slightly across CPUs).

Regenerate (after an intended change): ``python -m bench.golden --write
--data-dir ../shared/data/kodak`` (~15 min on 2 cores), and say why in the commit.
``--codecs webp`` recomputes and rewrites only those codecs' rows; the other rows are kept
byte for byte (e.g. after a change to one codec card).
"""
from __future__ import annotations

import argparse
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.runner import Experiment, run

GOLDEN_DIR = Path(__file__).resolve().parent.parent / "results" / "golden"
CODEC_POINTS = {"jpeg": [10, 50, 90], "webp": [10, 50, 90], "hevc-x265": [42, 32, 22]}
CODECS = list(CODEC_POINTS)
METRICS = ["psnr", "ssim", "ms_ssim", "cw_ssim", "fsim", "gmsd", "nlpd", "vsi"]
MAD_IMAGES = ["kodim01", "kodim12", "kodim19", "kodim23"]
TOLERANCE = {"rel": 1e-4, "abs": 1e-6}
KEYS = ["image_id", "codec", "point", "metric"]


def compute(data_dir: str, out: str, images: list[str] | None = None, workers: int = 1, mad: bool = True,
            codecs: list[str] | None = None):
    """Run the golden experiment (optionally on ``images`` / ``codecs`` only) into ``out``; returns
    per_image rows."""
    from bench.store import read_table

    limit_ids = set(images) if images else None
    specs = [{"name": c, "points": CODEC_POINTS[c]} for c in codecs or CODECS]
    exp = Experiment(dataset="kodak", data_dir=data_dir, codecs=specs, metrics=METRICS, out=out, workers=workers)
    import pandas as pd

    _run_on(exp, limit_ids)
    tables = [read_table(out, "per_image")]  # each run's tables hold that run's experiment
    if mad:
        mad_ids = set(MAD_IMAGES) & limit_ids if limit_ids else set(MAD_IMAGES)
        if mad_ids:
            _run_on(Experiment(**{**exp.__dict__, "metrics": ["mad"]}), mad_ids)
            tables.append(read_table(out, "per_image"))
    df = pd.concat(tables, ignore_index=True)
    return df[["image_id", "codec", "point", "bits", "bpp", "metric", "value"]]


def _run_on(exp: Experiment, ids: set[str] | None) -> None:
    """Run ``exp`` restricted to image ids ``ids`` (through a filtered dataset card)."""
    from bench import cards

    card = cards.get("dataset", exp.dataset)
    if ids is not None:
        body = {**card.body, "images": [e for e in card.body["images"] if e["id"] in ids]}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "kodak-subset.yaml"
            import yaml

            path.write_text(yaml.safe_dump({**body, "name": card.name}))
            result = run(Experiment(**{**exp.__dict__, "dataset": str(path)}))
    else:
        result = run(exp)
    real = [p for p in result.problems if not p.startswith("note:")]
    if real:
        raise RuntimeError("golden run had problems:\n" + "\n".join(real))


def load():
    import pandas as pd

    return pd.read_csv(GOLDEN_DIR / "kodak_per_image.csv", dtype={"point": str})


@dataclass(frozen=True)
class Diff:
    """One compared quantity of one row: ``key`` (column -> value), ``value`` and ``golden`` (NaN
    where the row is absent there), the tolerance it was held to and whether it is within it."""

    key: dict
    quantity: str
    value: float
    golden: float
    ok: bool
    tolerance: dict


def within(value: float, golden: float, tolerance: dict) -> bool:
    """``value`` equals ``golden`` within ``tolerance`` (keys ``rel``/``abs``; ``{}`` = exactly)."""
    return math.isclose(value, golden, rel_tol=tolerance.get("rel", 0.0), abs_tol=tolerance.get("abs", 0.0))


def diff_rows(df, golden, keys: list[str], quantities: dict[str, dict], widen=None) -> list[Diff]:
    """Every row of ``df`` matched to ``golden`` on ``keys``; per row, each column of ``quantities``
    (column -> tolerance, ``{}`` for exact) compared; ``widen(row, quantity, tolerance)``, if given,
    returns the tolerance for one row (e.g. wider for a stochastic codec's seed spread). Rows of
    ``df`` missing in ``golden`` give one Diff with quantity ``"row"`` and ``ok=False``; golden rows
    absent from ``df`` are not looked at (a run may recompute a subset)."""
    merged = df.astype({"point": str}).merge(golden.astype({"point": str}), on=keys, how="left",
                                             suffixes=("", "_golden"), indicator=True)
    diffs = []
    for row in merged.to_dict("records"):
        key = {k: row[k] for k in keys}
        if row["_merge"] == "left_only":
            diffs.append(Diff(key, "row", math.nan, math.nan, False, {}))
            continue
        for q, tol in quantities.items():
            value, gold = float(row[q]), float(row[f"{q}_golden"])
            tol = widen(row, q, tol) if widen else tol
            diffs.append(Diff(key, q, value, gold, within(value, gold, tol), tol))
    return diffs


def compare(df, golden=None) -> list[str]:
    """Differences between recomputed rows ``df`` and the golden rows (empty list = pass)."""
    golden = load() if golden is None else golden
    problems = []
    for d in diff_rows(df, golden, KEYS, {"bits": {}, "value": TOLERANCE}):
        where = f"{d.key['codec']} q{d.key['point']} {d.key['image_id']} {d.key['metric']}"
        if d.quantity == "row":
            problems.append(f"{where}: not in the golden table")
        elif d.ok:
            continue
        elif d.quantity == "bits":
            problems.append(f"{where}: {int(d.value)} bits, golden {int(d.golden)}")
        else:
            problems.append(f"{where}: {d.value:.6g}, golden {d.golden:.6g}")
    return problems


def per_point(df):
    return (df.groupby(["codec", "point", "metric"])
            .agg(mean_bpp=("bpp", "mean"), value=("value", "mean"), n_images=("image_id", "nunique"))
            .reset_index())


def _merge(path: Path, new, keys: list[str], codecs: list[str]) -> None:
    """Write ``new`` rows (the recomputed ``codecs``) into the golden CSV at ``path``, keeping every
    other row's text as it is (read as strings: no float round trip), sorted by ``keys``."""
    import io

    import pandas as pd

    old = pd.read_csv(path, dtype=str, keep_default_na=False)
    text = io.StringIO()
    new.to_csv(text, index=False, float_format="%.9g")
    fresh = pd.read_csv(io.StringIO(text.getvalue()), dtype=str, keep_default_na=False)
    if list(fresh.columns) != list(old.columns):
        raise ValueError(f"{path}: columns {list(old.columns)} vs recomputed {list(fresh.columns)}")
    merged = pd.concat([old[~old["codec"].isin(codecs)], fresh]).sort_values(keys, kind="stable")
    merged.to_csv(path, index=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "kodak"))
    ap.add_argument("--out", default="runs/golden")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="overwrite results/golden with the new values")
    ap.add_argument("--codecs", help=f"comma list: recompute (and with --write rewrite) only these codecs' rows "
                    f"[default: all of {','.join(CODECS)}]")
    args = ap.parse_args()
    codecs = [c.strip() for c in args.codecs.split(",")] if args.codecs else None
    if codecs and not set(codecs) <= set(CODECS):
        ap.error(f"--codecs must be among {','.join(CODECS)}")
    df = compute(args.data_dir, args.out, workers=args.workers, codecs=codecs)
    if args.write and codecs:
        _merge(GOLDEN_DIR / "kodak_per_image.csv", df.sort_values(KEYS), KEYS, codecs)
        _merge(GOLDEN_DIR / "kodak_per_point.csv", per_point(df), ["codec", "point", "metric"], codecs)
        print(f"rewrote the {', '.join(codecs)} rows of {GOLDEN_DIR}")
    elif args.write:
        GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
        df.sort_values(KEYS).to_csv(GOLDEN_DIR / "kodak_per_image.csv", index=False, float_format="%.9g")
        per_point(df).to_csv(GOLDEN_DIR / "kodak_per_point.csv", index=False, float_format="%.9g")
        print(f"wrote {GOLDEN_DIR}")
    else:
        problems = compare(df)
        print("\n".join(problems) or "matches the golden table")
        raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()
