"""Batched work in the runner (``--batch``, ``--metric-batch``): how units are grouped, learned
codecs decoding a batch in one forward pass with the very pixels of one-at-a-time decoding,
a bad bitstream failing alone, and the set metrics' batch size and lazy pairs."""
from __future__ import annotations

import types
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from bench import registry
from bench.codecs.container import ContainerError
from bench.data.images import read_rgb
from bench.runner import Experiment, ExperimentError, _StoredPairs, batches, run
from bench.store import read_table

ZOO = "bmshj2018-hyperprior"


@pytest.fixture(scope="module")
def crops(tmp_path_factory, kodak_dir):
    """Four 64×96 crops (same size) and one 96×64 crop of Kodak images in a folder."""
    folder = tmp_path_factory.mktemp("batch-crops")
    for i, name in enumerate(("kodim01", "kodim02", "kodim03", "kodim05")):
        rgb = read_rgb(kodak_dir / f"{name}.png")[0]
        Image.fromarray(rgb[200:264, 300 + 10 * i:396 + 10 * i]).save(folder / f"a{i}.png")
    Image.fromarray(read_rgb(kodak_dir / "kodim07.png")[0][100:196, 100:164]).save(folder / "b0.png")
    return folder


def _exp(folder, out, **kw) -> Experiment:
    base = dict(data_dir=str(folder), codecs=[ZOO], points=[1, 2], metrics=["psnr"], init="random", out=str(out))
    return Experiment(**{**base, **kw})


# ---------------------------------------------------------------------------- grouping
def _task(image: str, card: str, point: int, shape=(4, 6, 3), seed: int = 0):
    return types.SimpleNamespace(image_id=image, card=types.SimpleNamespace(hash=card), point=point, seed=seed,
                                 rgb=np.zeros(shape, np.uint8))


def test_batches_group_one_point_and_size_across_images():
    shapes = {"i0": (4, 6, 3), "i1": (4, 6, 3), "i2": (6, 4, 3), "i3": (4, 6, 3), "i4": (4, 6, 3)}
    stream = []
    for img, shape in shapes.items():
        stream += [_task(img, card, p, shape, seed) for card in ("c1", "c2") for p in (1, 2) for seed in (0, 1)]
        stream.append(None)  # a unit already done
    consumed = []

    def source():
        for t in stream:
            consumed.append(t)
            yield t

    size, seen, out = 3, [], []
    for batch in batches(source(), size):
        if batch is None:
            assert consumed[-1] is None  # passes through at once
            out.append(None)
            continue
        assert 1 <= len(batch) <= size
        assert len({(t.card.hash, t.point, t.rgb.shape) for t in batch}) == 1  # one card, point, image size
        waiting = [t for t in consumed if t is not None and all(t is not s for s in seen)]
        assert len({t.image_id for t in waiting}) <= 2 * size + 1  # pixels held: a bounded window of images
        seen += batch
        out.append(batch)
    assert sorted(map(id, seen)) == sorted(id(t) for t in stream if t is not None)  # each unit exactly once
    assert out.count(None) == len(shapes)
    full = [b for b in out if b and len(b) == size]
    assert full and any(len({t.image_id for t in b}) > 1 for b in full)  # batches span images
    assert all(len({t.image_id for t in b}) == 1 or b[0].rgb.shape == (4, 6, 3) for b in full)
    # size 1: every unit alone, in the order given (what a run without --batch does)
    assert [b if b is None else b[0] for b in batches(iter(stream), 1)] == stream


def test_metric_batch_must_be_positive(tmp_path):
    with pytest.raises(ExperimentError, match="--metric-batch"):
        Experiment(out=str(tmp_path), metric_batch=0).check()


# ---------------------------------------------------------------------------- batched decode, exact pixels
@pytest.fixture
def distinct(monkeypatch):
    """Seeded random zoo weights quantise every image's latents to the same values (|y| < 0.5),
    so all bitstreams would be alike; a louder analysis transform (in ``prepare``, which the
    encoding and the decoding instance both run) makes each image's bytes and pixels its own."""
    import torch

    adapter = registry.get("codec", "compressai-zoo").obj
    real = adapter.prepare

    def louder(self, model, point):
        with torch.no_grad():
            model.g_a[-1].weight.mul_(40.0)
        real(self, model, point)

    monkeypatch.setattr(adapter, "prepare", louder)


def _count_decode_batches(monkeypatch):
    """Record how many bitstreams each decode forward pass of the zoo adapter got."""
    adapter = registry.get("codec", "compressai-zoo").obj
    sizes: list[int] = []
    real = adapter.decode_tensors

    def counting(self, model, containers, generators):
        sizes.append(len(containers))
        return real(self, model, containers, generators)

    monkeypatch.setattr(adapter, "decode_tensors", counting)
    return sizes


def _problems(res) -> list[str]:
    return [p for p in res.problems if not p.startswith("note:")]


def _recons(out, folder):
    return {p.relative_to(out): read_rgb(p)[0] for p in sorted((out / "recon").rglob("*.png"))}


def test_batched_learned_decode_gives_the_pixels_of_single_decodes(crops, tmp_path, monkeypatch, distinct):
    sizes = _count_decode_batches(monkeypatch)
    one = run(_exp(crops, tmp_path / "one"))
    assert one.units_coded == 10 and not _problems(one)
    assert set(sizes) == {1}
    sizes.clear()
    four = run(_exp(crops, tmp_path / "four", batch=4))
    assert four.units_coded == 10 and not _problems(four)
    assert max(sizes) == 4 and sum(sizes) == 10  # 4 same-size crops of one point in one forward pass
    a, b = _recons(tmp_path / "one", crops), _recons(tmp_path / "four", crops)
    assert a.keys() == b.keys() and len(a) == 10
    assert len({img.tobytes() for img in a.values()}) == 10  # every unit decoded to pixels of its own
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    for p in (tmp_path / "one" / "bitstreams").rglob("*.bin"):
        assert p.read_bytes() == (tmp_path / "four" / p.relative_to(tmp_path / "one")).read_bytes()
    ta = read_table(tmp_path / "one", "per_image").drop(columns=["run_id", "enc_s", "dec_s"])
    tb = read_table(tmp_path / "four", "per_image").drop(columns=["run_id", "enc_s", "dec_s"])
    assert ta.equals(tb)


def test_a_bad_bitstream_in_a_batch_fails_alone(crops, tmp_path, monkeypatch, distinct):
    from bench.runner import build_codec, resolve_card

    enc = build_codec(resolve_card("codec", ZOO), init="random")
    bad = enc.encode(read_rgb(crops / "a2.png")[0], 1)  # deterministic bytes: what the run will store
    adapter = registry.get("codec", "compressai-zoo").obj
    real = adapter.read

    def refuse(self, data):
        if data == bad:
            raise ContainerError("test: refused bitstream")
        return real(self, data)

    monkeypatch.setattr(adapter, "read", refuse)
    sizes = _count_decode_batches(monkeypatch)
    res = run(_exp(crops, tmp_path / "r", batch=4))
    assert res.units_coded == 9 and res.units_failed == 1
    assert len(_problems(res)) == 1 and "a2" in _problems(res)[0] and "refused bitstream" in _problems(res)[0]
    assert max(sizes) == 4  # the other point's batch went through in one pass; this one one by one
    monkeypatch.setattr(adapter, "read", real)
    good = run(_exp(crops, tmp_path / "ref"))  # the same units one at a time, nothing refused
    mine, ref = _recons(tmp_path / "r", crops), _recons(tmp_path / "ref", crops)
    assert len(mine) == 9 and all(np.array_equal(img, ref[name]) for name, img in mine.items())
    assert good.units_coded == 10


# ---------------------------------------------------------------------------- set metrics
class _PairsProbe:
    """A set metric recording what the runner hands it."""

    name = "test_pairs_probe"
    kind = "per_set"
    higher_better = True
    batch_size = 32
    seen: ClassVar[list] = []

    def available(self):
        return True, ""

    def version(self):
        return "probe-1"

    def compute_set(self, pairs, device="cpu", cache_dir=None):
        type(self).seen.append((type(pairs), len(pairs), self.batch_size, self is PROBE))
        return {"value": float(np.mean([recon.mean() for _, recon in pairs])), "n_images": len(pairs)}


PROBE = _PairsProbe()


def test_set_metrics_get_lazy_pairs_and_the_metric_batch(crops, tmp_path, monkeypatch):
    registry.entries("metric")  # built-ins loaded; the probe is registered for this test only
    monkeypatch.setitem(registry._entries["metric"], PROBE.name, registry.Entry("metric", PROBE.name, PROBE))
    monkeypatch.setattr(_PairsProbe, "seen", [])
    run(_exp(crops, tmp_path / "r", codecs=["jpeg"], points=[20, 60], init="pretrained",
             metrics=["psnr", PROBE.name], metric_batch=5))
    assert [s[1:] for s in _PairsProbe.seen] == [(5, 5, False), (5, 5, False)]  # a copy with the run's batch size
    assert all(s[0] is _StoredPairs for s in _PairsProbe.seen) and PROBE.batch_size == 32
    monkeypatch.setattr(_PairsProbe, "seen", [])
    run(_exp(crops, tmp_path / "d", codecs=["jpeg"], points=[20], init="pretrained", metrics=[PROBE.name]))
    assert [s[1:] for s in _PairsProbe.seen] == [(5, 32, True)]  # no --metric-batch: the metric's own


def test_stored_pairs_read_each_pair_when_reached(crops, tmp_path):
    from bench import cards
    from bench.data.loaders import open_dataset

    loader = open_dataset(cards.get("dataset", "folder"), str(crops))
    items = loader.items()[:3]
    loads = []
    real = loader.load
    loader.load = lambda it: loads.append(it.id) or real(it)
    pairs = _StoredPairs(loader, [(it, it.path) for it in items])
    assert len(pairs) == 3 and not loads
    first = pairs[0]
    assert loads == [items[0].id] and np.array_equal(first[0].rgb, first[1])
    assert [s.id for s, _ in pairs] == [it.id for it in items] and len(loads) == 4  # nothing kept between reads
    assert [s.id for s, _ in pairs[1:]] == [it.id for it in items[1:]]


def test_codecs_without_exact_batches_decode_one_at_a_time(crops, tmp_path, monkeypatch, distinct):
    """CDC, PerCo and MS-ILLM do not claim batch_decode_exact: --batch groups their units for the
    metrics but decodes one bitstream per pass, so results do not depend on the batch size."""
    from bench.codecs.cdc.adapter import CDC
    from bench.codecs.msillm.adapter import MSILLMCodec
    from bench.codecs.perco.adapter import PerCo

    assert not any(cls.batch_decode_exact for cls in (CDC, PerCo, MSILLMCodec))
    adapter = registry.get("codec", "compressai-zoo").obj
    monkeypatch.setattr(adapter, "batch_decode_exact", False)
    sizes = _count_decode_batches(monkeypatch)
    res = run(_exp(crops, tmp_path / "r", batch=4, points=[1]))
    assert res.units_coded == 5 and set(sizes) == {1}


@pytest.mark.needs_gpu
def test_zoo_batched_decode_on_cuda_equals_single_decodes(crops, distinct):
    """Whether the zoo's batched synthesis is exact on CUDA too (if so, batch_decode_exact may
    hold there); bytes written on the GPU, decoded there singly and as one batch."""
    from bench.runner import build_codec, resolve_card

    card = resolve_card("codec", ZOO)
    enc, dec = build_codec(card, "cuda", init="random"), build_codec(card, "cuda", init="random")
    datas = [enc.encode(read_rgb(crops / f"a{i}.png")[0], 1) for i in range(4)]
    assert len(set(datas)) == 4
    for one, batched in zip([dec.decode(d) for d in datas], dec.decode_batch(datas)):
        assert np.array_equal(one, batched)


def test_cli_takes_metric_batch(crops, tmp_path):
    from typer.testing import CliRunner

    from bench.cli import app

    bad = CliRunner().invoke(app, ["run", "--data-dir", str(crops), "--codec", "jpeg", "--points", "50",
                                   "--metrics", "psnr", "--metric-batch", "0", "--out", str(tmp_path / "r")])
    assert bad.exit_code == 2 and "--metric-batch must be at least 1" in bad.output
    ok = CliRunner().invoke(app, ["run", "--data-dir", str(crops), "--codec", "jpeg", "--points", "50", "--metrics",
                                  "psnr", "--metric-batch", "4", "--batch", "4", "--no-plot", "--out", str(tmp_path / "r")])
    assert ok.exit_code == 0, ok.output
    assert len(read_table(tmp_path / "r", "per_image")) == 5
