"""`bench codecs check`: every built-in card keeps the contract, and the check catches the ways an
adapter can break it (each broken adapter below is a plugin found through entry points, as a
user's would be, so the separate decoding process can build it too)."""
from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bench import cards, registry
from bench.cli import app
from bench.codecs import check
from bench.codecs.check import crop, parse_size, run_checks
from bench.runner import build_codec
from toy_codec import DECODE, ENCODE, FINGERPRINT, HEADER

REPO = Path(__file__).resolve().parent.parent
# hific runs TFC's metagraphs, which no development or CI machine can download: its card is
# checked where they are in the cache (tests/test_hific.py runs the same checks on a tiny model)
HIFIC_WEIGHTS = ("hific-lo", "hific-mi", "hific-hi")
USER_BUILT_CARDS = ("bpg", "vtm", "vtm-420")  # their programs are built by users (tests/test_yuv_codecs.py fakes them)


def _builtin_param(name: str):
    if name == "hific":
        return pytest.param(name, marks=pytest.mark.needs_weights(*HIFIC_WEIGHTS))
    if name in USER_BUILT_CARDS:
        return pytest.param(name, marks=pytest.mark.needs_user_build(name))
    return name


# CDC's released architecture needs minutes per 64x96 decode on a CPU (65-200 U-Net steps, 54 M
# parameters): tests/test_cdc.py runs this same check on a tiny copy of the cdc cards instead
BUILTIN_CARDS = [_builtin_param(n) for n in sorted(p.stem for p in (REPO / "codecs").glob("*.yaml"))
                 if not n.startswith("cdc")]
CHECKS = ("card", "adapter", "points", "weights", "fingerprint", "encode", "rate", "decode", "fresh-process", "lossy",
          "plausible", "deterministic", "seed", "empty-bytes", "truncated-bytes", "bit-flips")
SMALL = [(48, 64), (7, 5)]  # one small real crop (judged on lossy/plausible) and one odd size


def _failures(report) -> str:
    return "\n".join(f"{c.name}: {c.detail}" for c in report.failed)


# ---------------------------------------------------------------------------- every built-in card
def _zoo_options(name: str) -> dict:
    """Learned cards with seeded random weights; the serial context models (mbt2018, cheng2020)
    decode position by position on the CPU, so they get tiny images."""
    slow = name.startswith(("mbt2018-msssim", "cheng2020")) or name == "mbt2018"
    return dict(init="random", images=0, sizes=[(32, 48), (7, 5)] if slow else [(64, 96), (7, 5)])


@pytest.mark.parametrize("name", BUILTIN_CARDS)
def test_builtin_card_passes(name, kodak_dir):
    from bench import weights
    from bench.codecs.torch_base import TorchCodec

    card = cards.get("codec", name)
    hific = card.target == "hific"  # TFC's metagraphs: not a TorchCodec, no --init random, no published digest
    learned = hific or issubclass(registry.get("codec", card.target).obj, TorchCodec)  # zoo, msillm, ...
    options = dict(images=0, sizes=[(64, 96), (7, 5)]) if hific else _zoo_options(name) if learned else {}
    report = run_checks(name, **options)
    assert [c.name for c in report.checks] == list(CHECKS)
    assert not report.failed, _failures(report)
    status = {c.name: c.status for c in report.checks}
    codec = None if hific or not learned else build_codec(card, "cpu", init="random")
    unverified = hific or learned and any(weights.entry(i).verified_by == "unverified"  # weight_ids: one id or
                                          for p in codec.points() for i in codec.weight_ids(p))  # several (or none)
    assert status["weights"] == ("n/a" if not learned else "warn" if unverified else "pass")
    for name_ in ("card", "adapter", "points", "encode", "decode", "fresh-process", "lossy", "plausible",
                  "deterministic", "seed", "empty-bytes", "truncated-bytes"):
        assert status[name_] == "pass", (name_, report.check(name_).detail)
    assert report.fingerprints and all(report.fingerprints.values())
    if not learned:  # two Kodak images at full size plus the two odd sizes, cropped from Kodak
        assert [i.size for i in report.images] == ["512x768", "512x768", "7x5", "513x769"]
        assert report.images[0].id == "kodim01"


def test_cli_prints_each_check_and_exits_zero(kodak_dir):
    res = CliRunner().invoke(app, ["codecs", "check", "jpeg", "--point", "50", "--images", "1", "--sizes", "7x5"])
    assert res.exit_code == 0, res.output
    rows = {m[2]: m[0] for m in re.finditer(r"(?m)^  (PASS|WARN|FAIL|N/A |SKIP)  (\S+) .*$", res.output)}
    assert list(rows) == list(CHECKS)
    assert "PASS" in rows["fresh-process"] and "N/A" in rows["weights"]
    assert "fingerprint(50) = {" in res.output and "libjpeg_turbo" in res.output
    assert "jpeg: " in res.output and " 0 failed" in res.output
    assert "│ kodim01 " in res.output and "│ kodim01[7x5] " in res.output  # the round-trip table


def test_cli_bad_arguments():
    res = CliRunner().invoke(app, ["codecs", "check", "jpeg", "--sizes", "7by5"])
    assert res.exit_code == 2 and "HxW" in res.output


# ---------------------------------------------------------------------------- images
def test_crops_mirror_small_sources_and_keep_real_content():
    rgb = np.arange(512 * 768 * 3, dtype=np.uint32).reshape(512, 768, 3).astype(np.uint8)
    assert crop(rgb, 7, 5).shape == (7, 5, 3)
    big = crop(rgb, 513, 769)
    assert big.shape == (513, 769, 3) and np.array_equal(big[:512, :768], rgb)
    assert parse_size("513x769") == (513, 769)
    with pytest.raises(ValueError, match="HxW"):
        parse_size("513")


def test_images_fall_back_to_scikit_image_photos(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_SHARED", str(tmp_path))  # no Kodak there
    imgs = check.check_images(1, [(7, 5)])
    assert [i.id for i in imgs] == ["astronaut", "astronaut[7x5]"]
    assert imgs[0].rgb.shape == (512, 512, 3)


# ---------------------------------------------------------------------------- broken adapters
PLUGIN = '''
import hashlib, os, signal, time

import numpy as np

from bench.codecs.base import Codec, CodecError, check_rgb

''' + HEADER + '''
_CACHE = {}


class Quant(Codec):
    """A correct toy codec (tests/toy_codec.py)."""
    name = "quant-ok"
    default_points = (8, 32)

    def encode(self, rgb, point, seed=0):
        check_rgb(rgb)''' + ENCODE + '''

    def decode(self, data, seed=0):''' + DECODE + '''

    def fingerprint(self, point):
        ''' + FINGERPRINT + '''


class CacheCheat(Quant):
    """The 8-byte 'bitstream' of issue #9: the decoder looks the original up in a module dict."""
    name = "cache-cheat"

    def encode(self, rgb, point, seed=0):
        key = hashlib.sha256(rgb.tobytes()).digest()[:8]
        _CACHE[key] = rgb.copy()
        return key

    def decode(self, data, seed=0):
        return _CACHE[bytes(data)]


class ClassAttr(Quant):
    """Real bytes, but the decoder hands back the original kept on the class."""
    name = "class-attr"
    kept = {}

    def encode(self, rgb, point, seed=0):
        type(self).kept[rgb.shape] = rgb.copy()
        return super().encode(rgb, point, seed)

    def decode(self, data, seed=0):
        rec = super().decode(data, seed)
        return type(self).kept.get(rec.shape, rec)


class WrongSize(Quant):
    name = "wrong-size"

    def decode(self, data, seed=0):
        rec = super().decode(data, seed)
        return np.pad(rec, ((0, -rec.shape[0] % 16), (0, -rec.shape[1] % 16), (0, 0)), mode="edge")


class Salted(Quant):
    name = "salted"

    def encode(self, rgb, point, seed=0):
        return super().encode(rgb, point, seed) + os.urandom(4)

    def decode(self, data, seed=0):
        return super().decode(data[:-4], seed)


class Seedy(Quant):
    name = "seedy"  # decode draws noise from the seed, but stochastic is not declared

    def decode(self, data, seed=0):
        rec = super().decode(data, seed).astype(np.int16)
        rec += np.random.default_rng(seed).integers(-2, 3, rec.shape, dtype=np.int16)
        return np.clip(rec, 0, 255).astype(np.uint8)


class RawErrors(Quant):
    name = "raw-errors"  # lets struct/zlib errors through

    def decode(self, data, seed=0):
        h, w, levels = struct.unpack(">HHH", data[4:10])
        q = np.frombuffer(zlib.decompress(data[10:]), np.uint8).reshape(h, w, 3)
        return (q * (256 // levels)).astype(np.uint8)


class Hangs(Quant):
    name = "hangs"

    def decode(self, data, seed=0):
        if not data:
            time.sleep(3600)
        return super().decode(data, seed)


class Crashes(Quant):
    name = "crashes"

    def decode(self, data, seed=0):
        try:
            return super().decode(data, seed)
        except CodecError:
            os.kill(os.getpid(), signal.SIGSEGV)


class BadBreakdown(Quant):
    name = "bad-breakdown"

    def bits_breakdown(self, data):
        return {"payload": 8 * len(data) - 80, "container": 79}


class Raw(Quant):
    name = "raw"  # lossless: stores the pixels

    def encode(self, rgb, point, seed=0):
        return MAGIC + struct.pack(">HHH", *rgb.shape[:2], 256) + zlib.compress(rgb.tobytes())

    def decode(self, data, seed=0):
        h, w, _ = struct.unpack(">HHH", data[4:10]) if len(data) >= 10 and data[:4] == MAGIC else (0, 0, 0)
        if not h:
            raise CodecError("not a raw bitstream")
        try:
            return np.frombuffer(zlib.decompress(data[10:]), np.uint8).reshape(h, w, 3).copy()
        except (zlib.error, ValueError) as exc:
            raise CodecError(f"corrupt: {exc}") from exc


class UnstableFingerprint(Quant):
    name = "unstable-fp"

    def fingerprint(self, point):
        return {"instance": id(self)}
'''

CARD = "name: {name}\nadapter: {adapter}\npoints: [8, 32]\ncolour: RGB, quantised per channel\n" \
       "licence: MIT\ndescription: a test codec\n{extra}"
CLASSES = {"quant-ok": "Quant", "cache-cheat": "CacheCheat", "class-attr": "ClassAttr", "wrong-size": "WrongSize",
           "salted": "Salted", "seedy": "Seedy", "raw-errors": "RawErrors", "hangs": "Hangs", "crashes": "Crashes",
           "bad-breakdown": "BadBreakdown", "raw": "Raw", "unstable-fp": "UnstableFingerprint"}
EXTRA_CARDS = {"raw-lossless": ("raw", "lossless: true\n"), "quant-liar": ("quant-ok", "lossless: true\n"),
               "quant-nolicence": ("quant-ok", None)}


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    """An installed-looking plugin: package ``badplug`` (codecs + cards as package data) and a
    dist-info naming it in the entry-point groups bench.codecs and bench.cards."""
    root = tmp_path_factory.mktemp("plugins")
    pkg = root / "badplug"
    (pkg / "codecs").mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    for name in CLASSES:
        (pkg / "codecs" / f"{name}.yaml").write_text(CARD.format(name=name, adapter=name, extra=""))
    for name, (adapter, extra) in EXTRA_CARDS.items():
        body = CARD.format(name=name, adapter=adapter, extra=extra or "")
        if extra is None:
            body = body.replace("licence: MIT\n", "")
        (pkg / "codecs" / f"{name}.yaml").write_text(body)
    dist = root / "badplug-0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: badplug\nVersion: 0.0\n")
    eps = "".join(f"{n} = badplug:{c}\n" for n, c in CLASSES.items())
    (dist / "entry_points.txt").write_text(f"[bench.codecs]\n{eps}\n[bench.cards]\nbadplug = badplug\n")
    return root


@pytest.fixture
def plugins(plugin_dir, monkeypatch):
    """The plugin on the import path of this process (and so of the decoding process), with a
    registry and card cache that forget it afterwards."""
    monkeypatch.syspath_prepend(str(plugin_dir))
    monkeypatch.setattr(registry, "_entries", {k: dict(v) for k, v in registry._entries.items()})
    monkeypatch.setattr(registry, "_loaded", set())
    monkeypatch.setattr(cards, "_plugin_roots", None)
    yield plugin_dir
    sys.modules.pop("badplug", None)


def _check(name: str, **kw):
    kw.setdefault("images", 0)
    kw.setdefault("sizes", SMALL)
    report = run_checks(name, **kw)
    return report, {c.name: c for c in report.checks}


def test_plugin_cards_come_from_the_package_and_a_good_plugin_passes(plugins):
    card = cards.get("codec", "quant-ok")
    assert Path(card.path) == plugins / "badplug" / "codecs" / "quant-ok.yaml"
    assert registry.get("codec", "quant-ok").source == "plugin:badplug"
    report, by = _check("quant-ok")
    assert not report.failed, _failures(report)
    assert by["bit-flips"].status == "pass" and by["weights"].status == "n/a"


def test_module_level_cache_is_caught(plugins):
    report, by = _check("cache-cheat", images=1, sizes=[])
    assert by["fresh-process"].status == "fail"
    assert "fresh process with only the bytes and the card failed" in by["fresh-process"].detail
    assert "module-level cache" in by["fresh-process"].detail and "KeyError" in by["fresh-process"].detail
    assert by["plausible"].status == "fail" and "too good to be true" in by["plausible"].detail
    assert "PSNR inf dB at 0.00016 bpp" in by["plausible"].detail  # 8 bytes for 768x512
    assert by["empty-bytes"].status == "fail" and "not a CodecError" in by["empty-bytes"].detail


def test_class_attribute_is_caught(plugins):
    report, by = _check("class-attr")
    assert by["fresh-process"].status == "fail" and "other pixels" in by["fresh-process"].detail
    assert by["lossy"].status == "fail" and "identical to the input" in by["lossy"].detail


def test_wrong_size_is_caught(plugins):
    report, by = _check("wrong-size")
    assert by["decode"].status == "fail"
    assert "decoded shape (16, 16, 3) for an original of shape (7, 5, 3)" in by["decode"].detail


def test_nondeterministic_bytes_and_undeclared_seed_are_caught(plugins):
    _, by = _check("salted")
    assert by["deterministic"].status == "fail" and "other bytes" in by["deterministic"].detail
    _, by = _check("seedy")
    assert by["seed"].status == "fail" and "stochastic = True" in by["seed"].detail
    assert by["fresh-process"].status == "pass"  # same seed, same pixels


def test_errors_that_are_not_codec_errors_fail(plugins):
    _, by = _check("raw-errors")
    for name in ("empty-bytes", "truncated-bytes"):
        assert by[name].status == "fail" and "not a CodecError" in by[name].detail, by[name].detail
    assert "error" in by["empty-bytes"].detail  # struct.error named


def test_a_hang_is_killed_and_reported(plugins):
    _, by = _check("hangs", timeout=1.0, sizes=[(7, 5)])
    assert by["empty-bytes"].status == "fail" and "hang: no answer within" in by["empty-bytes"].detail
    assert by["truncated-bytes"].status == "pass"  # a new process took the jobs left


def test_a_crash_is_reported_and_the_check_goes_on(plugins):
    _, by = _check("crashes", sizes=[(7, 5)])
    assert by["empty-bytes"].status == "fail" and "crashed the decoding process" in by["empty-bytes"].detail
    assert "-11" in by["empty-bytes"].detail  # SIGSEGV
    assert by["bit-flips"].status == "fail" and by["fresh-process"].status == "pass"


def test_rate_breakdown_must_add_up(plugins):
    _, by = _check("bad-breakdown", sizes=[(7, 5)])
    assert by["rate"].status == "fail" and "adds up to" in by["rate"].detail


def test_lossless_must_be_declared_and_true(plugins):
    _, by = _check("raw")
    assert by["lossy"].status == "fail" and "lossless: true" in by["lossy"].detail
    report, by = _check("raw-lossless")
    assert by["lossy"].status == "pass" and not report.failed, _failures(report)
    _, by = _check("quant-liar")
    assert by["lossy"].status == "fail" and "says lossless: true, but" in by["lossy"].detail


def test_card_fields_and_fingerprint(plugins):
    _, by = _check("quant-nolicence", sizes=[(7, 5)])
    assert by["card"].status == "fail" and "`licence:` is missing" in by["card"].detail
    _, by = _check("unstable-fp", sizes=[(7, 5)])
    assert by["fingerprint"].status == "fail" and "differs between two fresh instances" in by["fingerprint"].detail


def test_default_card_of_a_plugin_without_card_fails_the_card_check(plugins, monkeypatch):
    monkeypatch.setattr(cards, "_plugin_roots", [])  # no shipped cards: default cards from default_points
    report, by = _check("quant-ok", sizes=[(7, 5)])
    assert by["card"].status == "fail" and "`colour:` is missing" in by["card"].detail
    assert by["fresh-process"].status == "pass"  # the default card travels to the decoding process as data


def test_unknown_adapter_names_the_entry_point_group(tmp_path):
    card = tmp_path / "nope.yaml"
    card.write_text(CARD.format(name="nope", adapter="no-such-adapter", extra=""))
    report = run_checks(str(card))
    assert report.check("adapter").status == "fail" and "bench.codecs" in report.check("adapter").detail
    assert report.check("encode").status == "skip"
