"""``bench weights ...``: list, fetch, verify and import pretrained files (see bench.weights)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench import weights

weights_app = typer.Typer(no_args_is_help=True, help="Pretrained weight files: official URL, sha256, licence, place.")
console = Console()
err = Console(stderr=True)

_STYLE = {"ok": "[green]ok[/]", "missing": "[red]missing[/]", "bad-hash": "[red]bad-hash[/]"}


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _ids(ids: Optional[list[str]], all_: bool) -> list[str]:
    if all_:
        return list(weights.table())
    if not ids:
        _fail("name weight ids (see `bench weights list`) or give --all", 2)
    try:
        return [weights.entry(i).id for i in ids]
    except KeyError as exc:
        _fail(str(exc).strip("'\""), 2)
    return []


@weights_app.command("list")
def list_cmd(verify: bool = typer.Option(False, "--verify", help="Hash every present file (slow for big files); "
                                         "default: existence and size only.")):
    """Every weight file bench knows: status, place, licence and what uses it."""
    table = Table(title="weight files")
    for col in ("id", "file", "status", "path", "licence", "used by", "hash check"):
        table.add_column(col, overflow="fold")
    for w in weights.table().values():
        state = weights.status(w.id, verify=verify)
        table.add_row(w.id, w.filename, _STYLE.get(state, state), str(weights.path(w.id)), w.licence,
                      ", ".join(w.used_by), w.verified_by)
    console.print(table)
    console.print(f"torch hub: {weights.torch_hub_dir()}  •  bench cache: {weights.bench_dir()} "
                  "($BENCH_WEIGHTS)  •  get files: `bench weights fetch ID...` or `bench weights import FILE`",
                  highlight=False)


@weights_app.command("fetch")
def fetch_cmd(ids: Optional[list[str]] = typer.Argument(None, help="Weight ids (see `bench weights list`)."),
              all_: bool = typer.Option(False, "--all", help="Every file in the table."),
              timeout: float = typer.Option(weights.FETCH_TIMEOUT_S, help="Network timeout per attempt, seconds.")):
    """Download files from their official URLs into place (sha256 checked before install)."""
    todo = _ids(ids, all_)

    def progress(wid: str, size: int) -> None:
        console.print(f"[green]fetched[/] {wid} ({size / 1e6:.1f} MB) → {weights.path(wid)}", highlight=False)

    try:
        done = weights.fetch(todo, timeout=timeout, progress=progress)
    except weights.WeightsError as exc:
        _fail(str(exc))
    console.print(f"{len(done)} of {len(todo)} file(s) in place.")


@weights_app.command("verify")
def verify_cmd(ids: Optional[list[str]] = typer.Argument(None, help="Weight ids [default: every file present]."),
               all_: bool = typer.Option(False, "--all", help="Every file in the table: missing ones fail too.")):
    """Hash files and compare with the table; non-zero exit if any is wrong (or missing, when named)."""
    named = bool(ids) or all_
    todo = _ids(ids, all_) if named else list(weights.table())
    bad = 0
    checked = 0
    for wid in todo:
        state = weights.status(wid, verify=True)
        if state == "missing" and not named:
            continue
        checked += 1
        line = f"{_STYLE.get(state, state)} {wid}  {weights.path(wid)}"
        if state == "bad-hash":
            w = weights.entry(wid)
            line += f"\n    expected {w.expected}\n    found    {weights.sha256_file(weights.path(wid))}"
        if state != "ok":
            bad += 1
        console.print(line, highlight=False)
    if not checked:
        console.print("no weight files present (see `bench weights list`)")
    if bad:
        _fail(f"{bad} file(s) missing or wrong: `bench weights fetch ID` or `bench weights import FILE`")


@weights_app.command("import")
def import_cmd(path: Path = typer.Argument(..., help="A weight file obtained elsewhere."),
               id: Optional[str] = typer.Option(None, "--id", help="The entry it must be (else found by its sha256).")):
    """Copy a file into its place after matching its sha256 to the table (refuses a mismatch)."""
    try:
        if id is not None:
            weights.entry(id)
        dest = weights.import_file(path, id)
    except KeyError as exc:
        _fail(str(exc).strip("'\""), 2)
    except weights.WeightsError as exc:
        _fail(str(exc))
    wid = next((e.id for e in weights.table().values() if weights.path(e.id) == dest), id)
    console.print(f"[green]imported[/] {wid} → {escape(str(dest))}", highlight=False)
