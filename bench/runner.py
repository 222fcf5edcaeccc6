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
from collections.abc import Callable, Iterator
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
    batch: int = 1  # units of one image scored together (one forward per metric); a kill loses one batch
    executor: str = "local"  # "local" (inline / process pool) or "ray" (bench.executors)
    address: str | None = None  # --executor ray: an existing cluster's address (None: start a local one)

    def __post_init__(self) -> None:
        if self.dataset is None:
            self.dataset = "folder" if self.data_dir else "samples"

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "Experiment":
        """Load an experiment file (keys = the fields above); ``overrides`` that are not None win."""
        try:
            body = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ExperimentError(f"cannot read experiment file {path}: {exc}") from exc
        unknown = set(body) - set(cls.__dataclass_fields__)
        if unknown:
            raise ExperimentError(f"{path}: unknown keys {sorted(unknown)}; valid: {sorted(cls.__dataclass_fields__)}")
        body.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**body)


    def check(self) -> None:
        """Raise ExperimentError for settings that cannot work."""
        from bench.codecs.base import INITS

        if self.workers < 1 or self.batch < 1:
            raise ExperimentError("--workers and --batch must be at least 1")
        if self.dtype not in DTYPES:
            raise ExperimentError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.init not in INITS:
            raise ExperimentError(f"--init must be one of {', '.join(INITS)}, got {self.init!r}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ExperimentError(f"--device must be cpu, cuda or cuda:N, got {self.device!r}")
        if self.executor not in ("local", "ray"):
            raise ExperimentError(f"--executor must be local or ray, got {self.executor!r}")
        if self.address and self.executor != "ray":
            raise ExperimentError("--address is the address of a Ray cluster: give it with --executor ray")

    @property
    def settings(self) -> "CodecSettings":
        return CodecSettings(self.device, self.dtype, self.init)


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
    from bench.metrics.engine import MetricEngine

    engine = _worker_engine.get(device)
    if engine is None or not set(names) <= set(engine.names):
        engine = MetricEngine(sorted(set(names) | set(engine.names if engine else ())), device)
        _worker_engine[device] = engine
    return engine


def _code_unit(task: UnitTask, settings: CodecSettings) -> tuple[dict, np.ndarray | None]:
    """Codec work of one unit (or reading its stored reconstruction): (result, recon or None)."""
    out: dict = {"unit_key": task.unit_key, "unit": None, "metrics": {}, "errors": []}
    where = f"{task.card.name} @ {point_str(task.point)} on {task.image_id}"
    if not task.need_codec:
        try:
            return out, read_rgb(task.recon_path)[0]
        except ImageError as exc:
            out["errors"].append(f"{where}: stored reconstruction unreadable ({exc}); delete it to recompute")
            return out, None
    try:
        encoder = _codec(task.card, settings, "encode")
        t0 = time.perf_counter()
        extra = {"captions": list(task.captions)} if getattr(encoder, "uses_captions", False) else {}
        data = encoder.encode(task.rgb, task.point, task.seed, **extra)
        enc_s = time.perf_counter() - t0
        if not isinstance(data, (bytes, bytearray)):
            raise CodecError(f"encode returned {type(data).__name__}, not bytes")
        atomic_write_bytes(task.paths.bitstream, bytes(data))
        stored = task.paths.bitstream.read_bytes()  # decode from what is on disk, nothing else
        decoder = _codec(task.card, settings, "decode")
        t0 = time.perf_counter()
        recon = decoder.decode(stored, task.seed)
        dec_s = time.perf_counter() - t0
        recon = check_recon(task.card.name, task.rgb.shape, recon)
        breakdown = decoder.bits_breakdown(stored)
        estimate = getattr(decoder, "estimated_bits", None)  # official rate estimate (CDC): a second row kind
        est_bits = float(estimate(stored)) if callable(estimate) else None
        with atomic_path(task.paths.recon) as tmp:
            write_png(recon, tmp)
    except (CodecError, ExperimentError, OSError, ValueError) as exc:
        fatal = output_error(exc, task.paths.bitstream, task.paths.recon) if isinstance(exc, OSError) else None
        if fatal:  # disk full, read-only or forbidden: every other unit would fail the same way
            out["fatal"] = f"{where}: {fatal}"
        out["errors"].append(f"{where}: {exc}")
        out["failed"] = True
        return out, None
    except Exception as exc:  # an adapter bug: this unit fails, the run goes on
        out["errors"].append(f"{where}: adapter error {type(exc).__name__}: {exc}")
        out["failed"] = True
        return out, None
    h, w = task.rgb.shape[:2]
    bits = 8 * len(stored)
    out["unit"] = dict(
        unit_key=task.unit_key, dataset=task.dataset, image_id=task.image_id, image_sha256=task.image_sha256,
        codec=task.card.name, card_hash=task.card.hash, point=point_str(task.point), seed=task.seed,
        height=h, width=w, bits=bits, bpp=bits / (h * w), rate_kind=encoder.rate_kind, enc_s=enc_s, dec_s=dec_s,
        breakdown=_json(breakdown), bitstream=str(task.paths.bitstream),
        recon=str(task.paths.recon), bitstream_sha256=sha256_bytes(stored), weights=encoder.weights,
        fingerprint=_json(task.fingerprint), est_bits=est_bits)
    return out, recon


def do_units(tasks: list[UnitTask], settings: CodecSettings = CodecSettings()) -> list[dict]:
    """Run units of one image: codec work for each, then every metric once on the batch of
    their reconstructions. Returns one {"unit": row or None, "metrics", "errors"} per task."""
    from bench.metrics.iqa import MetricError

    device = settings.device
    coded = [_code_unit(t, settings) for t in tasks]
    groups: dict[tuple, list[int]] = {}
    for i, (task, (_, recon)) in enumerate(zip(tasks, coded)):
        if recon is not None and task.metrics:
            groups.setdefault(tuple(task.metrics), []).append(i)
    for names, idx in groups.items():
        scores = _engine(list(names), device).score_batch([tasks[i].rgb for i in idx], [coded[i][1] for i in idx],
                                                          list(names), [tasks[i].captions for i in idx])
        for i, values in zip(idx, scores):
            task, out = tasks[i], coded[i][0]
            for name, value in values.items():
                if isinstance(value, MetricError):
                    out["errors"].append(f"{task.card.name} @ {point_str(task.point)} on {task.image_id}: {value}")
                else:
                    out["metrics"][name] = value
    return [out for out, _ in coded]


def batches(tasks: Iterator[UnitTask | None], size: int) -> Iterator[list[UnitTask] | None]:
    """Consecutive tasks of the same image, at most ``size`` at a time; None (a unit already
    done) passes through on its own."""
    batch: list[UnitTask] = []
    for task in tasks:
        if batch and (task is None or task.image_id != batch[0].image_id or len(batch) == size):
            yield batch
            batch = []
        if task is None:
            yield None
        else:
            batch.append(task)
    if batch:
        yield batch


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
            set_keys = run_set_metrics(store, loader, items, plans, planner.keys, set_metrics, exp.device, result,
                                       progress)
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


def run_set_metrics(store: RunStore, loader: Loader, items: list[Item], plans: list[CodecPlan],
                    keys: dict[tuple[str, str, int, str], str], names: list[str], device: str, result: RunResult,
                    progress: Callable | None = None) -> list[str]:
    """Per-set metrics (FID, KID, mIoU, ...) for each codec point, from the stored reconstructions
    of the units this experiment planned (``keys``: (codec, point, seed, image id) -> unit key).
    Returns the keys of the set results that describe them (computed now or reused).

    Set metric contract (registry kind "metric", ``kind = "per_set"``): ``available()``,
    ``version()``, ``higher_better`` and ``compute_set(pairs, device, cache_dir)`` where
    ``pairs`` is a list of ``(Sample, recon uint8 (H, W, 3))``; returns a dict with
    ``value`` (float), ``n_images`` and optional ``extra`` (protocol, n_patches, ...).
    A result is keyed by the unit keys of its images, the metric version and, for
    metrics that read captions or label maps, the dataset's annotation files.
    """
    specs = {n: registry.get("metric", n).obj for n in names}
    dataset = loader.card.name
    annotations = loader.annotations_fingerprint()
    groups = [(p, pt, sd) for p in plans for pt in p.points for sd in p.seeds]
    samples: dict[str, Sample] = {}
    set_keys: list[str] = []
    for i, (plan, point, seed) in enumerate(groups):
        pt = point_str(point)
        by_key = {it_key: it for it in items if (it_key := keys.get((plan.card.name, pt, seed, it.id)))}
        units = store.units_of(list(by_key))  # the planned units that finished, in image order
        if not units:
            continue
        mean_bpp = sum(u[2] for u in units) / len(units)
        for name, spec in specs.items():
            key = content_key(units=[u[0] for u in units], metric=spec.version(),
                              annotations=annotations if metric_needs(spec) else None)
            set_keys.append(key)
            if store.set_metric_key(dataset, plan.card.name, pt, seed, name) == key:
                continue
            try:
                pairs = []
                for unit, recon, _, _ in units:
                    it = by_key[unit]
                    if it.id not in samples:
                        samples[it.id] = loader.load(it)
                    pairs.append((samples[it.id], read_rgb(store.root / recon)[0]))
                res = spec.compute_set(pairs, device=device, cache_dir=store.root / "cache")
            except (ValueError, OSError, RuntimeError) as exc:
                result.problems.append(f"{name} for {plan.card.name} @ {pt}: {exc}")
                continue
            store.add_set_metric(dataset, plan.card.name, pt, seed, name, float(res["value"]), int(res["n_images"]),
                                 key, res.get("extra"), mean_bpp=mean_bpp, weights=units[0][3])
        if progress:
            progress("set metrics", i + 1, len(groups))
    return set_keys


def _tables_every() -> float:
    """Seconds between table refreshes during a run (``BENCH_TABLES_EVERY``, default 60;
    0: after every unit). The tables are always written at the end as well."""
    raw = os.environ.get("BENCH_TABLES_EVERY", "60")
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise ExperimentError(f"BENCH_TABLES_EVERY must be a number of seconds, got {raw!r}") from None
