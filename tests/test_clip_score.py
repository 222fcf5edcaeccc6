"""clip_score with a random-weight open_clip ViT-B/32 (no download): range, determinism,
batching, caption rules, the engine contract and the weight-file loading path."""
from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from bench import registry
from bench.metrics.clip_score import (
    WEIGHTS_ID,
    ClipScore,
    ClipScorer,
    load_openai_state_dict,
    openai_vit_b32,
)


def random_clip():
    """Random ViT-B/32 as bench builds it (QuickGELU): for the weight-loading path (no forward pass)."""
    torch.manual_seed(0)
    return open_clip.create_model("ViT-B-32-quickgelu", pretrained=None)


def tiny_clip(text_sign: float = 1.0):
    """A 2-layer random open_clip CLIP (same tokenizer, 224 px, patch 32): fast on CPU. Its
    final layer-norm biases and one projection column are shifted so that image and text
    embeddings share a direction: cosines are then clearly positive (text_sign=-1: negative)."""
    torch.manual_seed(0)
    m = open_clip.CLIP(embed_dim=32, vision_cfg=dict(layers=2, width=64, patch_size=32, image_size=224,
                                                     head_width=32),
                       text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2),
                       quick_gelu=True)
    with torch.no_grad():
        m.visual.ln_post.bias.fill_(1.0)
        m.ln_final.bias.fill_(1.0)
        m.visual.proj[:, 0] += 0.2
        m.text_projection[:, 0] += 0.2 * text_sign
    return m.eval()


@pytest.fixture(scope="module")
def model():
    return tiny_clip()


@pytest.fixture(scope="module")
def scorer(model):
    return ClipScorer(lambda: model, "ViT-B-32", "cpu", "mean", batch_size=2)


@pytest.fixture(scope="module")
def coco3(coco_mini_dir):
    from bench import cards
    from bench.data.loaders import open_dataset

    ld = open_dataset(cards.get("dataset", "coco-mini"), coco_mini_dir)
    return [ld.load(it) for it in ld.items()[:3]]


def test_registered_spec():
    spec = registry.get("metric", "clip_score").obj
    assert spec.uses_captions and spec.kind == "per_image" and spec.higher_better
    assert spec.weights == (WEIGHTS_ID,) and spec.caption_rule == "mean"
    assert "mean over the image's captions" in spec.convention and "100·max(cos, 0)" in spec.convention
    assert "rule=mean" in spec.version()


def test_range_deterministic_batched(scorer, coco3):
    imgs = [s.rgb for s in coco3]
    caps = [s.captions for s in coco3]
    batched = scorer.score_arrays(imgs, caps)  # batch_size 2: 3 images in 2 chunks, 15 captions in 8
    assert batched.shape == (3,) and np.all(batched >= 0) and np.all(batched <= 100)
    again = scorer.score_arrays(imgs, caps)
    np.testing.assert_array_equal(batched, again)
    single = np.array([scorer.score_arrays([im], [c])[0] for im, c in zip(imgs, caps)])
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-4)
    assert len(set(np.round(batched, 4))) == 3 and batched.min() > 1  # images differ, so do their scores


def test_caption_rules(model, coco3):
    s = coco3[0]
    rules = {r: ClipScorer(lambda: model, "ViT-B-32", "cpu", r, 32) for r in ("mean", "first", "max")}
    per_caption = np.array([rules["first"].score_arrays([s.rgb], [[c]])[0] for c in s.captions])
    assert rules["first"].score_arrays([s.rgb], [s.captions])[0] == pytest.approx(per_caption[0], abs=1e-4)
    assert rules["mean"].score_arrays([s.rgb], [s.captions])[0] == pytest.approx(per_caption.mean(), abs=1e-4)
    assert rules["max"].score_arrays([s.rgb], [s.captions])[0] == pytest.approx(per_caption.max(), abs=1e-4)
    # 100 * max(cos, 0) by hand for the first caption
    from PIL import Image

    with torch.inference_mode():
        fi = model.encode_image(rules["first"].preprocess(Image.fromarray(s.rgb))[None])
        ft = model.encode_text(open_clip.get_tokenizer("ViT-B-32")([s.captions[0]]))
        cos = torch.nn.functional.cosine_similarity(fi, ft).item()
    assert cos > 0 and per_caption[0] == pytest.approx(100 * cos, abs=1e-3)
    assert len(set(np.round(per_caption, 3))) == len(s.captions)
    # negative cosine -> 0
    neg = tiny_clip(text_sign=-1.0)
    with torch.inference_mode():
        cos = torch.nn.functional.cosine_similarity(
            neg.encode_image(rules["first"].preprocess(Image.fromarray(s.rgb))[None]),
            neg.encode_text(open_clip.get_tokenizer("ViT-B-32")([s.captions[0]]))).item()
    assert cos < 0
    assert ClipScorer(lambda: neg, "ViT-B-32", "cpu", "first", 32).score_arrays([s.rgb], [s.captions])[0] == 0.0


def test_engine_contract(model, coco3):
    from bench.metrics.engine import to_tensor

    spec = ClipScore(model_factory=lambda: model)
    assert spec.weights == () and spec.available() == (True, "")
    score = spec.build("cpu")
    s = coco3[1]
    t = to_tensor(s.rgb)
    value = score(t, t, s.captions)
    assert value.shape == (1,) and 0 <= float(value[0]) <= 100
    direct = score.scorer.score_arrays([s.rgb], [s.captions])[0]
    assert float(value[0]) == pytest.approx(direct, abs=1e-5)
    two = score(torch.cat([t[..., :200, :200], to_tensor(coco3[2].rgb)[..., :200, :200]]), None,
                [s.captions, coco3[2].captions])
    crops = [s.rgb[:200, :200], coco3[2].rgb[:200, :200]]
    expected = score.scorer.score_arrays(crops, [s.captions, coco3[2].captions])
    assert two.shape == (2,) and expected[0] != expected[1]
    np.testing.assert_allclose(two.numpy(), expected, rtol=0, atol=1e-4)
    from bench.metrics.iqa import MetricError

    with pytest.raises(MetricError, match="no ground-truth caption"):
        score.scorer.score_arrays([s.rgb], [[]])
    with pytest.raises(MetricError, match="caption lists"):
        score(t, t, [])
    with pytest.raises(ValueError):
        ClipScore(caption_rule="median")


def _fake_weights(monkeypatch, path: Path):
    class WeightsError(FileNotFoundError):
        pass

    def require(ids):
        assert list(ids) == [WEIGHTS_ID]
        if not path.is_file():
            raise WeightsError(f"missing {ids}: place it at {path}")

    fake = types.SimpleNamespace(path=lambda wid: path, require=require, WeightsError=WeightsError)
    import bench

    monkeypatch.setitem(sys.modules, "bench.weights", fake)
    monkeypatch.setattr(bench, "weights", fake, raising=False)
    return WeightsError


@pytest.mark.filterwarnings("ignore")  # torch.jit deprecation and tracer warnings
def test_weight_file_loading(tmp_path, monkeypatch, model):
    src = random_clip()
    with torch.no_grad():
        src.logit_scale.fill_(1.234)
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}
    sd["context_length"] = torch.tensor(77)  # as in OpenAI's TorchScript file
    path = tmp_path / "ViT-B-32.pt"
    torch.save(sd, path)
    _fake_weights(monkeypatch, path)
    loaded = openai_vit_b32()
    assert loaded.logit_scale.item() == pytest.approx(1.234)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), src.state_dict().values()))
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert "context_length" not in load_openai_state_dict(path)
    # OpenAI's file is a TorchScript archive: a traced model stands in for it
    traced = torch.jit.trace(src.eval(), (torch.rand(1, 3, 224, 224), torch.zeros(1, 77, dtype=torch.long)),
                             check_trace=False, strict=False)
    torch.jit.save(traced, path)
    loaded = openai_vit_b32()
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), src.state_dict().values()))
    # a file that is not a CLIP checkpoint
    torch.save({"foo": torch.zeros(1)}, path)
    from bench.metrics.iqa import MetricError

    with pytest.raises(MetricError, match="not a CLIP ViT-B/32 checkpoint"):
        openai_vit_b32()


def test_missing_weights_error(tmp_path, monkeypatch):
    err = _fake_weights(monkeypatch, tmp_path / "absent.pt")
    with pytest.raises(err, match="place it at"):
        openai_vit_b32()
    ok, why = ClipScore().available()
    assert not ok and "absent.pt" in why
