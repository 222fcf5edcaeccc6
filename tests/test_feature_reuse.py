"""Reference-side features are computed once per dataset and reused by every codec, rate point
and later run into the same run directory: FID/KID's Inception features of the reference
images (feature cache keyed by extractor id, resize protocol and pixel sha256) and CLIP score's
caption embeddings (the reference of clip_score is the captions; the reference image is
unused). Counted on the extractors' forward passes, with random-weight stand-ins."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_clip_score import tiny_clip
from test_fid import RandomExtractor

from bench import registry
from bench.data.images import pixel_sha256, read_rgb
from bench.metrics import fid
from bench.runner import Experiment, _engine, run


@pytest.fixture(scope="module")
def crops(tmp_path_factory, kodak_dir):
    """Three 64×96 Kodak crops in a folder."""
    folder = tmp_path_factory.mktemp("reuse-crops")
    for name in ("kodim01", "kodim02", "kodim03"):
        Image.fromarray(read_rgb(kodak_dir / f"{name}.png")[0][200:264, 300:396]).save(folder / f"{name}.png")
    return folder


@pytest.fixture
def counted(monkeypatch):
    """A random-weight extractor in place of Inception; records the sha256 of every image whose
    features are written to the cache (= extracted)."""
    ext = RandomExtractor()
    monkeypatch.setattr(fid, "feature_extractor", lambda device="cpu": ext)
    ext.saved = []
    real = fid.FeatureCache.save

    def save(self, sha, feats):
        ext.saved.append(sha)
        real(self, sha, feats)

    monkeypatch.setattr(fid.FeatureCache, "save", save)
    return ext


def _exp(folder, out, codec, points, **kw):
    return Experiment(data_dir=str(folder), codecs=[codec], points=points, metrics=["fid", "kid"], out=str(out), **kw)


def test_reference_features_are_extracted_once_across_points_codecs_and_runs(crops, tmp_path, counted):
    refs = {pixel_sha256(read_rgb(p)[0]) for p in crops.glob("*.png")}
    n, out = len(refs), tmp_path / "r"
    res = run(_exp(crops, out, "jpeg", [10, 30, 50, 70]))
    assert not [p for p in res.problems if not p.startswith("note:")], res.problems
    # 4 points × fid and kid: the references once, each point's reconstructions once
    assert counted.rows == n + 4 * n
    assert sorted(s for s in counted.saved if s in refs) == sorted(refs)
    assert len(counted.saved) == len(set(counted.saved)) == n + 4 * n
    # another codec, then another point of the first, into the same run directory: references reused
    run(_exp(crops, out, "webp", [50, 80]))
    run(_exp(crops, out, "jpeg", [90]))
    assert counted.rows == n + 7 * n and not refs & set(counted.saved[n + 4 * n:])
    # what a metric without the cache does: every point extracts its references again
    from bench.data.loaders import Sample

    samples = [Sample(p.stem, read_rgb(p)[0], pixel_sha256(read_rgb(p)[0])) for p in sorted(crops.glob("*.png"))]
    before = counted.rows
    spec = registry.get("metric", "fid").obj
    for q in (10, 30, 50, 70):
        recons = [read_rgb(out / "recon" / "folder" / "jpeg" / str(q) / "s0" / f"{s.id}.png")[0] for s in samples]
        spec.compute_set(list(zip(samples, recons)), "cpu", None)
    assert counted.rows - before == 4 * 2 * n


def test_metric_batch_sets_the_extractor_batch(crops, tmp_path, counted, monkeypatch):
    sizes = []
    real = RandomExtractor.__call__
    monkeypatch.setattr(RandomExtractor, "__call__", lambda self, x: sizes.append(x.shape[0]) or real(self, x))
    run(_exp(crops, tmp_path / "r", "jpeg", [20], metric_batch=2))
    assert sizes and max(sizes) == 2 and sum(sizes) == 2 * 3
    assert registry.get("metric", "fid").obj.batch_size == 32  # the registered metric keeps its default


def test_caption_embeddings_are_computed_once_across_points(coco_mini_dir, tmp_path, monkeypatch):
    from bench.metrics.clip_score import ClipScore

    model = tiny_clip()
    name = "clip_score_reuse_test"
    registry.entries("metric")  # built-ins loaded; this metric is registered for this test only
    monkeypatch.setitem(registry._entries["metric"], name,
                        registry.Entry("metric", name, ClipScore(name=name, model_factory=lambda: model)))
    exp = Experiment(dataset="coco-mini", data_dir=str(coco_mini_dir), codecs=["jpeg"], points=[20, 50, 80],
                     metrics=[name], out=str(tmp_path / "r"), limit=2, batch=3)
    res = run(exp)
    assert res.metric_values == 6, res.problems
    from bench import cards
    from bench.data.loaders import open_dataset

    loader = open_dataset(cards.get("dataset", "coco-mini"), coco_mini_dir)
    captions = {c for it in loader.items()[:2] for c in loader.load(it).captions}
    scorer = _engine([name], "cpu").scorer(name).scorer
    assert scorer.text_forwards == len(captions)  # not 3 points × len(captions)
    # cached embeddings give the scores a fresh scorer computes from scratch
    fresh = ClipScore(name=name, model_factory=lambda: model).build("cpu").scorer
    from bench.store import read_table

    df = read_table(tmp_path / "r", "per_image").query("metric == @name and point == '50'").sort_values("image_id")
    recon = [read_rgb(tmp_path / "r" / "recon" / "coco-mini" / "jpeg" / "50" / "s0" / f"{i}.png")[0]
             for i in df.image_id]
    caps = [loader.load(it).captions for it in sorted(loader.items()[:2], key=lambda it: it.id)]
    np.testing.assert_allclose(df.value.to_numpy(), fresh.score_arrays(recon, caps), rtol=0, atol=1e-4)
