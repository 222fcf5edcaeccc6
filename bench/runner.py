"""The one way to run an experiment: used by the CLI, the tests and CI alike.

    from bench.runner import Experiment, run
    result = run(Experiment(dataset="kodak", data_dir="...", codecs=["jpeg"], points=[10, 50],
                            metrics=["psnr", "ms_ssim"], out="runs/kodak"))

A unit of work is one image × codec card × rate point × seed: encode, store the
bytes, decode from the stored bytes alone with a separate adapter instance built
from the same card (so no state of the encoding instance can reach the decoder),
store the reconstruction, then score it with every requested metric.

A unit's key covers everything that can change its result: the image's pixel
sha256, the card's parameters (``Card.result_hash``, not its prose), the adapter
and its version, the adapter's ``fingerprint(point)`` (library versions, external
programs' sha256, weight files' sha256, dtype), the weights label, point and
seed. Units already in the run directory under the same key are skipped; metric
values already computed under the same metric version are not recomputed; a
set metric is recomputed when any unit it covers, its version or the dataset's
annotations change. Problems with one image, unit or metric are collected and
reported; they never abort the others.
"""
from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench import cards, provenance, registry
from bench.cards import Card
from bench.codecs.base import Codec, CodecError, check_recon
from bench.data.images import ImageError, read_rgb, write_png
from bench.hashing import sha256_bytes
from bench.data.loaders import Item, Loader, Sample, open_dataset
from bench.store import (RunStore, StoreError, UnitPaths, atomic_path, atomic_write_bytes, content_key, output_error,
                         point_str)

DEFAULT_METRICS = ("psnr", "ssim", "ms_ssim", "gmsd")
DTYPES = ("float32", "float16", "bfloat16")
EXECUTORS = ("local", "ray")  # bench.executors.make_executor
DEFAULT_CODECS = ("jpeg", "webp")


class ExperimentError(ValueError):
    """An experiment that cannot start (bad names, missing data, unusable codec)."""


@dataclass
class Experiment:
    """What to run. ``codecs`` items are card names, card file paths, or
    ``{"name": ..., "points": [...]}``; ``points`` overrides every codec's points.
    ``seeds`` apply to stochastic codecs only (deterministic ones use seed 0)."""

    dataset: str | None = None  # None: "folder" when data_dir is given (your images), else "samples"
    data_dir: str | None = None
    codecs: list[Any] = field(default_factory=lambda: list(DEFAULT_CODECS))
    points: list[Any] | None = None
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    seeds: list[int] = field(default_factory=lambda: [0])
    out: str = "runs/default"
    workers: int = 1
    device: str = "cpu"
    dtype: str = "float32"  # learned codecs' compute dtype: float32, float16 or bfloat16
    init: str = "pretrained"  # learned codecs: "pretrained" (official weights) or "random" (smoke tests)
    limit: int | None = None  # only the first N images (quick looks)
    batch: int = 1  # units decoded and scored together (same codec point and image size; see batches())
    metric_batch: int | None = None  # set metrics' images/crops per feature-extractor forward (None: theirs, 32)
    executor: str = "local"  # "local" (inline / process pool) or "ray" (bench.executors)
    address: str | None = None  # --executor ray: an existing cluster's address (None: start a local one)

    def __post_init__(self) -> None:
        if self.dataset is None:
            self.dataset = "folder" if self.data_dir else "samples"

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "Experiment":
        """Load an experiment file (keys = the fields above); ``overrides`` that are not None win."""
        try:
            body = yaml.safe_load(Path(path).read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ExperimentError(f"cannot read experiment file {path}: {exc}") from exc
        body = {} if body is None else body
        if not isinstance(body, dict):
            raise ExperimentError(f"{path}: an experiment file is a YAML mapping of keys (dataset:, codecs:, ...), "
                                  f"got {type(body).__name__}")
        validate_experiment(body, str(path))
        body.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**body)


    def check(self) -> None:
        """Raise ExperimentError for settings that cannot work."""
        from bench.codecs.base import INITS

        if self.workers < 1 or self.batch < 1 or (self.metric_batch is not None and self.metric_batch < 1):
            raise ExperimentError("--workers, --batch and --metric-batch must be at least 1")
        if self.dtype not in DTYPES:
            raise ExperimentError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.init not in INITS:
            raise ExperimentError(f"--init must be one of {', '.join(INITS)}, got {self.init!r}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ExperimentError(f"--device must be cpu, cuda or cuda:N, got {self.device!r}")
        if self.executor not in EXECUTORS:
            raise ExperimentError(f"--executor must be {' or '.join(EXECUTORS)}, got {self.executor!r}")
        if self.address and self.executor != "ray":
            raise ExperimentError("--address is the address of a Ray cluster: give it with --executor ray")

    @property
    def settings(self) -> "CodecSettings":
        return CodecSettings(self.device, self.dtype, self.init)


# key of an experiment file -> (accepted types, what it must be); None allowed where the field defaults to None
_EXPERIMENT_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "dataset": ((str,), "a dataset card name or card file"), "data_dir": ((str,), "a folder"),
    "codecs": ((list,), "a list of codec card names, card files or {name: ..., points: [...]} mappings"),
    "points": ((list,), "a list of rate points"), "metrics": ((list,), "a list of metric names (or [all])"),
    "seeds": ((list,), "a list of integers"), "out": ((str,), "a run directory"),
    "workers": ((int,), "an integer >= 1"), "device": ((str,), "cpu, cuda or cuda:N"),
    "dtype": ((str,), "float32, float16 or bfloat16"), "init": ((str,), "pretrained or random"),
    "limit": ((int,), "an integer"), "batch": ((int,), "an integer >= 1"),
    "metric_batch": ((int,), "an integer >= 1"), "executor": ((str,), "local or ray"),
    "address": ((str,), "a Ray cluster address (HOST:PORT or auto)"),
}


def validate_experiment(body: dict, where: str) -> None:
    """ExperimentError naming ``where`` and every key that is unknown or of the wrong type."""
    import difflib

    problems = []
    unknown = [k for k in body if k not in _EXPERIMENT_TYPES]
    if unknown:
        hints = [f"`{k}:` -> did you mean `{c[0]}:`?" for k in unknown
                 if (c := difflib.get_close_matches(str(k), list(_EXPERIMENT_TYPES), n=1))]
        problems.append(f"unknown keys {sorted(map(str, unknown))}" + (f" ({'; '.join(hints)})" if hints else ""))
    for key, value in body.items():
        if key not in _EXPERIMENT_TYPES:
            continue
        types, what = _EXPERIMENT_TYPES[key]
        if value is None and key in ("dataset", "data_dir", "points", "limit", "metric_batch", "address"):
            continue
        bad = not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
        if not bad and key == "seeds":
            bad = not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        if not bad and key == "metrics":
            bad = not all(isinstance(v, str) for v in value)
        if not bad and key == "codecs":
            for item in value:
                if isinstance(item, dict):
                    if not isinstance(item.get("name"), str):
                        problems.append(f"`codecs:` item {item!r} needs `name:` (a codec card name or file)")
                    extra = set(item) - {"name", "points"}
                    if extra:
                        problems.append(f"`codecs:` item {item.get('name')!r}: unknown keys {sorted(extra)} "
                                        "(an item has name: and points:)")
                    if "points" in item and not isinstance(item["points"], list):
                        problems.append(f"`codecs:` item {item.get('name')!r}: `points:` must be a list")
                elif not isinstance(item, str):
                    problems.append(f"`codecs:` items are card names, card files or mappings, got {item!r}")
        if bad:
            shown = f"{type(value).__name__} {value!r}"[:80]
            problems.append(f"`{key}:` must be {what}, got {shown}")
    if problems:
        raise ExperimentError(f"{where}: " + "; ".join(problems) +
                              f". Valid keys: {', '.join(_EXPERIMENT_TYPES)}")


@dataclass(frozen=True)
class CodecSettings:
    """The run's settings every adapter instance is built with."""

    device: str = "cpu"
    dtype: str = "float32"
    init: str = "pretrained"


@dataclass
class CodecPlan:
    card: Card
    adapter: type[Codec]
    points: list[Any]
    seeds: list[int]
    codec: Codec  # an instance built in the main process: fingerprints, weights label, provenance
    fingerprints: dict[str, dict] = field(default_factory=dict)  # point_str -> codec.fingerprint(point)


@dataclass
class UnitTask:
    dataset: str
    image_id: str
    image_sha256: str
    rgb: np.ndarray
    card: Card
    point: Any
    seed: int
    unit_key: str
    paths: UnitPaths
    need_codec: bool
    metrics: list[str]
    recon_path: Path | None = None
    captions: list[str] = field(default_factory=list)
    fingerprint: dict = field(default_factory=dict)


@dataclass
class RunResult:
    out: Path
    run_id: str
    units_total: int = 0
    units_coded: int = 0
    metric_values: int = 0
    units_skipped: int = 0  # already done: reused
    units_failed: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


# ---------------------------------------------------------------------------- planning
def resolve_card(kind: str, ref: str) -> Card:
    if ref.endswith((".yaml", ".yml")) and Path(ref).is_file():
        return cards.load_file(kind, ref)
    return cards.get(kind, ref)


def plan_codecs(exp: Experiment) -> list[CodecPlan]:
    plans = []
    for item in exp.codecs:
        spec = item if isinstance(item, dict) else {"name": str(item)}
        card = resolve_card("codec", spec["name"])
        adapter = registry.get("codec", card.target).obj
        ok, why = adapter.available(**(card.get("params") or {}))
        if not ok:
            raise ExperimentError(f"codec {card.name!r} (adapter {card.target}) is not available here: {why}")
        points = spec.get("points") or exp.points or card.get("points") or list(adapter.default_points)
        if not points:
            raise ExperimentError(f"codec {card.name!r} has no rate points: give --points or put points: in its card")
        seeds = list(exp.seeds) if adapter.stochastic else [0]
        try:
            codec = build_codec(card, *astuple(exp.settings))
        except CodecError as exc:  # e.g. a dtype the adapter cannot run here
            raise ExperimentError(f"codec {card.name!r}: {exc}") from exc
        needed = codec.required_weights(points)
        if needed:  # learned codecs: every weight file in place before any work (clear offline message)
            from bench import weights

            try:
                weights.require(needed)
            except weights.WeightsError as exc:
                raise weights.WeightsError(f"codec {card.name!r}: {exc}\nOr smoke-test the adapter without any "
                                           "download: --init random") from exc
        try:
            fingerprints = {point_str(p): codec.fingerprint(p) for p in points}
        except (CodecError, OSError, ValueError) as exc:
            raise ExperimentError(f"codec {card.name!r}: {exc}") from exc
        plans.append(CodecPlan(card, adapter, list(points), seeds, codec, fingerprints))
    return plans


def build_codec(card: Card, device: str = "cpu", dtype: str = "float32", init: str = "pretrained") -> Codec:
    """A new adapter instance configured by ``card`` and the run's device, dtype and init."""
    adapter = registry.get("codec", card.target).obj
    try:
        return adapter(device=device, dtype=dtype, init=init, **(card.get("params") or {}))
    except TypeError as exc:
        raise ExperimentError(f"codec card {card.name!r} ({card.path}): bad params for {card.target}: {exc}") from exc


# ---------------------------------------------------------------------------- work (any process)
_worker_codecs: dict[tuple, Codec] = {}
_worker_engine: dict[str, Any] = {}


def _init_worker(threads: int, metrics: list[str], device: str) -> None:
    """Pool worker start: thread count, then torch imported and the metrics built (while the
    main process still plans), so the first task does not pay for them."""
    import torch

    torch.set_num_threads(threads)
    if metrics:
        engine = _engine(metrics, device)
        for name in metrics:
            try:
                engine.scorer(name)
            except Exception:  # noqa: BLE001 - the task that needs it reports the error with its unit
                pass


def _codec(card: Card, settings: CodecSettings, role: str) -> Codec:
    """This process's ``role`` ("encode" or "decode") instance for ``card``: two separate
    instances, so nothing an encoder keeps on itself can reach the decoder."""
    key = (card.hash, settings, role)
    if key not in _worker_codecs:
        _worker_codecs[key] = build_codec(card, *astuple(settings))
    return _worker_codecs[key]


def _engine(names: list[str], device: str):
    """This process's metric engine on ``device``, grown to hold ``names`` (metrics it already
    built are kept while they are still registered: a plugin may have been removed since)."""
    from bench.metrics.engine import MetricEngine

    engine = _worker_engine.get(device)
    if engine is None or not set(names) <= set(engine.names):
        kept = set(engine.names if engine else ()) & set(registry.entries("metric"))
        engine = MetricEngine(sorted(set(names) | kept), device)
        _worker_engine[device] = engine
    return engine


def unit_result(unit_key: str | None = None) -> dict:
    """An empty result of one unit (the shape ``handle`` in :func:`run` records); ``unit_key``
    None: a unit already done (reused), counted and nothing written."""
    return {"unit_key": unit_key, "unit": None, "metrics": {}, "errors": []}


def _where(task: UnitTask) -> str:
    return f"{task.card.name} @ {point_str(task.point)} on {task.image_id}"


def _fail(out: dict, task: UnitTask, exc: Exception) -> None:
    """Record a unit's codec failure: a CodecError & co. as is, anything else as an adapter bug.
    A run directory that cannot take the unit's files (disk full, read-only, forbidden) is also
    marked ``fatal``: every other unit would fail the same way, so the run stops."""
    known = (CodecError, ExperimentError, OSError, ValueError)
    what = str(exc) if isinstance(exc, known) else f"adapter error {type(exc).__name__}: {exc}"
    fatal = output_error(exc, task.paths.bitstream, task.paths.recon) if isinstance(exc, OSError) else None
    if fatal:
        out["fatal"] = f"{_where(task)}: {fatal}"
    out["errors"].append(f"{_where(task)}: {what}")
    out["failed"] = True


def _encode_unit(task: UnitTask, settings: CodecSettings, out: dict) -> tuple[bytes, float] | None:
    """Encode, store the bytes, read them back: (stored bytes, encode seconds), or None (failed)."""
    try:
        encoder = _codec(task.card, settings, "encode")
        t0 = time.perf_counter()
        extra = {"captions": list(task.captions)} if getattr(encoder, "uses_captions", False) else {}
        data = encoder.encode(task.rgb, task.point, task.seed, **extra)
        enc_s = time.perf_counter() - t0
        if not isinstance(data, (bytes, bytearray)):
            raise CodecError(f"encode returned {type(data).__name__}, not bytes")
        atomic_write_bytes(task.paths.bitstream, bytes(data))
        return task.paths.bitstream.read_bytes(), enc_s  # decode from what is on disk, nothing else
    except Exception as exc:  # noqa: BLE001 - this unit fails, the run goes on
        _fail(out, task, exc)
        return None


def _decode_group(decoder: Codec, datas: list[bytes], seeds: list[int]) -> tuple[list[Any], list[float]]:
    """Decode the bitstreams of one codec card: (recon or the exception, seconds) per item.

    Adapters whose batched decode gives exactly the pixels of decoding each bitstream alone
    (``batch_decode_exact``, e.g. the CompressAI zoo) decode them together with
    ``decode_batch``: same-point, same-size items in one forward pass. Its time is shared
    evenly among the items. If the batch fails, every item is decoded on its own, so one
    bad bitstream fails alone. Other adapters decode one bitstream at a time."""
    batched = getattr(decoder, "decode_batch", None)
    if callable(batched) and getattr(decoder, "batch_decode_exact", False) and len(datas) > 1:
        t0 = time.perf_counter()
        try:
            recons = list(batched(datas, seeds))
        except Exception:  # noqa: BLE001 - retried one by one below, which names the culprit
            recons = None
        if recons is not None and len(recons) == len(datas):
            share = (time.perf_counter() - t0) / len(datas)
            return recons, [share] * len(datas)
    results, times = [], []
    for data, seed in zip(datas, seeds):
        t0 = time.perf_counter()
        try:
            results.append(decoder.decode(data, seed))
        except Exception as exc:  # noqa: BLE001 - reported with its unit
            results.append(exc)
        times.append(time.perf_counter() - t0)
    return results, times


def _finish_unit(task: UnitTask, settings: CodecSettings, out: dict, stored: bytes, enc_s: float, recon: Any,
                 dec_s: float) -> np.ndarray | None:
    """Check and store a decoded reconstruction and fill the unit row; returns the recon or None."""
    try:
        if isinstance(recon, Exception):
            raise recon
        decoder = _codec(task.card, settings, "decode")
        recon = check_recon(task.card.name, task.rgb.shape, recon)
        breakdown = decoder.bits_breakdown(stored)
        estimate = getattr(decoder, "estimated_bits", None)  # official rate estimate (CDC): a second row kind
        est_bits = float(estimate(stored)) if callable(estimate) else None
        with atomic_path(task.paths.recon) as tmp:
            write_png(recon, tmp)
    except Exception as exc:  # noqa: BLE001 - this unit fails, the run goes on
        _fail(out, task, exc)
        return None
    h, w = task.rgb.shape[:2]
    bits = 8 * len(stored)
    encoder = _codec(task.card, settings, "encode")
    out["unit"] = dict(
        unit_key=task.unit_key, dataset=task.dataset, image_id=task.image_id, image_sha256=task.image_sha256,
        codec=task.card.name, card_hash=task.card.hash, point=point_str(task.point), seed=task.seed,
        height=h, width=w, bits=bits, bpp=bits / (h * w), rate_kind=encoder.rate_kind, enc_s=enc_s, dec_s=dec_s,
        breakdown=_json(breakdown), bitstream=str(task.paths.bitstream),
        recon=str(task.paths.recon), bitstream_sha256=sha256_bytes(stored), weights=encoder.weights,
        fingerprint=_json(task.fingerprint), est_bits=est_bits)
    return recon


def _code_units(tasks: list[UnitTask], settings: CodecSettings) -> list[tuple[dict, np.ndarray | None]]:
    """Codec work of several units: each encoded and stored on its own, then the stored bytes
    of each codec card decoded together (:func:`_decode_group`) by the card's decode instance;
    units already coded read their stored reconstruction. One (result, recon or None) per task."""
    res: list[tuple[dict, np.ndarray | None]] = []
    todo: dict[str, list[tuple[int, bytes, float]]] = {}  # card hash -> (task index, stored bytes, enc_s)
    for i, task in enumerate(tasks):
        out = unit_result(task.unit_key)
        res.append((out, None))
        if not task.need_codec:
            try:
                res[i] = (out, read_rgb(task.recon_path)[0])
            except ImageError as exc:
                out["errors"].append(f"{_where(task)}: stored reconstruction unreadable ({exc}); "
                                     "delete it to recompute")
            continue
        encoded = _encode_unit(task, settings, out)
        if encoded is not None:
            todo.setdefault(task.card.hash, []).append((i, *encoded))
    for items in todo.values():
        card = tasks[items[0][0]].card
        try:
            decoder = _codec(card, settings, "decode")
        except Exception as exc:  # noqa: BLE001 - every unit of the card fails with the reason
            for i, _, _ in items:
                _fail(res[i][0], tasks[i], exc)
            continue
        recons, times = _decode_group(decoder, [d for _, d, _ in items], [tasks[i].seed for i, _, _ in items])
        for (i, stored, enc_s), recon, dec_s in zip(items, recons, times):
            res[i] = (res[i][0], _finish_unit(tasks[i], settings, res[i][0], stored, enc_s, recon, dec_s))
    return res


def do_units(tasks: list[UnitTask], settings: CodecSettings = CodecSettings()) -> list[dict]:
    """Run a batch of units (see :func:`batches`): codec work for each (learned codecs decode the
    batch's bitstreams together), then every metric once per group of equal-size reconstructions
    (one forward pass on the stacked batch). Reconstructions are dropped as soon as they are
    scored and stored: only the returned rows leave. One {"unit": row or None, "metrics",
    "errors"} per task."""
    from bench.metrics.iqa import MetricError

    device = settings.device
    coded = _code_units(tasks, settings)
    groups: dict[tuple, list[int]] = {}
    for i, (task, (_, recon)) in enumerate(zip(tasks, coded)):
        if recon is not None and task.metrics:
            groups.setdefault((tuple(task.metrics), recon.shape), []).append(i)
    for (names, _), idx in groups.items():
        scores = _engine(list(names), device).score_batch([tasks[i].rgb for i in idx], [coded[i][1] for i in idx],
                                                          list(names), [tasks[i].captions for i in idx])
        for i, values in zip(idx, scores):
            task, out = tasks[i], coded[i][0]
            for name, value in values.items():
                if isinstance(value, MetricError):
                    out["errors"].append(f"{_where(task)}: {value}")
                else:
                    out["metrics"][name] = value
    outs = [out for out, _ in coded]
    coded.clear()  # the reconstructions go now, not when the caller drops the batch
    return outs


def batches(tasks: Iterator[UnitTask | None], size: int) -> Iterator[list[UnitTask] | None]:
    """Units that can share forward passes, at most ``size`` at a time; None (a unit already
    done) passes through at once.

    A batch holds units of one codec card, one rate point and one image size, gathered
    across consecutive images (seeds of a stochastic codec included): a learned codec
    decodes their bitstreams in one forward pass (``decode_batch``) and every per-image
    metric scores them in one forward pass. Units wait in such groups until a group is
    full; when the waiting units span more than ``2 * size`` images the oldest group goes
    out as it is (so at most that many images' pixels wait, and a killed run loses at most
    the waiting units); the rest go out at the end. ``size`` 1 yields each unit at once."""
    if size <= 1:
        for task in tasks:
            yield None if task is None else [task]
        return
    waiting: dict[tuple, list[UnitTask]] = {}  # (card hash, point, image shape) -> tasks; oldest group first
    images: dict[str, int] = {}  # image id -> waiting units of it

    def take(key: tuple) -> list[UnitTask]:
        group = waiting.pop(key)
        for t in group:
            images[t.image_id] -= 1
            if not images[t.image_id]:
                del images[t.image_id]
        return group

    for task in tasks:
        if task is None:
            yield None
            continue
        key = (task.card.hash, point_str(task.point), None if task.rgb is None else task.rgb.shape)
        waiting.setdefault(key, []).append(task)
        images[task.image_id] = images.get(task.image_id, 0) + 1
        if len(waiting[key]) == size:
            yield take(key)
        while len(images) > 2 * size:
            yield take(next(iter(waiting)))
    while waiting:
        yield take(next(iter(waiting)))


def _json(obj: Any) -> str | None:
    import json

    return None if obj is None else json.dumps(obj)


# ---------------------------------------------------------------------------- orchestration
class _Planner:
    """Yields the tasks still to do, loading each image at most once."""

    def __init__(self, exp: Experiment, store: RunStore, loader: Loader, plans: list[CodecPlan],
                 metrics: list[str], result: RunResult) -> None:
        self.exp, self.store, self.loader, self.plans, self.result = exp, store, loader, plans, result
        self.metrics = metrics
        self.specs = {m: registry.get("metric", m).obj for m in metrics}
        self.versions = {m: self.specs[m].version() for m in metrics}
        self.dataset = loader.card.name
        # (codec card name, point_str, seed, image id) -> unit key, for every unit planned
        self.keys: dict[tuple[str, str, int, str], str] = {}
        # the caption files' identity, for codecs that code captions (computed once per run)
        self.captions_key = loader.annotations_fingerprint() if any(
            getattr(p.codec, "uses_captions", False) for p in plans) else None

    def identity(self, item: Item) -> tuple[str, int, int, Sample | None]:
        cached = self.store.cached_image(item.path)
        if cached:
            return (*cached, None)
        sample = self.loader.load(item)
        h, w = sample.rgb.shape[:2]
        self.store.remember_image(item.path, sample.sha256, h, w)
        return sample.sha256, h, w, sample

    def tasks(self, items: list[Item]) -> Iterator[UnitTask]:
        for item in items:
            try:
                sha, h, w, sample = self.identity(item)
            except ImageError as exc:
                self.result.problems.append(f"image {item.id}: {exc}")
                self.result.units_failed += sum(len(p.points) * len(p.seeds) for p in self.plans)
                continue
            if sample is not None and sample.notes:
                self.result.problems.append(f"note: image {item.id}: {'; '.join(sample.notes)}")
            usable = []
            for m in self.metrics:
                try:
                    self.specs[m].check_size(h, w)
                    usable.append(m)
                except ValueError as exc:
                    self.result.problems.append(f"image {item.id}: {exc}")
            todo = [self.task(item, sha, plan, point, seed, usable)
                    for plan in self.plans for point in plan.points for seed in plan.seeds]
            if sample is None and any(todo):
                try:
                    sample = self.loader.load(item)
                except ImageError as exc:  # changed on disk since it was hashed
                    self.result.problems.append(f"image {item.id}: {exc}")
                    self.result.units_failed += sum(t is not None for t in todo)
                    todo = [t for t in todo if t is None]
            for task in todo:
                if task is None:
                    self.result.units_skipped += 1
                else:
                    task.rgb, task.captions = sample.rgb, sample.captions
                yield task

    def task(self, item: Item, sha: str, plan: CodecPlan, point: Any, seed: int,
             metrics: list[str]) -> UnitTask | None:
        pt = point_str(point)
        captions = self.captions_key if getattr(plan.codec, "uses_captions", False) else None
        key = unit_key(sha, plan, pt, seed, captions)
        self.keys[(plan.card.name, pt, seed, item.id)] = key
        done = self.store.unit_done(key)
        have = self.store.metric_versions(key) if done else {}
        todo = [m for m in metrics if have.get(m) != self.versions[m]]
        if done and not todo:
            return None
        paths = self.store.unit_paths(self.dataset, plan.card.name, point_str(point), seed, item.id)
        return UnitTask(self.dataset, item.id, sha, None, plan.card, point, seed, key, paths, not done, todo,
                        self.store.recon_path(key) if done else None, fingerprint=plan.fingerprints[pt])


def unit_key(image_sha256: str, plan: CodecPlan, point: str, seed: int, annotations: dict | None = None) -> str:
    """The resume key of one unit: everything that can change its bytes or pixels, including,
    for codecs that code the dataset's captions (``uses_captions``), the identity of the
    annotation files they come from (``annotations``)."""
    extra = {} if annotations is None else {"annotations": annotations}
    return content_key(image=image_sha256, card=plan.card.result_hash,
                       adapter=f"{plan.card.target}:{plan.adapter.version}", point=point, seed=seed,
                       fingerprint=plan.fingerprints[point], weights=plan.codec.weights, **extra)


def run(exp: Experiment, progress: Callable[[str, int, int], None] | None = None) -> RunResult:
    """Run ``exp`` (resuming whatever ``exp.out`` already holds); returns counts and problems.

    ``progress(description, done, total)`` is called as units finish (the CLI
    draws a Rich progress bar with it)."""
    from bench.metrics.engine import split_kinds

    t_start = time.perf_counter()
    exp.check()
    _worker_codecs.clear()  # this run's adapters are built anew: programs, weights, env as they are now
    ds_card = resolve_card("dataset", exp.dataset)
    loader = open_dataset(ds_card, exp.data_dir)
    loader.check()
    items = loader.items()[: exp.limit] if exp.limit else loader.items()
    plans = plan_codecs(exp)
    selected, notes = select_metrics(exp, loader)
    metrics, set_metrics = split_kinds(selected)
    store = RunStore(exp.out)
    result = RunResult(Path(exp.out), store.run_id, problems=notes)
    planner = _Planner(exp, store, loader, plans, metrics, result)
    record = provenance.collect(exp.device, exp.dtype)
    record["experiment"] = {k: getattr(exp, k) for k in exp.__dataclass_fields__}
    record["dataset"] = {"card": ds_card.path, "card_hash": ds_card.hash, "data_dir": str(loader.data_dir),
                         "n_images": len(items)}
    record["codecs"] = {p.card.name: {"card": p.card.path, "card_hash": p.card.hash,
                                      "card_result_hash": p.card.result_hash, "adapter": p.card.target,
                                      "adapter_version": p.adapter.version, "points": p.points,
                                      "weights": p.codec.weights, "provenance": p.codec.provenance()} for p in plans}
    record["metrics"] = {**planner.versions, **{m: registry.get("metric", m).obj.version() for m in set_metrics}}
    weight_ids = [w for m in metrics + set_metrics for w in getattr(registry.get("metric", m).obj, "weights", ())]
    if weight_ids:
        from bench import weights

        record["weights"] = weights.provenance(weight_ids)
    total = len(items) * sum(len(p.points) * len(p.seeds) for p in plans)
    result.units_total = total
    finished = 0
    set_keys: list[str] = []

    tables_every = _tables_every()
    last_export = time.monotonic()

    def handle(res: dict) -> None:
        """Record one unit's result: the driver is the ledger's only writer."""
        nonlocal finished, last_export
        if res.get("fatal"):  # the run directory takes no more data: stop, keep what is finished
            raise StoreError(res["fatal"])
        finished += 1
        if res["unit_key"] is None:  # reused
            if progress:
                progress("units", finished, total)
            return
        if res["unit"]:
            store.add_unit(res["unit"])
            result.units_coded += 1
        elif res.get("failed"):
            result.units_failed += 1
        if res["metrics"]:
            store.add_metrics(res["unit_key"], res["metrics"], planner.versions, exp.device)
            result.metric_values += len(res["metrics"])
        result.problems.extend(res["errors"])
        if time.monotonic() - last_export >= tables_every:  # tables readable (and growing) while it runs
            store.widen_scope(list(planner.keys.values()), planner.versions)
            store.export_tables()
            last_export = time.monotonic()
        if progress:
            progress("units", finished, total)

    from bench.executors import make_executor

    completed = False
    try:
        with make_executor(exp, metrics) as executor:
            executor.run_units(batches(planner.tasks(items), exp.batch), handle)
            if set_metrics:
                set_keys = run_set_metrics(store, loader, items, plans, planner.keys, set_metrics, exp.device,
                                           result, progress, exp.metric_batch, executor)
        completed = True
    except KeyboardInterrupt:
        result.problems.append("interrupted: finished units are saved; run the same command again to resume")
        raise
    finally:
        try:
            store.set_scope(list(planner.keys.values()), planner.versions, set_keys)
            store.export_tables()
            others = store.outside_scope()
            if others:
                result.problems.append(f"note: {out_dir_note(others)}")
            result.seconds = time.perf_counter() - t_start
            record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            record["summary"] = {"units_total": total, "units_coded": result.units_coded,
                                 "metric_values": result.metric_values, "problems": result.problems}
            store.record_invocation(record)
        except (OSError, sqlite3.Error):
            if completed:  # otherwise the error that stopped the run is the one to report
                raise
        finally:
            store.close()
    return result


def out_dir_note(others: list[tuple]) -> str:
    """One line naming what a run directory holds beyond the current experiment."""
    by_codec: dict[tuple[str, str], list[str]] = {}
    for dataset, codec, point, seed, _ in others:
        by_codec.setdefault((dataset, codec), []).append(point if seed == 0 else f"{point}/s{seed}")
    parts = [f"{codec} on {dataset} @ {', '.join(pts)}" for (dataset, codec), pts in by_codec.items()]
    return (f"the run directory also holds {sum(o[4] for o in others)} units outside this experiment "
            f"(other codecs, points or versions: {'; '.join(parts)}); they are kept but not in its tables")


def metric_needs(spec: Any) -> set[str]:
    """What a metric needs from the dataset besides the images ("captions", "label_map")."""
    return set(getattr(spec, "needs", ())) | ({"captions"} if getattr(spec, "uses_captions", False) else set())


def select_metrics(exp: Experiment, loader: Loader) -> tuple[list[str], list[str]]:
    """The metrics to run and notes on those left out.

    Metrics named explicitly must be runnable: a metric whose dataset lacks what it
    needs (captions, label maps) raises ExperimentError and missing weight files raise
    WeightsError, before any work. With ``all``, such metrics are left out instead and
    a note names what is missing (each weight file's URL, sha256 and path)."""
    from bench.metrics.engine import resolve

    lenient = "all" in exp.metrics
    provides = set(getattr(loader, "provides", ()))
    keep, notes = [], []
    for name in resolve(exp.metrics):
        lacking = metric_needs(registry.get("metric", name).obj) - provides
        if not lacking:
            keep.append(name)
            continue
        msg = f"{name} needs {' and '.join(sorted(lacking))}, which dataset {loader.card.name!r} does not provide"
        if not lenient:
            raise ExperimentError(msg)
        notes.append(f"note: left out {msg}")
    needed = {n: tuple(getattr(registry.get("metric", n).obj, "weights", ())) for n in keep}
    if not any(needed.values()):
        return keep, notes
    from bench import weights

    if not lenient:
        weights.require([w for ws in needed.values() for w in ws])
        return keep, notes
    missing = {n: [w for w in ws if weights.status(w) != "ok"] for n, ws in needed.items()}
    dropped = [n for n, ws in missing.items() if ws]
    if dropped:
        try:
            weights.require([w for n in dropped for w in missing[n]])
        except weights.WeightsError as exc:
            notes.append(f"note: left out {', '.join(dropped)}: {exc}")
    return [n for n in keep if n not in dropped], notes


@dataclass
class SetJob:
    """One set metric at one codec point, planned by :func:`run_set_metrics`: the stored
    reconstructions it reads (``entries``: dataset item, absolute PNG path, in image order) and
    the key its result is stored under. Plain data, so an executor can ship it to a worker."""

    metric: str
    codec: str
    point: str
    seed: int
    key: str
    entries: list[tuple[Item, str]]
    mean_bpp: float
    weights: str | None
    batch_size: int | None = None


_worker_loaders: dict[tuple[str, str], Loader] = {}  # per process: datasets opened for set jobs


def compute_set_job(job: SetJob, dataset: Card, data_dir: str, device: str, cache_dir: str) -> dict:
    """Compute one :class:`SetJob` wherever the executor runs it (this process, a Ray worker):
    ``{"res": compute_set's dict}`` or ``{"error": message}`` (the run goes on without it)."""
    try:
        loader = _worker_loaders.get((dataset.hash, data_dir))
        if loader is None:
            loader = _worker_loaders[(dataset.hash, data_dir)] = open_dataset(dataset, data_dir)
        spec = _with_batch_size(registry.get("metric", job.metric).obj, job.batch_size)
        pairs = _StoredPairs(loader, [(item, Path(recon)) for item, recon in job.entries])
        return {"res": spec.compute_set(pairs, device=device, cache_dir=Path(cache_dir))}
    except (ValueError, OSError, RuntimeError) as exc:
        return {"error": f"{job.metric} for {job.codec} @ {job.point}: {exc}"}


def run_set_metrics(store: RunStore, loader: Loader, items: list[Item], plans: list[CodecPlan],
                    keys: dict[tuple[str, str, int, str], str], names: list[str], device: str, result: RunResult,
                    progress: Callable | None = None, batch_size: int | None = None, executor: Any = None
                    ) -> list[str]:
    """Per-set metrics (FID, KID, mIoU, ...) for each codec point, from the stored reconstructions
    of the units this experiment planned (``keys``: (codec, point, seed, image id) -> unit key).
    Returns the keys of the set results that describe them (computed now or reused).

    Planned here, computed by ``executor`` (``run_set_jobs``; None: one after another in this
    process): on Ray every (codec point, metric) is a task of its own, with a GPU when the run's
    device is cuda. Results are stored here, by the driver only, as they arrive.

    Set metric contract (registry kind "metric", ``kind = "per_set"``): ``available()``,
    ``version()``, ``higher_better`` and ``compute_set(pairs, device, cache_dir)`` where
    ``pairs`` is a sequence of ``(Sample, recon uint8 (H, W, 3))`` that reads each pair from
    disk when it is reached (:class:`_StoredPairs`: ``len`` is free, nothing is kept, so
    memory does not grow with the set); returns a dict with ``value`` (float), ``n_images``
    and optional ``extra`` (protocol, n_patches, ...). ``batch_size`` (``--metric-batch``)
    is given to metrics that have a ``batch_size`` attribute (FID/KID: crops per Inception
    forward pass); ``None`` keeps theirs. Feature caches live under ``<run>/cache`` (written
    atomically, so concurrent jobs may share them).
    A result is keyed by the unit keys of its images, the metric version and, for
    metrics that read captions or label maps, the dataset's annotation files.
    """
    specs = {n: registry.get("metric", n).obj for n in names}
    dataset = loader.card.name
    annotations = loader.annotations_fingerprint()
    set_keys: list[str] = []
    jobs: list[SetJob] = []
    for plan in plans:
        for point in plan.points:
            for seed in plan.seeds:
                pt = point_str(point)
                by_key = {k: it for it in items if (k := keys.get((plan.card.name, pt, seed, it.id)))}
                units = store.units_of(list(by_key))  # the planned units that finished, in image order
                if not units:
                    continue
                for name, spec in specs.items():
                    key = content_key(units=[u[0] for u in units], metric=spec.version(),
                                      annotations=annotations if metric_needs(spec) else None)
                    set_keys.append(key)
                    if store.set_metric_key(dataset, plan.card.name, pt, seed, name) != key:
                        jobs.append(SetJob(name, plan.card.name, pt, seed, key,
                                           [(by_key[u[0]], str(store.root / u[1])) for u in units],
                                           sum(u[2] for u in units) / len(units), units[0][3], batch_size))
    done = 0

    def stored(job: SetJob, out: dict) -> None:
        nonlocal done
        done += 1
        if "error" in out:
            result.problems.append(out["error"])
        else:
            res = out["res"]
            store.add_set_metric(dataset, job.codec, job.point, job.seed, job.metric, float(res["value"]),
                                 int(res["n_images"]), job.key, res.get("extra"), mean_bpp=job.mean_bpp,
                                 weights=job.weights)
        if progress:
            progress("set metrics", done, len(jobs))

    context = (loader.card, str(loader.data_dir), device, str(store.root / "cache"))
    _worker_loaders[(loader.card.hash, context[1])] = loader  # jobs run in this process reuse the run's loader
    if executor is None:
        for job in jobs:
            stored(job, compute_set_job(job, *context))
    else:
        executor.run_set_jobs(jobs, context, stored)
    return set_keys


class _StoredPairs(Sequence):
    """``(Sample, stored reconstruction)`` pairs of one codec point, each read from disk when
    it is reached and not kept: a set metric holds what it accumulates (features, confusion
    matrices), never the set's pixels. ``len`` costs nothing; reading a pair twice reads it twice."""

    def __init__(self, loader: Loader, entries: list[tuple[Item, Path]]) -> None:
        self.loader, self.entries = loader, entries

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        item, recon = self.entries[i]
        return self.loader.load(item), read_rgb(recon)[0]


def _with_batch_size(spec: Any, batch_size: int | None) -> Any:
    """``spec`` itself, or (given a ``batch_size`` and a metric that has one) a copy using it,
    so the registered instance keeps its default."""
    if batch_size is None or getattr(spec, "batch_size", None) in (None, batch_size):
        return spec
    import copy

    spec = copy.copy(spec)
    spec.batch_size = int(batch_size)
    return spec


def _tables_every() -> float:
    """Seconds between table refreshes during a run (``BENCH_TABLES_EVERY``, default 60;
    0: after every unit). The tables are always written at the end as well."""
    raw = os.environ.get("BENCH_TABLES_EVERY", "60")
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise ExperimentError(f"BENCH_TABLES_EVERY must be a number of seconds, got {raw!r}") from None
