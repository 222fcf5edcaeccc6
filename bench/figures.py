"""Rate–metric plots, read from a run's ``per_set`` table only.

One figure per metric: x = mean bpp over images, y = mean metric over images
(CompressAI's and the papers' convention), one line per codec (one per seed
for a codec run with several decoder seeds), points in bpp order, a legend.
Set metrics (FID, ...) are drawn at the mean bpp of their point. Axis labels
carry units (bpp; the metric's ``unit`` where it has one) and the direction of
better. Rows computed with random weights (``weights == "random"``: smoke tests
of learned codecs, not results) are refused; a table without a ``weights``
column counts as ``"none"``.

``rate_figure(points, metric)`` draws one figure and returns it (testable
without files); ``plot_run(run_dir)`` writes them all.

Uncertainty: where the run's ``per_image`` table holds a point's per-image values,
each line carries a shaded band, the 95 % Student-t interval of the mean over images
(:func:`with_intervals`; one image or a set metric such as FID: no band). The y-label
says so.

Rate kinds: rows with ``rate_kind == "estimated"`` (an official rate estimate kept
beside the real rate, e.g. CDC's) are drawn as their own dashed line labelled
"(estimated rate)", never joined with the solid line of real rates. A table without
a ``rate_kind`` column counts as all real.
"""
from __future__ import annotations

from pathlib import Path

from bench.store import read_table

X_LABEL = "rate: bits per pixel (bpp), mean over images"
# Only for metric classes that do not declare ``unit`` yet.
DEFAULT_UNITS = {"psnr": "dB"}


class FigureError(ValueError):
    """A table that must not be plotted (e.g. rows computed with random weights)."""


INTERVAL_KEYS = ["dataset", "codec", "point", "seed", "metric"]


def points_frame(run_dir: str | Path):
    """The per-point table plots are drawn from: one row per codec, point, seed, metric, with the
    ``half`` width of its 95 % interval where per-image values exist (:func:`with_intervals`)."""
    per_set = results_only(read_table(run_dir, "per_set"))
    try:
        per_image = read_table(run_dir, "per_image")
    except FileNotFoundError:
        per_image = None
    return with_intervals(per_set, per_image).sort_values(["metric", "codec", "seed", "mean_bpp"])


def with_intervals(per_set, per_image, level: float = 0.95):
    """``per_set`` with a ``half`` column: the half-width of the ``level`` Student-t interval of the
    mean over images of each (dataset, codec, point, seed, metric), from ``per_image`` (NaN where
    there are no per-image values, e.g. set metrics, or fewer than two images)."""
    import numpy as np

    from bench.intervals import t_half_width

    out = per_set.drop(columns=["half"], errors="ignore")
    if per_image is None or per_image.empty:
        return out.assign(half=np.nan)
    pi = per_image.astype({"point": str})
    if "rate_kind" in pi.columns:  # one value per image: estimated-rate rows repeat the real ones
        pi = pi[pi["rate_kind"].fillna("real") == "real"]
    g = pi.groupby(INTERVAL_KEYS)["value"].agg(["size", "std"]).reset_index()
    n = g["size"].to_numpy(float)
    half = t_half_width(n, g["std"].to_numpy(float), level)
    g["half"] = np.where(n > 1, half, np.nan)
    keyed = out.assign(point=out["point"].astype(str))
    merged = keyed.merge(g[INTERVAL_KEYS + ["half"]], on=INTERVAL_KEYS, how="left")
    return merged.set_axis(out.index).assign(point=out["point"])


def split_random(df):
    """``(results, random)``: ``df`` with a ``weights`` column ("none" where missing), split into the
    rows that may be drawn and those computed with random weights (never drawn)."""
    df = df.copy()
    df["weights"] = df["weights"].fillna("none") if "weights" in df.columns else "none"
    is_random = df["weights"] == "random"
    return df[~is_random], df[is_random]


def results_only(df):
    """``df`` with a ``weights`` column ("none" where missing); refuses random-weight rows."""
    df, random = split_random(df)
    if not random.empty:
        codecs = ", ".join(sorted(random["codec"].unique()))
        raise FigureError(f"refusing to plot rows computed with random weights (codec {codecs}): they are smoke "
                          "tests, not results; run with pretrained weights, or leave these codecs out")
    return df


def metric_spec(metric: str):
    """The registry entry of ``metric`` (None for a metric no longer registered)."""
    from bench import registry

    try:
        return registry.get("metric", metric).obj
    except KeyError:
        return None


def y_label(metric: str, spec=None, bars: bool = False) -> str:
    """``"psnr (dB), ↑ higher is better"``: the metric, its unit where it has one, the direction of
    better (and, with ``bars``, what the error bars are)."""
    unit = getattr(spec, "unit", None)
    if unit is None:
        unit = DEFAULT_UNITS.get(metric, "")
    label = f"{metric} ({unit})" if unit else metric
    higher = getattr(spec, "higher_better", None)
    if higher is not None:
        label = f"{label}, {'↑ higher' if higher else '↓ lower'} is better"
    return f"{label}\nband: 95 % interval of the mean over images" if bars else label


def draw_line(ax, x, y, half=None, **style):
    """A rate curve; with ``half`` (interval half-widths, NaN = none) a shaded band of the line's
    colour around it (bands, not error bars: the line stays one ``Line2D``). Returns True if a band
    was drawn."""
    import numpy as np

    (line,) = ax.plot(x, y, **style)
    half = np.asarray(half if half is not None else [], float)
    if not half.size or not np.isfinite(half).any():
        return False
    y = np.asarray(y, float)
    ax.fill_between(x, y - np.nan_to_num(half), y + np.nan_to_num(half), where=np.isfinite(half),
                    color=line.get_color(), alpha=0.18, lw=0, interpolate=False)
    return True


def line_label(codec: str, seed, n_seeds: int, rate_kind: str = "real") -> str:
    label = codec if n_seeds == 1 else f"{codec} (seed {seed})"
    return label if rate_kind != "estimated" else f"{label} (estimated rate)"


def rate_figure(points, metric: str, spec=None):
    """One rate–``metric`` figure from per-set rows (``points_frame``); ``spec`` defaults to the registry's."""
    from matplotlib.figure import Figure

    sub = results_only(points[points["metric"] == metric])
    if sub.empty:
        raise FigureError(f"no rows for metric {metric!r} (metrics in the table: "
                          f"{', '.join(sorted(points['metric'].unique()))})")
    spec = metric_spec(metric) if spec is None else spec
    fig = Figure(figsize=(5.5, 4.0), dpi=120)
    ax = fig.add_subplot()
    if "rate_kind" not in sub.columns:
        sub = sub.assign(rate_kind="real")
    sub = sub.assign(rate_kind=sub["rate_kind"].fillna("real"))
    bars = False
    for (codec, kind), rows in sub.groupby(["codec", "rate_kind"], sort=True):
        seeds = sorted(rows["seed"].unique())
        estimated = kind == "estimated"
        for seed in seeds:
            line = rows[rows["seed"] == seed].sort_values("mean_bpp")
            half = line["half"].to_numpy() if "half" in line.columns else None
            bars |= draw_line(ax, line["mean_bpp"].to_numpy(), line["value"].to_numpy(), half, marker="o", ms=3.5,
                              lw=1.4, ls="--" if estimated else "-", label=line_label(codec, seed, len(seeds), kind))
    n = int(sub["n_images"].max())
    ax.set_xlabel(X_LABEL)
    ax.set_ylabel(y_label(metric, spec, bars))
    ax.set_title(f"{sub['dataset'].iloc[0]}: {metric} vs rate (n={n} images)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None, metrics: list[str] | None = None,
             formats: tuple[str, ...] = ("png", "svg")) -> list[Path]:
    """Write ``<out_dir>/<metric>.<fmt>`` for each metric; returns the files written."""
    df = points_frame(run_dir)
    out_dir = Path(out_dir) if out_dir else Path(run_dir) / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for metric in metrics or sorted(df["metric"].unique()):
        if not (df["metric"] == metric).any():
            continue
        fig = rate_figure(df, metric)
        for fmt in formats:
            path = out_dir / f"{metric}.{fmt}"
            fig.savefig(path)
            written.append(path)
    return written
