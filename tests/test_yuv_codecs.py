"""HEVC (x265 + libde265), VTM and BPG adapters: exact command lines against CompressAI's
bench settings, YUV plumbing, SPS / BPG header parsing, and end-to-end runs.

VTM and bpgenc cannot be installed here, so their plumbing is tested with fake programs
that check the arguments they get and store the YUV (or PNG) they are given losslessly
in a correctly formed stream (VVC SPS built from the H.266 syntax table; BPG header from
the BPG specification). x265 and libde265 are Debian packages that `.ci/run` installs:
their tests run for real.
"""
from __future__ import annotations

import json
import shutil
import sys
import textwrap

import numpy as np
import pytest

from bench import cards
from bench.codecs import colour
from bench.codecs.base import CodecError
from bench.codecs.bpg import BPG, BPGHeaderError, parse_header
from bench.codecs.check import run_checks
from bench.codecs.nal import (BitstreamError, escape, insert_before_first_slice, nal_units, rbsp, read_size_sei,
                              size_sei, sps_picture)
from bench.codecs.vtm import VTM
from stream_builders import bpg_file, ue7, vvc_sps_unit

HAVE_X265 = bool(shutil.which("x265") and (shutil.which("libde265-dec265") or shutil.which("dec265")))
needs_x265 = pytest.mark.skipif(not HAVE_X265, reason="x265 / libde265-dec265 not installed "
                                "(apt-get install x265 libde265-examples; .ci/run installs them)")


# ----------------------------------------------------------------------------- SPS reading
@pytest.mark.parametrize("kw,expect", [
    (dict(width=768, height=512), (768, 512, "444")),
    (dict(width=72, height=104, window=(0, 7, 0, 7)), (65, 97, "444")),
    (dict(width=72, height=104, chroma=1, window=(0, 3, 0, 3)), (66, 98, "420")),
    (dict(width=16, height=8, gci=True, sublayers=2, window=(1, 0, 0, 3)), (15, 5, "444")),
    (dict(width=4096, height=2160, rpr=True, sublayers=1), (4096, 2160, "444")),
])
def test_vvc_sps_picture_size_from_the_syntax_table(kw, expect):
    stream = vvc_sps_unit(**kw) + b"\x00\x00\x01" + bytes([0, (8 << 3) | 1]) + b"\x55" * 20
    pic = sps_picture(stream, "vvc")
    assert (pic.width, pic.height, pic.chroma) == expect


def test_gci_length_is_the_specifications():
    """71 bits of constraint flags before gci_num_additional_bits (H.266 7.3.3.2; the stream
    builder uses the same constant, so the count is pinned here on its own)."""
    from bench.codecs.nal import GCI_FIXED_BITS

    assert GCI_FIXED_BITS == 71


def test_sps_reader_refuses_foreign_and_truncated_bytes():
    with pytest.raises(BitstreamError, match="no Annex-B start code"):
        sps_picture(b"\x89PNG\r\n\x1a\n" + bytes(40), "hevc")
    with pytest.raises(BitstreamError, match="no VVC sequence parameter set"):
        sps_picture(b"\x00\x00\x01" + bytes([0, (8 << 3) | 1]) + b"\x11" * 8, "vvc")
    with pytest.raises(BitstreamError, match="truncated"):
        sps_picture(vvc_sps_unit(768, 512)[:9], "vvc")


def test_emulation_prevention_and_size_sei_round_trip():
    raw = bytes([0, 0, 0, 0, 0, 1, 0, 0, 2, 0, 0, 3, 7])
    esc = escape(raw)
    assert b"\x00\x00\x00" not in esc and b"\x00\x00\x01" not in esc and rbsp(esc) == raw
    for standard in ("hevc", "vvc"):
        for size in [(1, 2), (7, 5), (65536, 3), (768, 512)]:
            sei = size_sei(*size, standard)
            assert len(nal_units(sei)) == 1 and read_size_sei(sei, standard) == size
        sps = vvc_sps_unit(16, 8) if standard == "vvc" else b"\x00\x00\x00\x01\x42\x01\x01"
        slice_ = b"\x00\x00\x01" + (bytes([0x26, 0x01]) if standard == "hevc" else bytes([0, (7 << 3) | 1])) + b"\x9a"
        out = insert_before_first_slice(sps + slice_, size_sei(7, 5, standard), standard)
        assert out.startswith(sps) and out.endswith(slice_) and read_size_sei(out, standard) == (7, 5)
        assert read_size_sei(sps + slice_, standard) is None


# ----------------------------------------------------------------------------- CompressAI's conversion
def test_compressai_convention_matches_compressai_functions(kodim01):
    torch = pytest.importorskip("torch")
    from compressai.transforms.functional import rgb2ycbcr, ycbcr2rgb

    x = kodim01[:128, :192]
    t = torch.from_numpy(x.transpose(2, 0, 1).copy()).float() / 255
    ref = (np.clip(rgb2ycbcr(t).numpy(), 0, 1) * 255).astype(np.uint8)
    ours = np.stack(colour.compressai_rgb_to_planes(x))
    assert np.array_equal(ours, ref)
    noisy = np.clip(ref.astype(int) + np.random.default_rng(1).integers(-4, 5, ref.shape), 0, 255).astype(np.uint8)
    back = ycbcr2rgb(torch.from_numpy(noisy.astype(np.float32) / 255)).numpy()
    ref_rgb = (back.clip(0, 1).transpose(1, 2, 0) * 255.0).astype(np.uint8)
    assert np.array_equal(colour.compressai_planes_to_rgb(tuple(noisy)), ref_rgb)
    # the convention differs from rounding with chroma at 128: it must not be silently swapped
    assert not np.array_equal(ours, np.stack(colour.rgb_to_planes(x, "bt709", "full", 8)))


# ----------------------------------------------------------------------------- fake VTM
# every fake program appends its argument list to the log file, one JSON line per call
ARGV_LOG = r'''
import json, os, sys
sys.path.insert(0, {tests!r})
args = sys.argv[1:]
with open({log!r}, "a") as f:
    f.write(json.dumps(args) + "\n")
'''

FAKE_VTM_ENC = ARGV_LOG + r'''
from stream_builders import escape_payload, vvc_sps_unit
opt = dict(zip(args[0::2], args[1::2]))
flags = dict(a.split("=", 1) for a in args if a.startswith("--"))
w, h = int(opt["-wdt"]), int(opt["-hgt"])
chroma, bits = flags["--InputChromaFormat"], int(flags["--InputBitDepth"])
assert opt["-o"] == os.devnull and opt["-fr"] == "1" and opt["-f"] == "1" and os.path.isfile(opt["-c"])
assert flags["--ConformanceWindowMode"] == "1"
cw, ch = (w, h) if chroma == "444" else ((w + 1) // 2, (h + 1) // 2)
yuv = open(opt["-i"], "rb").read()
assert len(yuv) == (w * h + 2 * cw * ch) * (1 if bits == 8 else 2), "input size"
pw, ph = -(-w // 8) * 8, -(-h // 8) * 8  # VTM pads to its minimum CU size
sub = 1 if chroma == "444" else 2
sps = vvc_sps_unit(pw, ph, chroma=3 if chroma == "444" else 1, window=(0, (pw - w) // sub, 0, (ph - h) // sub))
payload = bytes([bits]) + len(yuv).to_bytes(4, "big") + yuv
open(opt["-b"], "wb").write(sps + b"\x00\x00\x01" + bytes([0, (8 << 3) | 1]) + escape_payload(payload))
'''

FAKE_VTM_DEC = ARGV_LOG + r'''
from bench.codecs.nal import nal_units, rbsp
opt = dict(zip(args[0::2], args[1::2]))
data = open(opt["-b"], "rb").read()
payload = rbsp(nal_units(data)[-1][2:])[:-1]  # drop the 0x80 that ends the NAL unit
n = int.from_bytes(payload[1:5], "big")
if len(payload) != 5 + n or payload[0] != int(opt["-d"]):
    print("ERROR: damaged stream", file=sys.stderr)
    sys.exit(1)
open(opt["-o"], "wb").write({garbage!r} or payload[5:])
'''


@pytest.fixture
def fake_vtm(tmp_path, monkeypatch):
    """A VTM build dir with fake EncoderAppStatic / DecoderAppStatic and cfg/encoder_intra_vtm.cfg."""
    def make(garbage: bytes = b""):
        root = tmp_path / "VVCSoftware_VTM"
        (root / "bin").mkdir(parents=True, exist_ok=True)
        (root / "cfg").mkdir(exist_ok=True)
        (root / "cfg" / "encoder_intra_vtm.cfg").write_text("InternalBitDepth : 10\n")
        log = tmp_path / "argv.log"
        tests = str(__import__("pathlib").Path(__file__).parent)
        for name, body in (("EncoderAppStatic", FAKE_VTM_ENC), ("DecoderAppStatic", FAKE_VTM_DEC)):
            exe = root / "bin" / name
            exe.write_text(f"#!{sys.executable}\nimport sys; sys.path.insert(0, {str(tests + '/..')!r})\n"
                           + textwrap.dedent(body.format(tests=tests, log=str(log), garbage=garbage)))
            exe.chmod(0o755)
        return root, log
    monkeypatch.delenv("BENCH_VTM_CFG", raising=False)
    for var in ("BENCH_ENCODERAPPSTATIC", "BENCH_DECODERAPPSTATIC", "BENCH_ENCODERAPP", "BENCH_DECODERAPP"):
        monkeypatch.delenv(var, raising=False)
    return make


def _card_params(name, **extra):
    return {**cards.get("codec", name).body["params"], **extra}


def test_vtm_command_lines_are_compressai_benchs(fake_vtm, kodim01):
    root, log = fake_vtm()
    codec = VTM(**_card_params("vtm", build_dir=str(root / "bin")))
    data = codec.encode(kodim01, 37)
    codec.decode(data)
    enc, dec = (json.loads(line) for line in log.read_text().splitlines())
    yuv, binf = enc[1], enc[9]
    assert enc == ["-i", yuv, "-c", str(root / "cfg" / "encoder_intra_vtm.cfg"), "-q", "37", "-o", "/dev/null",
                   "-b", binf, "-wdt", "768", "-hgt", "512", "-fr", "1", "-f", "1", "--InputChromaFormat=444",
                   "--InputBitDepth=8", "--ConformanceWindowMode=1"]
    assert yuv.endswith(".yuv") and binf.endswith(".bin")
    assert dec == ["-b", dec[1], "-o", dec[3], "-d", "8"] and dec[1].endswith(".bin")
    prov = codec.provenance()
    assert prov["config"]["path"].endswith("cfg/encoder_intra_vtm.cfg") and len(prov["config"]["sha256"]) == 64
    assert "path" not in json.dumps(codec.fingerprint(37))


def test_vtm_yuv_plumbing_is_exact(fake_vtm, kodim01):
    """With a lossless fake VTM, decode(encode(x)) is exactly the colour conversion's round trip:
    the YUV file VTM reads holds the converted planes and the decoded file is read back unshifted."""
    root, _ = fake_vtm()
    for card, sizes in (("vtm", [(512, 768), (5, 7), (97, 65)]), ("vtm-420", [(512, 768), (97, 65), (5, 7)])):
        params = _card_params(card, build_dir=str(root))
        enc, dec = VTM(**params), VTM(**params)  # a separate decoder instance: bytes alone
        for h, w in sizes:
            x = kodim01[:h, :w]
            data = enc.encode(x, 22)
            assert sps_picture(data, "vvc").width == (w + w % 2 if card == "vtm-420" else w)
            got = dec.decode(data)
            if card == "vtm":
                want = colour.compressai_planes_to_rgb(colour.compressai_rgb_to_planes(x))
            else:
                padded = np.pad(x, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
                want = colour.planes_to_rgb(colour.rgb_to_planes(padded, "bt709", "limited", 10, "420"),
                                            "bt709", "limited", 10)[:h, :w]
            assert got.shape == x.shape and np.array_equal(got, want), (card, h, w)


def test_vtm_420_card_asks_vtm_for_420_10_bit(fake_vtm, kodim01):
    root, log = fake_vtm()
    VTM(**_card_params("vtm-420", build_dir=str(root), internal_bits=10)).encode(kodim01[:64, :64], 32)
    enc = json.loads(log.read_text().splitlines()[0])
    assert enc[-4:] == ["--InputChromaFormat=420", "--InputBitDepth=10", "--ConformanceWindowMode=1",
                        "--InternalBitDepth=10"]


def test_vtm_decoder_garbage_and_missing_pieces_are_clear(fake_vtm, kodim01, tmp_path, monkeypatch):
    root, _ = fake_vtm(garbage=b"not a yuv frame")
    codec = VTM(build_dir=str(root), conversion="compressai-bench")
    data = codec.encode(kodim01[:16, :16], 32)
    with pytest.raises(CodecError, match="decoder output does not match the bitstream's picture"):
        codec.decode(data)
    with pytest.raises(CodecError, match="cannot read the picture size"):
        codec.decode(b"\x00\x00\x01" + bytes([0, (8 << 3) | 1]) + b"junk")
    with pytest.raises(CodecError, match="none of EncoderAppStatic, EncoderApp in build_dir"):
        VTM(build_dir=str(tmp_path))
    (root / "cfg" / "encoder_intra_vtm.cfg").unlink()
    with pytest.raises(CodecError, match="no cfg/encoder_intra_vtm.cfg above .*BENCH_VTM_CFG"):
        VTM(build_dir=str(root))
    monkeypatch.setenv("BENCH_VTM_CFG", str(tmp_path / "mine.cfg"))
    with pytest.raises(CodecError, match="mine.cfg.*from BENCH_VTM_CFG.*is not a file"):
        VTM(build_dir=str(root))


def test_vtm_passes_codecs_check_with_the_fake_build(fake_vtm, tmp_path):
    root, _ = fake_vtm()
    card = tmp_path / "vtm-fake.yaml"
    body = dict(cards.get("codec", "vtm").body, name="vtm-fake")
    body["params"] = dict(body["params"], build_dir=str(root))
    import yaml

    card.write_text(yaml.safe_dump(body))
    report = run_checks(str(card), points=[47], images=1, sizes=[(7, 5)])
    failed = [f"{c.name}: {c.detail}" for c in report.checks if c.status == "fail"]
    assert not failed, failed


def test_program_flag_sets_the_path_for_a_run(fake_vtm, monkeypatch):
    from bench.codecs.external import set_program_paths

    root, _ = fake_vtm()
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    for var in ("BENCH_ENCODERAPPSTATIC", "BENCH_DECODERAPP"):
        monkeypatch.setenv(var, "")  # empty = unset; restored after the test
    with pytest.raises(CodecError, match="not found on PATH"):
        VTM()
    set_program_paths([f"EncoderAppStatic={root / 'bin' / 'EncoderAppStatic'}",
                       f"DecoderApp={root / 'bin' / 'DecoderAppStatic'}"])  # an alternative name works too
    codec = VTM()
    assert codec.paths["encoder"].endswith("bin/EncoderAppStatic") and codec.config.endswith("encoder_intra_vtm.cfg")
    with pytest.raises(ValueError, match="NAME=PATH"):
        set_program_paths(["EncoderAppStatic"])


# ----------------------------------------------------------------------------- BPG
def test_ue7_examples_of_the_specification():
    assert ue7(8) == b"\x08" and ue7(542) == b"\x84\x1e" and ue7(728855) == b"\xac\xbe\x17"


def test_bpg_header_parse_and_breakdown():
    data = bpg_file(768, 512, hevc_data=bytes(range(200)), extension=b"\x01\x03abc")
    h = parse_header(data)
    assert (h.width, h.height, h.pixel_format, h.bit_depth, h.colour_space, h.alpha) == (768, 512, 3, 8, 0, False)
    assert h.payload_bytes == 200 and h.hevc_header_length == 2
    bd = BPG.bits_breakdown(None, data)
    assert bd == {"payload": 1600, "container": 8 * (len(data) - 200)} and sum(bd.values()) == 8 * len(data)
    with_alpha = bpg_file(7, 5, alpha=b"\x00" * 9)
    h = parse_header(with_alpha)
    assert h.alpha and h.payload_bytes == 30 and h.header_bytes + 30 + 9 == len(with_alpha)
    for bad, msg in ((data[:len(data) - 1], "run past"), (b"\x89PNG" + data[4:], "not a BPG file"),
                     (data[:7], "truncated")):
        with pytest.raises(BPGHeaderError, match=msg):
            parse_header(bad)


FAKE_BPGENC = ARGV_LOG + r'''
if "-h" in args:
    print("BPG Image Encoder version 0.9.8 (fake)"); sys.exit(1)
opt = dict(zip(args[0:-1:2], args[1:-1:2]))
png = open(args[-1], "rb").read()
from stream_builders import bpg_file
from PIL import Image
w, h = Image.open(args[-1]).size
open(opt["-o"], "wb").write(bpg_file(w, h, hevc_data=png))
'''

FAKE_BPGDEC = ARGV_LOG + r'''
sys.path.insert(0, {root!r})
from bench.codecs.bpg import parse_header
data = open(args[-1], "rb").read()
h = parse_header(data)
open(args[1], "wb").write(data[h.header_bytes:h.header_bytes + h.payload_bytes])
'''


def test_bpg_command_lines_and_round_trip_with_fake_programs(tmp_path, kodim01):
    from pathlib import Path

    log = tmp_path / "argv.log"
    tests = str(Path(__file__).parent)
    exes = {}
    for name, body in (("bpgenc", FAKE_BPGENC), ("bpgdec", FAKE_BPGDEC)):
        exe = tmp_path / name
        exe.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body.format(log=str(log), tests=tests,
                                                                             root=str(Path(tests).parent))))
        exe.chmod(0o755)
        exes[name] = str(exe)
    params = _card_params("bpg", encoder=exes["bpgenc"], decoder=exes["bpgdec"])
    x = kodim01[:97, :65]
    data = BPG(**params).encode(x, 29)
    assert np.array_equal(BPG(**params).decode(data), x)  # the fake is lossless
    enc, dec = (json.loads(line) for line in log.read_text().splitlines())
    assert enc[:-1] == ["-o", enc[1], "-q", "29", "-f", "444", "-e", "x265", "-c", "ycbcr", "-b", "8"]
    assert enc[1].endswith(".bpg") and enc[-1].endswith(".png") and dec == ["-o", dec[1], dec[2]]
    assert dec[1].endswith(".png") and dec[2].endswith(".bpg")
    assert parse_header(data).width == 65 and BPG(**params).bits_breakdown(data)["payload"] > 0
    with pytest.raises(CodecError, match="bpg: BPG lengths"):
        BPG(**params).decode(data[:-10])
    assert "-m" not in enc and BPG(**params, level=9).encode_args("i.png", "o.bpg", 12)[-3:-1] == ["-m", "9"]


# ----------------------------------------------------------------------------- x265 for real
@needs_x265
def test_x265_sps_reader_agrees_with_x265_on_many_sizes(kodim01):
    from bench.codecs.hevc import X265

    for chroma in ("444", "420"):
        codec = X265(chroma=chroma)
        for h, w in [(64, 64), (65, 97), (70, 130), (513, 769)]:
            rgb = np.ascontiguousarray(kodim01[:min(h, 512), :min(w, 768)])
            data = codec.encode(rgb, 42)  # encode() itself checks the SPS read against the input size
            pic = sps_picture(data, "hevc")
            assert pic.chroma == chroma and (pic.width, pic.height) == codec.frame


@needs_x265
def test_x265_command_line_is_bpgencs_parameters(kodim01):
    from bench.codecs.hevc import X265

    codec = X265(**_card_params("hevc-x265"))
    codec.frame = (768, 512)
    assert codec.encode_args("in.yuv", "out.hevc", 37) == [
        "--input", "in.yuv", "--input-res", "768x512", "--input-csp", "i444", "--input-depth", "8",
        "--output-depth", "8", "--fps", "25", "--frames", "1", "--preset", "placebo", "--tune", "ssim",
        "--keyint", "1", "--qp", "38", "--no-info", "--range", "full", "--colormatrix", "bt470bg",
        "--pools", "1", "--frame-threads", "1", "--log-level", "error", "--output", "out.hevc"]
    with pytest.raises(CodecError, match="q \\+ qp_offset"):
        codec.encode_args("in.yuv", "out.hevc", 51)


@needs_x265
def test_x265_small_pictures_carry_their_size(kodim01):
    from bench.codecs.hevc import X265

    enc, dec = X265(), X265()
    for h, w in [(5, 7), (1, 1), (63, 200)]:
        data = enc.encode(np.ascontiguousarray(kodim01[:h, :w]), 32)
        assert read_size_sei(data, "hevc") == (w, h)
        assert dec.decode(data).shape == (h, w, 3)
    big = enc.encode(kodim01[:64, :64], 32)
    assert read_size_sei(big, "hevc") is None  # no SEI (no extra bytes) when no padding was needed


@needs_x265
def test_hevc_x265_card_passes_codecs_check():
    report = run_checks("hevc-x265", points=[47], images=1)
    failed = [f"{c.name}: {c.detail}" for c in report.checks if c.status == "fail"]
    assert not failed, failed
    assert any(c.name == "truncated-bytes" and c.status == "pass" for c in report.checks)


@needs_x265
def test_hevc_x265_runs_end_to_end_with_rate_from_the_stored_stream(kodak_dir, tmp_path):
    from bench.runner import Experiment, run
    from bench.store import read_table

    res = run(Experiment(dataset="kodak", data_dir=str(kodak_dir), codecs=["hevc-x265"], points=[42],
                         metrics=["psnr"], out=str(tmp_path), limit=2))
    assert res.units_coded == 2 and res.units_failed == 0
    df = read_table(tmp_path, "per_image")
    assert (df.bpp * 768 * 512 == df.bits).all() and (df.bits % 8 == 0).all()
    assert df.value.between(20, 40).all()  # PSNR in dB: a sanity range, not a reference value
    again = run(Experiment(dataset="kodak", data_dir=str(kodak_dir), codecs=["hevc-x265"], points=[42],
                           metrics=["psnr"], out=str(tmp_path), limit=2))
    assert again.units_skipped == 2 and again.units_coded == 0


# ----------------------------------------------------------------------------- hevc-x265 on BPG's published curve
HEVC_POINTS = [42, 32, 22]
# Measured on the 24 Kodak images (x265 3.5, libde265 1.0.11; notes of
# results/reference/kodak/compressai-bpg.yaml): PSNR at equal bpp within +0.040 dB (q22),
# +0.015 (q32), -0.013 (q42) of the published curve; bpp at equal q 3.9-4.8 % below it.
# The bounds keep a margin; a wrong colour matrix or range, 4:2:0, another preset or the
# BPG quality used as x265's QP (no +1) each move one of them by more.
PSNR_AT_EQUAL_BPP_DB = 0.1
BPP_AT_EQUAL_Q_REL = 0.06


def _psnr_on_reference_curve(ref, bpp):
    """The published PSNR at ``bpp``: linear in log(bpp) between neighbouring published points."""
    pts = sorted((r["bpp"], r["psnr"]) for r in ref.rows.values())
    for (b0, p0), (b1, p1) in zip(pts, pts[1:]):
        if b0 <= bpp <= b1:
            t = np.log(bpp / b0) / np.log(b1 / b0)
            return p0 + t * (p1 - p0)
    raise AssertionError(f"{bpp} bpp is outside the published curve")


@needs_x265
def test_hevc_x265_sits_on_compressais_bpg_curve(kodak_dir, tmp_path):
    from bench import reference
    from bench.runner import Experiment, run
    from bench.store import read_table

    res = run(Experiment(dataset="kodak", data_dir=str(kodak_dir), codecs=["hevc-x265"], points=HEVC_POINTS,
                         metrics=["psnr"], out=str(tmp_path), workers=2))
    assert res.units_coded == 24 * len(HEVC_POINTS) and res.units_failed == 0
    ref = reference.load("compressai-bpg")
    per_set = read_table(tmp_path, "per_set")
    for q in HEVC_POINTS:
        row = per_set[(per_set.point.astype(str) == str(q)) & (per_set.metric == "psnr")].iloc[0]
        assert row.n_images == 24
        theirs = ref.rows[str(q)]
        assert abs(row.mean_bpp / theirs["bpp"] - 1) <= BPP_AT_EQUAL_Q_REL, (q, row.mean_bpp, theirs["bpp"])
        assert abs(row.value - _psnr_on_reference_curve(ref, row.mean_bpp)) <= PSNR_AT_EQUAL_BPP_DB, (q, row.value)


def test_only_user_built_programs_may_skip_on_ci():
    from conftest import _missing

    with pytest.raises(ValueError, match="runs packaged programs; its tests must run"):
        _missing("needs_user_build", ("hevc-x265",))
    why = _missing("needs_user_build", ("vtm",))
    assert why is None or "not packaged anywhere" in why
