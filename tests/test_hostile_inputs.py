"""Hostile inputs other than bitstreams: a program that hangs, malformed codec and dataset cards,
experiment files and weight files, and odd images (huge, tiny, 16-bit, CMYK, EXIF-rotated,
alpha, truncated). Each is handled as the README's "Bad input" section says: a clear message
naming the file and the field or problem, and a run goes on with the other units.
(tests/test_hostile_bitstreams.py does damaged bytes for every codec card.)"""
from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bench import cards
from bench.cards import CardError
from bench.codecs.base import CodecError
from bench.data.images import ImageError, read_rgb
from bench.runner import Experiment, ExperimentError, run

FEW = settings(max_examples=25, deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def errors(res) -> list[str]:
    return [p for p in res.problems if not p.startswith("note:")]


# ---------------------------------------------------------------------------- a program that hangs
def test_hanging_decoder_is_killed_at_the_cards_timeout_and_the_run_goes_on(tmp_path, monkeypatch, kodak_dir):
    """The avifenc card with avifdec replaced by a program that sleeps forever: each unit fails
    after the card's timeout_s with a message saying so and how to raise it; the program is gone."""
    from test_external import alive

    pids = tmp_path / "pids"
    pids.mkdir()
    fake = tmp_path / "avifdec"
    fake.write_text(f"#!{sys.executable}\nimport os, sys, time\n"
                    "if len(sys.argv) < 3: print('avifdec 0.0 (hangs)'); sys.exit()\n"
                    f"open(os.path.join({str(pids)!r}, str(os.getpid())), 'w').close()\n"
                    "time.sleep(3600)\n")
    fake.chmod(0o755)
    monkeypatch.setenv("BENCH_AVIFDEC", str(fake))
    body = dict(cards.get("codec", "avifenc").body, name="avifenc-hangs")
    body["params"] = {**body["params"], "timeout_s": 2}
    card = tmp_path / "avifenc-hangs.yaml"
    card.write_text(yaml.safe_dump(body))
    images = tmp_path / "images"
    images.mkdir()
    for i in (1, 2):
        Image.fromarray(read_rgb(kodak_dir / f"kodim0{i}.png")[0][:32, :48]).save(images / f"k{i}.png")
    t0 = time.monotonic()
    res = run(Experiment(data_dir=str(images), codecs=[str(card)], points=[50], metrics=["psnr"],
                         out=str(tmp_path / "run")))
    assert time.monotonic() - t0 < 120
    assert res.units_failed == 2 and res.units_coded == 0
    msg = errors(res)[0]
    assert "decoder failed (timed out after 2s; process group killed), program avifdec" in msg
    assert "`params: {timeout_s: 60}`" in msg and "now 2" in msg
    started = [int(p) for p in os.listdir(pids)]
    assert len(started) == 2 and not any(alive(pid) for pid in started)


# ---------------------------------------------------------------------------- cards
CODEC_CARD = {"name": "my-jpeg", "adapter": "pillow-jpeg", "params": {"subsampling": "4:4:4"}, "points": [10, 50],
              "point_name": "quality", "colour": "RGB -> YCbCr", "licence": "MIT", "description": "a test card",
              "lossless": False}
DATASET_CARD = {"name": "my-set", "loader": "files", "images": [{"id": "a", "file": "a.png"}], "count": 1,
                "description": "a test set", "license": "CC0", "protocol": "full images"}
WRONG = {  # a value of the wrong type for each typed field
    "name": [1, 2], "adapter": {"x": 1}, "loader": 7, "params": [1, 2], "points": "10,50", "point_name": 3,
    "lossless": "yes", "images": [{"file": "a.png"}], "count": "one", "description": ["prose"], "licence": 1.5,
    "license": {"a": 1}, "protocol": 4,
}


def _write(tmp_path: Path, body, name="card.yaml") -> Path:
    path = tmp_path / name
    path.write_text(body if isinstance(body, str) else yaml.safe_dump(body))
    return path


@pytest.mark.parametrize("kind,good", [("codec", CODEC_CARD), ("dataset", DATASET_CARD)])
def test_well_formed_cards_load(kind, good, tmp_path):
    card = cards.load_file(kind, _write(tmp_path, good))
    assert card.name == good["name"] and card.body == good


@pytest.mark.parametrize("kind,good", [("codec", CODEC_CARD), ("dataset", DATASET_CARD)])
@FEW
@given(data=st.data())
def test_malformed_cards_name_the_file_and_the_field(kind, good, tmp_path, data):
    """A card with one field dropped, given a wrong type, or misspelt: CardError naming the
    file and that field."""
    field = data.draw(st.sampled_from(sorted(good)), label="field")
    how = data.draw(st.sampled_from(["drop", "wrong", "typo"] if field in WRONG else ["drop", "typo"]), label="how")
    body = dict(good)
    if how == "drop":
        del body[field]
    elif how == "wrong":
        body[field] = WRONG[field]
    else:
        body[field + data.draw(st.sampled_from(["s", "_", "x"]), label="suffix")] = body.pop(field)
    path = _write(tmp_path, body, f"{kind}-{field}-{how}.yaml")
    required = field in ("name", "adapter", "loader")
    if how == "drop" and not required:
        cards.load_file(kind, path)  # optional fields may be left out
        return
    with pytest.raises(CardError) as info:
        cards.load_file(kind, path)
    msg = str(info.value)
    assert str(path) in msg and f"`{field}" in msg, msg
    if how == "typo" and not required:
        assert f"did you mean `{field}:`?" in msg, msg


@pytest.mark.parametrize("text,expect", [
    ("name: [unclosed\n", "not valid YAML"),
    ("- name: x\n- adapter: y\n", "a codec card is a YAML mapping"),
    ("", "a codec card is a YAML mapping"),
    ("name: x\nadapter: pillow-jpeg\nparam: {quality: 3}\n", "unknown field `param:` (did you mean `params:`?)"),
    ("name: x\nadapter: pillow-jpeg\npoints: []\n", "`points:` must be a non-empty list"),
    ("name: x\nadapter: pillow-jpeg\npoints: [10, true]\n", "`points:` must be a non-empty list"),
    ("name: '  '\nadapter: pillow-jpeg\n", "`name:` must be a non-empty string"),
])
def test_card_messages(tmp_path, text, expect):
    path = _write(tmp_path, text)
    with pytest.raises(CardError, match="^" + str(path).replace(".", r"\.")) as info:
        cards.load_file("codec", path)
    assert expect in str(info.value)


def test_a_plugin_adapter_may_declare_its_own_card_fields(tmp_path, monkeypatch):
    from bench import registry
    from bench.codecs.classical import PillowJPEG

    class WithField(PillowJPEG):
        card_fields = ("training_data",)

    registry.add("codec", "jpeg-with-field", WithField)
    body = dict(CODEC_CARD, adapter="jpeg-with-field", training_data="ImageNet")
    assert cards.load_file("codec", _write(tmp_path, body)).get("training_data") == "ImageNet"
    with pytest.raises(CardError, match="unknown field `training_data:`"):
        cards.load_file("codec", _write(tmp_path, dict(body, adapter="pillow-jpeg"), "other.yaml"))


def test_unknown_adapter_in_a_run_is_named(tmp_path):
    path = _write(tmp_path, dict(CODEC_CARD, adapter="no-such-adapter"))
    with pytest.raises(Exception, match="no-such-adapter"):
        run(Experiment(codecs=[str(path)], metrics=["psnr"], out=str(tmp_path / "r"), limit=1))


# ---------------------------------------------------------------------------- experiment files
EXPERIMENT = {"dataset": "samples", "codecs": ["jpeg", {"name": "webp", "points": [20]}], "points": [10],
              "metrics": ["psnr"], "seeds": [0], "out": "runs/x", "workers": 1, "device": "cpu",
              "dtype": "float32", "init": "pretrained", "limit": 2, "batch": 1}
EXPERIMENT_WRONG = {"dataset": ["kodak"], "codecs": "jpeg", "points": 10, "metrics": "psnr", "seeds": [0, "1"],
                    "out": 5, "workers": "two", "device": 0, "dtype": 16, "init": True, "limit": "2", "batch": 1.5,
                    "data_dir": ["a"]}


@FEW
@given(data=st.data())
def test_malformed_experiment_files_name_the_file_and_the_key(tmp_path, data):
    key = data.draw(st.sampled_from(sorted(EXPERIMENT_WRONG)), label="key")
    typo = data.draw(st.booleans(), label="typo")
    body = dict(EXPERIMENT)
    if typo:
        body[key[:-1] if len(key) > 4 else key + "s"] = body.pop(key, "x")
        shown = key[:-1] if len(key) > 4 else key + "s"
    else:
        body[key] = EXPERIMENT_WRONG[key]
        shown = key
    path = _write(tmp_path, body, f"exp-{key}-{typo}.yaml")
    with pytest.raises(ExperimentError) as info:
        Experiment.from_yaml(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and (f"`{shown}:`" in msg or f"unknown keys [{shown!r}]" in msg), msg
    assert Experiment.from_yaml(_write(tmp_path, EXPERIMENT, "good.yaml")).codecs == EXPERIMENT["codecs"]


@pytest.mark.parametrize("text,expect", [
    ("dataset: [kodak\n", "cannot read experiment file"),
    ("- jpeg\n- webp\n", "an experiment file is a YAML mapping"),
    ("metric: [psnr]\n", "unknown keys ['metric'] (`metric:` -> did you mean `metrics:`?)"),
    ("codecs: [{points: [10]}]\n", "needs `name:`"),
    ("codecs: [{name: jpeg, point: [10]}]\n", "unknown keys ['point']"),
    ("workers: two\n", "`workers:` must be an integer >= 1, got str 'two'"),
])
def test_experiment_file_messages(tmp_path, text, expect):
    path = _write(tmp_path, text, "exp.yaml")
    with pytest.raises(ExperimentError) as info:
        Experiment.from_yaml(path)
    assert str(path) in str(info.value) and expect in str(info.value), str(info.value)


def test_cli_reports_a_bad_experiment_file_and_exits_2(tmp_path):
    from typer.testing import CliRunner

    from bench.cli import app

    path = _write(tmp_path, "codecs: jpeg\n", "exp.yaml")
    res = CliRunner().invoke(app, ["run", str(path)])
    assert res.exit_code == 2 and "exp.yaml" in res.output and "`codecs:` must be a list" in res.output, res.output


# ---------------------------------------------------------------------------- weight files
def test_truncated_weight_file_is_named_with_its_path_and_the_fix(cache):
    from bench import weights
    from bench.codecs.torch_base import WeightsMissing
    from bench.runner import build_codec

    card = cards.get("codec", "bmshj2018-hyperprior")
    wid = build_codec(card).weight_ids(1)[0]
    path = weights.path(wid)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"PK\x03\x04" + bytes(1000))  # the first kilobyte of a download that stopped
    with pytest.raises(WeightsMissing) as info:
        build_codec(card).encode(np.zeros((16, 16, 3), np.uint8), 1)
    msg = str(info.value)
    assert str(path) in msg and "present but its sha256 is" in msg and "incomplete download" in msg
    assert f"bench weights fetch {wid}" in msg and weights.entry(wid).url in msg


def test_unverified_weight_file_that_is_not_a_checkpoint_is_named(cache):
    """MS-ILLM publishes no sha256, so a wrong file passes the hash check; loading it then
    fails with a CodecError naming the file and how to get the right one."""
    from bench import weights
    from bench.runner import build_codec

    card = cards.get("codec", "msillm")
    wid = build_codec(card).weight_ids("vlo1")[0]
    assert weights.entry(wid).verified_by == "unverified"
    path = weights.path(wid)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("<html>403 Forbidden</html>")  # what a blocked download saves
    with pytest.raises(CodecError) as info:
        build_codec(card).encode(np.zeros((64, 64, 3), np.uint8), "vlo1")
    msg = str(info.value)
    assert str(path) in msg and "damaged or not the expected checkpoint" in msg and f"bench weights fetch {wid}" in msg


# ---------------------------------------------------------------------------- images
def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming ``width`` x ``height`` RGB, then an empty IDAT and IEND."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", b"") + chunk(b"IEND", b""))


def bomb_png(path: Path, side: int = 20000) -> None:
    """A complete, valid 1-bit PNG of side x side black pixels (~50 kB on disk, 1.2 GB as RGB),
    written row by row through zlib without building the image in memory."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    z = zlib.compressobj(9)
    row = bytes(1 + (side + 7) // 8)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_huge_images_are_refused_from_the_header_without_allocating(tmp_path):
    bomb_png(tmp_path / "bomb.png")
    (tmp_path / "claim.png").write_bytes(png_header_only(20000, 20000))
    assert (tmp_path / "bomb.png").stat().st_size < 200_000
    code = ("import sys\nfrom bench.data.images import ImageError, read_rgb\n"
            "for f in sys.argv[1:]:\n"
            "    try:\n        read_rgb(f)\n    except ImageError as exc:\n        print('refused', exc)\n"
            "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')]\n"
            "print('peak_kb', hwm[0].split()[1])\n")  # this process's peak RSS (ru_maxrss keeps the parent's)
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "bomb.png"), str(tmp_path / "claim.png")],
                         check=False, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    lines = out.stdout.splitlines()
    assert out.returncode == 0, out.stderr
    refused = [line for line in lines if line.startswith("refused")]
    assert len(refused) == 2, out.stdout
    for line in refused:
        assert "20000x20000 = 400,000,000 pixels is above bench's limit of 67,108,864 pixels" in line
        assert "1.1 GiB" in line and "BENCH_MAX_PIXELS=400000000" in line
    assert int(lines[-1].split()[1]) < 400_000, "reading the headers took more than 400 MB"


def test_pixel_limit_is_configurable(tmp_path, monkeypatch):
    Image.new("RGB", (16, 16)).save(tmp_path / "small.png")
    monkeypatch.setenv("BENCH_MAX_PIXELS", "100")
    with pytest.raises(ImageError, match=r"small.png: image of 16x16 = 256 pixels is above bench's limit of 100"):
        read_rgb(tmp_path / "small.png")
    monkeypatch.setenv("BENCH_MAX_PIXELS", "0")
    assert read_rgb(tmp_path / "small.png")[0].shape == (16, 16, 3)
    monkeypatch.setenv("BENCH_MAX_PIXELS", "lots")
    with pytest.raises(ImageError, match="BENCH_MAX_PIXELS='lots' is not a number"):
        read_rgb(tmp_path / "small.png")


def png16(arr: np.ndarray, colour_type: int) -> bytes:
    """A 16-bit PNG (grey 0, RGB 2, RGBA 6) of ``arr`` (uint16), written from the PNG spec."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16_bit_images_of_every_kind_are_refused(tmp_path):
    a = np.random.default_rng(0).integers(0, 65536, (6, 5, 4)).astype(np.uint16)
    (tmp_path / "g16.png").write_bytes(png16(a[..., 0], 0))
    (tmp_path / "rgb16.png").write_bytes(png16(a[..., :3], 2))
    (tmp_path / "rgba16.png").write_bytes(png16(a, 6))
    import tifffile

    tifffile.imwrite(tmp_path / "rgb16.tif", a[..., :3])
    for name in ("g16.png", "rgb16.png", "rgba16.png", "rgb16.tif"):
        with pytest.raises(ImageError, match=rf"{name}: .* 16 bits per sample .*8-bit RGB. Convert it first"):
            read_rgb(tmp_path / name)


def test_cmyk_is_converted_as_the_reference_protocols_read_it_with_a_note(tmp_path):
    Image.new("CMYK", (8, 8), (0, 128, 255, 10)).save(tmp_path / "print.tif")
    rgb, notes = read_rgb(tmp_path / "print.tif")
    with Image.open(tmp_path / "print.tif") as im:  # CompressAI's bench / clean-fid / pyiqa: convert("RGB")
        assert np.array_equal(rgb, np.asarray(im.convert("RGB")))
    assert notes == ["CMYK converted to RGB by Pillow's formula, without colour management (as CompressAI, "
                     "clean-fid and pyiqa read it)"]
    Image.new("RGB", (4, 4)).convert("LAB").save(tmp_path / "lab.tif")
    with pytest.raises(ImageError, match=r"lab.tif: LAB image; converting it to RGB needs colour management"):
        read_rgb(tmp_path / "lab.tif")


def test_exif_orientation_is_noted_not_applied(tmp_path):
    rgb = np.zeros((4, 8, 3), np.uint8)
    rgb[:, :4] = 255  # left half white: a rotation would show
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(rgb).save(tmp_path / "camera.png", exif=exif)
    got, notes = read_rgb(tmp_path / "camera.png")
    assert np.array_equal(got, rgb)  # as stored, as CompressAI / clean-fid / pyiqa read it
    assert any("EXIF orientation 6 (rotated 90° CW) not applied" in n for n in notes), notes
    exif[0x0112] = 1
    Image.fromarray(rgb).save(tmp_path / "upright.png", exif=exif)
    assert read_rgb(tmp_path / "upright.png")[1] == []


def test_tiny_images_and_alpha_by_policy(tmp_path):
    for side in (1, 2):
        Image.new("RGB", (side, side), (1, 2, 3)).save(tmp_path / f"t{side}.png")
        rgb, notes = read_rgb(tmp_path / f"t{side}.png")
        assert rgb.shape == (side, side, 3) and notes == [] and tuple(rgb[0, 0]) == (1, 2, 3)
    Image.new("LA", (3, 3), (100, 255)).save(tmp_path / "la.png")
    rgb, notes = read_rgb(tmp_path / "la.png")
    assert rgb.shape == (3, 3, 3) and "alpha dropped" in notes[0]
    Image.new("LA", (3, 3), (100, 0)).save(tmp_path / "clear.png")
    with pytest.raises(ImageError, match="clear.png: image has transparent pixels"):
        read_rgb(tmp_path / "clear.png")


MODES = {"1": np.bool_, "L": np.uint8, "P": np.uint8, "RGB": np.uint8, "RGBA": np.uint8, "LA": np.uint8,
         "CMYK": np.uint8, "I;16": np.uint16, "I": np.int32, "F": np.float32}


@FEW
@given(mode=st.sampled_from(sorted(MODES)), h=st.integers(1, 9), w=st.integers(1, 9),
       fmt=st.sampled_from(["PNG", "TIFF", "JPEG", "WEBP", "BMP"]), cut=st.none() | st.integers(0, 300),
       seed=st.integers(0, 2 ** 16))
def test_any_small_image_reads_to_rgb_or_image_error(tmp_path, mode, h, w, fmt, cut, seed):
    """Whatever the mode, size and format (and a file cut anywhere): uint8 (h, w, 3), or an
    ImageError naming the file; never another exception."""
    rng = np.random.default_rng(seed)
    bands = len(Image.new(mode, (1, 1)).getbands())
    dtype = MODES[mode]
    values = rng.integers(0, 2 if dtype == np.bool_ else 250, (h, w, bands) if bands > 1 else (h, w))
    img = Image.fromarray(values.astype(dtype), mode if mode not in ("I;16", "1", "P", "LA", "CMYK") else None)
    img = img.convert(mode) if img.mode != mode else img
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):
        return  # this format cannot hold this mode: nothing to read
    data = buf.getvalue() if cut is None else buf.getvalue()[:cut]
    path = tmp_path / f"x-{mode.replace(';', '')}-{h}x{w}-{seed}.{fmt.lower()}"
    path.write_bytes(data)
    try:
        rgb, _ = read_rgb(path)
    except ImageError as exc:
        assert str(path) in str(exc)
        return
    assert rgb.dtype == np.uint8 and rgb.shape == (h, w, 3)


def test_a_folder_of_odd_images_runs_the_good_ones_and_names_the_bad(tmp_path, kodak_dir):
    folder = tmp_path / "mine"
    folder.mkdir()
    good = read_rgb(kodak_dir / "kodim03.png")[0][:48, :64]
    Image.fromarray(good).save(folder / "a_good.png")
    Image.fromarray(good[:1, :1]).save(folder / "b_tiny.png")
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(good).save(folder / "c_rotated.jpg", exif=exif, quality=95)
    (folder / "d_claims_huge.png").write_bytes(png_header_only(20000, 20000))
    (folder / "e_deep.png").write_bytes(png16(np.full((8, 8, 3), 40000, np.uint16), 2))
    Image.new("RGB", (8, 8)).convert("LAB").save(folder / "f_lab.tif")
    data = (folder / "a_good.png").read_bytes()
    (folder / "g_cut.png").write_bytes(data[:len(data) // 2])
    (folder / "h_text.png").write_text("not an image")
    Image.fromarray(good).convert("CMYK").save(folder / "i_print.jpg", quality=95)
    res = run(Experiment(data_dir=str(folder), codecs=["jpeg"], points=[50], metrics=["psnr"],
                         out=str(tmp_path / "run")))
    assert res.units_coded == 4 and res.units_failed == 5
    text = "\n".join(res.problems)
    for name, why in (("d_claims_huge", "above bench's limit"), ("e_deep", "16 bits per sample"),
                      ("f_lab", "LAB image"), ("g_cut", "not a readable image"), ("h_text", "not a readable image")):
        assert any(p.startswith(f"image {name}: ") and why in p for p in res.problems), (name, text)
    assert any("c_rotated" in p and "EXIF orientation 8" in p for p in res.problems), text
    assert any("i_print" in p and "CMYK converted to RGB" in p for p in res.problems), text


def test_every_experiment_field_is_validated():
    """The experiment file's type table covers every Experiment field (a new option that is left out
    would be refused as an unknown key in experiment files)."""
    from bench.runner import _EXPERIMENT_TYPES, Experiment

    assert set(_EXPERIMENT_TYPES) == set(Experiment.__dataclass_fields__)
