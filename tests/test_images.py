import re

import numpy as np
import pytest
from PIL import Image

from bench.data.images import ImageError, pixel_sha256, read_rgb


def test_kodak_pixel_hashes_match_source_md(kodak_dir):
    listed = dict((name, h) for h, name in re.findall(r"([0-9a-f]{64}) (kodim\d\d\.png)",
                                                       (kodak_dir / "SOURCE.md").read_text()))
    assert len(listed) == 24
    for name in ("kodim01.png", "kodim04.png"):
        rgb, notes = read_rgb(kodak_dir / name)
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and notes == []
        assert pixel_sha256(rgb) == listed[name]


def test_grayscale_and_palette_become_rgb_with_a_note(tmp_path):
    g = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    rgb, notes = read_rgb(tmp_path / "g.png")
    assert rgb.shape == (8, 8, 3) and np.array_equal(rgb[..., 1], g) and "L converted" in notes[0]
    Image.fromarray(g, "L").convert("P").save(tmp_path / "p.png")
    assert read_rgb(tmp_path / "p.png")[0].shape == (8, 8, 3)


def test_rgba_opaque_dropped_translucent_refused(tmp_path):
    a = np.full((4, 4, 4), 255, np.uint8)
    Image.fromarray(a, "RGBA").save(tmp_path / "opaque.png")
    rgb, notes = read_rgb(tmp_path / "opaque.png")
    assert rgb.shape == (4, 4, 3) and "alpha dropped" in notes[0]
    a[0, 0, 3] = 10
    Image.fromarray(a, "RGBA").save(tmp_path / "clear.png")
    with pytest.raises(ImageError, match="transparent"):
        read_rgb(tmp_path / "clear.png")


def test_16_bit_refused_with_conversion_hint(tmp_path):
    Image.fromarray(np.full((4, 4), 40000, np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(ImageError, match="more than 8 bits"):
        read_rgb(tmp_path / "deep.png")


def test_corrupt_truncated_and_missing_files(tmp_path, kodak_dir):
    (tmp_path / "junk.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageError, match="junk.png: not a readable image"):
        read_rgb(tmp_path / "junk.png")
    data = (kodak_dir / "kodim02.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cut.png"):
        read_rgb(tmp_path / "cut.png")
    with pytest.raises(ImageError, match="file not found"):
        read_rgb(tmp_path / "none.png")
