"""Hostile bitstreams for every codec card: truncated, bit-flipped, overwritten and random bytes,
and (learned codecs) containers with a valid CRC but edited fields, all decoded by a fresh
decoder instance as the runner does (``decode`` then ``check_recon``).

The contract checked for each case: a CodecError with a message, or a uint8 image of the
original's shape; never another exception type, never a hang (each decode runs under a
per-case time limit), never a crash of the process (a crash ends the test session: CI shows it).

Which cards may turn damaged bytes into an image without an error, and why:

* ``CONCEALING``: JPEG, WebP, AVIF, JPEG XL, HEVC (x265/libde265, BPG), VVC (VTM). These
  formats carry no checksum over the coded data; their decoders conceal errors by design
  (a flipped bit in entropy-coded data decodes to wrong pixels). Only flips, overwrites and
  garbage may give an image; a *truncated* stream must always fail (no grey fill).
* every learned card: the bench container ends with a CRC-32 over every byte, so any
  truncation, any burst of up to 32 flipped bits and random bytes (but for 1 in 2^32) are
  refused before the network runs: an image from damaged bytes fails the test.
  ``test_crafted_containers_*`` edits sections, dims and point *with* a valid CRC (what
  only a deliberate forger can write): then an image of the right shape is allowed, an
  uncaught exception or a crash is not (CompressAI's rANS decoder reads without bounds
  checks; ``bench.codecs.torch_base.rans_input`` and the latent-size check keep it in bounds).

Hypothesis draws the damage (positions, bits, bytes) with a fixed seed and a bounded
number of examples (``derandomize=True``, no example database), so CI sees the same cases
every run; with tests/test_hostile_inputs.py it takes about 90 s on a busy 2-core machine (most of
it building and running the learned cards' random networks).
"""
from __future__ import annotations

import threading
import traceback
from pathlib import Path

import numpy as np
import pytest
from hostile_codecs import NEEDS_WEIGHTS, all_card_names, setup
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bench.codecs.base import CodecError, check_recon
from bench.runner import build_codec

CASE_TIMEOUT_S = 60.0  # one decode of damaged bytes; a clean decode here takes well under a second
CONCEALING = {"jpeg", "jpeg-444", "webp", "webp-m6", "avif", "avifenc", "jxl", "cjxl", "hevc-x265", "bpg", "vtm",
              "vtm-420"}
HYPOTHESIS = settings(max_examples=10, deadline=None, derandomize=True, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                             HealthCheck.function_scoped_fixture])


def _param(name: str):
    if name in NEEDS_WEIGHTS:  # HiFiC: TensorFlow metagraphs no CI machine can download
        return pytest.param(name, marks=pytest.mark.needs_weights(*NEEDS_WEIGHTS[name]))
    return name


CARDS = [_param(n) for n in all_card_names()]


class Coded:
    """One card's encoder, a separate decoder instance and the bytes of a real Kodak crop."""

    def __init__(self, name: str, tmp: Path, kodim23: np.ndarray) -> None:
        self.name = name
        self.setup = setup(name, tmp)
        h, w = self.setup.size
        self.rgb = np.ascontiguousarray(kodim23[200:200 + h, 300:300 + w])
        self.encoder = build_codec(self.setup.card, init=self.setup.init)
        self.decoder = build_codec(self.setup.card, init=self.setup.init)
        self.data = self.encoder.encode(self.rgb, self.setup.point, 0, **self.setup.encode_extra)
        assert isinstance(self.data, bytes) and len(self.data) > 4
        assert outcome(self, self.data) == "image", f"{name}: its own bytes do not decode"

    def encode(self, rgb: np.ndarray) -> bytes:
        return self.encoder.encode(rgb, self.setup.point, 0, **self.setup.encode_extra)


@pytest.fixture(scope="module")
def kodim23(kodak_dir) -> np.ndarray:
    from bench.data.images import read_rgb

    return read_rgb(kodak_dir / "kodim23.png")[0]


@pytest.fixture(scope="module")
def coded(tmp_path_factory, kodim23):
    """name -> Coded, built once per module (models and fake programs are reused)."""
    cache: dict[str, Coded] = {}

    def get(name: str) -> Coded:
        if name not in cache:
            cache[name] = Coded(name, tmp_path_factory.mktemp(name), kodim23)
        return cache[name]

    return get


def outcome(c: Coded, data: bytes, shape: tuple | None = None) -> str:
    """Decode ``data`` with ``c``'s decoder as the runner's unit does; "image" (uint8 of the
    original's shape) or "error" (a CodecError with a message). Anything else fails the test."""
    shape = shape or c.rgb.shape
    box: dict = {}

    def work():
        try:
            box["value"] = check_recon(c.name, shape, c.decoder.decode(data, 0))
        except BaseException as exc:  # noqa: BLE001 - judged below
            box["exc"], box["tb"] = exc, traceback.format_exc()

    t = threading.Thread(target=work, daemon=True, name=f"decode-{c.name}")
    t.start()
    t.join(CASE_TIMEOUT_S)
    if t.is_alive():
        pytest.fail(f"{c.name}: decoding {len(data)} damaged bytes did not finish within {CASE_TIMEOUT_S:g} s "
                    f"(first bytes {data[:16].hex()})")
    exc = box.get("exc")
    if exc is None:
        recon = box["value"]
        assert recon.dtype == np.uint8 and recon.shape == tuple(shape)
        return "image"
    if not isinstance(exc, CodecError):
        pytest.fail(f"{c.name}: {type(exc).__name__} (not a CodecError) for {len(data)} damaged bytes "
                    f"(first bytes {data[:16].hex()}):\n{box['tb']}")
    assert str(exc).strip(), f"{c.name}: CodecError without a message"
    return "error"


def judge(c: Coded, kind: str, data: bytes) -> str:
    got = outcome(c, data)
    if got == "image":
        assert kind != "truncate", f"{c.name}: a truncated stream ({len(data)} of {len(c.data)} bytes) decoded " \
                                   "to an image without an error"
        assert c.name in CONCEALING, f"{c.name}: damaged bytes ({kind}) decoded to an image; its container's " \
                                     "CRC-32 should have refused them"
    return got


# ---------------------------------------------------------------------------- fixed cases
@pytest.mark.parametrize("name", CARDS)
def test_fixed_damage(name, coded):
    """Several cut points, single-bit flips at the start, middle and end, random bytes of
    the stream's length, the stream's first bytes followed by random bytes, and empty bytes."""
    c = coded(name)
    d, n = c.data, len(c.data)
    rng = np.random.default_rng(23)
    for cut in sorted({0, 1, 2, n // 10, n // 4, n // 2, 3 * n // 4, n - 2, n - 1}):
        assert judge(c, "truncate", d[:cut]) == "error"
    for pos in (0, 1, n // 2, n - 1):
        flipped = bytearray(d)
        flipped[pos] ^= 0x20
        judge(c, "flip", bytes(flipped))
    judge(c, "garbage", rng.integers(0, 256, n, dtype=np.uint8).tobytes())
    judge(c, "garbage", d[:min(16, n // 2)] + rng.integers(0, 256, n - min(16, n // 2), dtype=np.uint8).tobytes())
    judge(c, "garbage", bytes(n))


# ---------------------------------------------------------------------------- Hypothesis
def damage(n: int):
    """A strategy of (kind, how) for a stream of ``n`` bytes."""
    pos = st.integers(0, n - 1)
    return st.one_of(
        st.tuples(st.just("truncate"), pos),
        st.tuples(st.just("flip"), st.lists(st.tuples(pos, st.integers(0, 7)), min_size=1, max_size=8)),
        st.tuples(st.just("overwrite"), st.tuples(pos, st.binary(min_size=1, max_size=32))),
        st.tuples(st.just("garbage"), st.binary(min_size=0, max_size=min(2 * n, 4096))),
        st.tuples(st.just("header+garbage"), st.tuples(st.integers(1, min(n, 64)), st.binary(max_size=512))),
    )


def apply(data: bytes, kind: str, how) -> bytes:
    if kind == "truncate":
        return data[:how]
    if kind == "flip":
        out = bytearray(data)
        for pos, bit in how:
            out[pos] ^= 1 << bit
        return bytes(out)
    if kind == "overwrite":
        pos, new = how
        return data[:pos] + new + data[pos + len(new):]
    if kind == "garbage":
        return how
    keep, tail = how
    return data[:keep] + tail


@pytest.mark.parametrize("name", CARDS)
@HYPOTHESIS
@given(draw=st.data())
def test_drawn_damage(name, coded, draw):
    c = coded(name)
    kind, how = draw.draw(damage(len(c.data)), label="damage")
    bad = apply(c.data, kind, how)
    assume(bad != c.data)
    judge(c, kind, bad)


# ---------------------------------------------------------------------------- crafted containers
LEARNED_FAMILIES = ["bmshj2018-factorized", "bmshj2018-hyperprior", "mbt2018-mean", "mbt2018", "msillm", "cdc-x",
                    "perco"]


def crafted(c: Coded):
    """Strategy: the card's own container with one field edited and the CRC recomputed."""
    from bench.codecs.container import Container, Section, unpack

    box = unpack(c.data)
    secs = list(box.sections)

    def with_section(i_data):
        i, data = i_data
        new = list(secs)
        new[i] = Section(secs[i].name, data, secs[i].side)
        return Container(box.codec, box.point, box.dims, box.model, tuple(new)).pack()

    def with_dims(dims):
        return Container(box.codec, box.point, tuple(dims), box.model, box.sections).pack()

    i = st.integers(0, len(secs) - 1)
    section_data = st.one_of(st.binary(max_size=256), i.map(lambda k: secs[k].data[:len(secs[k].data) // 2]),
                             i.map(lambda k: secs[k].data * 3))
    dim = st.one_of(st.integers(0, 4), st.integers(0, 200), st.sampled_from([2 ** 16, 2 ** 31, 2 ** 62]))
    return st.one_of(
        st.tuples(i, section_data).map(with_section),
        st.lists(dim, min_size=0, max_size=8).map(with_dims),
        st.tuples(st.integers(0, len(box.dims) - 1), dim).map(
            lambda t: with_dims(box.dims[:t[0]] + (t[1],) + box.dims[t[0] + 1:])),
        st.one_of(st.integers(-5, 100), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8)).map(
            lambda p: Container(box.codec, p, box.dims, box.model, box.sections).pack()),
    )


@pytest.fixture
def small_pixel_limit(monkeypatch):
    """Claimed sizes above 20,000 pixels are refused (the policy, with a limit that keeps a
    forged size within it cheap to decode: CDC's sampler on a 13-Mpx claim takes minutes)."""
    monkeypatch.setenv("BENCH_MAX_PIXELS", "20000")


@pytest.mark.parametrize("name", LEARNED_FAMILIES)
@settings(HYPOTHESIS, max_examples=10)
@given(draw=st.data())
def test_crafted_containers_fail_cleanly_or_decode_to_the_right_shape(name, coded, small_pixel_limit, draw):
    c = coded(name)
    data = draw.draw(crafted(c), label="container")
    outcome(c, data)


def test_giant_claimed_size_is_refused_before_decoding(coded, monkeypatch):
    """A container claiming a 20,000 x 20,000 image is refused from its header (the pixel
    limit of bench.data.images), not decoded into 1.2 GB."""
    from bench.codecs.container import Container, unpack

    c = coded("bmshj2018-hyperprior")
    box = unpack(c.data)
    big = Container(box.codec, box.point, (20000, 20000, 313, 313), box.model, box.sections).pack()
    with pytest.raises(CodecError, match=r"20000x20000 = 400,000,000 pixels is above bench's limit.*BENCH_MAX_PIXELS"):
        c.decoder.decode(big)
    monkeypatch.setenv("BENCH_MAX_PIXELS", "1000")
    with pytest.raises(CodecError, match="above bench's limit of 1,000 pixels"):
        c.decoder.decode(c.data)  # 48 x 64 = 3,072 pixels


def test_rans_slack_leaves_valid_decodes_unchanged(coded):
    """The zero bytes rans_input appends are never read for valid strings: same pixels as
    CompressAI's own decompress of the unpadded strings."""
    import torch

    from bench.codecs.container import unpack

    c = coded("bmshj2018-hyperprior")
    box = unpack(c.data)
    model = c.decoder.model(box.point)
    with torch.inference_mode():
        ref = model.decompress([[box.section("y")], [box.section("z")]], list(box.dims[2:]))["x_hat"]
    want = c.decoder.to_rgb(ref.clamp(0, 1), *box.dims[:2])[0]
    assert np.array_equal(c.decoder.decode(c.data), want)


# ---------------------------------------------------------------------------- tiny images
@pytest.mark.parametrize("name", CARDS)
def test_tiny_images_code_or_fail_clearly(name, coded):
    """1x1 and 2x2 real crops: coded (the adapter pads and crops back) or a CodecError naming
    the problem; never another exception."""
    c = coded(name)
    learned = c.setup.init == "random"  # one padding path (to 64 or 512) for any tiny size: 1x1 says it
    for h, w in ((1, 1),) if learned else ((1, 1), (2, 2)):
        rgb = np.ascontiguousarray(c.rgb[:h, :w])
        try:
            data = c.encode(rgb)
        except CodecError as exc:
            assert str(exc).strip()
            continue
        assert outcome(c, data, rgb.shape) == "image", f"{name}: its own {h}x{w} bytes do not decode"


def test_emptied_hyper_latent_does_not_crash_the_process(coded, kodim23):
    """Regression: a 384x256 hyperprior container whose ``z`` string is emptied (CRC recomputed)
    made CompressAI's rANS decoder read past its buffer and kill the process (SIGSEGV; also at
    768x512). Decoded here, in the test process: a regression ends the session with a crash,
    which CI reports (``bench codecs check`` decodes in a separate process and names it)."""
    from bench.codecs.container import Container, Section, unpack

    c = coded("bmshj2018-hyperprior")
    rgb = np.ascontiguousarray(kodim23[:256, :384])
    box = unpack(c.encode(rgb))
    assert box.dims[:2] == (256, 384) and len(box.section("z")) > 100
    for z in (b"", box.section("z")[:8]):
        sections = tuple(Section(s.name, z if s.name == "z" else s.data, s.side) for s in box.sections)
        outcome(c, Container(box.codec, box.point, box.dims, box.model, sections).pack(), rgb.shape)


# ---------------------------------------------------------------------------- through a run
def test_a_run_fails_the_unit_with_damaged_bytes_and_codes_the_others(tmp_path, monkeypatch, kodim23):
    """The one way to run work: an adapter whose stored bytes are truncated for one image (a
    JPEG cut in half) fails that unit with the decoder's message; the other image is coded."""
    from PIL import Image

    from bench import registry, runner
    from bench.codecs.classical import PillowJPEG
    from bench.runner import Experiment, run

    class CutsTallImages(PillowJPEG):
        name = "test-jpeg-cuts-tall"

        def encode(self, rgb, point, seed=0):
            data = super().encode(rgb, point, seed)
            return data[:len(data) // 2] if rgb.shape[0] > 40 else data

    registry.add("codec", CutsTallImages.name, CutsTallImages)
    monkeypatch.setattr(runner, "_worker_codecs", {})
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(kodim23[:32, :48]).save(folder / "short.png")
    Image.fromarray(kodim23[:48, :48]).save(folder / "tall.png")
    card = tmp_path / "cuts.yaml"
    card.write_text(f"name: cuts\nadapter: {CutsTallImages.name}\npoints: [50]\n")
    res = run(Experiment(data_dir=str(folder), codecs=[str(card)], metrics=["psnr"], out=str(tmp_path / "run")))
    assert res.units_coded == 1 and res.units_failed == 1 and res.metric_values == 1
    [msg] = [p for p in res.problems if not p.startswith("note:")]
    assert msg.startswith("cuts @ 50 on tall: Pillow could not decode the stored bitstream"), msg


# ---------------------------------------------------------------------------- forged image headers
def _with_jpeg_size(data: bytes, h: int, w: int) -> bytes:
    """``data`` (a baseline JPEG) with its SOF0 frame header claiming ``h`` x ``w``."""
    i = data.find(b"\xff\xc0")
    assert i > 0
    return data[:i + 5] + h.to_bytes(2, "big") + w.to_bytes(2, "big") + data[i + 9:]


def test_jpeg_header_claiming_a_huge_picture_is_refused_before_decoding(coded):
    c = coded("jpeg")
    with pytest.raises(CodecError, match=r"claims an image of 10000x10000 = 100,000,000 pixels is above bench's"):
        c.decoder.decode(_with_jpeg_size(c.data, 10000, 10000))  # Pillow alone would decode 300 MB of garbage


@settings(HYPOTHESIS, max_examples=15)
@given(h=st.integers(1, 65535), w=st.integers(1, 65535))
def test_jpeg_header_claiming_any_size(coded, small_pixel_limit, h, w):
    """Any size in the frame header: refused above the limit, else decoded (concealed) and
    refused by the harness unless it is the original's size."""
    c = coded("jpeg")
    got = outcome(c, _with_jpeg_size(c.data, h, w))
    assert got == "error" or (h, w) == c.rgb.shape[:2]
