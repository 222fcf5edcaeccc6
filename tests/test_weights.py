"""The weights table and its offline behaviour: places, clear errors, imports, fetch without network."""
from __future__ import annotations

import hashlib
import io
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench import registry, weights
from bench.weights import WeightFile, WeightsError

from conftest import SHARED_WEIGHTS  # ../shared/weights beside the checkout, or $BENCH_SHARED/weights
DISTS_FILE = SHARED_WEIGHTS / "DISTS_weights-f5e65c96.pth"


def _lpips_wheel_file(name: str) -> Path:
    import lpips

    return Path(lpips.__file__).parent / "weights" / "v0.1" / name


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------- the table
def test_table_is_consistent():
    tab = weights.TABLE
    ids = [w.id for w in tab]
    assert len(ids) == len(set(ids))
    places = [(w.dest, w.filename) for w in tab]
    assert len(places) == len(set(places)), "two entries would overwrite one file"
    for w in tab:
        weights._check_entry(w)  # dest known, https, hash formats
        assert w.url.startswith("https://") and all(m.startswith("https://") for m in w.mirrors)
        assert w.used_by and w.licence
        if w.sha256:
            assert re.fullmatch(r"[0-9a-f]{64}", w.sha256) and w.sha256_prefix == w.sha256[:8]
            assert w.verified_by == "sha256"
        else:
            assert re.fullmatch(r"[0-9a-f]{8}", w.sha256_prefix) and w.verified_by == "sha256-prefix"
        # publishers that put the sha256 prefix in the file name (torchvision, pyiqa, mmseg) agree with the table
        tagged = re.search(r"-([0-9a-f]{8})\.pth?$", w.filename)
        if tagged:
            assert tagged.group(1) == w.sha256_prefix, w.id
        assert w.url.endswith(w.filename) or w.id == "clip-vit-b-32-openai", w.id
    for needed in ("inception-2015-12-05", "clip-vit-b-32-openai", "lpips-alex-v0.1", "lpips-vgg-v0.1", "dists",
                   "pieapp", "ckdn", "musiq-koniq", "dbcnn-koniq", "dbcnn-scnn", "torchvision-alexnet",
                   "torchvision-vgg16", "torchvision-resnet50"):
        assert needed in weights.table()
    # OpenAI's URL path is the file's sha256; clean-fid and pyiqa file names are what those libraries load
    clip = weights.entry("clip-vit-b-32-openai")
    assert clip.url.split("/")[-2] == clip.sha256
    assert weights.entry("inception-2015-12-05").filename == "inception-2015-12-05.pt"


def test_every_learned_metric_names_known_weights():
    metrics = registry.entries("metric")
    for name in ("lpips", "lpips_vgg", "dists", "pieapp", "ckdn", "musiq", "dbcnn"):
        spec = metrics[name].obj
        assert spec.weights and spec.checkpoint in spec.weights
        for wid in spec.weights:
            assert name in weights.entry(wid).used_by, (name, wid)


def test_hashes_match_the_real_copies_we_have():
    """LPIPS files ship in the lpips wheel; DISTS is in ../shared/weights with its SHA256SUMS."""
    assert _sha(_lpips_wheel_file("alex.pth")) == weights.entry("lpips-alex-v0.1").sha256
    assert _sha(_lpips_wheel_file("vgg.pth")) == weights.entry("lpips-vgg-v0.1").sha256
    sums = dict(reversed(line.split()) for line in (SHARED_WEIGHTS / "SHA256SUMS").read_text().splitlines() if line)
    assert sums[DISTS_FILE.name] == weights.entry("dists").sha256 == _sha(DISTS_FILE)


def test_entry_accepts_file_name_and_lists_ids_when_unknown():
    assert weights.entry("vgg16-397923af.pth").id == "torchvision-vgg16"
    with pytest.raises(KeyError, match="torchvision-vgg16"):
        weights.entry("vgg16")


# ---------------------------------------------------------------------------- places
def test_paths_follow_torch_home_and_bench_cache(cache, monkeypatch):
    assert weights.path("dists") == cache / "torch" / "hub" / "pyiqa" / "DISTS_weights-f5e65c96.pth"
    assert weights.path("torchvision-vgg16") == cache / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth"
    assert weights.path("clip-vit-b-32-openai") == cache / "bench" / "ViT-B-32.pt"
    assert weights.path("inception-2015-12-05") == Path("/tmp/inception-2015-12-05.pt")  # clean-fid hard-codes it
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.delenv("BENCH_WEIGHTS")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache / "xdg"))
    if "torch" in sys.modules:  # torch.hub.get_dir() is used then; it follows XDG_CACHE_HOME the same way
        import torch

        assert Path(torch.hub.get_dir()) == weights.torch_hub_dir()
    assert weights.path("dists") == cache / "xdg" / "torch" / "hub" / "pyiqa" / "DISTS_weights-f5e65c96.pth"
    assert weights.path("clip-vit-b-32-openai") == cache / "xdg" / "bench" / "weights" / "ViT-B-32.pt"


# ---------------------------------------------------------------------------- require
def test_require_names_url_sha_and_place_of_every_missing_file(cache):
    with pytest.raises(FileNotFoundError) as info:
        weights.require(["dists", "torchvision-vgg16", "ckdn"])
    exc = info.value
    assert isinstance(exc, WeightsError) and exc.missing == ["dists", "torchvision-vgg16", "ckdn"]
    msg = str(exc)
    for wid in exc.missing:
        w = weights.entry(wid)
        assert w.url in msg and w.sha256_prefix in msg and str(weights.path(wid)) in msg
    assert weights.entry("dists").sha256 in msg and weights.entry("torchvision-vgg16").sha256 in msg
    assert "prefix only" in msg  # ckdn: only the prefix is published, and the message says so
    assert "bench weights import" in msg and "bench weights fetch" in msg
    import os

    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # known-missing: HF loaders must not retry the network


def test_require_passes_when_present_and_flags_a_wrong_file(cache):
    weights.import_file(DISTS_FILE)
    weights.require(["dists"])  # no error
    bad = weights.path("lpips-alex-v0.1")
    bad.write_bytes(b"x" * 6009)  # right size, wrong bytes
    assert weights.status("lpips-alex-v0.1") == "bad-hash"
    with pytest.raises(WeightsError, match="present but its sha256 is") as info:
        weights.require(["dists", "lpips-alex-v0.1"])
    assert info.value.missing == ["lpips-alex-v0.1"]


# ---------------------------------------------------------------------------- import
def test_import_real_dists_file_then_status_ok(cache):
    assert weights.status("dists") == "missing"
    dest = weights.import_file(DISTS_FILE)
    assert dest == weights.path("dists") and dest.is_file()
    assert _sha(dest) == weights.entry("dists").sha256
    assert weights.status("dists") == "ok"
    assert not list(dest.parent.glob("*.part")), "temp file left behind"


def test_provenance_records_actual_hashes(cache):
    weights.import_file(DISTS_FILE)
    rec = weights.provenance(["dists", "pieapp", "dists"])
    assert list(rec) == ["dists", "pieapp"]
    assert rec["dists"]["sha256"] == rec["dists"]["expected_sha256"] == _sha(DISTS_FILE)
    assert rec["pieapp"]["sha256"] is None and rec["pieapp"]["path"] == str(weights.path("pieapp"))


def test_import_identifies_a_file_by_content_not_name(cache):
    dest = weights.import_file(_lpips_wheel_file("alex.pth"))  # named alex.pth in the wheel
    assert dest.name == "LPIPS_v0.1_alex-df73285e.pth" and weights.status("lpips-alex-v0.1") == "ok"


def test_import_refuses_a_wrong_file(cache, tmp_path):
    fake = tmp_path / "DISTS_weights-f5e65c96.pth"
    fake.write_bytes(b"not the DISTS weights")
    with pytest.raises(WeightsError) as info:
        weights.import_file(fake)
    msg = str(info.value)
    assert "matches no entry" in msg and weights.entry("dists").sha256 in msg
    assert weights.status("dists") == "missing"
    with pytest.raises(WeightsError, match="not imported"):
        weights.import_file(DISTS_FILE, id="pieapp")  # right file, wrong entry
    assert weights.status("pieapp") == "missing"
    with pytest.raises(WeightsError, match="no such file"):
        weights.import_file(tmp_path / "absent.pth")


def test_prefix_only_entries_verify_by_prefix(cache, tmp_path, monkeypatch):
    good = tmp_path / "some_model.pth"
    good.write_bytes(b"model bytes")
    prefix = _sha(good)[:8]
    w = WeightFile("test-prefix", f"some_model-{prefix}.pth", f"https://example.org/some_model-{prefix}.pth", "",
                   "test", "bench", ("nothing",), sha256_prefix=prefix)
    monkeypatch.setitem(weights._extra, w.id, w)
    assert weights.import_file(good) == cache / "bench" / w.filename
    assert weights.status(w.id) == "ok"
    other = tmp_path / "other.pth"
    other.write_bytes(b"other bytes")
    with pytest.raises(WeightsError):
        weights.import_file(other, id=w.id)


# ---------------------------------------------------------------------------- fetch (never the real network)
def test_fetch_offline_fails_fast_with_the_clear_message(cache, monkeypatch):
    calls = []

    def offline(req, timeout=None, **kw):
        calls.append((getattr(req, "full_url", req), timeout))
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    t0 = time.perf_counter()
    with pytest.raises(WeightsError) as info:
        weights.fetch(["dists", "pieapp", "torchvision-vgg16"])
    assert time.perf_counter() - t0 < 2
    # the official URL and its mirror (another host) are tried once each, then nothing more; short timeouts
    assert [c[0] for c in calls] == [weights.entry("dists").url, weights.entry("dists").mirrors[0]]
    assert all(c[1] <= 10 for c in calls)
    msg = str(info.value)
    assert "Network is unreachable" in msg and "bench weights import" in msg
    for wid in ("dists", "pieapp", "torchvision-vgg16"):
        assert weights.entry(wid).url in msg and weights.entry(wid).sha256 in msg and str(weights.path(wid)) in msg
    assert info.value.missing == ["dists", "pieapp", "torchvision-vgg16"]


def test_fetch_checks_sha_uses_mirror_and_installs(cache, monkeypatch):
    good = DISTS_FILE.read_bytes()
    w = weights.entry("dists")
    seen = []

    def fake(req, timeout=None, **kw):
        url = req.full_url
        seen.append(url)
        if url == w.url:
            raise urllib.error.HTTPError(url, 503, "busy", {}, None)
        return io.BytesIO(good)

    monkeypatch.setattr(urllib.request, "urlopen", fake)
    assert weights.fetch(["dists"]) == [weights.path("dists")]
    assert seen == [w.url, w.mirrors[0]] and weights.status("dists") == "ok"
    assert weights.fetch(["dists"]) == [weights.path("dists")] and len(seen) == 2  # already there: no download

    monkeypatch.setattr(urllib.request, "urlopen", lambda req, timeout=None, **kw: io.BytesIO(b"tampered"))
    with pytest.raises(WeightsError, match="expected " + weights.entry("pieapp").sha256):
        weights.fetch(["pieapp"])
    assert weights.status("pieapp") == "missing" and not list(weights.path("pieapp").parent.glob("*.part"))


def test_no_downloads_guard_blocks_torch_hub():
    import torch

    with weights.no_downloads():
        with pytest.raises(WeightsError, match="blocked a download"):
            torch.hub.download_url_to_file("https://example.org/x.pth", "/nonexistent/x.pth")
    assert torch.hub.download_url_to_file.__name__ == "download_url_to_file"  # restored


# ---------------------------------------------------------------------------- CLI
def test_cli_list_verify_import_fetch(cache, tmp_path, monkeypatch):
    from bench.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["weights", "list"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    for wid in ("inception-2015-12-05", "clip-vit-b-32-openai", "torchvision-alexnet", "dists"):
        assert wid in res.output
    assert "missing" in res.output

    res = runner.invoke(app, ["weights", "verify", "dists"])
    assert res.exit_code == 1 and "missing" in res.output

    res = runner.invoke(app, ["weights", "import", str(DISTS_FILE)])
    assert res.exit_code == 0 and "imported" in res.output and weights.status("dists") == "ok"
    res = runner.invoke(app, ["weights", "verify"])
    assert res.exit_code == 0 and "dists" in res.output

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"junk")
    res = runner.invoke(app, ["weights", "import", str(junk)])
    assert res.exit_code == 1 and "matches no entry" in res.output

    res = runner.invoke(app, ["weights", "fetch"])
    assert res.exit_code == 2

    def offline(req, timeout=None, **kw):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    res = runner.invoke(app, ["weights", "fetch", "pieapp"], env={"COLUMNS": "250"})
    assert res.exit_code == 1 and weights.entry("pieapp").url in res.output.replace("\n", "")


def test_fetch_skips_an_unreachable_host_and_uses_the_mirror(cache, monkeypatch):
    files = {"DISTS_weights-f5e65c96.pth": DISTS_FILE.read_bytes(),
             "LPIPS_v0.1_alex-df73285e.pth": _lpips_wheel_file("alex.pth").read_bytes()}
    seen = []

    def fake(req, timeout=None, **kw):
        url = req.full_url
        seen.append(url)
        if "huggingface.co" in url:
            raise urllib.error.URLError("blocked here")
        return io.BytesIO(files[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(urllib.request, "urlopen", fake)
    weights.fetch(["dists", "lpips-alex-v0.1"])
    assert weights.status("dists") == weights.status("lpips-alex-v0.1") == "ok"
    assert sum("huggingface.co" in u for u in seen) == 1 and len(seen) == 3
