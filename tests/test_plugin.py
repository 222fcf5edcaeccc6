"""Proof that a codec can live in its own package: `bench codecs new` writes plugin packages
in a temporary folder, the test fills in their bodies, pip builds and installs them (into a
throwaway --target folder, never into the shared environment), and then, in fresh `bench`
processes that see them only through PYTHONPATH:

* the good plugin (quantise + zlib, with a header holding the size) passes
  `bench codecs check` and runs with `bench run` on two Kodak images beside `jpeg`;
* a plugin whose decoder reads the original from a module-level cache, and one returning
  the wrong size, fail the check with the rule they break;
* the packages exactly as generated fail the check and say what to write.

pip runs with --no-deps --no-build-isolation --no-index (offline, using this environment's
setuptools), non-editable: the card must really ship as package data.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from bench.cli import app
from toy_codec import DECODE, ENCODE, FINGERPRINT, HEADER

REPO = Path(__file__).resolve().parent.parent

CHEAT_ENCODE = '''
        key = hashlib.sha256(rgb.tobytes()).digest()[:8]
        _CACHE[key] = rgb.copy()
        return key'''
CHEAT_DECODE = '''
        return _CACHE[bytes(data)]'''
WRONG_DECODE = DECODE.replace("return np.clip(np.round(rec), 0, 255).astype(np.uint8)",
                              "rec = np.clip(np.round(rec), 0, 255).astype(np.uint8)\n"
                              "        return np.pad(rec, ((0, -h % 16), (0, -w % 16), (0, 0)))  # forgot to crop")


def fill(root: Path, pkg: str, encode: str, decode: str, header: str = HEADER, points: str = "[4, 8, 16, 32]") -> None:
    """Write the bodies the scaffold left as NotImplementedError, as a user would."""
    adapter = root / pkg / "adapter.py"
    text = adapter.read_text()
    text = text.replace("from bench.codecs.base import", header + "\nfrom bench.codecs.base import", 1)
    text, n_enc = re.subn(r"\n        raise NotImplementedError\(\"[a-z-]+\.encode: .*\"\)", lambda m: encode, text)
    text, n_dec = re.subn(r"\n        raise NotImplementedError\(\"[a-z-]+\.decode: .*\"\)", lambda m: decode, text)
    text = text.replace("return {}", FINGERPRINT)
    assert n_enc == n_dec == 1, "the scaffold's bodies moved"
    adapter.write_text(text)
    card = next((root / pkg / "codecs").glob("*.yaml"))
    card.write_text(card.read_text().replace("points: [1, 2, 3]", f"points: {points}")
                    .replace("point_name: quality", "point_name: levels"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Plugins generated, filled and pip-installed into a throwaway folder; returns (env, run dir root)."""
    tmp = tmp_path_factory.mktemp("plugins")
    runner = CliRunner()
    for name, kind in (("quant", "classical"), ("cheat", "classical"), ("wrongsize", "classical"),
                       ("todo", "classical"), ("todo-tool", "external"), ("todo-net", "torch")):
        res = runner.invoke(app, ["codecs", "new", name, "--kind", kind, "--out", str(tmp / "src")])
        assert res.exit_code == 0, res.output
        assert "next: write the bodies" in res.output
    src = tmp / "src"
    fill(src / "quant", "bench_quant", ENCODE, DECODE)
    fill(src / "cheat", "bench_cheat", CHEAT_ENCODE, CHEAT_DECODE, header="import hashlib\nimport zlib\n\n_CACHE = {}\n")
    fill(src / "wrongsize", "bench_wrongsize", ENCODE, WRONG_DECODE)
    target = tmp / "site"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
           "--disable-pip-version-check", "--target", str(target), *(str(p) for p in sorted(src.iterdir()))]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (target / "bench_quant" / "codecs" / "quant.yaml").is_file()  # the card shipped as package data
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(REPO)])}
    return env, tmp


def bench(env: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`bench ...` in a fresh process that sees the plugins only through PYTHONPATH."""
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


def rows(output: str) -> dict[str, str]:
    """Check name -> its printed line (``  PASS  name  detail``)."""
    return {m[2]: m[0] for m in re.finditer(r"(?m)^  (PASS|WARN|FAIL|N/A |SKIP)  (\S+) .*$", output)}


def test_good_plugin_passes_the_check(installed, kodak_dir):
    env, _ = installed
    proc = bench(env, "codecs", "check", "quant")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "bench_quant/codecs/quant.yaml" in out and "bench_quant.adapter.QuantCodec (plugin:bench-quant)" in out
    table = rows(out)
    assert "PASS" in table["fresh-process"] and "PASS" in table["bit-flips"] and "PASS" in table["card"]
    assert 'fingerprint(4) = {"zlib": ' in out and " 0 failed" in out


def test_good_plugin_runs_beside_jpeg(installed, kodak_dir):
    env, tmp = installed
    out = tmp / "run"
    proc = bench(env, "run", "--dataset", "kodak", "--data-dir", str(kodak_dir), "--limit", "2",
                 "--codec", "quant,jpeg", "--metrics", "psnr", "--out", str(out), "--no-plot")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = pq.read_table(out / "per_image.parquet").to_pandas()
    assert set(table.codec) == {"quant", "jpeg"}
    assert set(table.image_id) == {"kodim01", "kodim02"}
    assert len(table[table.codec == "quant"]) == 2 * 4 and len(table[table.codec == "jpeg"]) == 2 * 6
    quant = table[table.codec == "quant"]
    assert (quant.bits == quant.bits.astype(int)).all() and (quant.value > 15).all()
    per_set = pq.read_table(out / "per_set.parquet").to_pandas()
    assert set(per_set.codec) == {"quant", "jpeg"}
    printed = [line for line in proc.stdout.splitlines() if line.startswith("│")]  # the summary table
    assert any("quant" in line for line in printed) and any("jpeg" in line for line in printed)


def test_module_level_cache_plugin_fails_the_check(installed, kodak_dir):
    env, _ = installed
    proc = bench(env, "codecs", "check", "cheat", "--images", "1", "--sizes", "7x5")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    table = rows(proc.stdout)
    assert "FAIL" in table["fresh-process"] and "FAIL" in table["plausible"]
    assert "(KeyError: " in proc.stdout and "a fresh process with only the bytes and the card failed" in proc.stdout
    assert "module-level cache" in proc.stdout


def test_wrong_size_plugin_fails_the_check(installed, kodak_dir):
    env, _ = installed
    proc = bench(env, "codecs", "check", "wrongsize", "--images", "0", "--sizes", "48x64,7x5")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL" in rows(proc.stdout)["decode"]
    assert "decoded shape (16, 16, 3) for an original of shape (7, 5, 3)" in proc.stdout


def test_unfilled_scaffolds_fail_and_say_what_to_write(installed, kodak_dir):
    env, _ = installed
    proc = bench(env, "codecs", "check", "todo", "--images", "0", "--sizes", "7x5")
    assert proc.returncode == 1
    assert "FAIL" in rows(proc.stdout)["encode"]
    assert "not written yet - NotImplementedError: todo.encode: compress rgb" in proc.stdout
    proc = bench(env, "codecs", "check", "todo-tool", "--images", "0", "--sizes", "7x5")
    assert proc.returncode == 1 and "FAIL" in rows(proc.stdout)["adapter"]
    assert "program 'todo-tool-enc' not found on PATH" in proc.stdout and "BENCH_TODO_TOOL_ENC" in proc.stdout
    proc = bench(env, "codecs", "check", "todo-net", "--init", "random", "--images", "0", "--sizes", "7x5")
    assert proc.returncode == 1 and "FAIL" in rows(proc.stdout)["points"]
    assert "not written yet - NotImplementedError: todo-net.weight_table: map each rate point" in proc.stdout


def test_scaffold_refuses_bad_names_kinds_and_folders(tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["codecs", "new", "My_Codec", "--out", str(tmp_path)]).exit_code == 2
    assert runner.invoke(app, ["codecs", "new", "jpeg", "--out", str(tmp_path)]).exit_code == 2
    assert runner.invoke(app, ["codecs", "new", "x1", "--kind", "rust", "--out", str(tmp_path)]).exit_code == 2
    assert runner.invoke(app, ["codecs", "new", "x1", "--out", str(tmp_path)]).exit_code == 0
    res = runner.invoke(app, ["codecs", "new", "x1", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "not empty" in res.output
