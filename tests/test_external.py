"""External programs that misbehave fail their unit with a clear CodecError and
the run goes on; nothing is left running and no temporary directory is left.

Each test writes small fake encoder/decoder programs (Python scripts) into
tmp_path and points the adapter at them through ``BENCH_<EXECUTABLE>``, as
``tests/test_resume_keys.py::test_external_program_change_recomputes`` does.
The fake encoder copies the PNG it is given; the fake decoder is the program
under test.
"""
from __future__ import annotations

import glob
import os
import stat
import sys
import tempfile
import time

import numpy as np
import pytest
import yaml
from PIL import Image

from bench import registry, runner
from bench.codecs.base import CodecError
from bench.codecs.external import SubprocessCodec, program_version
from bench.runner import Experiment, run

COPY = "import shutil, sys\nshutil.copyfile(sys.argv[1], sys.argv[2])\n"


class FakeProgram(SubprocessCodec):
    """Test adapter: encoder = bench-fake-enc SRC DST, decoder = bench-fake-dec SRC DST."""

    name = "test-fake-program"
    programs = {"encoder": "bench-fake-enc", "decoder": "bench-fake-dec"}
    default_points = (1,)

    def encode_args(self, src, dst, point):
        return [src, dst]

    def decode_args(self, src, dst):
        return [src, dst]


def program(tmp_path, monkeypatch, exe: str, body: str) -> str:
    path = tmp_path / "bin" / exe
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("BENCH_" + exe.upper().replace("-", "_"), str(path))
    return str(path)


@pytest.fixture(autouse=True)
def private_tmp(tmp_path, monkeypatch):
    """This process's temporary files go to a folder of the test's own: another bench run on the
    machine (its own bench-enc-* folders in /tmp) cannot make the leftover checks fail."""
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))


def leftovers() -> list[str]:
    tmp = tempfile.gettempdir()
    return glob.glob(os.path.join(tmp, "bench-enc-*")) + glob.glob(os.path.join(tmp, "bench-dec-*"))


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder


@pytest.fixture
def fake(tmp_path, monkeypatch, images):
    """Runs FakeProgram with the given decoder body over two images; returns the RunResult."""
    registry.add("codec", FakeProgram.name, FakeProgram)
    # the runner keeps one adapter instance per card in the process; each test's programs are new
    monkeypatch.setattr(runner, "_worker_codecs", {})
    program(tmp_path, monkeypatch, "bench-fake-enc", COPY)
    before = set(leftovers())

    def go(decoder_body: str, encoder_body: str | None = None, **params):
        program(tmp_path, monkeypatch, "bench-fake-dec", decoder_body)
        if encoder_body is not None:
            program(tmp_path, monkeypatch, "bench-fake-enc", encoder_body)
        card = tmp_path / "fake.yaml"
        card.write_text(yaml.safe_dump({"name": "fake", "adapter": FakeProgram.name, "points": [1],
                                        "params": params}))
        res = run(Experiment(dataset="folder", data_dir=str(images), codecs=[str(card)], metrics=["psnr"],
                             out=str(tmp_path / "r")))
        assert set(leftovers()) <= before, "temporary directories left behind"
        return res

    return go


def errors(res) -> list[str]:
    return [p for p in res.problems if not p.startswith("note:")]


def test_well_behaved_program_codes_every_unit(fake):
    res = fake(COPY)
    assert res.units_coded == 2 and res.units_failed == 0 and not errors(res)


def test_nonzero_exit_names_program_status_stderr_and_command(fake):
    res = fake("import sys\nprint('reading header', file=sys.stderr)\n"
               "print('fatal: bad bitstream marker 0xFF', file=sys.stderr)\nsys.exit(3)\n")
    assert res.units_failed == 2 and res.units_coded == 0
    msg = errors(res)[0]
    assert "decoder failed (exit 3), program bench-fake-dec" in msg
    assert "fatal: bad bitstream marker 0xFF" in msg and "reading header" in msg
    assert "command: " in msg and "/bin/bench-fake-dec" in msg and "out.png" in msg


def test_crash_by_signal_is_named(fake):
    res = fake("import os, signal, sys\nprint('about to crash', file=sys.stderr, flush=True)\n"
               "os.kill(os.getpid(), signal.SIGSEGV)\n")
    assert res.units_failed == 2
    msg = errors(res)[0]
    assert "decoder failed (killed by signal SIGSEGV), program bench-fake-dec" in msg and "about to crash" in msg


def test_garbage_output_is_an_unreadable_image(fake):
    res = fake("import sys\nopen(sys.argv[2], 'wb').write(b'this is not a PNG at all' * 10)\n")
    assert res.units_failed == 2
    msg = errors(res)[0]
    assert "decoder wrote an unreadable image out.png" in msg and "program bench-fake-dec" in msg and "this is not" in msg


def test_no_output_is_named(fake):
    res = fake("pass\n")
    assert res.units_failed == 2
    assert "decoder wrote no image out.png (exit 0), program bench-fake-dec" in errors(res)[0]


def test_empty_bitstream_is_named(fake):
    res = fake(COPY, encoder_body="import sys\nopen(sys.argv[2], 'wb').close()\n")
    assert res.units_failed == 2
    assert "encoder wrote an empty bitstream out.bin (exit 0), program bench-fake-enc" in errors(res)[0]


def test_hung_program_and_its_child_are_killed(fake, tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    hang = (
        "import os, subprocess, sys, time\n"
        "if sys.argv[1:] == ['--version']: print('fake 1.0'); sys.exit()\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        f"open(os.path.join({str(pids)!r}, str(child.pid)), 'w').close()\n"
        "print('waiting forever', file=sys.stderr, flush=True)\n"
        "time.sleep(300)\n"
    )
    t0 = time.monotonic()
    res = fake(hang, timeout_s=1.5)
    assert time.monotonic() - t0 < 60
    assert res.units_failed == 2 and res.units_coded == 0
    msg = errors(res)[0]
    assert "decoder failed (timed out after 1.5s; process group killed), program bench-fake-dec" in msg and "waiting forever" in msg
    children = [int(p) for p in os.listdir(pids)]
    assert len(children) >= 2  # one per image (the runner may also retry)
    for pid in children:
        assert not alive(pid), f"child {pid} of the hung program still runs"


def test_children_left_by_a_finished_program_are_killed(fake, tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    res = fake(COPY + "import os, subprocess\n"
               "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'],\n"
               "                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
               f"open(os.path.join({str(pids)!r}, str(child.pid)), 'w').close()\n")
    assert res.units_coded == 2 and not errors(res)
    children = [int(p) for p in os.listdir(pids)]
    assert len(children) == 2 and not any(alive(pid) for pid in children)


def alive(pid: int, wait_s: float = 5.0) -> bool:
    """Whether ``pid`` still runs (a zombie awaiting its reaper counts as gone)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        if state in ("Z", "X"):
            return False
        time.sleep(0.05)
    return True


def test_run_kills_group_and_cleans_up_on_direct_call(tmp_path, monkeypatch):
    """Direct adapter use: CodecError from encode/decode, temp dirs gone after a timeout."""
    program(tmp_path, monkeypatch, "bench-fake-enc", "import time\ntime.sleep(300)\n")
    program(tmp_path, monkeypatch, "bench-fake-dec", COPY)
    before = set(leftovers())
    codec = FakeProgram(timeout_s=0.5)
    rgb = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(CodecError, match=r"encoder failed \(timed out after 0.5s; process group killed\), program bench-fake-enc"):
        codec.encode(rgb, 1)
    assert set(leftovers()) <= before


@pytest.mark.parametrize("bad", ["soon", 0, -1])
def test_bad_timeout_parameter_is_refused(tmp_path, monkeypatch, bad):
    program(tmp_path, monkeypatch, "bench-fake-enc", COPY)
    program(tmp_path, monkeypatch, "bench-fake-dec", COPY)
    with pytest.raises(CodecError, match="timeout_s"):
        FakeProgram(timeout_s=bad)


def test_fingerprint_excludes_path_and_provenance_has_it(tmp_path, monkeypatch):
    enc = program(tmp_path, monkeypatch, "bench-fake-enc", COPY)
    program(tmp_path, monkeypatch, "bench-fake-dec", COPY)
    codec = FakeProgram()
    prov = codec.provenance()
    assert prov["encoder"]["path"] == str(os.path.realpath(enc)) and len(prov["encoder"]["sha256"]) == 64
    assert "version" in prov["encoder"]
    assert "path" not in codec.fingerprint()["encoder"]


def test_hanging_version_query_is_unknown_and_killed(tmp_path, monkeypatch):
    pids = tmp_path / "pids"
    pids.mkdir()
    exe = program(tmp_path, monkeypatch, "bench-fake-ver",
                  "import os, subprocess, sys, time\n"
                  "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
                  f"open(os.path.join({str(pids)!r}, str(child.pid)), 'w').close()\ntime.sleep(300)\n")
    version = program_version(exe, ("--version",), 0.5)
    assert version.startswith("unknown (") and "timed out after 0.5s" in version
    (pid,) = [int(p) for p in os.listdir(pids)]
    assert not alive(pid)
