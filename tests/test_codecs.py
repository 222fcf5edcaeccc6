import stat

import numpy as np
import pytest

from bench import cards, registry
from bench.codecs.base import CodecError, check_recon
from bench.codecs.classical import jpeg_segments
from bench.codecs.external import SubprocessCodec, env_var_for
from bench.runner import build_codec

CARDS = ["jpeg", "jpeg-444", "webp", "avif", "jxl", "avifenc", "cjxl"]


def _codec(name):
    card = cards.get("codec", name)
    ok, why = registry.get("codec", card.target).obj.available()
    if not ok:
        pytest.skip(f"{name} not available here: {why}")
    return card, build_codec(card, "cpu")


@pytest.mark.parametrize("name", CARDS)
def test_round_trip_real_bytes(name, kodim01):
    card, codec = _codec(name)
    rgb = kodim01[:200, :264]  # odd-ish size: not a multiple of 8 or 16
    pts = sorted(card.get("points"), reverse=not codec.higher_point_is_better)
    lo, hi = pts[0], pts[-1]  # lowest and highest quality
    data_lo = codec.encode(rgb, lo)
    data_hi = codec.encode(rgb, hi)
    assert isinstance(data_lo, bytes) and len(data_lo) > 0
    recon = check_recon(name, rgb.shape, codec.decode(data_lo))
    assert recon.dtype == np.uint8 and recon.shape == rgb.shape
    # decoding is a pure function of the bytes
    assert np.array_equal(recon, codec.decode(bytes(data_lo)))
    # the lower-quality end of the card's points spends fewer bits and loses more
    assert len(data_lo) < len(data_hi)
    err_lo = np.abs(recon.astype(int) - rgb).mean()
    err_hi = np.abs(codec.decode(data_hi).astype(int) - rgb).mean()
    assert err_hi < err_lo


def test_jpeg_444_keeps_chroma_and_costs_more(kodim01):
    _, j420 = _codec("jpeg")
    _, j444 = _codec("jpeg-444")
    rgb = kodim01[:256, :256]
    assert len(j444.encode(rgb, 50)) > len(j420.encode(rgb, 50))


def test_jpeg_bit_breakdown_adds_up(kodim01):
    _, codec = _codec("jpeg")
    data = codec.encode(kodim01, 30)
    parts = jpeg_segments(data)
    assert sum(parts.values()) == 8 * len(data)
    assert parts["payload"] > parts["side"] > 0


def test_bad_points_and_inputs_are_clear():
    _, codec = _codec("jpeg")
    with pytest.raises(CodecError, match="integer quality"):
        codec.encode(np.zeros((8, 8, 3), np.uint8), 150)
    with pytest.raises(CodecError, match="uint8 RGB"):
        codec.encode(np.zeros((8, 8), np.uint8), 50)
    with pytest.raises(CodecError, match="could not decode"):
        codec.decode(b"not a jpeg")
    with pytest.raises(CodecError, match="undo any padding"):
        check_recon("x", (10, 10, 3), np.zeros((16, 16, 3), np.uint8))


# -- subprocess base, with tiny scripts standing in for external programs ---------------
def _script(path, body):
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


class CopyCodec(SubprocessCodec):
    """'Encoder' and 'decoder' that copy the PNG: a lossless round trip through real files."""

    name = "test-copy"
    programs = {"encoder": "bench-test-enc", "decoder": "bench-test-dec"}
    install_hint = "These exist only in tests"

    def encode_args(self, src, dst, point):
        return [src, dst]

    def decode_args(self, src, dst):
        return [src, dst]


def test_subprocess_round_trip_and_provenance(tmp_path, kodim01):
    enc = _script(tmp_path / "enc", 'echo "fake-enc 1.2"; cp "$1" "$2"\n')
    dec = _script(tmp_path / "dec", 'cp "$1" "$2"\n')
    codec = CopyCodec(encoder=enc, decoder=dec)
    rgb = kodim01[:64, :96]
    data = codec.encode(rgb, 1)
    assert np.array_equal(codec.decode(data), rgb)
    prov = codec.provenance()
    assert prov["encoder"]["path"] == enc and len(prov["encoder"]["sha256"]) == 64
    assert prov["encoder"]["version"] == "fake-enc 1.2"


def test_subprocess_missing_binary_names_the_fix(monkeypatch):
    monkeypatch.delenv(env_var_for("bench-test-enc"), raising=False)
    ok, why = CopyCodec.available()
    assert not ok and "bench-test-enc" in why and "BENCH_BENCH_TEST_ENC" in why
    with pytest.raises(CodecError, match="not found on PATH"):
        CopyCodec()


def test_subprocess_env_var_and_failures(tmp_path, monkeypatch, kodim01):
    enc = _script(tmp_path / "enc", 'echo "boom: unsupported input" >&2; exit 3\n')
    dec = _script(tmp_path / "dec", 'exit 0\n')
    monkeypatch.setenv(env_var_for("bench-test-enc"), enc)
    monkeypatch.setenv(env_var_for("bench-test-dec"), dec)
    assert CopyCodec.available() == (True, "")
    codec = CopyCodec()
    with pytest.raises(CodecError, match=r"(?s)encoder failed \(exit 3\).*boom: unsupported input"):
        codec.encode(kodim01[:16, :16], 1)
    with pytest.raises(CodecError, match="decoder wrote no image"):
        codec.decode(b"xx")
    monkeypatch.setenv(env_var_for("bench-test-enc"), str(tmp_path / "nope"))
    with pytest.raises(CodecError, match="not an executable file"):
        CopyCodec()
