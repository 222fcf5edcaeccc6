"""bench.codecs.colour: RGB <-> Y'CbCr and planar YUV files.

* round trips on Kodak stay within the stated bounds (4:4:4 full 8 bit <= 1,
  limited 8 bit <= 2, 10 bit <= 1; 4:2:0 only sanity-checked by PSNR);
* BT.601 full range agrees with Pillow's own ``convert("YCbCr")`` (JFIF) within 1;
* BT.709 limited-range codes of the 100 % colour bars equal the published ones
  (SMPTE RP 219-1:2014 table 2, 10 bit; 8-bit = the same formula of BT.709-6 item 4.6);
* Hypothesis: arbitrary small images round-trip within bound and stay in range;
* 4:2:0 files of odd sizes are written and read back exactly.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from bench.codecs import colour
from bench.data.images import read_rgb


@pytest.fixture(scope="module")
def kodak(kodak_dir):
    """All 24 Kodak images."""
    images = [read_rgb(path)[0] for path in sorted(kodak_dir.glob("kodim*.png"))]
    assert len(images) == 24
    return images


def max_err(a, b) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


@pytest.mark.parametrize("matrix", ["bt709", "bt601"])
@pytest.mark.parametrize("rng,bits,bound", [("full", 8, 1), ("limited", 8, 2), ("full", 10, 1), ("limited", 10, 1)])
def test_444_round_trip_on_kodak(kodak, matrix, rng, bits, bound):
    for rgb in kodak:
        ycc = colour.rgb_to_ycbcr(rgb, matrix, rng, bits)
        assert ycc.dtype == (np.uint8 if bits == 8 else np.uint16) and ycc.shape == rgb.shape
        assert max_err(colour.ycbcr_to_rgb(ycc, matrix, rng, bits), rgb) <= bound


def test_limited_range_codes_stay_in_studio_range(kodak):
    for bits in (8, 10):
        k = 2 ** (bits - 8)
        y, cb, cr = colour.rgb_to_planes(kodak[0], "bt709", "limited", bits)
        assert 16 * k <= y.min() and y.max() <= 235 * k
        for c in (cb, cr):
            assert 16 * k <= c.min() and c.max() <= 240 * k


@pytest.mark.parametrize("method", ["nearest", "bilinear"])
def test_420_round_trip_is_close(kodak, method):
    rgb = kodak[0]
    planes = colour.rgb_to_planes(rgb, "bt709", "full", 8, "420")
    assert planes[1].shape == ((rgb.shape[0] + 1) // 2, (rgb.shape[1] + 1) // 2)
    back = colour.planes_to_rgb(planes, "bt709", "full", 8, upsample=method)
    mse = np.mean((back.astype(float) - rgb) ** 2)
    assert 10 * np.log10(255 ** 2 / mse) > 30


def test_bilinear_beats_nearest_on_smooth_chroma():
    x = np.linspace(0, 1, 33)
    rgb = (np.stack(np.broadcast_arrays(x[None, :], x[:, None], 0.5 + 0 * x[None, :]), -1) * 255).round()
    rgb = rgb.astype(np.uint8)
    planes = colour.rgb_to_planes(rgb, "bt709", "full", 8, "420")
    err = {m: max_err(colour.planes_to_rgb(planes, "bt709", "full", 8, m), rgb) for m in colour.UPSAMPLING}
    assert err["bilinear"] < err["nearest"]


def test_bt601_full_matches_pillow_jfif(kodak):
    for rgb in kodak:
        ours = colour.rgb_to_ycbcr(rgb, "bt601", "full", 8)
        pil = np.asarray(Image.fromarray(rgb).convert("YCbCr"))
        assert max_err(ours, pil) <= 1


# 100 % colour bars, BT.709 Y'CbCr, limited range. 10 bit: SMPTE RP 219-1:2014
# ("High-Definition, Standard-Definition Compatible Color Bar Signal"), table 2;
# 8 bit: the same bars quantised to 8 bit by the BT.709-6 item 4.6 formula
# (each equals the RP 219 10-bit code / 4, rounded).
BARS = {  # name: (RGB, 8-bit Y Cb Cr, 10-bit Y Cb Cr)
    "white": ((255, 255, 255), (235, 128, 128), (940, 512, 512)),
    "yellow": ((255, 255, 0), (219, 16, 138), (877, 64, 553)),
    "cyan": ((0, 255, 255), (188, 154, 16), (754, 615, 64)),
    "green": ((0, 255, 0), (173, 42, 26), (691, 167, 105)),
    "magenta": ((255, 0, 255), (78, 214, 230), (313, 857, 919)),
    "red": ((255, 0, 0), (63, 102, 240), (250, 409, 960)),
    "blue": ((0, 0, 255), (32, 240, 118), (127, 960, 471)),
    "black": ((0, 0, 0), (16, 128, 128), (64, 512, 512)),
}


def test_bt709_limited_colour_bars_match_published_codes():
    rgb = np.array([[v[0] for v in BARS.values()]], np.uint8)
    assert len(BARS) == 8
    for bits, idx in ((8, 1), (10, 2)):
        got = colour.rgb_to_ycbcr(rgb, "bt709", "limited", bits)[0]
        for (name, v), codes in zip(BARS.items(), got):
            assert tuple(int(c) for c in codes) == v[idx], (name, bits)


def test_full_range_extremes():
    rgb = np.array([[[255, 255, 255], [0, 0, 0]]], np.uint8)
    assert colour.rgb_to_ycbcr(rgb, "bt709", "full", 8).tolist() == [[[255, 128, 128], [0, 128, 128]]]
    assert colour.rgb_to_ycbcr(rgb, "bt709", "full", 10).tolist() == [[[1023, 512, 512], [0, 512, 512]]]


small_images = st.integers(1, 9).flatmap(
    lambda h: st.integers(1, 9).flatmap(lambda w: arrays(np.uint8, (h, w, 3))))


@settings(max_examples=60, deadline=None)
@given(rgb=small_images, matrix=st.sampled_from(list(colour.MATRICES)), rng=st.sampled_from(colour.RANGES),
       bits=st.sampled_from([8, 10]))
def test_property_444_round_trip_and_ranges(rgb, matrix, rng, bits):
    planes = colour.rgb_to_planes(rgb, matrix, rng, bits)
    k = 2 ** (bits - 8)
    lo_y, hi_y, lo_c, hi_c = (0, 2 ** bits - 1, 0, 2 ** bits - 1) if rng == "full" else (16 * k, 235 * k, 16 * k,
                                                                                          240 * k)
    assert lo_y <= planes[0].min() and planes[0].max() <= hi_y
    assert all(lo_c <= p.min() and p.max() <= hi_c for p in planes[1:])
    bound = 2 if (rng, bits) == ("limited", 8) else 1
    assert max_err(colour.planes_to_rgb(planes, matrix, rng, bits), rgb) <= bound


@settings(max_examples=40, deadline=None)
@given(rgb=small_images, method=st.sampled_from(colour.UPSAMPLING))
def test_property_420_shapes_and_flat_colour(rgb, method):
    h, w = rgb.shape[:2]
    planes = colour.rgb_to_planes(rgb, "bt709", "limited", 10, "420")
    assert planes[0].shape == (h, w) and planes[1].shape == planes[2].shape == ((h + 1) // 2, (w + 1) // 2)
    back = colour.planes_to_rgb(planes, "bt709", "limited", 10, method)
    assert back.shape == rgb.shape and back.dtype == np.uint8
    flat = np.broadcast_to(rgb[:1, :1], rgb.shape).copy()  # one colour: 4:2:0 loses nothing
    assert max_err(colour.planes_to_rgb(colour.rgb_to_planes(flat, "bt709", "full", 8, "420"),
                                        "bt709", "full", 8, method), flat) <= 1


@pytest.mark.parametrize("bits", [8, 10])
@pytest.mark.parametrize("chroma", ["444", "420"])
@pytest.mark.parametrize("h,w", [(7, 5), (1, 1), (4, 6), (9, 2)])
def test_yuv_file_round_trip_odd_sizes(tmp_path, kodak, bits, chroma, h, w):
    rgb = kodak[1][:h, :w]
    planes = colour.rgb_to_planes(rgb, "bt709", "limited", bits, chroma)
    path = tmp_path / "f.yuv"
    colour.write_yuv(path, planes, bits)
    cw, ch = (w, h) if chroma == "444" else ((w + 1) // 2, (h + 1) // 2)
    assert path.stat().st_size == (w * h + 2 * cw * ch) * (1 if bits == 8 else 2)
    back = colour.read_yuv(path, w, h, bits, chroma)
    for a, b in zip(planes, back):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    with pytest.raises(ValueError, match="bytes"):
        colour.read_yuv(path, w + 1, h, bits, chroma)


def test_10bit_file_is_little_endian_uint16_y_then_cb_then_cr(tmp_path):
    planes = (np.array([[940]], np.uint16), np.array([[64]], np.uint16), np.array([[960]], np.uint16))
    colour.write_yuv(tmp_path / "p.yuv", planes, 10)
    assert (tmp_path / "p.yuv").read_bytes() == (940).to_bytes(2, "little") + (64).to_bytes(2, "little") + \
        (960).to_bytes(2, "little")


def test_420_downsampling_is_2x2_mean_with_edge_replication():
    p = np.arange(15, dtype=float).reshape(3, 5)
    d = colour.downsample_420(p)
    assert d.shape == (2, 3)
    assert d[0, 0] == np.mean([0, 1, 5, 6]) and d[1, 2] == 14 and d[0, 2] == np.mean([4, 9])


def test_bad_arguments_are_refused():
    rgb = np.zeros((2, 2, 3), np.uint8)
    with pytest.raises(ValueError, match="matrix"):
        colour.rgb_to_planes(rgb, "bt2020")
    with pytest.raises(ValueError, match="range"):
        colour.rgb_to_planes(rgb, range="studio")
    with pytest.raises(ValueError, match="chroma"):
        colour.rgb_to_planes(rgb, chroma="422")
    with pytest.raises(ValueError, match="upsample"):
        colour.upsample_420(np.zeros((1, 1)), (2, 2), "bicubic")
    with pytest.raises(ValueError, match="10-bit"):
        colour.write_yuv("/dev/null", (np.full((1, 1), 1024, np.uint16),) * 3, 10)
