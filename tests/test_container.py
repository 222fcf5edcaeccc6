"""The learned codecs' bitstream container: round trips, exact bit accounting, and clear
ContainerErrors (never another exception) for empty, truncated and corrupted bytes."""
from __future__ import annotations

import math
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.codecs.base import CodecError
from bench.codecs.container import (MIN_BYTES, Container, ContainerError, Section, bits_breakdown, pack,
                                    unpack)

ascii_id = st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=64)
points = st.one_of(st.integers(-2**60, 2**60), st.floats(allow_nan=False), st.text(max_size=20))
models = st.one_of(st.just("random"), st.binary(max_size=32).map(bytes.hex), st.text(max_size=20))
sections = st.lists(st.builds(Section, st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1,
                                               max_size=16), st.binary(max_size=300), st.booleans()),
                    max_size=5, unique_by=lambda s: s.name)
containers = st.builds(Container, ascii_id, points, st.lists(st.integers(0, 2**40), max_size=6).map(tuple), models,
                       sections.map(tuple))
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _same_point(a, b) -> bool:
    return type(a) is type(b) and (a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)))


@FAST
@given(containers)
def test_round_trip_of_any_header_and_sections(c):
    data = c.pack()
    back = unpack(data, codec=c.codec)
    assert back == c and _same_point(back.point, c.point)
    for s in c.sections:
        assert back.section(s.name) == s.data


@FAST
@given(containers)
def test_breakdown_sums_to_eight_times_the_length(c):
    data = c.pack()
    bits = bits_breakdown(data)
    assert set(bits) == {"payload", "side", "container"}
    assert sum(bits.values()) == 8 * len(data)
    assert bits["payload"] == 8 * sum(len(s.data) for s in c.sections if not s.side)
    assert bits["side"] == 8 * sum(len(s.data) for s in c.sections if s.side)
    assert bits["container"] >= 8 * MIN_BYTES


@FAST
@given(containers)
def test_every_truncation_is_a_container_error(c):
    data = c.pack()
    for n in range(len(data)):
        with pytest.raises(ContainerError, match=r"truncated|empty|corrupted|CRC"):
            unpack(data[:n])


@FAST
@given(containers, st.data())
def test_bit_flips_are_detected(c, draw):
    data = bytearray(c.pack())
    flips = draw.draw(st.lists(st.integers(0, 8 * len(data) - 1), min_size=1, max_size=3, unique=True))
    for bit in flips:
        data[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(ContainerError) as err:
        unpack(bytes(data))
    assert str(err.value)


@FAST
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_else(blob):
    for data in (blob, bytes([0xBC, 1]) + blob):
        try:
            unpack(data)
        except ContainerError:
            pass


def _zoo_like() -> bytes:
    return pack("zoo:bh", 3, (512, 768, 8, 12), "6d87be32", [Section("y", b"\x11" * 6000), Section("z", b"\x22" * 300, side=True)])


def test_messages_name_what_is_wrong():
    data = _zoo_like()
    assert issubclass(ContainerError, CodecError)
    with pytest.raises(ContainerError, match="empty bitstream"):
        unpack(b"")
    with pytest.raises(ContainerError, match="not a bench container: first byte is 0xFF"):
        unpack(b"\xff\xd8\xff\xe0" + data)
    with pytest.raises(ContainerError, match=r"truncated: header says section 'y' has 6000 bytes, 40 remain"):
        unpack(data[:data.index(b"\x11" * 8) + 40 + 4])
    with pytest.raises(ContainerError, match="unsupported container format version 7"):
        unpack(data[:1] + b"\x07" + data[2:])
    with pytest.raises(ContainerError, match="CRC-32 mismatch"):
        unpack(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ContainerError, match="written by codec 'zoo:bh', not by 'zoo:mm'"):
        unpack(data, codec="zoo:mm")
    with pytest.raises(ContainerError, match="no section 'w'"):
        unpack(data).section("w")
    body = data[:-4] + b"\x00"  # one stray byte after the last section, with a matching CRC
    with pytest.raises(ContainerError, match="1 unexpected byte"):
        unpack(body + zlib.crc32(body).to_bytes(4, "big"))


def test_overhead_is_as_documented():
    data = _zoo_like()
    bits = bits_breakdown(data)
    assert bits["container"] == 8 * 35  # the module docstring's CompressAI example
    tiny = pack("perco", 3, (512, 512), "random", [Section("p", b"\x00" * 40)])
    assert len(tiny) - 40 == 23  # id "perco", 512x512, random init, one section
    c = unpack(tiny)
    assert (c.model, c.point, c.dims) == ("random", 3, (512, 512))
    assert unpack(pack("x1", 0.0019, (), "", [])).point == 0.0019
    assert unpack(pack("x1", "vlo1", (), "", [])).point == "vlo1"


@pytest.mark.parametrize("bad", [
    dict(codec=""), dict(codec="zoo:é"), dict(point=float("nan")), dict(point=True), dict(point=None),
    dict(dims=(-1,)), dict(model=3), dict(sections=(Section("y", b""), Section("y", b""))),
    dict(sections=(Section("", b""),)),
])
def test_unwritable_fields_are_refused_on_pack(bad):
    fields = dict(codec="x1", point=1, dims=(1, 1), model="random", sections=())
    fields.update(bad)
    with pytest.raises(ValueError):
        Container(**fields).pack()
