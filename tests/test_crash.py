"""Crash safety: a run killed with SIGKILL midway (local and Ray) resumes with no finished unit
lost or redone and no duplicate row, its tables parse at every moment; a full disk or an
unwritable run directory stops the run with a clear error and keeps the finished work."""
import errno
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from bench import runner
from bench.cli import app
from bench.runner import Experiment, run
from bench.store import RunStore, StoreError, read_table

REPO = Path(__file__).resolve().parent.parent
POINTS = [10, 30, 50, 70]
LIMIT = 6
TOTAL = LIMIT * len(POINTS)
COORDS = ["image_id", "codec", "point", "seed", "metric"]


def args(kodak_dir, out) -> list[str]:
    return ["run", "--dataset", "kodak", "--data-dir", str(kodak_dir), "--limit", str(LIMIT), "--codec", "jpeg",
            "--points", ",".join(map(str, POINTS)), "--metrics", "psnr,gmsd", "--out", str(out), "--no-plot"]


@pytest.fixture(scope="module")
def reference(kodak_dir, tmp_path_factory) -> Path:
    """The same experiment, run without interruption."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run(Experiment(dataset="kodak", data_dir=str(kodak_dir), limit=LIMIT, codecs=["jpeg"], points=POINTS,
                   metrics=["psnr", "gmsd"], out=str(out)))
    return out


def ledger(out: Path) -> dict[str, float]:
    """unit key -> finished_at of the units committed so far (read-only: the run keeps writing)."""
    if not (out / "ledger.sqlite").is_file():
        return {}
    try:
        with sqlite3.connect(f"file:{out / 'ledger.sqlite'}?mode=ro", uri=True, timeout=10) as db:
            return dict(db.execute("SELECT unit_key, finished_at FROM units").fetchall())
    except sqlite3.OperationalError:  # the schema is not there yet
        return {}


def check_tables(out: Path) -> int:
    """Read both tables if present; each must parse whole and hold no duplicate row. Returns reads."""
    reads = 0
    for name in ("per_image", "per_set"):
        if (out / f"{name}.parquet").exists():
            try:
                df = read_table(out, name)
            except StoreError:  # replaced between exists() and the read: read it next time
                continue
            keys = COORDS if name == "per_image" else ["codec", "point", "seed", "metric", "aggregate", "rate_kind"]
            assert not df.duplicated(keys).any(), f"{name} has duplicate rows"
            reads += 1
    return reads


def kill_midway(cmd: list[str], out: Path, after: int) -> tuple[dict[str, float], int]:
    """Start ``cmd``, SIGKILL it once ``after`` units are in the ledger, reading the tables all
    along. Returns (the ledger at the kill, how many table reads succeeded)."""
    env = {**os.environ, "BENCH_TABLES_EVERY": "0"}  # tables rewritten after every unit: the most chances to tear
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    reads, deadline = 0, time.monotonic() + 300
    try:
        while len(ledger(out)) < after:
            assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stdout.read().decode()}"
            assert time.monotonic() < deadline, "no progress in 300 s"
            reads += check_tables(out)
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reads += check_tables(out)  # what the killed run left parses too
    finally:
        try:  # whatever that run started (Ray's processes) goes with it
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.stdout.close()
    return ledger(out), reads


def resume(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def strip(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=["run_id", "enc_s", "dec_s"], errors="ignore")


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_sigkill_midway_then_resume(executor, kodak_dir, reference, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "bench", *args(kodak_dir, out), "--executor", executor]
    at_kill, reads = kill_midway(cmd, out, after=4)
    assert 4 <= len(at_kill) < TOTAL
    assert reads > 1  # both tables were there after the kill (and, most often, while it ran), whole each time
    left = read_table(out, "per_image")  # what the killed run left is within the final result
    assert 0 < len(left) and set(left.image_id + left.point) <= set(read_table(reference, "per_image").pipe(
        lambda d: d.image_id + d.point))
    printed = resume(cmd)
    assert f"{TOTAL - len(at_kill)} units coded, {len(at_kill)} reused, 0 failed" in printed
    after = ledger(out)
    assert {k: after[k] for k in at_kill} == at_kill  # no finished unit lost or redone
    assert sorted(after) == sorted(ledger(reference))  # the same unit keys as an uninterrupted run
    for name in ("per_image", "per_set"):
        got, want = strip(read_table(out, name)), strip(read_table(reference, name))
        pd.testing.assert_frame_equal(got, want)
    assert not read_table(out, "per_image").duplicated(COORDS).any()


@pytest.mark.parametrize("code, says", [(errno.ENOSPC, "disk is full"), (errno.EROFS, "cannot be written")])
def test_full_or_readonly_disk_stops_with_a_clear_error_and_keeps_work(code, says, kodak_dir, tmp_path,
                                                                       monkeypatch):
    out = tmp_path / "run"
    real = runner.atomic_write_bytes
    calls = []

    def refuse_after_three(path, data):
        calls.append(path)
        if len(calls) > 3:
            raise OSError(code, os.strerror(code), str(path.parent / f".{path.name}.x.tmp"))
        real(path, data)

    monkeypatch.setattr(runner, "atomic_write_bytes", refuse_after_three)
    exp = dict(dataset="kodak", data_dir=str(kodak_dir), limit=2, codecs=["jpeg"], points=[10, 30, 50],
               metrics=["psnr"], out=str(out))
    with pytest.raises(StoreError) as info:
        run(Experiment(**exp))
    msg = str(info.value)
    assert says in msg and str(out / "bitstreams" / "kodak" / "jpeg") in msg and "run the same command again" in msg
    assert len(calls) == 4  # the run stopped at the first refused write
    assert len(read_table(out, "per_image")) == 3  # the finished units are kept, in the tables too
    monkeypatch.setattr(runner, "atomic_write_bytes", real)
    res = run(Experiment(**exp))
    assert res.units_skipped == 3 and res.units_coded == 3 and not res.problems


def test_tables_kept_whole_when_they_cannot_be_rewritten(kodak_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run(Experiment(dataset="kodak", data_dir=str(kodak_dir), limit=1, codecs=["jpeg"], points=[10], metrics=["psnr"],
                   out=str(out)))
    before = read_table(out, "per_image")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pq, "write_table", full)
    store = RunStore(out)
    with pytest.raises(StoreError, match=r"cannot write per_image.parquet in .*run.*Free space"):
        store.export_tables(force=True)
    store.close()
    pd.testing.assert_frame_equal(read_table(out, "per_image"), before)
    assert not list(out.glob(".*.tmp*"))  # no temporary left behind


def test_a_full_ledger_is_a_clear_error_and_keeps_what_it_holds(kodak_dir, tmp_path):
    out = tmp_path / "run"
    run(Experiment(dataset="kodak", data_dir=str(kodak_dir), limit=1, codecs=["jpeg"], points=[10, 50],
                   metrics=["psnr"], out=str(out)))
    store = RunStore(out)
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "database or disk is full"
    row = {"unit_key": "k" * 64, "dataset": "kodak", "image_id": "x", "codec": "jpeg", "point": "10", "seed": 0,
           "breakdown": "x" * 200_000, "bitstream": str(out / "b.bin"), "recon": str(out / "r.png")}
    with pytest.raises(StoreError, match=r"cannot write the ledger of .*run: database or disk is full\. Free space"):
        store.add_unit(row)
    store.close()
    assert len(ledger(out)) == 2 and "k" * 64 not in ledger(out)  # rolled back whole; the finished units stay


def test_unwritable_out_folder_is_a_clear_error(kodak_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "run"  # tests run as root, which chmod does not stop: a path under a file cannot be made
    res = CliRunner().invoke(app, args(kodak_dir, out))
    assert res.exit_code != 0
    assert f"cannot write to output directory {out}" in res.output and "Choose another --out" in res.output
