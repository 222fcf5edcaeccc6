"""``bench doctor``: the facts it prints (programs, packages, weights, data) and ``--need`` exit codes."""
import hashlib
import importlib.metadata
import json

import pytest
from typer.testing import CliRunner

from bench.cli import app

runner = CliRunner()


def doctor(*args: str, code: int = 0):
    res = runner.invoke(app, ["doctor", *args])
    assert res.exit_code == code, res.output
    return res


def facts(*args: str, code: int = 0) -> dict:
    return json.loads(doctor("--json", *args, code=code).stdout)


def programs(data: dict) -> dict:
    return {p["program"]: p for p in data["programs"]}


@pytest.fixture
def no_programs(tmp_path, monkeypatch):
    """PATH with no external program on it and no BENCH_<PROGRAM> variable."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    for var in ("BENCH_AVIFENC", "BENCH_AVIFDEC", "BENCH_CJXL", "BENCH_DJXL"):
        monkeypatch.delenv(var, raising=False)
    return empty


def test_missing_program_names_package_and_variable(no_programs):
    data = facts()
    avifenc = programs(data)["avifenc"]
    assert not avifenc["found"] and avifenc["path"] is None
    assert "libavif-bin" in avifenc["install"] and avifenc["env"] == "BENCH_AVIFENC"
    assert avifenc["cards"] == ["avifenc"]
    assert "libjxl-tools" in programs(data)["cjxl"]["install"]
    out = doctor().stdout
    assert "libavif-bin" in out and "BENCH_AVIFENC" in out and "missing" in out


def test_fake_program_path_version_and_sha256(no_programs):
    fake = no_programs / "avifenc"
    fake.write_text("#!/bin/sh\necho 'avifenc fake 9.9.9'\n")
    fake.chmod(0o755)
    avifenc = programs(facts())["avifenc"]
    assert avifenc["found"]
    assert avifenc["path"] == str(fake)
    assert avifenc["version"] == "avifenc fake 9.9.9"
    assert avifenc["sha256"] == hashlib.sha256(fake.read_bytes()).hexdigest()
    assert str(fake) in doctor().stdout


def test_need_program_exit_codes(no_programs):
    res = doctor("--need", "avifenc", code=1)
    assert "need avifenc: MISSING" in res.stdout and "libavif-bin" in res.stdout
    fake = no_programs / "avifenc"
    fake.write_text("#!/bin/sh\necho avifenc 1\n")
    fake.chmod(0o755)
    assert "need avifenc: ok" in doctor("--need", "avifenc", code=0).stdout
    data = facts("--need", "program:avifenc,cjxl", code=1)
    assert [(n["need"], n["ok"]) for n in data["needs"]] == [("program:avifenc", True), ("cjxl", False)]


def test_need_codec_names_missing_weight_files(cache):
    data = facts("--need", "codec:bmshj2018-hyperprior", code=1)
    (need,) = data["needs"]
    assert not need["ok"]
    for q in range(1, 9):
        assert f"compressai-bmshj2018-hyperprior-mse-{q}" in need["why"]
    assert "compressai-bmshj2018-hyperprior-mse-1" in data["weights"]["missing"]
    assert data["weights"]["dirs"]["torch_hub"] == str(cache / "torch" / "hub")
    # the same, asked as weights of a consumer; and one file put in place counts as present
    from bench import weights

    p = weights.path("compressai-bmshj2018-hyperprior-mse-1")
    p.parent.mkdir(parents=True)
    p.write_bytes(b"x")  # existence is what doctor checks (no hashing; `bench weights verify` hashes)
    data = facts("--need", "weights:bmshj2018-hyperprior", code=1)
    assert "compressai-bmshj2018-hyperprior-mse-1" not in data["needs"][0]["why"]
    assert data["weights"]["consumers"]["bmshj2018-hyperprior"]["present"] == ["compressai-bmshj2018-hyperprior-mse-1"]


def test_need_met_exits_0_and_bad_item_exits_2():
    data = facts("--need", "dataset:samples,package:lpips,codec:jpeg")
    assert all(n["ok"] for n in data["needs"])
    assert "unknown kind" in doctor("--need", "nope:x", code=2).output
    assert "not a program" in doctor("--need", "no-such-thing", code=2).output


def test_package_versions_are_the_installed_ones():
    data = facts()
    rows = {p["package"]: p for p in data["packages"]}
    for dist in ("compressai", "transformers", "open_clip_torch", "mmsegmentation", "clean-fid", "lpips",
                 "pycocotools", "diffusers"):
        try:
            expected = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            expected = None
        assert rows[dist]["version"] == expected
        assert (rows[dist]["install"] is None) == (expected is not None)
    assert rows["open_clip_torch"]["module"] == "open_clip"
    assert rows["mmcv.ops"]["check"] in ("find_spec", "subprocess")
    from bench.codecs.hific import env as hific_env  # TensorFlow lives in its own venv, not in bench's

    info, why = hific_env.state()
    hific = rows["HiFiC TensorFlow env"]
    assert (hific["version"] is None) == (info is None) and (hific["install"] is None) == (info is not None)
    assert "tensorflow-compression" not in rows


def test_device_and_datasets_sections():
    import torch

    data = facts()
    dev = data["device"]
    assert dev["torch"] == torch.__version__ and dev["cuda"] == torch.cuda.is_available()
    assert ("float16" in dev["dtypes"]) == dev["cuda"]
    sets = {d["dataset"]: d for d in data["datasets"]}
    assert sets["samples"]["ok"] and sets["samples"]["images"] == 4
    assert "kodak" in sets
    assert data["summary"].startswith(f"{sum(p['found'] for p in data['programs'])}/")


def test_dataset_need_follows_the_data_dir(kodak_dir, monkeypatch):
    monkeypatch.setenv("BENCH_KODAK_DIR", str(kodak_dir))
    data = facts("--need", "dataset:kodak")
    assert data["needs"][0]["ok"] and str(kodak_dir) in data["needs"][0]["why"]
    monkeypatch.setenv("BENCH_KODAK_DIR", str(kodak_dir / "nowhere"))
    assert "24 of 24 files missing" in facts("--need", "dataset:kodak", code=1)["needs"][0]["why"]


def test_need_codec_uses_the_cards_program_paths(no_programs, tmp_path, monkeypatch):
    fake = tmp_path / "my-avifenc"
    fake.write_text("#!/bin/sh\necho avifenc 1\n")
    fake.chmod(0o755)
    (tmp_path / "cards" / "codecs").mkdir(parents=True)
    (tmp_path / "cards" / "codecs" / "avif-here.yaml").write_text(
        f"name: avif-here\nadapter: avifenc\nparams: {{encoder: {fake}, decoder: {fake}}}\npoints: [30]\n")
    monkeypatch.setenv("BENCH_CARDS", str(tmp_path / "cards"))
    data = facts("--need", "codec:avif-here,codec:avifenc", code=1)
    here, plain = data["needs"]
    assert here["ok"] and str(fake) in here["why"]
    assert not plain["ok"] and "libavif-bin" in plain["why"] and "BENCH_AVIFENC" in plain["why"]
    assert programs(data)["avifenc"]["cards"] == ["avif-here", "avifenc"]
