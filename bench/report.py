"""``bench report RUN``: one static, self-contained HTML page describing a finished run.

Contract: :func:`build_report` reads only the run directory (``per_image.parquet``,
``per_set.parquet``, ``manifest.json``, ``ledger.sqlite`` read-only, ``recon/``) and the
original images the ledger names, and returns one HTML document with everything inlined
(plots as ``data:image/svg+xml`` images, crops as ``data:image/png``, CSS in ``<style>``; no
script, no network reference). Every text taken from the run (codec names, points, error
messages, provenance values) is HTML-escaped. Sections (element ids):

* ``plots``: the rate–metric figures of :func:`bench.figures.rate_figure` (units and direction
  of better on every axis); rows with random weights are refused there, as in ``bench plot``;
* ``points``: per codec point, mean bpp, each metric's mean ± 95 % interval half-width
  (Student t over images: ``t(0.975, n-1) · sd / √n``; none for n = 1), n images; set metrics
  (FID, ...) as their single value;
* ``bdrate``: only when ``bench.bdrate`` imports: BD-rate / BD-metric of each codec against an
  anchor, with its bootstrap interval over images;
* ``crops``: for the first ``images`` images, the same centre crop of the original and of every
  codec point's reconstruction, labelled with codec, point, bpp and PSNR of that image;
* ``failures``: the units and metrics that failed in the last invocation, with their errors
  (runs keep them in ``manifest.json``; the ledger holds finished units only), and its notes;
* ``provenance``: bench version, git commit, Python, packages, device, dtype, codecs (adapter,
  versions, libraries, weights labels and sha256), metric versions and weight files.
"""
from __future__ import annotations

import base64
import html
import io
import json
import re
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from bench.store import StoreError, read_table

CROP = 128
CI_NOTE = ("± is the half-width of a 95 % interval of the mean over images: Student t, "
           "t(0.975, n−1)·sd/√n (none for n = 1).")
# runner's unit errors: "<codec> @ <point> on <image id>: <error>"
_UNIT_ERROR = re.compile(r"^(?P<codec>[^@]+?) @ (?P<point>.+?) on (?P<image>[^\s:]+): (?P<error>.*)$", re.DOTALL)

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;
color:#1b1b1b;line-height:1.4}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
th,td{border:1px solid #d0d0d0;padding:.25em .6em;text-align:right;vertical-align:top}
th{background:#f2f2f2}td.t,th.t{text-align:left}
.plots{display:flex;flex-wrap:wrap;gap:1em}.plots figure{margin:0}
.strip{display:flex;flex-wrap:wrap;gap:.6em;margin-bottom:1.2em}
.strip figure{margin:0;text-align:center;font-size:.8em}
.strip img{width:256px;height:auto;image-rendering:pixelated;border:1px solid #999}
.note{color:#555;font-size:.9em}.err{color:#a00000;white-space:pre-wrap;text-align:left;font-family:monospace}
code{background:#f4f4f4;padding:0 .2em}
"""


class ReportError(ValueError):
    """The directory cannot be reported on (not a finished bench run directory)."""


def e(value: Any) -> str:
    """HTML-escaped text of ``value`` (quotes too: safe in attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def centre_crop(rgb: np.ndarray, size: int = CROP) -> np.ndarray:
    """The ``size``×``size`` centre region (the whole side where the image is smaller)."""
    h, w = rgb.shape[:2]
    ch, cw = min(size, h), min(size, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return rgb[top:top + ch, left:left + cw]


def _table(headers: list[str], rows: Iterable[list[str]], left: int = 1, raw: bool = False) -> str:
    """An HTML table; cells are escaped unless ``raw`` (then the caller escaped them); the first
    ``left`` columns are left-aligned."""
    cls = lambda i: ' class="t"' if i < left else ""
    out = ["<table><thead><tr>", *(f"<th{cls(i)}>{e(h)}</th>" for i, h in enumerate(headers)), "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td{cls(i)}>{c if raw else e(c)}</td>" for i, c in enumerate(row)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


# ---------------------------------------------------------------------------- run contents
def _manifest(run: Path) -> dict:
    path = run / "manifest.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path} is unreadable: {exc}") from exc


def _ledger_units(run: Path) -> tuple[dict, dict]:
    """((dataset, image_id, codec, point, seed) -> unit row, image sha256 -> original path) from the
    ledger, opened read-only (nothing in the run directory is written)."""
    path = run / "ledger.sqlite"
    if not path.is_file():
        return {}, {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        db.row_factory = sqlite3.Row
        units = {(r["dataset"], r["image_id"], r["codec"], r["point"], r["seed"]): dict(r)
                 for r in db.execute("SELECT dataset, image_id, codec, point, seed, recon, bpp, image_sha256, "
                                     "weights, fingerprint FROM units")}
        originals = {r["sha256"]: r["path"] for r in db.execute("SELECT path, sha256 FROM images")}
    finally:
        db.close()
    return units, originals


def _spec(metric: str):
    from bench.figures import metric_spec

    return metric_spec(metric)


# ---------------------------------------------------------------------------- sections
def plots_section(run: Path) -> str:
    """Every metric's rate figure (``bench.figures.rate_figure``) as an inline SVG image."""
    from bench.figures import FigureError, points_frame, rate_figure

    try:
        df = points_frame(run)
    except FigureError as exc:
        return f'<p class="err">no plots: {e(exc)}</p>'
    figs = []
    for metric in sorted(df["metric"].unique()):
        try:
            fig = rate_figure(df, metric)
        except FigureError as exc:
            figs.append(f'<p class="err">{e(metric)}: {e(exc)}</p>')
            continue
        buf = io.BytesIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
        figs.append(f'<figure><img class="plot" alt="{e(metric)} vs rate" '
                    f'src="{data_uri(buf.getvalue(), "image/svg+xml")}"></figure>')
    return '<div class="plots">' + "".join(figs) + "</div>" if figs else "<p>no rows to plot</p>"


def _interval(values: np.ndarray) -> tuple[float, float | None]:
    """(mean, 95 % Student-t half-width or None for fewer than two values)."""
    n = len(values)
    mean = float(np.mean(values))
    if n < 2:
        return mean, None
    from bench.intervals import t_half_width

    return mean, float(t_half_width(n, np.std(values, ddof=1)))


def points_rows(per_image, per_set) -> tuple[list[str], list[dict]]:
    """(metric columns, one dict per codec point): ``codec``, ``point``, ``seed``, ``weights``,
    ``bpp`` (mean over the point's images), ``n`` (images), and per metric ``(mean, half-width
    or None, n)``; set metrics as ``(value, None, n)``."""
    rows: dict[tuple, dict] = {}
    for (codec, point, seed, weights), g in per_image.groupby(["codec", "point", "seed", "weights"], dropna=False,
                                                               sort=False):
        per_img = g.drop_duplicates("image_id")
        row = rows.setdefault((codec, point, seed), {"codec": codec, "point": point, "seed": int(seed),
                                                      "weights": weights, "bpp": float(per_img["bpp"].mean()),
                                                      "n": int(per_img["image_id"].nunique())})
        for metric, m in g.groupby("metric"):
            mean, half = _interval(m["value"].to_numpy(float))
            row[metric] = (mean, half, len(m))
    sets = per_set[per_set["aggregate"] == "set"] if "aggregate" in per_set.columns else per_set.iloc[:0]
    for r in sets.itertuples():
        row = rows.setdefault((r.codec, r.point, r.seed), {"codec": r.codec, "point": r.point, "seed": int(r.seed),
                                                            "weights": r.weights, "bpp": float(r.mean_bpp),
                                                            "n": int(r.n_images)})
        row[r.metric] = (float(r.value), None, int(r.n_images))
    metrics = sorted(set(per_image["metric"]) | set(sets["metric"]))
    return metrics, sorted(rows.values(), key=lambda r: (r["codec"], r["seed"], r["bpp"]))


def points_section(per_image, per_set) -> str:
    metrics, rows = points_rows(per_image, per_set)
    if not rows:
        return "<p>no results in this run's tables</p>"
    from bench.figures import y_label

    set_metrics = set(per_set.loc[per_set["aggregate"] == "set", "metric"]) if "aggregate" in per_set else set()
    headers = ["codec", "point", "seed", "weights", "n images", "mean bpp"] + \
              [y_label(m, _spec(m)) + (" (set metric)" if m in set_metrics else "") for m in metrics]
    body = []
    for r in rows:
        cells = [e(r["codec"]), e(r["point"]), e(r["seed"]), e(r["weights"]), e(r["n"]), f"{r['bpp']:.4f}"]
        for m in metrics:
            if m not in r:
                cells.append("")
                continue
            mean, half, n = r[m]
            cell = f"{mean:.4f}" + (f" ± {half:.4f}" if half is not None else "")
            cells.append(cell + (f" (n={n})" if n != r["n"] else ""))
        body.append(cells)
    random = sorted({r["codec"] for r in rows if r["weights"] == "random"})
    warn = (f'<p class="err">Rows with weights = random ({e(", ".join(random))}) are smoke tests of learned '
            "codecs with seeded random weights, not results.</p>") if random else ""
    return warn + _table(headers, body, left=4, raw=True) + f'<p class="note">{e(CI_NOTE)} Rate: bpp = 8·bytes ' \
        "of the stored bitstream / (H·W), mean over images.</p>"


def bdrate_section(run: Path, codecs: list[str], anchor: str | None = None) -> str | None:
    """BD-rate / BD-metric of every codec against ``anchor`` (default: jpeg if in the run, else the
    first codec) from ``bench.bdrate.compare_run`` with its defaults; None when ``bench.bdrate`` does not import (then the page has no such section)."""
    import importlib

    try:
        bdrate = importlib.import_module("bench.bdrate")
    except ImportError:
        return None
    if not hasattr(bdrate, "compare_run"):
        return '<p class="err">bench.bdrate has no compare_run here: no BD-rate table.</p>'
    if len(codecs) < 2:
        return "<p>BD-rate needs at least two codecs in the run.</p>"
    from bench.figures import y_label

    anchor = anchor or ("jpeg" if "jpeg" in codecs else codecs[0])
    try:
        rows = bdrate.compare_run(run, anchor=anchor)
    except (bdrate.BDError, ValueError) as exc:
        return f'<p class="err">no BD-rate: {e(exc)}</p>'

    def ci(pair, fmt):
        return "" if pair is None else f" [{pair[0]:{fmt}}, {pair[1]:{fmt}}]"

    body = []
    for r in rows:
        label = y_label(r.metric, _spec(r.metric))
        if r.result is None:
            body.append([e(label), e(anchor), e(r.codec), "", "", f'<span class="err">{e(r.error)}</span>'])
            continue
        level = f"{r.ci.level:.0%} bootstrap over {r.ci.n_images} images, {r.ci.n_valid}/{r.ci.n_resamples} " \
                "resamples" if r.ci else ""
        body.append([e(label), e(anchor), e(r.codec),
                     e(f"{r.result.bd_rate:+.2f} %" + ci(r.ci and r.ci.rate_ci, "+.2f")),
                     e(f"{r.result.bd_metric:+.4f}" + ci(r.ci and r.ci.metric_ci, "+.4f")),
                     e("; ".join(x for x in (r.result.method, level, r.note) if x))])
    return _table(["metric", "anchor", "test", "BD-rate [interval]", "BD-metric [interval]", "basis"], body,
                  left=3, raw=True) + \
        '<p class="note">BD-rate: negative = the test codec needs fewer bits than the anchor for the same quality. ' \
        "BD-metric: test minus anchor at equal rate, in the metric's units. Computed by " \
        "<code>bench.bdrate.compare_run</code> with its defaults.</p>"


def crops_section(run: Path, per_image, units: dict, originals: dict, images: int, size: int = CROP) -> str:
    """Centre crops of the first ``images`` images: original, then every codec point in bpp order."""
    if images <= 0 or per_image.empty:
        return "<p>no crops asked for</p>" if images <= 0 else "<p>no results</p>"
    from bench.data.images import ImageError, pixel_sha256, read_rgb

    psnr = per_image[per_image["metric"] == "psnr"].set_index(["dataset", "image_id", "codec", "point", "seed"])["value"]
    coords = per_image.drop_duplicates(["dataset", "image_id", "codec", "point", "seed"])
    n_seeds = coords.groupby("codec")["seed"].nunique().to_dict()
    out = []
    for (dataset, image_id), g in list(coords.groupby(["dataset", "image_id"], sort=True))[:images]:
        figs = []
        sha = g["image_sha256"].iloc[0] if "image_sha256" in g.columns else None
        src = originals.get(sha)
        original, why = None, "no record of the original file in the ledger"
        if src:
            try:
                rgb = read_rgb(src)[0]
                original, why = (rgb, "") if pixel_sha256(rgb) == sha else \
                    (None, f"{src} has changed since the run (pixel sha256 differs)")
            except (ImageError, OSError) as exc:
                why = f"original unreadable: {exc}"
        if original is not None:
            h, w = original.shape[:2]
            figs.append(_crop_figure(centre_crop(original, size), f"original {image_id}",
                                     f"{w}×{h}, centre {min(size, w)}×{min(size, h)}"))
        else:
            figs.append(f'<figure><p class="err">original: {e(why)}</p></figure>')
        for r in g.sort_values(["codec", "seed", "bpp"]).itertuples():
            key = (dataset, image_id, r.codec, r.point, r.seed)
            unit = units.get(key)
            label = f"{r.codec} @ {r.point}" + (f" (seed {r.seed})" if n_seeds.get(r.codec, 1) > 1 else "")
            detail = f"{r.bpp:.3f} bpp" + (f", PSNR {psnr[key]:.2f} dB" if key in psnr.index else "")
            try:
                recon = read_rgb(run / unit["recon"])[0] if unit else None
            except (ImageError, OSError) as exc:
                recon, detail = None, f"{detail}: reconstruction unreadable: {exc}"
            if recon is None:
                figs.append(f'<figure><p class="err">{e(label)}: {e(detail)} (no stored reconstruction)</p></figure>')
            else:
                figs.append(_crop_figure(centre_crop(recon, size), label, detail))
        out.append(f"<h3>{e(dataset)} / {e(image_id)}</h3><div class=\"strip\">{''.join(figs)}</div>")
    return "".join(out) + f'<p class="note">The same centre region (at most {size}×{size} pixels) of each image, ' \
        "shown at 2× with no smoothing; bpp and PSNR are of the whole image.</p>"


def _crop_figure(rgb: np.ndarray, title: str, detail: str) -> str:
    return (f'<figure><img class="crop" alt="{e(title)}" src="{data_uri(png_bytes(rgb), "image/png")}">'
            f"<figcaption><b>{e(title)}</b><br>{e(detail)}</figcaption></figure>")


def failures_section(manifest: dict) -> str:
    """Problems of the last invocation: failed units (codec, point, image, error), other problems, notes."""
    invocations = manifest.get("invocations") or []
    if not invocations:
        return "<p>no manifest.json: failures are not known</p>"
    last = invocations[-1]
    problems = (last.get("summary") or {}).get("problems") or []
    notes = [p for p in problems if p.startswith("note:")]
    errors = [p for p in problems if not p.startswith("note:")]
    when = e(last.get("finished") or last.get("time"))
    intro = f"<p>From the last invocation ({when}; {len(invocations)} invocation(s) in all): {len(errors)} problem(s).</p>"
    parts = [intro]
    units, other = [], []
    for p in errors:
        m = _UNIT_ERROR.match(p)
        (units.append([e(m["codec"]), e(m["point"]), e(m["image"]), f'<span class="err">{e(m["error"])}</span>'])
         if m else other.append(p))
    if units:
        parts.append(_table(["codec", "point", "image", "error"], units, left=4, raw=True))
    if other:
        parts.append("<ul>" + "".join(f'<li class="err">{e(p)}</li>' for p in other) + "</ul>")
    if notes:
        parts.append("<p>Notes:</p><ul>" + "".join(f"<li>{e(p)}</li>" for p in notes) + "</ul>")
    return "".join(parts)


def _flat(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested dicts as (dotted key, value text) rows."""
    if isinstance(obj, dict):
        rows = []
        for k, v in obj.items():
            rows += _flat(v, f"{prefix}.{k}" if prefix else str(k))
        return rows or [(prefix, "")]
    if isinstance(obj, list):
        return [(prefix, ", ".join(str(x) for x in obj))]
    return [(prefix, "" if obj is None else str(obj))]


def provenance_section(manifest: dict, units: dict) -> str:
    invocations = manifest.get("invocations") or []
    if not invocations:
        return "<p>no manifest.json: provenance is not known</p>"
    last = invocations[-1]
    general = [(k, last.get(k)) for k in ("bench", "git", "python", "time", "finished", "device", "gpu", "cuda",
                                          "dtype", "platform", "processor") if last.get(k) is not None]
    general.append(("command", " ".join(map(str, last.get("argv") or []))))
    general.append(("run id", manifest.get("run_id")))
    parts = ["<h3>Run</h3>", _table(["", "value"], general, left=2),
             "<h3>Packages</h3>", _table(["package", "version"], sorted((last.get("packages") or {}).items()), left=1)]
    ds = last.get("dataset") or {}
    if ds:
        parts += ["<h3>Dataset</h3>", _table(["", "value"], _flat(ds), left=2)]
    codec_rows = []
    for name, c in (last.get("codecs") or {}).items():
        for key, value in _flat({k: v for k, v in c.items() if k != "points"}):
            codec_rows.append([name, key, value])
    if codec_rows:
        parts += ["<h3>Codecs</h3>", _table(["codec", "field", "value"], codec_rows, left=3)]
    weight_rows = sorted({row for u in units.values() if u.get("fingerprint")
                          for row in _weight_rows(u["codec"], u["point"], u["fingerprint"])})
    if weight_rows:
        parts += ["<h3>Codec weights used by the stored units</h3>",
                  _table(["codec", "point", "weights", "sha256 (random init: seed)"], [list(r) for r in weight_rows],
                         left=4)]
    metrics = last.get("metrics") or {}
    if metrics:
        parts += ["<h3>Metrics</h3>", _table(["metric", "version"], sorted(metrics.items()), left=2)]
    if last.get("weights"):
        parts += ["<h3>Metric weight files</h3>", _table(["", "value"], _flat(last["weights"]), left=2)]
    return "".join(parts)


def _weight_rows(codec: str, point: str, fingerprint: str) -> list[tuple[str, str, str, str]]:
    """(codec, point, weight file id or "random init", its sha256 or seed) from a unit's fingerprint
    JSON (learned codecs: ``{"weights": {id: {"sha256": ...}}}`` or ``{"init": "random", "seed": n}``)."""
    try:
        w = (json.loads(fingerprint) or {}).get("weights")
    except (ValueError, AttributeError):
        return []
    if not isinstance(w, dict):
        return []
    if w.get("init") == "random":
        return [(codec, point, "random init (smoke test, not results)", str(w.get("seed")))]
    return [(codec, point, str(k), str((v or {}).get("sha256") or "file absent") if isinstance(v, dict) else str(v))
            for k, v in w.items()]


# ---------------------------------------------------------------------------- the page
def build_report(run_dir: str | Path, images: int = 2, crop: int = CROP, anchor: str | None = None) -> str:
    """The HTML text of ``run_dir``'s report (see the module doc; ``anchor``: the BD-rate anchor codec);
    raises ReportError for a directory without the run's tables."""
    run = Path(run_dir)
    try:
        per_image, per_set = read_table(run, "per_image"), read_table(run, "per_set")
    except StoreError as exc:
        raise ReportError(str(exc)) from exc
    manifest = _manifest(run)
    units, originals = _ledger_units(run)
    if "weights" not in per_image.columns:
        per_image["weights"] = "none"
    per_image["weights"] = per_image["weights"].fillna("none")
    if "image_sha256" not in per_image.columns:  # older tables: from the ledger
        per_image["image_sha256"] = [(units.get(k) or {}).get("image_sha256") for k in
                                     per_image[["dataset", "image_id", "codec", "point", "seed"]].itertuples(False, None)]
    datasets = ", ".join(sorted(per_image["dataset"].unique())) or "—"
    n_images = per_image["image_id"].nunique()
    title = f"bench report: {run.resolve().name} ({datasets})"
    sections = [("plots", "Rate–quality plots", plots_section(run)),
                ("points", "Per-point results", points_section(per_image, per_set))]
    bd = bdrate_section(run, sorted(per_image["codec"].unique()), anchor)
    if bd is not None:
        sections.append(("bdrate", "BD-rate", bd))
    sections += [("crops", "Reconstructions (centre crops)", crops_section(run, per_image, units, originals, images,
                                                                             crop)),
                 ("failures", "Failed units and problems", failures_section(manifest)),
                 ("provenance", "Provenance", provenance_section(manifest, units))]
    codecs = ", ".join(sorted(per_image["codec"].unique()))
    toc = " · ".join(f'<a href="#{sid}">{e(name)}</a>' for sid, name, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{e(name)}</h2>{content}</section>' for sid, name, content in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\">"
            f"<title>{e(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{e(title)}</h1><p>Run directory <code>{e(run.resolve())}</code>: {n_images} image(s), "
            f"codecs {e(codecs)}.</p><nav>{toc}</nav>{body}</body></html>\n")


def write_report(run_dir: str | Path, out: str | Path | None = None, images: int = 2) -> Path:
    """Write the report to ``out`` (default ``RUN/report.html``) atomically; returns its path."""
    import os

    from bench.store import atomic_write_bytes

    path = Path(out) if out else Path(run_dir) / "report.html"
    atomic_write_bytes(path, build_report(run_dir, images).encode("utf-8"))
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)  # a page to share: readable as any new file, not the temp file's 0600
    return path
