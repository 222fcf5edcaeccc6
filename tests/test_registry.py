from importlib.metadata import EntryPoint

import pytest

from bench import cards, registry
from bench.codecs.base import Codec


def test_builtin_entries_of_each_kind():
    assert {"pillow-jpeg", "pillow-webp", "pillow-avif", "imagecodecs-jxl", "avifenc", "cjxl"} <= set(
        registry.entries("codec"))
    assert set(["psnr", "ssim", "ms_ssim", "cw_ssim", "fsim", "gmsd", "nlpd", "vsi", "mad"]) <= set(
        registry.entries("metric"))
    assert {"files", "folder", "skimage-samples"} <= set(registry.entries("dataset"))


def test_unknown_name_lists_valid_ones_and_suggests():
    with pytest.raises(registry.UnknownNameError) as info:
        cards.get("codec", "jepg")
    msg = str(info.value)
    assert "Did you mean jpeg" in msg and "webp" in msg and "Valid codecs" in msg
    with pytest.raises(registry.UnknownNameError, match="Valid metrics: .*psnr"):
        registry.get("metric", "psnrr")


class EchoCodec(Codec):
    """A plugin codec defined outside bench (stores raw pixels plus a size header)."""

    name = "test-raw"
    default_points = (1,)

    def encode(self, rgb, point, seed=0):
        h, w, _ = rgb.shape
        return h.to_bytes(4, "big") + w.to_bytes(4, "big") + rgb.tobytes()

    def decode(self, data, seed=0):
        import numpy as np

        h, w = int.from_bytes(data[:4], "big"), int.from_bytes(data[4:8], "big")
        return np.frombuffer(data[8:], np.uint8).reshape(h, w, 3).copy()


def test_entry_point_plugin_is_registered_with_a_default_card(monkeypatch):
    ep = EntryPoint(name="test-raw", value=f"{__name__}:EchoCodec", group="bench.codecs")
    real = registry.entry_points

    def fake(group=None, **kw):
        return [ep] if group == "bench.codecs" else real(group=group, **kw)

    monkeypatch.setattr(registry, "entry_points", fake)
    monkeypatch.setattr(registry, "_loaded", set())
    entry = registry.get("codec", "test-raw")
    assert entry.obj is EchoCodec and entry.source.startswith("plugin")
    card = cards.get("codec", "test-raw")
    assert card.target == "test-raw" and card.get("points") == [1]


def test_broken_plugin_is_reported_not_fatal(monkeypatch):
    ep = EntryPoint(name="broken", value="no_such_module_xyz:Thing", group="bench.metrics")
    monkeypatch.setattr(registry, "entry_points", lambda group=None, **kw: [ep] if group == "bench.metrics" else [])
    monkeypatch.setattr(registry, "_loaded", set())
    monkeypatch.setattr(registry, "plugin_errors", [])
    assert "psnr" in registry.entries("metric")
    assert any("broken" in e for e in registry.plugin_errors)


def test_card_hash_changes_with_content(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("name: x\nadapter: pillow-jpeg\npoints: [10]\n")
    h1 = cards.load_file("codec", a).hash
    a.write_text("name: x\nadapter: pillow-jpeg\npoints: [10]\nparams: {subsampling: '4:4:4'}\n")
    assert cards.load_file("codec", a).hash != h1


def test_malformed_card_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(cards.CardError, match="bad.yaml"):
        cards.load_file("codec", bad)
    bad.write_text("name: nameonly\n")
    with pytest.raises(cards.CardError, match="adapter"):
        cards.load_file("codec", bad)
