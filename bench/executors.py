"""Where units of work run: in this process, on a local process pool, or on a Ray cluster.

One interface, used by :func:`bench.runner.run`::

    with make_executor(exp, metrics) as ex:
        ex.run_units(batches, handle)   # handle(result) is called here, in the driver

Every executor runs the same function, :func:`bench.runner.do_units`, on each
batch (units of one image) and hands each unit's result dict back to ``handle``
in the calling process. Only that process writes the ledger, so a batch that
runs twice (a Ray worker lost mid-batch and the task retried elsewhere) is
recorded once: its files are rewritten atomically with the same bytes and its
rows are written only when a finished result arrives.

* ``local`` (default): ``--workers 1`` runs inline; ``--workers N`` on a pool of N
  spawned processes (one torch thread per core each).
* ``ray``: one Ray task per batch (``num_cpus=1``, plus ``num_gpus=1`` when
  ``--device`` is cuda, so each decode worker gets a GPU of its own), retried up to
  ``RAY_MAX_RETRIES`` times if its worker process or node dies. Without
  ``--address`` a local Ray instance is started with ``--workers`` CPUs (every
  core when ``--workers`` is 1) and stopped at the end; with ``--address`` the run
  joins that cluster. Workers read and write the run directory directly, so on a
  multi-node cluster ``--out`` must be on a filesystem every node mounts at the
  same path (NFS, Lustre, ...); the images travel with the tasks. Ray is an
  optional dependency (the ``ray`` extra), imported only here.

Set metrics (FID, KID, mIoU) come after the units: ``run_set_jobs`` runs one
:class:`bench.runner.SetJob` (one metric at one codec point) at a time in this process
(``local``), or each as a Ray task (``ray``: one CPU, and a GPU with ``--device cuda``),
and hands each result back to the driver, which stores it. Reference features cached under
``<run>/cache`` are written atomically, so concurrent jobs share them safely.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from bench.runner import (EXECUTORS, CodecSettings, Experiment, ExperimentError, SetJob, UnitTask, _init_worker,
                          compute_set_job, do_units, unit_result)

RAY_MAX_RETRIES = 3  # a lost worker's task is retried this many times, each on whatever worker is free

Handle = Callable[[dict], None]
Work = Iterator["list[UnitTask] | None"]
SetHandle = Callable[[SetJob, dict], None]


def skipped() -> dict:
    """The result of a unit already done (reused): counted, nothing written."""
    return unit_result(None)


class Executor:
    """Runs batches of units and hands every unit's result to ``handle`` in this process."""

    name = ""

    def run_units(self, work: Work, handle: Handle) -> None:
        raise NotImplementedError

    def run_set_jobs(self, jobs: list[SetJob], context: tuple, handle: SetHandle) -> None:
        """``compute_set_job(job, *context)`` for each job, ``handle(job, result)`` here; default:
        one after another in this process."""
        for job in jobs:
            handle(job, compute_set_job(job, *context))

    def close(self) -> None:
        """Release workers (idempotent); called on success, error and interrupt alike."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def make_executor(exp: Experiment, metrics: list[str]) -> Executor:
    if exp.executor == "local":
        return LocalExecutor(exp, metrics)
    if exp.executor == "ray":
        return RayExecutor(exp, metrics)
    raise ExperimentError(f"--executor must be {' or '.join(EXECUTORS)}, got {exp.executor!r}")


# ---------------------------------------------------------------------------- local
class LocalExecutor(Executor):
    """Inline (``workers == 1``) or a spawn process pool started at the first unit to do."""

    name = "local"

    def __init__(self, exp: Experiment, metrics: list[str]) -> None:
        self.exp, self.metrics = exp, metrics
        self.pool: ProcessPoolExecutor | None = None

    def run_units(self, work: Work, handle: Handle) -> None:
        if self.exp.workers == 1:
            for batch in work:
                for res in do_units(batch, self.exp.settings) if batch else [skipped()]:
                    handle(res)
            return
        pending = set()
        for batch in work:
            if batch is None:
                handle(skipped())
                continue
            if self.pool is None:
                self.pool = self._start_pool()
            pending.add(self.pool.submit(do_units, batch, self.exp.settings))
            if len(pending) >= 2 * self.exp.workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    for res in fut.result():
                        handle(res)
        for fut in wait(pending).done:
            for res in fut.result():
                handle(res)
        if self.pool is not None:
            self.pool.shutdown(wait=False)  # idle workers exit while the tables are written

    def _start_pool(self) -> ProcessPoolExecutor:
        """``workers`` spawned processes, one torch thread per core each, all started at once;
        each imports torch and builds the metrics before its first task."""
        import multiprocessing as mp

        from bench.tuning import set_for_children

        set_for_children()
        threads = max(1, (os.cpu_count() or 1) // self.exp.workers)
        return ProcessPoolExecutor(self.exp.workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                   initargs=(threads, self.metrics, self.exp.device))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------------- ray
def ray_units(batch: list[UnitTask], settings: CodecSettings, out: str) -> list[dict]:
    """A Ray task: :func:`do_units` on a worker, after checking it sees the run directory."""
    if not (Path(out) / "ledger.sqlite").is_file():
        import socket

        raise ExperimentError(f"the run directory {out} is not visible on node {socket.gethostname()}: on a "
                              "multi-node Ray cluster --out must be on a filesystem every node mounts at the same "
                              "path (NFS, Lustre, ...)")
    return do_units(batch, settings)


def ray_set_job(job: SetJob, context: tuple) -> dict:
    """A Ray task: one set metric at one codec point (:func:`bench.runner.compute_set_job`)."""
    return compute_set_job(job, *context)


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise ExperimentError("--executor ray needs Ray, which is not installed here: pip install ray==2.60.0 (the "
                              "'ray' extra of bench), or use the default --executor local") from exc
    return ray


class RayExecutor(Executor):
    """One Ray task per batch; results are written by this (the driver) process only."""

    name = "ray"

    def __init__(self, exp: Experiment, metrics: list[str]) -> None:
        self.ray = _ray()
        self.exp, self.metrics = exp, metrics
        self.gpu = exp.device.startswith("cuda")
        # a Ray worker sees only the GPU it was given, as cuda:0
        self.settings = CodecSettings("cuda" if self.gpu else exp.device, exp.dtype, exp.init)
        self.started = False  # this run started (and will stop) a local Ray instance
        self.task = None  # the remote function, once connected (at the first unit to do)
        self.refs: list = []

    def _connect(self) -> None:
        """Join or start Ray: at the first unit to do, so a finished run starts nothing."""
        ray, exp = self.ray, self.exp
        if not ray.is_initialized():
            import logging

            kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING,
                                          runtime_env={"env_vars": _worker_env()})
            try:
                if exp.address:
                    ray.init(address=exp.address, **kwargs)
                else:
                    cpus = exp.workers if exp.workers > 1 else (os.cpu_count() or 1)
                    ray.init(num_cpus=cpus, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at {exp.address}" if exp.address else "a local Ray instance"
                raise ExperimentError(f"cannot start or join {where}: {exc}") from exc
            self.started = True
        resources = ray.cluster_resources()
        slots = resources.get("GPU", 0) if self.gpu else resources.get("CPU", 0)
        if slots < 1:
            kind = "GPU" if self.gpu else "CPU"
            raise ExperimentError(f"the Ray cluster has no {kind} for a unit task (resources: {resources}); "
                                  + ("add GPU nodes or use --device cpu" if self.gpu else "add worker nodes"))
        self.in_flight = 2 * int(slots)
        self.task = ray.remote(ray_units).options(num_cpus=1, num_gpus=1 if self.gpu else 0,
                                                  max_retries=RAY_MAX_RETRIES)
        self.set_task = ray.remote(ray_set_job).options(num_cpus=1, num_gpus=1 if self.gpu else 0,
                                                        max_retries=RAY_MAX_RETRIES)

    def run_units(self, work: Work, handle: Handle) -> None:
        out = str(Path(self.exp.out).resolve())
        for batch in work:
            if batch is None:
                handle(skipped())
                continue
            if self.task is None:
                self._connect()
            self.refs.append(self.task.remote(batch, self.settings, out))
            if len(self.refs) >= self.in_flight:
                self._collect(handle, 1)
        while self.refs:
            self._collect(handle, 1)

    def run_set_jobs(self, jobs: list[SetJob], context: tuple, handle: SetHandle) -> None:
        """Each job a Ray task (on a worker's own GPU with --device cuda); results stored by the caller."""
        if not jobs:
            return
        if self.task is None:
            self._connect()
        device = "cuda" if self.gpu else context[2]  # a worker sees only its own GPU
        context = (context[0], context[1], device, context[3])
        pending: dict = {}  # ref -> job; the refs are also in self.refs, so close() cancels them
        for job in jobs:
            ref = self.set_task.remote(job, context)
            pending[ref] = job
            self.refs.append(ref)
            if len(pending) >= self.in_flight:
                self._collect_set(pending, handle)
        while pending:
            self._collect_set(pending, handle)

    def _collect_set(self, pending: dict, handle: SetHandle) -> None:
        (ref,), _ = self.ray.wait(list(pending), num_returns=1)
        job = pending.pop(ref)
        self.refs.remove(ref)
        handle(job, self._get(ref))

    def _get(self, ref):
        """The task's result; ExperimentError with the cause when it raised or kept losing workers."""
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:  # raised inside the task (e.g. run dir not shared)
            cause = getattr(exc, "cause", None)
            raise ExperimentError(str(cause) if isinstance(cause, ExperimentError) else str(exc)) from None
        except self.ray.exceptions.RayError as exc:  # retries used up: workers or nodes kept dying
            raise ExperimentError(f"a Ray task failed {RAY_MAX_RETRIES + 1} times ({type(exc).__name__}: "
                                  f"{exc}); finished units are saved, run the same command again to resume") \
                from None

    def _collect(self, handle: Handle, n: int) -> None:
        done, self.refs = self.ray.wait(self.refs, num_returns=n)
        for ref in done:
            for res in self._get(ref):
                handle(res)

    def close(self) -> None:
        for ref in self.refs:
            self.ray.cancel(ref, force=True)
        self.refs = []
        if self.started:
            self.ray.shutdown()
            self.started = False


def _worker_env() -> dict[str, str]:
    """Environment of Ray workers: this bench importable first, and the malloc settings."""
    from bench.tuning import MALLOC_ENV, wanted

    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, **(MALLOC_ENV if wanted() else {})}
