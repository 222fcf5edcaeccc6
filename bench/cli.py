"""The ``bench`` command line (Typer + Rich)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from bench import cards, registry
from bench.cli_weights import weights_app

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help="Evaluate image codecs: rate from stored "
                  "bytes, reconstructions decoded from bytes alone, many metrics, resumable runs.")
codecs_app = typer.Typer(no_args_is_help=True, help="Codec cards and adapters.")
metrics_app = typer.Typer(no_args_is_help=True, help="Quality metrics.")
datasets_app = typer.Typer(no_args_is_help=True, help="Dataset cards.")
app.add_typer(codecs_app, name="codecs")
app.add_typer(metrics_app, name="metrics")
app.add_typer(datasets_app, name="datasets")
app.add_typer(weights_app, name="weights")

console = Console()
err = Console(stderr=True)
if not console.is_terminal:  # piped or captured: wide tables instead of 80 columns of ellipses
    console.width = 200


def _split(value: Optional[str]) -> Optional[list[str]]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _point(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _set_programs(items: Optional[list[str]]) -> None:
    from bench.codecs.external import set_program_paths

    try:
        set_program_paths(items or [])
    except ValueError as exc:
        _fail(str(exc))


@app.command("run")
def run_cmd(
    experiment: Optional[Path] = typer.Argument(None, help="Experiment YAML (keys as the options below; options "
                                                "given on the command line win)."),
    dataset: Optional[str] = typer.Option(None, help="Dataset card name or path.",
                                          show_default="samples; folder when --data-dir is given"),
    data_dir: Optional[str] = typer.Option(None, help="Folder holding the dataset's files (alone: your own images).",
                                           show_default="the card's place"),
    codec: Optional[str] = typer.Option(None, help="Comma list of codec card names or card paths.",
                                        show_default="jpeg,webp"),
    points: Optional[str] = typer.Option(None, help="Comma list of rate points for every codec.",
                                         show_default="each card's points"),
    metrics: Optional[str] = typer.Option(None, help="Comma list of metrics, 'all' or 'none'.",
                                          show_default="psnr,ssim,ms_ssim,gmsd"),
    seeds: Optional[str] = typer.Option(None, help="Comma list of decoder seeds (stochastic codecs only).",
                                        show_default="0"),
    out: Optional[str] = typer.Option(None, help="Run directory; re-running the same command resumes it.",
                                      show_default="runs/default"),
    workers: Optional[int] = typer.Option(None, help="Parallel worker processes (--executor ray without --address: "
                                          "the local Ray instance's CPUs, 1 = every core).", show_default="1"),
    executor: Optional[str] = typer.Option(None, help="local (this machine: inline or a process pool) or ray (Ray "
                                           "tasks; needs the 'ray' extra of bench).", show_default="local"),
    address: Optional[str] = typer.Option(None, help="--executor ray: address of a running Ray cluster (host:port "
                                          "or 'auto'); the run directory must be on a filesystem every node mounts.",
                                          show_default="start a local Ray instance"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or cuda:N.", show_default="cpu"),
    dtype: Optional[str] = typer.Option(None, help="Learned codecs' compute dtype: float32, float16 or bfloat16 "
                                        "(reduced precision is for GPUs).", show_default="float32"),
    init: Optional[str] = typer.Option(None, help="Learned codecs' weights: pretrained (official files) or random "
                                       "(seeded random weights: a smoke test with no download; such rows are "
                                       "labelled weights=random and kept out of figures and comparisons).",
                                       show_default="pretrained"),
    limit: Optional[int] = typer.Option(None, help="Only the first N images.", show_default="all"),
    batch: Optional[int] = typer.Option(None, help="Units decoded and scored together: same codec point and image "
                                        "size, across images; learned codecs decode them in one forward pass, each "
                                        "metric scores them in one (useful on GPU). A killed run loses at most one "
                                        "batch.", show_default="1"),
    metric_batch: Optional[int] = typer.Option(None, help="Images (FID/KID: crops) per feature-extractor forward "
                                               "pass of set metrics.", show_default="32"),
    plot: bool = typer.Option(True, help="Write rate–metric plots when done."),
    program: Optional[list[str]] = typer.Option(None, "--program", help="NAME=PATH: run this executable as program "
                                                "NAME, e.g. EncoderAppStatic=/opt/vtm/bin/EncoderAppStatic "
                                                "(repeatable; same as setting BENCH_<NAME>).",
                                                show_default="card param, BENCH_<NAME>, then PATH"),
) -> None:
    """Run (or resume) an experiment and print a per-point summary."""
    from bench.runner import Experiment, ExperimentError, run

    _set_programs(program)
    overrides = dict(dataset=dataset, data_dir=data_dir, codecs=_split(codec),
                     points=[_point(p) for p in _split(points)] if points else None, metrics=_split(metrics),
                     seeds=[int(s) for s in _split(seeds)] if seeds else None, out=out, workers=workers,
                     executor=executor, address=address,
                     device=device, dtype=dtype, init=init, limit=limit, batch=batch,
                     metric_batch=metric_batch)
    try:
        exp = (Experiment.from_yaml(experiment, **overrides) if experiment
               else Experiment(**{k: v for k, v in overrides.items() if v is not None}))
    except (ExperimentError, TypeError) as exc:
        _fail(str(exc))
    if exp.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            _fail(f"--device {exp.device} asked for, but torch sees no CUDA device here; use --device cpu")
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=err, transient=False)
    tasks: dict[str, int] = {}

    def progress(desc: str, done: int, total: int) -> None:
        # started on the first report, so set-up errors print before any bar
        if not tasks:
            bar.start()
        if desc not in tasks:
            tasks[desc] = bar.add_task(f"{exp.dataset}: {desc}", total=total)
        bar.update(tasks[desc], completed=done, total=total)

    try:
        result = run(exp, progress)
    except KeyboardInterrupt:
        bar.stop()
        err.print("[yellow]interrupted:[/] finished units are saved; run the same command again to resume.")
        raise typer.Exit(130)
    except (KeyError, ValueError, OSError) as exc:
        bar.stop()
        _fail(str(exc))
    bar.stop()
    _print_summary(result.out)
    console.print(f"{result.units_coded} units coded, {result.units_skipped} reused, {result.units_failed} failed, "
                  f"{result.metric_values} metric values computed, in {result.seconds:.1f} s → {result.out}")
    if plot:
        from bench.figures import FigureError, plot_run

        try:
            files = plot_run(result.out)
        except FigureError as exc:
            err.print(f"no plots: {exc}", style="yellow", highlight=False, markup=False, soft_wrap=True)
            files = []
        if files:
            console.print(f"plots: {result.out / 'plots'} ({len(files)} files)")
    real = [p for p in result.problems if not p.startswith("note:")]
    for p in result.problems:
        label = "" if p.startswith("note:") else "problem: "
        err.print(label + p, style="yellow" if label == "" else "red", highlight=False, markup=False, soft_wrap=True)
    if real:
        raise typer.Exit(1)


def _print_summary(run_dir: Path) -> None:
    """The per-point table: one row per codec, point and seed; mean bpp and one column per metric.
    Each value is a mean over the images it covers: where that is fewer than the point's
    images (a metric that does not fit some sizes), the cell says over how many."""
    import pyarrow.parquet as pq

    from bench.store import StoreError

    path = Path(run_dir) / "per_set.parquet"
    if not path.exists():
        raise StoreError(f"{path} does not exist: is {run_dir} a finished bench run directory?")
    rows = pq.ParquetFile(path).read().to_pylist()  # ParquetFile: no pandas import
    if not rows:
        console.print("no results yet")
        return
    metrics = sorted({r["metric"] for r in rows})
    points: dict[tuple, dict] = {}
    for r in rows:
        label = (r["codec"] + (" (random weights)" if r.get("weights") == "random" else "")
                 + (" (estimated rate)" if r.get("rate_kind") == "estimated" else ""))
        entry = points.setdefault((label, r["point"], r["seed"]), {"bpp": None, "n": {}, "n_bpp": -1})
        entry[r["metric"]] = r["value"]
        entry["n"][r["metric"]] = r["n_images"]
        if r["n_images"] > entry["n_bpp"]:  # bpp over every image of the point
            entry["bpp"], entry["n_bpp"] = r["mean_bpp"], r["n_images"]
    counts = {n for e in points.values() for n in e["n"].values()}
    title = (f"mean over {counts.pop()} images" if len(counts) == 1
             else "mean over the images each value covers (n = images, where fewer than the point's)")
    table = Table(title=f"{rows[0]['dataset']} — {title}")
    for col in ["codec", "point", "seed", "bpp", *metrics]:
        table.add_column(col, justify="left" if col in ("codec", "point") else "right")

    def cell(vals: dict, metric: str) -> str:
        v = vals.get(metric)
        if v is None:
            return ""
        n, most = vals["n"].get(metric), vals["n_bpp"]
        return f"{v:.4f}" + (f" (n={n})" if n is not None and n < most else "")

    for (codec, point, seed), vals in sorted(points.items(), key=lambda kv: (kv[0][0], kv[1]["bpp"] or 0)):
        table.add_row(codec, point, str(seed), cell(vals, "bpp"), *[cell(vals, m) for m in metrics])
    console.print(table)


@app.command("plot")
def plot_cmd(run_dir: Path = typer.Argument(..., help="A run directory."),
             out: Optional[Path] = typer.Option(None, help="Where to write plots [default: RUN/plots]."),
             metrics: Optional[str] = typer.Option(None, help="Comma list of metrics [default: all in the run].")):
    """Write one rate–metric plot per metric (PNG and SVG)."""
    from bench.figures import FigureError, plot_run
    from bench.store import StoreError

    try:
        files = plot_run(run_dir, out, _split(metrics))
    except (StoreError, FigureError) as exc:
        _fail(str(exc))
    for f in files:
        console.print(str(f))


@app.command("summary")
def summary_cmd(run_dir: Path = typer.Argument(..., help="A run directory.")):
    """Print a run's per-point table."""
    from bench.store import StoreError

    try:
        _print_summary(run_dir)
    except StoreError as exc:
        _fail(str(exc))


def _availability_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*r)
    console.print(table)


def _status(entry, **params) -> str:
    ok, why = entry.available(**params)
    return "[green]yes[/]" if ok else f"[red]no[/]: {why}"


def _sampler(params: dict) -> str:
    """"; sampler ddim, 65 steps, γ 0.8" for diffusion decoders' cards (those with ``steps``), else ""."""
    if "steps" not in params:
        return ""
    parts = [str(params.get("sampler", "ddim")), f"{params['steps']} steps"]
    parts += [f"γ {params['gamma']}"] if "gamma" in params else []
    parts += [f"guidance {params['guidance_scale']}"] if "guidance_scale" in params else []
    return "; sampler " + ", ".join(parts)


@codecs_app.command("list")
def codecs_list():
    """Codec cards, their adapters, rate points and whether they run here."""
    rows = []
    for name, card in sorted(cards.cards("codec").items()):
        try:
            entry = registry.get("codec", card.target)
            status = _status(entry, **(card.get("params") or {}))
        except KeyError as exc:
            status = f"[red]no[/]: {exc}"
        pts = ", ".join(map(str, card.get("points") or [])) + _sampler(card.get("params") or {})
        rows.append([name, card.target, f"{card.get('point_name', 'quality')}: {pts}", card.get("colour", ""),
                     card.get("licence", ""), status])
    _availability_table("codecs", ["card", "adapter", "points", "colour contract", "licence", "available"], rows)
    for e in registry.plugin_errors:
        err.print(f"[red]{e}[/]")


@codecs_app.command("check")
def codecs_check(
    codec: str = typer.Argument(..., help="Codec card name or card file."),
    init: str = typer.Option("pretrained", help="Learned codecs: pretrained (weight files in place) or random "
                             "(seeded random weights: checks the adapter with no download)."),
    point: Optional[list[str]] = typer.Option(None, "--point", help="Rate point to check (repeatable).",
                                              show_default="the card's first and last"),
    images: int = typer.Option(2, help="Real images checked at full size."),
    sizes: str = typer.Option("7x5,513x769", help="Odd sizes, HxW comma list: crops of real images ('' for none)."),
    data_dir: Optional[str] = typer.Option(None, help="Check on the images in this folder.",
                                           show_default="Kodak in ../shared, else scikit-image's photos"),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    dtype: str = typer.Option("float32", help="Learned codecs' compute dtype."),
    timeout: float = typer.Option(10.0, help="Seconds a decoder may take on corrupt bytes, plus 5x its time on the "
                                  "intact bytes."),
    program: Optional[list[str]] = typer.Option(None, "--program", help="NAME=PATH: run this executable as program "
                                                "NAME, e.g. EncoderAppStatic=/opt/vtm/bin/EncoderAppStatic "
                                                "(repeatable; same as setting BENCH_<NAME>).",
                                                show_default="card param, BENCH_<NAME>, then PATH"),
):
    """Check that a codec adapter and its card keep bench's contract; exits 1 on any failure."""
    import json

    from rich.text import Text

    from bench.codecs.check import parse_size, run_checks

    _set_programs(program)
    try:
        size_list = [parse_size(s) for s in _split(sizes) or []]
    except ValueError as exc:
        _fail(str(exc))
    try:
        report = run_checks(codec, init=init, points=[_point(p) for p in point or []] or None, images=images,
                            sizes=size_list, data_dir=data_dir, device=device, dtype=dtype, timeout=timeout)
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    card = report.card
    console.print(f"[bold]{card.name}[/] ({card.path or 'default card'}) -> adapter {report.adapter or card.target}; "
                  f"init {report.init}; points {report.points}", highlight=False, soft_wrap=True)
    if any(c.data for c in report.coded):
        table = Table(title="round trips (PSNR: decoded here; dec s: in the separate process)")
        for c in ("image", "size", "point", "bytes", "bpp", "PSNR dB", "enc s", "dec s"):
            table.add_column(c, justify="left" if c in ("image", "point") else "right")
        for c in report.coded:
            p, fresh = c.psnr, c.fresh or {}
            table.add_row(c.image.id, c.image.size, str(c.point), str(len(c.data)) if c.data else "-",
                          f"{c.bpp:.4f}" if c.data else "-", "-" if p is None else f"{p:.2f}",
                          f"{c.enc_s:.3f}" if c.data else "-", f"{fresh['seconds']:.3f}" if fresh.get("ok") else "-")
        console.print(table)
    styles = {"pass": "green", "warn": "yellow", "fail": "bold red", "n/a": "dim", "skip": "dim"}
    width = max(len(c.name) for c in report.checks)
    for c in report.checks:  # one line per check (long reasons are not cut or wrapped)
        line = Text("  ")
        line.append(f"{c.status.upper():<4}", style=styles[c.status])
        line.append(f"  {c.name:<{width}}  {c.detail}")
        console.print(line, soft_wrap=True)
    for p, fp in report.fingerprints.items():
        console.print(Text(f"fingerprint({p}) = {json.dumps(fp, sort_keys=True)}"), soft_wrap=True)
    counts = {s: sum(c.status == s for c in report.checks) for s in ("pass", "warn", "fail", "n/a", "skip")}
    console.print(f"{card.name}: {counts['pass']} passed, {counts['warn']} warnings, {counts['fail']} failed, "
                  f"{counts['n/a']} n/a, {counts['skip']} not run, in {report.seconds:.1f} s", highlight=False)
    if report.failed:
        raise typer.Exit(1)


@codecs_app.command("setup")
def codecs_setup(
    family: str = typer.Argument(..., help="Codec family whose separate environment to create: hific."),
    force: bool = typer.Option(False, help="Rebuild even if a complete environment exists."),
    python: Optional[str] = typer.Option(None, help="CPython 3.9-3.11 to build it from.",
                                         show_default="this Python if it fits, else python3.11/3.10/3.9"),
):
    """Create (or reuse) the isolated environment a codec family runs in (HiFiC: TensorFlow 2.14, ~1.9 GB)."""
    if family != "hific":
        _fail(f"no separate environment for {family!r}; families with one: hific")
    from bench.codecs.hific.env import EnvError, ensure_env

    try:
        ensure_env(force=force, python=python, log=lambda m: console.print(m, highlight=False, soft_wrap=True))
    except EnvError as exc:
        _fail(str(exc))


@codecs_app.command("new")
def codecs_new(
    name: str = typer.Argument(..., help="Codec name (lower case, digits, dashes): card, adapter and entry point."),
    kind: str = typer.Option("classical", help="classical (a Python library), external (encoder/decoder "
                             "programs) or torch (a learned codec)."),
    out: Path = typer.Option(Path("."), help="Folder to write the package folder NAME into."),
):
    """Write a codec plugin package: pyproject with the entry points, adapter, card, test, README."""
    from bench.scaffold import ScaffoldError, names, new_plugin

    try:
        root = new_plugin(name, kind, out)
    except ScaffoldError as exc:
        _fail(str(exc))
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        console.print(f"wrote {f}", highlight=False)
    init = " --init random" if kind == "torch" else ""
    console.print(f"next: write the bodies that raise NotImplementedError in {root / names(name)['pkg'] / 'adapter.py'}, "
                  f"then\n  pip install -e {root}\n  bench codecs check {name}{init}", highlight=False)


@metrics_app.command("list")
def metrics_list():
    """Metrics, their conventions (colour space, range, direction), licences, and whether they run here."""
    entries = sorted(registry.entries("metric").items())
    licences = sorted({getattr(e.obj, "licence", "") or "not stated" for _, e in entries})
    rows = []
    for name, entry in entries:
        m = entry.obj  # plugins need not derive from bench.metrics.base: read with defaults
        unit = getattr(m, "unit", "")
        rows.append([name, getattr(m, "kind", "per_image").replace("per_", ""), getattr(m, "mode", ""),
                     "higher" if m.higher_better else "lower", getattr(m, "value_range", "") + (
                         f" [{unit}]" if unit else ""), getattr(m, "colour_space", ""),
                     "yes" if getattr(m, "learned", False) else "no",
                     f"[{licences.index(getattr(m, 'licence', '') or 'not stated') + 1}]",
                     getattr(m, "convention", ""), _status(entry)])
    _availability_table("metrics", ["metric", "per", "ref", "better", "range", "colour space", "learned", "licence",
                                    "convention", "available"], rows)
    for i, lic in enumerate(licences, 1):
        console.print(f"[{i}] {lic}", highlight=False, markup=False)


@datasets_app.command("list")
def datasets_list():
    """Dataset cards, their protocols and whether their files are in their default place (and how to get them)."""
    from bench.data.loaders import open_dataset

    rows = []
    for name, card in sorted(cards.cards("dataset").items()):
        try:
            loader = open_dataset(card)
            if hasattr(loader, "status"):  # prepared sets: prepared / partial / differs / missing
                state, text = loader.status()
                colour = {"prepared": "green", "partial": "yellow"}.get(state, "red")
                status = f"[{colour}]{state}[/]: {text}"
            else:
                loader.check()
                status = f"[green]yes[/] ({len(loader.items())} images in {loader.data_dir})"
        except (OSError, KeyError) as exc:
            status = "[red]no[/]: " + str(exc).splitlines()[0]
            if card.get("prepare"):
                status += f"; get it: `bench datasets prepare {name}`"
        rows.append([name, card.target, str(card.get("count") or (card.get("prepare") or {}).get("expect", {}).get("count", "")),
                     card.get("protocol", ""), status])
    _availability_table("datasets", ["card", "loader", "count", "protocol", "available"], rows)


@datasets_app.command("prepare")
def datasets_prepare(
    name: str = typer.Argument(..., help="Dataset card name or path."),
    from_: Optional[list[Path]] = typer.Option(None, "--from", help="Archives, a folder holding them, or a folder of "
                                               "their extracted contents (repeatable). Nothing is downloaded for these."),
    data_dir: Optional[str] = typer.Option(None, help="Where to write the prepared set (default: the card's data "
                                           "dir: its env variable, $BENCH_DATA/NAME or ~/.cache/bench/datasets/NAME)."),
    download: bool = typer.Option(True, help="Download archives not found locally (resumable, sha256-checked)."),
    ids: Optional[Path] = typer.Option(None, help="Use this id list instead of the card's selection rule: one file "
                                       "stem or COCO image id per line (e.g. a published COCO 30k list)."),
):
    """Download (or take --from) the official archives, apply the card's protocol, write the prepared folder and
    its manifest (per-image pixel sha256), and print the manifest's sha256. Re-running resumes."""
    from bench.data.loaders import DatasetError
    from bench.data.prepare import prepare
    from bench.runner import resolve_card

    card = resolve_card("dataset", name)
    if ids is not None:
        from bench.data.prepare import with_ids

        lines = [ln.split(",")[0].strip() for ln in ids.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        card = with_ids(card, lines, str(ids))
        console.print(f"selection: {len(lines)} ids from {ids} (not the card's rule)", highlight=False)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=err, transient=True) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: Optional[int]) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        try:
            res = prepare(card, data_dir, from_ or (), fetch=download, progress=progress)
        except DatasetError as exc:
            _fail(str(exc), 1)
    for p in res.problems:
        err.print(f"[yellow]problem:[/] {p}", highlight=False, soft_wrap=True)
    for n in res.notes:
        console.print(f"note: {n}", highlight=False, soft_wrap=True)
    want = card.get("manifest_sha256")
    verdict = ("matches the card" if want == res.manifest_sha256 else
               f"DIFFERS from the card's {want}" if want else "the card records none yet: record it to share the set")
    console.print(f"{card.name}: {res.count} images in {res.data_dir} ({res.written} written, {res.reused} reused)"
                  f"{'' if res.complete else ' [INCOMPLETE]'}", highlight=False)
    console.print(f"manifest sha256: {res.manifest_sha256} ({verdict})", highlight=False, soft_wrap=True)
    if not res.complete or (want and want != res.manifest_sha256):
        raise typer.Exit(1)


@datasets_app.command("check")
def datasets_check(name: str = typer.Argument(..., help="Dataset card name or path."),
                   data_dir: Optional[str] = typer.Option(None, help="Folder holding the files (default: the card's data dir)."),
                   verify: bool = typer.Option(True, help="Decode every image and check its pixel sha256.")):
    """Check that a dataset's files are present and (by default) are the right pixels."""
    from bench.data.images import ImageError
    from bench.data.loaders import open_dataset
    from bench.runner import resolve_card

    loader = open_dataset(resolve_card("dataset", name), data_dir)
    try:
        loader.check()
    except OSError as exc:
        _fail(str(exc), 1)
    bad = []
    if verify:
        for item in loader.items():
            try:
                loader.load(item)
            except ImageError as exc:
                bad.append(str(exc))
    for b in bad:
        err.print(f"[red]bad:[/] {b}", highlight=False)
    console.print(f"{name}: {len(loader.items()) - len(bad)} of {len(loader.items())} images OK in {loader.data_dir}")
    manifest = getattr(loader, "manifest", None)
    if callable(manifest) and manifest():
        from bench.data.prepare import manifest_digest

        console.print(f"manifest sha256: {manifest_digest(manifest())} (card: {loader.card.get('manifest_sha256')})",
                      highlight=False, soft_wrap=True)
    if bad:
        raise typer.Exit(1)


@app.command("report")
def report_cmd(run_dir: Path = typer.Argument(..., help="A run directory."),
               out: Optional[Path] = typer.Option(None, help="HTML file to write [default: RUN/report.html]."),
               images: int = typer.Option(2, help="Images shown as reconstruction crops (0: none).")):
    """Write one self-contained HTML page: plots, per-point table, crops, failures, provenance."""
    from bench.report import ReportError, write_report

    try:
        path = write_report(run_dir, out, images)
    except (ReportError, OSError) as exc:
        _fail(str(exc))
    console.print(str(path), highlight=False, soft_wrap=True)


@app.command("bdrate")
def bdrate_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    anchor: Optional[str] = typer.Option(None, help="Anchor codec of the run (every other codec is compared "
                                         "with it)."),
    reference: Optional[str] = typer.Option(None, help="A published curve (bench.reference name, e.g. "
                                            "compressai-bpg) as anchor instead; no confidence interval then."),
    metric: Optional[list[str]] = typer.Option(None, "--metric", help="Metric (repeatable or comma list).",
                                               show_default="every metric of the run"),
    method: str = typer.Option("pchip", help="Interpolation: pchip, akima or cubic (VCEG-M33)."),
    bootstrap: int = typer.Option(1000, help="Bootstrap resamples over images for the 95 % interval (0: none)."),
    seed: int = typer.Option(0, help="Seed of the bootstrap resampling."),
):
    """BD-rate (% rate at equal quality) and BD-metric (quality at equal rate) against an anchor, with a
    paired bootstrap 95 % interval over images."""
    from rich.table import Table

    from bench import bdrate

    metrics = [m for item in metric or [] for m in _split(item) or []]
    try:
        rows = bdrate.compare_run(run_dir, anchor=anchor, reference=reference, metrics=metrics or None,
                                  method=method, n_resamples=bootstrap, seed=seed)
    except (bdrate.BDError, OSError) as exc:
        _fail(str(exc))
    table = Table(title=f"BD vs {anchor or reference + ' (published)'} — {method}"
                  + (f", {bootstrap} bootstrap resamples, seed {seed}" if anchor and bootstrap else ""))
    for col in ("codec", "metric", "BD-rate %", "95 % CI", "BD-metric", "95 % CI ", "note"):
        table.add_column(col, justify="right" if "BD" in col or "CI" in col else "left")
    for r in rows:
        arrow = "" if r.higher_better is None else (" ↑" if r.higher_better else " ↓")
        if r.result is None:
            table.add_row(r.codec, r.metric + arrow, "—", "", "—", "", f"[red]refused:[/] {r.error}")
            continue
        ci = r.ci if r.ci is not None and r.ci.n_valid else None
        table.add_row(r.codec, r.metric + arrow, f"{r.result.bd_rate:+.2f}",
                      f"[{ci.rate_ci[0]:+.2f}, {ci.rate_ci[1]:+.2f}]" if ci else "n/a",
                      f"{r.result.bd_metric:+.4g}",
                      f"[{ci.metric_ci[0]:+.4g}, {ci.metric_ci[1]:+.4g}]" if ci else "n/a", r.note)
    console.print(table)
    console.print("BD-rate < 0: the codec needs fewer bits than the anchor for equal quality. BD-metric: codec − "
                  "anchor at equal rate (↑ metric: > 0 is better; ↓ metric: < 0 is better).", highlight=False)
    if any(r.result is None for r in rows):
        raise typer.Exit(1)


@app.command("regress")
def regress_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    golden: Path = typer.Option(..., help="Golden CSV (per image or per point) or a folder of <dataset>_*.csv, "
                                "e.g. results/golden."),
    tolerance: Optional[list[str]] = typer.Option(None, "--tolerance", help="METRIC=rel:1e-4[,abs:1e-6] (also bits=, "
                                                  "bpp=, mean_bpp=); repeatable.",
                                                  show_default="bits exact, bpp rel 1e-8, values rel 1e-4 or abs 1e-6"),
    allow_new: bool = typer.Option(False, help="Rows missing from the golden are listed but do not fail."),
    update: bool = typer.Option(False, "--update", help="Rewrite the golden rows of this run's codecs, points and "
                                "metrics with its values (on purpose: say why in the commit)."),
    show: int = typer.Option(30, help="At most this many moved values in the table."),
):
    """Compare a run with golden values point by point (exit 1 when something moved beyond its tolerance)."""
    from rich.table import Table

    from bench import regress

    try:
        if update:
            for line in regress.update(run_dir, golden):
                console.print(line, highlight=False)
            return
        report = regress.compare(run_dir, golden, regress.parse_tolerance(tolerance or []), allow_new)
    except (regress.RegressError, OSError) as exc:
        _fail(str(exc))
    moved = report.moved
    table = Table(title=f"{run_dir} vs {golden}: {len(moved)} of {report.compared} compared values moved")
    for col in ("level", "codec", "point", "image", "metric", "quantity", "run", "golden", "change", "tolerance",
                "verdict"):
        table.add_column(col, justify="right" if col in ("run", "golden", "change") else "left")
    for where, d in moved[:show]:
        k = d.key
        if d.quantity == "row":
            table.add_row(where, k["codec"], str(k["point"]), k.get("image_id", ""), k["metric"], "", "", "", "",
                          "", "[yellow]new[/]" if allow_new else "[red]not in golden[/]")
            continue
        change = d.value - d.golden
        rel = f" ({change / d.golden:+.2%})" if d.golden else ""
        tol = ", ".join(f"{a} {v:g}" for a, v in d.tolerance.items()) or "exact"
        table.add_row(where, k["codec"], str(k["point"]), k.get("image_id", ""), k["metric"], d.quantity,
                      f"{d.value:.6g}", f"{d.golden:.6g}", f"{change:+.3g}{rel}", tol,
                      "ok" if d.ok else "[red]REGRESSION[/]")
    if moved:
        console.print(table)
    for note in report.notes:
        err.print(f"note: {note}", style="yellow", highlight=False, markup=False, soft_wrap=True)
    failures = report.failures
    console.print(f"{report.compared} values compared, {len(moved)} moved, {len(failures)} beyond tolerance"
                  + (f" (table shows {show})" if len(moved) > show else ""), highlight=False)
    if failures or report.compared == 0:
        raise typer.Exit(1)


@app.command("figures")
def figures_cmd(
    name: Optional[str] = typer.Argument(None, help="Spec name (perco-fig3, cdc-fig2, ...) or spec file."),
    all_: bool = typer.Option(False, "--all", help="Every spec under reports/."),
    runs: Optional[list[Path]] = typer.Option(None, "--runs", help="Run directory, or a folder searched for runs "
                                              "(repeatable).", show_default="runs/"),
    out: Path = typer.Option(Path("reports/out"), help="Where to write <spec>.pdf/.svg/.png (and derived cards)."),
    formats: str = typer.Option("pdf,svg,png", "--format", help="Comma list of file formats."),
):
    """Draw the papers' figures and tables from their specs (reports/) and the runs given; print the
    `bench run` commands that would compute the points still missing."""
    from bench import figure_specs, paper_figures

    if bool(name) == all_:
        _fail("give one spec NAME or --all (specs: "
              f"{', '.join(p.stem for p in figure_specs.spec_paths())})")
    try:
        paths = figure_specs.spec_paths() if all_ else [figure_specs.find_spec(name)]
        specs = [figure_specs.load_spec(p) for p in paths]
    except figure_specs.SpecError as exc:
        _fail(str(exc))
    missing = [str(p) for p in runs or [] if not p.exists()]
    if missing:
        _fail(f"no such run directory: {', '.join(missing)}")
    run_dirs = runs or [p for p in [Path("runs")] if p.exists()]
    rows = paper_figures.load_rows(run_dirs)
    commands: list[str] = []
    for spec in specs:
        drawn = paper_figures.draw(spec, out_dir=out, rows=rows, formats=tuple(_split(formats) or ["png"]))
        if drawn.skipped:
            console.print(f"{spec['id']}: {drawn.skipped}", highlight=False, soft_wrap=True, markup=False)
            continue
        console.print(f"{spec['id']}: {', '.join(map(str, drawn.files))}", highlight=False, soft_wrap=True)
        for note in drawn.notes:
            console.print(f"  {note}", highlight=False, soft_wrap=True, markup=False)
        commands += [c for c in drawn.commands if c not in commands]
    if commands:
        console.print(f"\nPoints not computed yet ({len(commands)} commands; then rerun bench figures "
                      "with --runs pointing at their run directories):", highlight=False)
        for c in commands:
            console.print(c, highlight=False, soft_wrap=True, markup=False)


@app.command("doctor")
def doctor_cmd(
    need: Optional[str] = typer.Option(None, help="Comma list that must all be present, else exit 1: PROGRAM, "
                                       "PACKAGE, cuda, codec:CARD (its programs, libraries and weight files), "
                                       "weights:ID|CONSUMER, dataset:CARD."),
    as_json: bool = typer.Option(False, "--json", help="Print the facts as JSON instead of tables."),
):
    """What this machine has and lacks for bench (programs, Python packages, weights, device, data) and how to get it."""
    import json

    from bench import doctor

    facts = doctor.collect()
    try:
        needs = doctor.check_needs(facts, _split(need)) if need else None
    except doctor.NeedError as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps({**facts, "needs": needs, "summary": doctor.summary(facts, needs)}, indent=1, default=str))
    else:
        doctor.render(facts, console)
        for n in needs or []:
            mark = "[green]ok[/]" if n["ok"] else "[red]MISSING[/]"
            console.print(f"need {n['need']}: {mark} {n['why']}", highlight=False, soft_wrap=True)
        console.print(doctor.summary(facts, needs), highlight=False, soft_wrap=True)
    if needs and not all(n["ok"] for n in needs):
        raise typer.Exit(1)


def main() -> None:
    from bench.cards import CardError

    try:
        app()
    except (CardError, registry.UnknownNameError) as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
