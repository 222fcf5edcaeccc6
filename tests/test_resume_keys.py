"""A stored result is reused only if everything that produced it is unchanged.

Each test changes one kind of input (library version, external program, weight
file, adapter version, card parameter vs card prose) and checks exactly which
units recompute; then set metrics, the experiment scope of the tables and
decoding in a fresh instance.
"""
from __future__ import annotations

import io
import os
import stat
import sys
import textwrap

import numpy as np
import pytest
import yaml
from PIL import Image

from bench import registry
from bench.codecs import classical
from bench.codecs.base import Codec, CodecError
from bench.codecs.external import SubprocessCodec
from bench.data.images import read_rgb
from bench.hashing import sha256_file_cached
from bench.runner import Experiment, run
from bench.store import read_table


@pytest.fixture(scope="module")
def crops(tmp_path_factory, kodak_dir):
    """Two 192×192 crops of Kodak images in a folder (fast to code and score)."""
    folder = tmp_path_factory.mktemp("crops")
    for name in ("kodim01", "kodim02"):
        rgb = read_rgb(kodak_dir / f"{name}.png")[0]
        Image.fromarray(rgb[100:292, 200:392]).save(folder / f"{name}.png")
    return folder


def exp(crops, out, **kw):
    base = dict(dataset="folder", data_dir=str(crops), codecs=["jpeg"], points=[10, 50], metrics=["psnr"],
                out=str(out))
    return Experiment(**{**base, **kw})


def coded(res) -> int:
    assert not [p for p in res.problems if not p.startswith("note:")], res.problems
    return res.units_coded


def card_file(tmp_path, name, **body):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **body}))
    return str(path)


# ------------------------------------------------------------------ codec inputs
def test_library_version_change_recomputes_only_that_codec(crops, tmp_path, monkeypatch):
    out = tmp_path / "r"
    assert coded(run(exp(crops, out, codecs=["jpeg", "webp"]))) == 8
    real = classical.features.version
    monkeypatch.setattr(classical.features, "version",
                        lambda feature: "0.0.1-upgraded" if feature == "webp" else real(feature))
    res = run(exp(crops, out, codecs=["jpeg", "webp"]))
    assert coded(res) == 4 and res.units_skipped == 4  # the webp units only
    df = read_table(out, "per_image")
    assert len(df) == 8 and not df.duplicated(["image_id", "codec", "point"]).any()
    assert coded(run(exp(crops, out, codecs=["jpeg", "webp"]))) == 0  # and then it is stable


def test_adapter_version_bump_recomputes_its_units(crops, tmp_path, monkeypatch):
    out = tmp_path / "r"
    run(exp(crops, out, codecs=["jpeg", "webp"]))
    monkeypatch.setattr(classical.PillowJPEG, "version", "99")
    assert coded(run(exp(crops, out, codecs=["jpeg", "webp"]))) == 4


def test_card_prose_is_cosmetic_but_parameters_count(crops, tmp_path):
    out = tmp_path / "r"
    body = dict(adapter="pillow-jpeg", params={"subsampling": "4:2:0"}, description="first words",
                colour="YCbCr 4:2:0", licence="IJG")
    first = card_file(tmp_path, "myjpeg", **body)
    assert coded(run(exp(crops, out, codecs=[first]))) == 4
    reworded = card_file(tmp_path, "myjpeg", **{**body, "description": "other words", "licence": "see IJG README",
                                                 "url": "https://example.org", "points": [1, 2, 3]})
    assert coded(run(exp(crops, out, codecs=[reworded]))) == 0
    changed = card_file(tmp_path, "myjpeg", **{**body, "params": {"subsampling": "4:4:4"}})
    assert coded(run(exp(crops, out, codecs=[changed]))) == 4
    df = read_table(out, "per_image")
    assert len(df) == 4  # the 4:4:4 rows replaced the 4:2:0 ones at the same coordinates


class CopyProgram(SubprocessCodec):
    """A lossless test 'codec' whose encoder and decoder are one small script (copies the PNG)."""

    name = "test-copy-program"
    programs = {"encoder": "bench-test-copy", "decoder": "bench-test-copy"}
    default_points = (1,)

    def encode_args(self, src, dst, point):
        return [src, dst]

    def decode_args(self, src, dst):
        return [src, dst]


def test_external_program_change_recomputes(crops, tmp_path, monkeypatch):
    script = tmp_path / "bin" / "bench-test-copy"
    script.parent.mkdir()
    script.write_text(f"#!{sys.executable}\nimport shutil, sys\nshutil.copyfile(sys.argv[1], sys.argv[2])\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("BENCH_BENCH_TEST_COPY", str(script))
    registry.add("codec", CopyProgram.name, CopyProgram)
    card = card_file(tmp_path, "copy", adapter=CopyProgram.name, points=[1])
    out = tmp_path / "r"
    assert coded(run(exp(crops, out, codecs=[card], points=None))) == 2
    assert coded(run(exp(crops, out, codecs=[card], points=None))) == 0
    # the same program at another path: same sha256, nothing to redo
    moved = tmp_path / "bin2" / "bench-test-copy"
    moved.parent.mkdir()
    moved.write_bytes(script.read_bytes())
    moved.chmod(script.stat().st_mode)
    monkeypatch.setenv("BENCH_BENCH_TEST_COPY", str(moved))
    assert coded(run(exp(crops, out, codecs=[card], points=None))) == 0
    with moved.open("a") as f:  # a new build: its output gains a trailer after the PNG's end
        f.write("open(sys.argv[2], 'ab').write(b'new-build')\n")
    assert coded(run(exp(crops, out, codecs=[card], points=None))) == 2
    for stored in (out / "bitstreams" / "folder" / "copy" / "1" / "s0").iterdir():
        assert stored.read_bytes().endswith(b"new-build")  # made by the new program, not a cached adapter


class WeightedTestCodec(Codec):
    """JPEG whose quality comes from a per-point 'weight file': fingerprint = that file's sha256."""

    name = "test-weighted"
    default_points = (1, 2)
    weights_dir = ""

    @property
    def weights(self):
        return self.init

    def _file(self, point):
        return os.path.join(self.weights_dir, f"w{point}.bin")

    def fingerprint(self, point):
        return {"weights_sha256": sha256_file_cached(self._file(point))}

    def encode(self, rgb, point, seed=0):
        quality = int(open(self._file(point), "rb").read().split(b"\n")[0])
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
        return buf.getvalue()

    def decode(self, data, seed=0):
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_weight_file_change_recomputes_only_its_point(crops, tmp_path, monkeypatch):
    wdir = tmp_path / "weights"
    wdir.mkdir()
    (wdir / "w1.bin").write_bytes(b"20\n")
    (wdir / "w2.bin").write_bytes(b"60\n")
    monkeypatch.setattr(WeightedTestCodec, "weights_dir", str(wdir))
    registry.add("codec", WeightedTestCodec.name, WeightedTestCodec)
    card = card_file(tmp_path, "weighted", adapter=WeightedTestCodec.name, points=[1, 2])
    out = tmp_path / "r"
    assert coded(run(exp(crops, out, codecs=[card], points=None))) == 4
    (wdir / "w2.bin").write_bytes(b"60\nretrained\n")
    res = run(exp(crops, out, codecs=[card], points=None))
    assert coded(res) == 2 and res.units_skipped == 2
    df = read_table(out, "per_image")
    assert set(df.weights) == {"pretrained"}
    # --init random is another result: recomputed and labelled in every row
    assert coded(run(exp(crops, out, codecs=[card], points=None, init="random"))) == 4
    assert set(read_table(out, "per_image").weights) == {"random"}
    assert set(read_table(out, "per_set").weights) == {"random"}


# ------------------------------------------------------------------ set metrics
class CountingSetMetric:
    """A cheap set metric: mean reconstruction intensity; counts its computations."""

    name = "test_set_mean"
    kind = "per_set"
    higher_better = True
    calls = 0

    @staticmethod
    def available():
        return True, ""

    @staticmethod
    def version():
        return "test-1"

    @classmethod
    def compute_set(cls, pairs, device="cpu", cache_dir=None):
        cls.calls += 1
        return {"value": float(np.mean([recon.mean() for _, recon in pairs])), "n_images": len(pairs)}


def test_set_metrics_follow_their_units(crops, tmp_path, monkeypatch):
    registry.add("metric", CountingSetMetric.name, CountingSetMetric)
    monkeypatch.setattr(CountingSetMetric, "calls", 0)
    out = tmp_path / "r"
    metrics = ["psnr", CountingSetMetric.name]
    run(exp(crops, out, codecs=["webp"], metrics=metrics))
    assert CountingSetMetric.calls == 2  # one per point
    run(exp(crops, out, codecs=["webp"], metrics=metrics))
    assert CountingSetMetric.calls == 2  # nothing changed: reused

    real = classical.features.version
    monkeypatch.setattr(classical.features, "version",
                        lambda feature: "0.0.1-upgraded" if feature == "webp" else real(feature))
    # units recompute while the set metric is not asked for: no stale set row in the tables
    assert coded(run(exp(crops, out, codecs=["webp"], metrics=["psnr"]))) == 4
    per_set = read_table(out, "per_set")
    assert set(per_set["aggregate"]) == {"mean"}
    # asked for again: recomputed from the new units, drawn at their mean bpp
    run(exp(crops, out, codecs=["webp"], metrics=metrics))
    assert CountingSetMetric.calls == 4
    per_set = read_table(out, "per_set")
    per_image = read_table(out, "per_image")
    for point in ("10", "50"):
        row = per_set[(per_set.metric == CountingSetMetric.name) & (per_set.point == point)].iloc[0]
        assert row.mean_bpp == pytest.approx(per_image[per_image.point == point].bpp.mean())
        assert row.n_images == 2


# ------------------------------------------------------------------ scope of the tables
def test_tables_describe_the_experiment_asked_for(crops, tmp_path):
    out = tmp_path / "r"
    run(exp(crops, out, codecs=["jpeg", "webp"], points=[10, 50], metrics=["psnr", "gmsd"]))
    res = run(exp(crops, out, codecs=["jpeg"], points=[50], metrics=["psnr"]))
    per_set, per_image = read_table(out, "per_set"), read_table(out, "per_image")
    assert set(zip(per_set.codec, per_set.point, per_set.metric)) == {("jpeg", "50", "psnr")}
    assert len(per_image) == 2
    notes = [p for p in res.problems if "outside this experiment" in p]
    assert len(notes) == 1 and "webp on folder @ 10, 50" in notes[0] and "jpeg on folder @ 10" in notes[0]


def test_each_mean_says_over_how_many_images(crops, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for f in crops.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    Image.fromarray(np.full((5, 7, 3), 90, np.uint8)).save(folder / "tiny.png")
    res = run(Experiment(data_dir=str(folder), codecs=["jpeg"], points=[50], metrics=["psnr", "ssim", "ms_ssim"],
                         out=str(tmp_path / "r")))
    per_set = read_table(tmp_path / "r", "per_set").set_index("metric")
    assert per_set.loc["psnr", "n_images"] == 3 and per_set.loc["ms_ssim", "n_images"] == 2
    assert per_set.loc["ssim", "n_images"] == 2
    # each metric that cannot take the 7×5 image says so once, with its size rule (no torch traceback text)
    assert sorted(p for p in res.problems if "tiny" in p) == [
        "image tiny: ms_ssim needs images at least 161×161 px (got 7×5); skip it for this dataset or use larger images",
        "image tiny: ssim needs images at least 11×11 px (got 7×5); skip it for this dataset or use larger images"]
    per_image = read_table(tmp_path / "r", "per_image")
    big = per_image[(per_image.metric == "ms_ssim")]
    assert per_set.loc["ms_ssim", "mean_bpp"] == pytest.approx(big.bpp.mean())


def test_data_dir_alone_means_the_users_folder(crops):
    assert Experiment(data_dir=str(crops)).dataset == "folder"
    assert Experiment().dataset == "samples"
    assert Experiment(dataset="kodak", data_dir=str(crops)).dataset == "kodak"


# ------------------------------------------------------------------ decode from bytes alone
class CheatingCodec(Codec):
    """Keeps the last image it encoded and 'decodes' to it when it can (a side channel)."""

    name = "test-cheater"
    default_points = (5,)

    def encode(self, rgb, point, seed=0):
        self.last = rgb.copy()
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=int(point))
        return buf.getvalue()

    def decode(self, data, seed=0):
        if getattr(self, "last", None) is not None:
            return self.last
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_decoder_is_a_fresh_instance_so_the_side_channel_fails(crops, tmp_path):
    registry.add("codec", CheatingCodec.name, CheatingCodec)
    card = card_file(tmp_path, "cheater", adapter=CheatingCodec.name, points=[5])
    run(exp(crops, tmp_path / "r", codecs=[card], points=None))
    df = read_table(tmp_path / "r", "per_image")
    assert len(df) == 2
    assert (df.value < 35).all()  # a JPEG at quality 5, not the original (which would be inf dB)
    for row in df.itertuples():
        data = (tmp_path / "r" / "bitstreams" / "folder" / "cheater" / "5" / "s0" / f"{row.image_id}.bin").read_bytes()
        recon = read_rgb(tmp_path / "r" / "recon" / "folder" / "cheater" / "5" / "s0" / f"{row.image_id}.png")[0]
        assert np.array_equal(recon, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


class BuggyDecoder(CheatingCodec):
    name = "test-buggy"

    def decode(self, data, seed=0):
        if len(data) % 2:
            raise IndexError("list index out of range")
        return super().decode(data, seed)


def test_an_adapter_bug_fails_its_unit_and_the_run_goes_on(crops, tmp_path):
    registry.add("codec", BuggyDecoder.name, BuggyDecoder)
    card = card_file(tmp_path, "buggy", adapter=BuggyDecoder.name, points=[5, 6, 7, 8])
    res = run(exp(crops, tmp_path / "r", codecs=[card, "jpeg"], points=None))
    failed = [p for p in res.problems if "IndexError" in p]
    assert res.units_failed == len(failed) >= 1
    assert res.units_total == 2 * 4 + 2 * 6  # buggy: 4 points, jpeg card: 6 points, on 2 images
    assert res.units_coded == res.units_total - res.units_failed
    assert len(read_table(tmp_path / "r", "per_image")) == res.units_coded


def test_settings_are_checked_before_work(crops, tmp_path):
    from bench.runner import ExperimentError

    for bad in (dict(dtype="float8"), dict(init="zeros"), dict(device="tpu")):
        with pytest.raises(ExperimentError, match=list(bad)[0]):
            run(exp(crops, tmp_path / "r", **bad))
    with pytest.raises(CodecError):
        classical.PillowJPEG(init="zeros")
