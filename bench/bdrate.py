"""Bjøntegaard deltas (BD-rate, BD-metric) between rate–quality curves, with bootstrap intervals.

**BD-rate** (percent): the mean difference of log-rate between a test curve and an anchor
curve at equal quality, over the quality range both curves cover, as a rate ratio:
``(exp(mean(log R_test(q) - log R_anchor(q))) - 1) * 100``. Negative = the test codec needs
fewer bits for the same quality. **BD-metric** (metric units): the mean of
``Q_test(log r) - Q_anchor(log r)`` over the log-rate range both cover, i.e. test minus
anchor at equal rate; for a lower-is-better metric (LPIPS, DISTS, FID, ...) a negative
BD-metric means the test codec is better, for PSNR/SSIM a positive one.

Interpolation (``method``), always on (quality, log rate):

* ``pchip`` (default): piecewise cubic Hermite (SciPy's ``PchipInterpolator``), as the
  JCT-VC/JVET common-test-conditions sheets and the ``bjontegaard`` package; needs ≥ 2 points.
* ``akima``: Akima spline (Herglotz et al., ICIP 2022), SciPy's ``Akima1DInterpolator``;
  needs ≥ 3 points.
* ``cubic``: VCEG-M33's least-squares cubic polynomial; needs ≥ 4 points.

Refused with :class:`BDError` (a message naming the curve and the fix): too few points, a rate
or quality that is not strictly monotonic in the metric's direction (quality must rise with
rate for a higher-is-better metric and fall for a lower-is-better one), non-positive or
non-finite values, or ranges that do not overlap.

Uncertainty: :func:`bootstrap_bd` resamples *images* with replacement (the same resample for
anchor and test: the codecs are compared on the same images), rebuilds both curves as means
over the resampled images per point (bpp and metric) and recomputes; the interval is the
percentile interval of the resampled deltas. :func:`point_intervals` gives Student-t
intervals of per-point means over images (for plots and tables).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from bench.intervals import t_half_width

METHODS = ("pchip", "akima", "cubic")
MIN_POINTS = {"pchip": 2, "akima": 3, "cubic": 4}


class BDError(ValueError):
    """Curves a Bjøntegaard delta cannot be computed from; says why and what to do."""


@dataclass(frozen=True)
class Curve:
    """One rate–quality curve: ``rate`` (bpp, > 0) and ``quality`` per point, any order."""

    name: str
    rate: np.ndarray
    quality: np.ndarray

    @classmethod
    def of(cls, name: str, rate, quality) -> Curve:
        return cls(name, np.asarray(rate, dtype=float), np.asarray(quality, dtype=float))


def higher_better(metric: str) -> bool:
    """Direction of ``metric`` from its registry metadata (``higher_better``); raises BDError for an
    unknown metric (pass the direction explicitly then)."""
    from bench.figures import metric_spec

    spec = metric_spec(metric)
    value = getattr(spec, "higher_better", None)
    if value is None:
        raise BDError(f"metric {metric!r} is not registered: its direction (higher or lower is better) is "
                      "unknown; pass higher_better explicitly")
    return bool(value)


def _checked(curve: Curve, method: str, higher: bool) -> tuple[np.ndarray, np.ndarray]:
    """(log rate, quality) sorted by rate, after the refusal checks of the module doc."""
    if method not in METHODS:
        raise BDError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    r, q = curve.rate, curve.quality
    if r.shape != q.shape or r.ndim != 1:
        raise BDError(f"{curve.name}: rate and quality must be 1-D and of equal length ({r.shape} vs {q.shape})")
    need = MIN_POINTS[method]
    if len(r) < need:
        raise BDError(f"{curve.name}: {len(r)} rate point(s); method {method} needs at least {need} "
                      f"(run more points, or use {'pchip' if method != 'pchip' else 'more points'})")
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(q))):
        raise BDError(f"{curve.name}: non-finite rate or quality values")
    if np.any(r <= 0):
        raise BDError(f"{curve.name}: rates must be > 0 (log rate); got {r.min():g}")
    order = np.argsort(r, kind="stable")
    r, q = r[order], q[order]
    if np.any(np.diff(r) <= 0):
        raise BDError(f"{curve.name}: two points with the same rate {r[np.argmin(np.diff(r))]:g} bpp; "
                      "rate must strictly increase from point to point")
    step = np.diff(q) if higher else -np.diff(q)
    if np.any(step <= 0):
        i = int(np.argmin(step))
        word = "rise" if higher else "fall"
        raise BDError(f"{curve.name}: not monotonic: quality must {word} with rate ({'higher' if higher else 'lower'}"
                      f" is better), but goes {q[i]:.6g} -> {q[i + 1]:.6g} between {r[i]:.4g} and {r[i + 1]:.4g} bpp; "
                      "a Bjøntegaard delta is undefined here (drop the point or compare another metric)")
    return np.log(r), q


def _interpolant(x: np.ndarray, y: np.ndarray, method: str):
    """A callable with ``.integrate(a, b)`` through (x, y); x strictly increasing."""
    from scipy.interpolate import Akima1DInterpolator, PchipInterpolator

    if method == "pchip":
        return PchipInterpolator(x, y, extrapolate=False)
    if method == "akima":
        return Akima1DInterpolator(x, y)
    poly = np.polynomial.Polynomial.fit(x, y, 3)
    return _Poly(poly)


class _Poly:
    def __init__(self, poly):
        self.poly, self.antideriv = poly, poly.integ()

    def integrate(self, a: float, b: float) -> float:
        return float(self.antideriv(b) - self.antideriv(a))


def _mean_gap(xa, ya, xt, yt, method: str, what: str, names: tuple[str, str]) -> tuple[float, float]:
    """Mean of (test - anchor) of y over the overlap of the x ranges; returns (mean, overlap fraction)."""
    lo, hi = max(xa.min(), xt.min()), min(xa.max(), xt.max())
    if hi <= lo:
        raise BDError(f"no overlap: {names[1]} covers {what} {xt.min():.4g}..{xt.max():.4g} and anchor {names[0]} "
                      f"{xa.min():.4g}..{xa.max():.4g}; run points that reach into the other curve's range")
    span = max(xa.max(), xt.max()) - min(xa.min(), xt.min())
    fa, ft = _interpolant(xa, ya, method), _interpolant(xt, yt, method)
    gap = (ft.integrate(lo, hi) - fa.integrate(lo, hi)) / (hi - lo)
    return float(gap), float((hi - lo) / span)


@dataclass(frozen=True)
class BDResult:
    """BD-rate (%) and BD-metric (test - anchor at equal rate, metric units) of ``test`` vs ``anchor``;
    ``overlap_*``: the fraction of the union range both curves cover (quality for BD-rate, log rate for
    BD-metric)."""

    anchor: str
    test: str
    method: str
    bd_rate: float
    bd_metric: float
    overlap_quality: float
    overlap_rate: float
    higher_better: bool


def bd(anchor: Curve, test: Curve, method: str = "pchip", higher_better: bool = True) -> BDResult:
    """BD-rate and BD-metric of ``test`` against ``anchor`` (see module doc); raises BDError."""
    la, qa = _checked(anchor, method, higher_better)
    lt, qt = _checked(test, method, higher_better)
    names = (anchor.name, test.name)
    # BD-rate: log rate as a function of quality (x increasing whatever the direction)
    ia, it = np.argsort(qa), np.argsort(qt)
    d_log, ov_q = _mean_gap(qa[ia], la[ia], qt[it], lt[it], method, "quality", names)
    d_q, ov_r = _mean_gap(la, qa, lt, qt, method, "log rate", names)
    return BDResult(anchor.name, test.name, method, float(np.expm1(d_log) * 100), d_q, ov_q, ov_r, higher_better)


def bd_rate(anchor: Curve, test: Curve, method: str = "pchip", higher_better: bool = True) -> float:
    """BD-rate in percent (negative = test saves rate)."""
    return bd(anchor, test, method, higher_better).bd_rate


def bd_metric(anchor: Curve, test: Curve, method: str = "pchip", higher_better: bool = True) -> float:
    """BD-metric: test minus anchor at equal rate, in metric units."""
    return bd(anchor, test, method, higher_better).bd_metric


# -- curves from a run's per_image table ---------------------------------------------------------
def image_matrix(per_image, codec: str, metric: str):
    """``(image_ids, bpp[img, pt], value[img, pt])`` for one codec and metric, seeds averaged
    per image (stochastic decoders); images missing any point are dropped. Rows with random weights are
    kept (the caller decides)."""
    df = per_image[(per_image["codec"] == codec) & (per_image["metric"] == metric)]
    if df.empty:
        raise BDError(f"no per-image {metric} rows for codec {codec!r} in this run")
    df = df.astype({"point": str}).groupby(["image_id", "point"], as_index=False)[["bpp", "value"]].mean()
    bpp = df.pivot(index="image_id", columns="point", values="bpp").dropna()
    val = df.pivot(index="image_id", columns="point", values="value").loc[bpp.index].dropna()
    bpp = bpp.loc[val.index]
    return list(val.index), bpp.to_numpy(float), val.to_numpy(float)


def curve_of(name: str, bpp: np.ndarray, value: np.ndarray) -> Curve:
    """The curve the plots draw: per point, mean bpp and mean metric over images."""
    return Curve.of(name, bpp.mean(axis=0), value.mean(axis=0))


@dataclass
class BootstrapResult:
    """Point estimate, ``level`` percentile interval and how many resamples gave a value (``n_valid``
    of ``n_resamples``; a resample whose curves turn non-monotonic or stop overlapping is skipped)."""

    estimate: BDResult
    rate_ci: tuple[float, float]
    metric_ci: tuple[float, float]
    n_images: int
    n_resamples: int
    n_valid: int
    seed: int
    level: float
    notes: list[str] = field(default_factory=list)


def bootstrap_bd(anchor: tuple[str, list, np.ndarray, np.ndarray], test: tuple[str, list, np.ndarray, np.ndarray],
                 method: str = "pchip", higher_better: bool = True, n_resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> BootstrapResult:
    """BD of two per-image curves ``(name, image_ids, bpp[img, pt], value[img, pt])`` with a paired
    percentile bootstrap over the images both have. Same ``seed`` -> same interval."""
    (an, aids, abpp, aval), (tn, tids, tbpp, tval) = anchor, test
    common = sorted(set(aids) & set(tids))
    notes = []
    if len(common) < 2:
        raise BDError(f"{tn} and anchor {an} share {len(common)} image(s); a bootstrap over images needs ≥ 2")
    if len(common) < max(len(aids), len(tids)):
        notes.append(f"{len(common)} images in both curves (anchor {len(aids)}, test {len(tids)}): compared on "
                     "the common ones")
    if len(common) < 10:
        notes.append(f"{len(common)} images: a percentile bootstrap over so few images is too narrow; read the "
                     "interval as a rough guide")
    ai = [aids.index(i) for i in common]
    ti = [tids.index(i) for i in common]
    abpp, aval, tbpp, tval = abpp[ai], aval[ai], tbpp[ti], tval[ti]
    estimate = bd(curve_of(an, abpp, aval), curve_of(tn, tbpp, tval), method, higher_better)
    n = len(common)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples) / n  # weights per resample
    mats = [counts @ m for m in (abpp, aval, tbpp, tval)]
    rates, metrics = [], []
    for k in range(n_resamples):
        try:
            r = bd(Curve.of(an, mats[0][k], mats[1][k]), Curve.of(tn, mats[2][k], mats[3][k]), method, higher_better)
        except BDError:
            continue
        rates.append(r.bd_rate)
        metrics.append(r.bd_metric)
    if n_resamples and len(rates) < 0.95 * n_resamples:
        notes.append(f"only {len(rates)} of {n_resamples} resamples gave a delta (the others made a curve "
                     "non-monotonic or the curves stop overlapping): the interval is unreliable")
    tail = (1 - level) / 2 * 100
    ci = (lambda v: (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))) if v
          else (math.nan, math.nan))
    return BootstrapResult(estimate, ci(rates), ci(metrics), n, n_resamples, len(rates), seed, level, notes)


def point_intervals(per_image, level: float = 0.95):
    """Per (codec, point, metric): ``n`` images, ``mean_bpp``, ``mean``, ``low``, ``high`` — a Student-t
    interval of the mean over images (seeds averaged per image first; ``low == high == mean`` for one
    image)."""
    df = per_image.astype({"point": str}).groupby(["codec", "point", "metric", "image_id"], as_index=False)[
        ["bpp", "value"]].mean()
    g = df.groupby(["codec", "point", "metric"])
    out = g.agg(n=("value", "size"), mean_bpp=("bpp", "mean"), mean=("value", "mean"), sd=("value", "std"))
    out = out.reset_index()
    half = t_half_width(out["n"], out["sd"].fillna(0), level)
    out["low"], out["high"] = out["mean"] - half, out["mean"] + half
    return out.drop(columns="sd")


# -- a run against an anchor codec or a published curve ------------------------------------------
@dataclass
class Row:
    """One line of ``bench bdrate``: ``result`` is None and ``error`` says why when refused;
    ``ci`` is None where no interval exists (set metrics, a published anchor) and ``note`` says why."""

    codec: str
    metric: str
    higher_better: bool | None
    result: BDResult | None = None
    ci: BootstrapResult | None = None
    error: str = ""
    note: str = ""


def compare_run(run_dir, anchor: str | None = None, reference: str | None = None, metrics: list[str] | None = None,
                method: str = "pchip", n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> list[Row]:
    """Every other codec of the run against ``anchor`` (a codec of the run: bootstrap CI over images for
    per-image metrics) or ``reference`` (a published curve, ``bench.reference``: no CI, the published
    per-image values are unknown). Metrics default to all the run has (the reference's columns with
    ``reference``). Raises BDError when nothing can be compared (unknown anchor, random weights, another
    dataset); per-pair refusals are rows with ``error``."""
    from bench.figures import FigureError, results_only
    from bench.store import read_table

    if (anchor is None) == (reference is None):
        raise BDError("give exactly one of --anchor CODEC or --reference NAME")
    per_image, per_set = read_table(run_dir, "per_image"), read_table(run_dir, "per_set")
    try:
        results_only(per_set)
    except FigureError as exc:
        raise BDError(str(exc).replace("plot", "compare")) from exc
    ref = None
    if reference is not None:
        from bench import reference as refmod

        try:
            ref = refmod.load(reference)
        except refmod.ReferenceError as exc:
            raise BDError(str(exc)) from exc
        datasets = set(per_set["dataset"])
        if datasets != {ref.dataset}:
            raise BDError(f"reference {ref.name} is on dataset {ref.dataset}; this run is on "
                          f"{', '.join(sorted(datasets))}")
    codecs = sorted(set(per_set["codec"]))
    if anchor is not None and anchor not in codecs:
        raise BDError(f"anchor {anchor!r} is not in this run (codecs: {', '.join(codecs)})")
    have = sorted(set(per_set["metric"]))
    wanted = metrics or ([m for m in ref.metrics if m in have] if ref else have)
    missing = [m for m in wanted if m not in have]
    if missing:
        raise BDError(f"metric(s) {', '.join(missing)} not in this run (has: {', '.join(have)})")
    if not wanted:
        raise BDError(f"no metric of reference {ref.name} ({', '.join(ref.metrics)}) in this run "
                      f"(has: {', '.join(have)})")
    rows = []
    for metric in wanted:
        try:
            hb = higher_better(metric)
        except BDError as exc:
            rows += [Row(c, metric, None, error=str(exc)) for c in codecs if c != anchor]
            continue
        per_image_metric = metric in set(per_image["metric"])
        if ref is not None:
            if metric not in ref.metrics:
                rows += [Row(c, metric, hb, error=f"reference {ref.name} has no {metric} column") for c in codecs]
                continue
            pts = [(v["bpp"], v[metric]) for v in ref.rows.values() if not math.isnan(v.get(metric, math.nan))]
            a_curve = Curve.of(f"{ref.name} (published)", [p[0] for p in pts], [p[1] for p in pts])
        for codec in codecs:
            if codec == anchor:
                continue
            row = Row(codec, metric, hb)
            try:
                if ref is not None:
                    row.result = bd(a_curve, _set_curve(per_set, codec, metric), method, hb)
                    row.note = "no CI: the anchor is a published curve (per-image values unknown)"
                    n_run = int(per_set[(per_set["codec"] == codec) & (per_set["metric"] == metric)]["n_images"].min())
                    if n_run != int(ref.meta["n_images"]):
                        row.note += (f"; the run's means are over {n_run} images, the published over "
                                     f"{ref.meta['n_images']}")
                elif per_image_metric:
                    row.ci = bootstrap_bd((anchor, *image_matrix(per_image, anchor, metric)),
                                          (codec, *image_matrix(per_image, codec, metric)), method, hb,
                                          n_resamples, seed, level)
                    row.result = row.ci.estimate
                    row.note = "; ".join(row.ci.notes)
                else:
                    row.result = bd(_set_curve(per_set, anchor, metric), _set_curve(per_set, codec, metric),
                                    method, hb)
                    row.note = "no CI: a set metric has no per-image values to resample"
            except BDError as exc:
                row.error = str(exc)
            rows.append(row)
    return rows


def _set_curve(per_set, codec: str, metric: str) -> Curve:
    """A codec's curve from ``per_set``: per point, mean bpp and value (seeds averaged)."""
    df = per_set[(per_set["codec"] == codec) & (per_set["metric"] == metric)]
    if df.empty:
        raise BDError(f"no {metric} rows for codec {codec!r} in this run")
    g = df.astype({"point": str}).groupby("point")[["mean_bpp", "value"]].mean()
    return Curve.of(codec, g["mean_bpp"], g["value"])
