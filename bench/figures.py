"""Rate–metric plots, read from a run's ``per_set`` table only.

One figure per metric: x = mean bpp over images, y = mean metric over images
(CompressAI's and the papers' convention), one line per codec (and seed), points
in bpp order. Set metrics (FID, ...) are drawn at the mean bpp of their point.
"""
from __future__ import annotations

from pathlib import Path

from bench.store import read_table


def points_frame(run_dir: str | Path):
    """The per-point table plots are drawn from: one row per codec, point, seed, metric."""
    df = read_table(run_dir, "per_set")
    return df.sort_values(["metric", "codec", "seed", "mean_bpp"])


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None, metrics: list[str] | None = None,
             formats: tuple[str, ...] = ("png", "svg")) -> list[Path]:
    """Write ``<out_dir>/<metric>.<fmt>`` for each metric; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench import registry

    df = points_frame(run_dir)
    out_dir = Path(out_dir) if out_dir else Path(run_dir) / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for metric in metrics or sorted(df["metric"].unique()):
        sub = df[df["metric"] == metric]
        if sub.empty:
            continue
        fig, ax = plt.subplots(figsize=(5.5, 4.0), dpi=120)
        for (codec, seed), line in sub.groupby(["codec", "seed"], sort=True):
            label = codec if sub["seed"].nunique() == 1 else f"{codec} (seed {seed})"
            ax.plot(line["mean_bpp"], line["value"], marker="o", ms=3.5, lw=1.4, label=label)
        try:
            higher = registry.get("metric", metric).obj.higher_better
            arrow = " ↑" if higher else " ↓"
        except KeyError:
            arrow = ""
        n = int(sub["n_images"].max())
        ax.set_xlabel("bits per pixel (mean over images)")
        ax.set_ylabel(f"{metric}{arrow}")
        ax.set_title(f"{sub['dataset'].iloc[0]}: {metric}{arrow} (n={n})")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        for fmt in formats:
            path = out_dir / f"{metric}.{fmt}"
            fig.savefig(path)
            written.append(path)
        plt.close(fig)
    return written
