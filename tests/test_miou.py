"""mIoU: the accumulator on hand-made maps, the label mapping, tiny random transformers
segmenters through the backend interface, the mmseg guard, and an end-to-end run."""
from __future__ import annotations

import numpy as np
import pytest

from bench import registry
from bench.data.coco import COCO_THINGS
from bench.data.loaders import Sample
from bench.metrics import segmenters
from bench.metrics.miou import IoUAccumulator, MIoU
from bench.metrics.segmenters import SegmenterError, TransformersSegmenter, thing_lut

THING_NAMES = [n for _, n in COCO_THINGS]
THING_IDS = {cid for cid, _ in COCO_THINGS}


# ---------------------------------------------------------------------------- accumulator
def test_accumulator_known_answer():
    target = np.array([[0, 0, 1, 1],
                       [0, 0, 1, 1],
                       [2, 2, 255, 255],
                       [2, 2, 255, 255]])
    pred = np.array([[0, 1, 1, 1],
                     [0, 0, 1, 2],
                     [2, 2, 1, 7],
                     [0, 2, 2, 2]])
    acc = IoUAccumulator(num_classes=256, ignore_index=255)
    acc.update(pred, target)
    res = acc.compute()
    # ignored pixels (bottom right) do not count, whatever is predicted there (1, 7, 2, 2).
    # class 0: target {(0,0),(0,1),(1,0),(1,1)}, pred {(0,0),(1,0),(1,1),(3,0)} -> I 3, U 5
    # class 1: target {(0,2),(0,3),(1,2),(1,3)}, pred {(0,1),(0,2),(0,3),(1,2)} -> I 3, U 5
    # class 2: target {(2,0),(2,1),(3,0),(3,1)}, pred {(1,3),(2,0),(2,1),(3,1)} -> I 3, U 5
    assert res["classes"] == [0, 1, 2]  # 7 is predicted only on ignored pixels: not present
    assert res["intersection"] == {0: 3, 1: 3, 2: 3} and res["union"] == {0: 5, 1: 5, 2: 5}
    assert res["miou"] == pytest.approx(0.6)
    # a second map: accumulated over the set, not averaged per image
    acc.update(np.array([[5, 5], [5, 0]]), np.array([[5, 5], [0, 0]]))
    res = acc.compute()
    # class 0: I 3+1, U 5+2 ; class 5: I 2, U 3 ; classes 1, 2 unchanged
    assert res["iou"] == pytest.approx({0: 4 / 7, 1: 0.6, 2: 0.6, 5: 2 / 3})
    assert res["miou"] == pytest.approx((4 / 7 + 0.6 + 0.6 + 2 / 3) / 4)
    per_image_mean = (0.6 + np.mean([1 / 2, 2 / 3])) / 2
    assert abs(res["miou"] - per_image_mean) > 0.01


def test_accumulator_ignore_and_errors():
    acc = IoUAccumulator(256, 255)
    acc.update(np.full((3, 3), 4), np.full((3, 3), 255))
    assert acc.compute()["classes"] == [] and np.isnan(acc.compute()["miou"])
    acc.update(np.full((2, 2), 255), np.full((2, 2), 3))  # predicting "ignore" is a miss for class 3
    res = acc.compute()
    assert res["classes"] == [3] and res["iou"] == {3: 0.0}
    with pytest.raises(ValueError, match="differ in shape"):
        acc.update(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="outside"):
        IoUAccumulator(4, None).update(np.full((1, 1), 9), np.zeros((1, 1)))


# ---------------------------------------------------------------------------- label mapping
def test_thing_lut_by_name():
    names = THING_NAMES + ["sky-other-merged", "wall", "table-merged", "banner"]
    lut, summary = thing_lut(names)
    assert [int(lut[i]) for i in range(80)] == [cid for cid, _ in COCO_THINGS]
    assert lut[80:].tolist() == [0, 0, 0, 0]
    assert summary["things_matched"] == 80 and summary["model_labels_to_background"] == 4
    # PASCAL-style spellings map to the COCO names; too few things is refused
    voc = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
           "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
    lut, summary = thing_lut(voc, min_things=0)
    assert lut[1] == 5 and lut[11] == 67 and lut[14] == 4 and lut[18] == 63 and lut[20] == 72 and lut[0] == 0
    assert summary["things_matched"] == 20
    with pytest.raises(SegmenterError, match="not trained on COCO"):
        thing_lut(voc)


# ---------------------------------------------------------------------------- transformers backend
LABELS = THING_NAMES + ["sky-other-merged", "wall-other-merged"]


def tiny_segformer():
    import torch
    from transformers import (
        SegformerConfig,
        SegformerForSemanticSegmentation,
        SegformerImageProcessor,
    )

    cfg = SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[4, 2], hidden_sizes=[8, 16],
                          patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 1], mlp_ratios=[2, 2],
                          decoder_hidden_size=16, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
                          label2id={n: i for i, n in enumerate(LABELS)})
    torch.manual_seed(0)
    model = SegformerForSemanticSegmentation(cfg).eval()
    with torch.no_grad():  # a random decoder favours a few classes; spread the logits so several appear
        model.decode_head.classifier.weight.mul_(50)
    return model, SegformerImageProcessor(size={"height": 128, "width": 128})


def tiny_mask2former():
    import torch
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    backbone = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4, image_size=64,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = Mask2FormerConfig(backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32,
                            encoder_feedforward_dim=64, dim_feedforward=64, encoder_layers=1, decoder_layers=2,
                            num_attention_heads=2, num_queries=8, num_labels=len(LABELS),
                            id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)},
                            use_pretrained_backbone=False)
    torch.manual_seed(0)
    return (Mask2FormerForUniversalSegmentation(cfg).eval(),
            Mask2FormerImageProcessor(size={"shortest_edge": 96, "longest_edge": 160}, size_divisor=32))


@pytest.fixture(scope="module")
def coco3(coco_mini_dir):
    from bench import cards
    from bench.data.loaders import open_dataset

    ld = open_dataset(cards.get("dataset", "coco-mini"), coco_mini_dir)
    return [ld.load(it) for it in ld.items()[:3]]


@pytest.fixture(scope="module")
def tiny_seg():
    model, proc = tiny_segformer()
    return TransformersSegmenter(model, proc, "test/tiny-segformer", "cpu")


def test_segformer_forward_on_coco(tiny_seg, coco3):
    rgb = coco3[0].rgb
    pred = tiny_seg.predict(rgb)
    assert pred.shape == rgb.shape[:2] and pred.dtype == np.uint8
    values = set(np.unique(pred).tolist())
    assert values <= THING_IDS | {0} and len(values) >= 2
    np.testing.assert_array_equal(pred, tiny_seg.predict(rgb))
    d = tiny_seg.describe()
    assert d["backend"] == "transformers" and d["model"] == "test/tiny-segformer" and d["model_type"] == "segformer"
    assert d["label_mapping"]["things_matched"] == 80 and d["label_mapping"]["n_model_labels"] == 82


def test_from_dir_and_missing_dir(tmp_path, tiny_seg, coco3, monkeypatch):
    tiny_seg.model.save_pretrained(tmp_path / "seg")
    tiny_seg.processor.save_pretrained(tmp_path / "seg")
    monkeypatch.setenv("BENCH_MIOU_MODEL_DIR", str(tmp_path / "seg"))
    loaded = segmenters.build_segmenter("transformers", "cpu", "test/tiny-segformer")
    assert "BENCH_MIOU_MODEL_DIR" in loaded.describe()["weights_from"]
    np.testing.assert_array_equal(loaded.predict(coco3[1].rgb), tiny_seg.predict(coco3[1].rgb))
    monkeypatch.delenv("BENCH_MIOU_MODEL_DIR")
    with pytest.raises(SegmenterError) as err:
        TransformersSegmenter.from_dir("facebook/mask2former-swin-large-coco-panoptic", tmp_path / "nothing")
    msg = str(err.value)
    assert "https://huggingface.co/facebook/mask2former-swin-large-coco-panoptic" in msg
    assert "BENCH_MIOU_MODEL_DIR" in msg and str(tmp_path / "nothing") in msg
    ok, why = MIoU(model_dir=tmp_path / "nothing").available()
    assert not ok and "huggingface.co" in why


def test_mask2former_universal_path(tmp_path, coco3):
    model, proc = tiny_mask2former()
    model.save_pretrained(tmp_path / "m2f")
    proc.save_pretrained(tmp_path / "m2f")
    seg = TransformersSegmenter.from_dir("test/tiny-m2f", tmp_path / "m2f")
    rgb = coco3[2].rgb
    pred = seg.predict(rgb)
    assert pred.shape == rgb.shape[:2] and set(np.unique(pred).tolist()) <= THING_IDS | {0}
    assert seg.describe()["model_type"] == "mask2former"


# ---------------------------------------------------------------------------- mmseg backend
def _mmcv_ops_error() -> str | None:
    try:
        import mmcv.ops  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any failure means: no usable mmcv.ops
        return f"mmcv.ops does not import ({type(exc).__name__}): mmcv must be built with -std=c++20 (~22 min)"
    return None


def test_mmseg_guard():
    ok, why = segmenters.mmseg_available()
    if _mmcv_ops_error():
        assert not ok and "mmcv.ops" in why and "c++20" in why
        with pytest.raises(SegmenterError, match="mmseg backend unavailable"):
            segmenters.MMSegSegmenter()
    assert segmenters.resolve_backend("transformers") == "transformers"
    if not ok:
        assert segmenters.resolve_backend("auto") == "transformers"
    with pytest.raises(SegmenterError, match="unknown segmenter backend"):
        segmenters.resolve_backend("detectron")


@pytest.mark.needs_mmcv  # skipped by conftest while mmcv.ops does not import
def test_mmseg_forward(tmp_path, coco3):  # pragma: no cover - needs a compiled mmcv
    import torch
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    classes = LABELS
    cfg = Config(dict(
        model=dict(type="EncoderDecoder",
                   data_preprocessor=dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53],
                                          std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0, seg_pad_val=255),
                   backbone=dict(type="MixVisionTransformer", in_channels=3, embed_dims=8, num_stages=2,
                                 num_layers=[1, 1], num_heads=[1, 1], patch_sizes=[7, 3], sr_ratios=[4, 2],
                                 out_indices=(0, 1)),
                   decode_head=dict(type="SegformerHead", in_channels=[8, 16], in_index=[0, 1], channels=16,
                                    num_classes=len(classes), align_corners=False,
                                    loss_decode=dict(type="CrossEntropyLoss")),
                   test_cfg=dict(mode="whole")),
        test_pipeline=[dict(type="LoadImageFromNDArray"), dict(type="Resize", scale=(128, 128), keep_ratio=True),
                       dict(type="PackSegInputs")],
    ))
    cfg_path = tmp_path / "tiny.py"
    cfg.dump(str(cfg_path))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    ckpt = tmp_path / "tiny.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {"dataset_meta": {"classes": classes}}}, ckpt)
    seg = segmenters.MMSegSegmenter(str(cfg_path), str(ckpt), "cpu")
    pred = seg.predict(coco3[0].rgb)
    assert pred.shape == coco3[0].rgb.shape[:2] and set(np.unique(pred).tolist()) <= THING_IDS | {0}
    assert seg.describe()["backend"] == "mmseg"


# ---------------------------------------------------------------------------- the set metric
class _Oracle:
    """A fake segmenter returning a given map per image (known answers)."""

    backend = "fake"

    def __init__(self, maps):
        self.maps = maps

    def predict(self, rgb):
        return self.maps[rgb.shape]

    def describe(self):
        return {"backend": "fake", "model": "oracle", "label_mapping": "identity"}


def test_compute_set_known_answer(monkeypatch):
    gt = np.zeros((4, 6), np.uint8)
    gt[:2, :3] = 1  # person
    pred = gt.copy()
    pred[0, :] = 1  # 3 background pixels predicted as person
    metric = MIoU()
    monkeypatch.setattr(segmenters, "build_segmenter", lambda *a, **k: _Oracle({(4, 6, 3): pred}))
    labelled = Sample("a", np.zeros((4, 6, 3), np.uint8), "x", label_map=gt)
    unlabelled = Sample("b", np.zeros((5, 5, 3), np.uint8), "y")
    res = metric.compute_set([(labelled, labelled.rgb), (unlabelled, unlabelled.rgb)], "cpu")
    # person: I 6, U 9 ; background: I 15, U 18
    assert res["value"] == pytest.approx(100 * (6 / 9 + 15 / 18) / 2)
    assert res["n_images"] == 1 and res["extra"]["n_skipped_no_label_map"] == 1 and res["extra"]["skipped"] == ["b"]
    assert res["extra"]["segmenter"]["model"] == "oracle" and res["extra"]["ignore_index"] == 255
    with pytest.raises(ValueError, match="none of the 1 images has a ground-truth label map"):
        metric.compute_set([(unlabelled, unlabelled.rgb)], "cpu")


def test_registered_spec(monkeypatch, tmp_path):
    spec = registry.get("metric", "miou").obj
    assert spec.kind == "per_set" and spec.higher_better
    monkeypatch.delenv("BENCH_MIOU_BACKEND", raising=False)
    monkeypatch.delenv("BENCH_MMSEG_CONFIG", raising=False)
    assert spec.version().startswith("miou-1:transformers:facebook/mask2former-swin-large-coco-panoptic:")
    monkeypatch.setenv("BENCH_MIOU_MODEL_DIR", str(tmp_path))
    assert spec.weights == ()
    monkeypatch.setenv("BENCH_MIOU_BACKEND", "mmseg")  # forced: its checkpoint comes from bench.weights
    assert spec.weights == (segmenters.MMSEG_WEIGHT_ID,)
    assert spec.version().startswith("miou-1:mmseg:")
    _, checkpoint, how = segmenters.mmseg_files()
    assert checkpoint is not None and checkpoint.name.endswith("coco-stuff164k_20210709_155402-3cbca14d.pth")
    assert "bench.weights" in how
    monkeypatch.setenv("BENCH_MIOU_BACKEND", "detectron")
    with pytest.raises(SegmenterError, match="BENCH_MIOU_BACKEND"):
        spec.version()


def miou_by_hand(pairs) -> float:
    """100 × mean over classes of intersection/union summed over the set (255 = ignored), with numpy."""
    inter, union = np.zeros(256), np.zeros(256)
    for pred, gt in pairs:
        valid = gt != 255
        g, p = gt[valid].astype(np.int64), pred[valid].astype(np.int64)
        hit = np.bincount(g[g == p], minlength=256)
        inter += hit
        union += np.bincount(g, minlength=256) + np.bincount(p, minlength=256) - hit
    present = union > 0
    present[255] = False
    return float(100 * (inter[present] / union[present]).mean())


def test_end_to_end_run(tmp_path, monkeypatch, tiny_seg, coco_mini_dir, coco3):
    import pandas as pd
    from PIL import Image

    from bench.runner import Experiment, run

    built = []

    def fake_build(backend="auto", device="cpu", *args, **kwargs):
        built.append(device)
        return tiny_seg

    monkeypatch.setattr(segmenters, "build_segmenter", fake_build)
    monkeypatch.setenv("BENCH_MIOU_MODEL_DIR", str(tmp_path / "unused"))  # no bench.weights check for miou
    spec = registry.get("metric", "miou").obj
    monkeypatch.setattr(spec, "_segmenters", {})
    out = tmp_path / "run"
    res = run(Experiment(dataset="coco-mini", data_dir=str(coco_mini_dir), codecs=["jpeg"], points=[50],
                         metrics=["psnr", "miou"], out=str(out), limit=3))
    assert not [p for p in res.problems if not p.startswith("note:")], res.problems
    per_set = pd.read_parquet(out / "per_set.parquet")
    row = per_set[(per_set.metric == "miou")]
    assert len(row) == 1 and row.iloc[0]["aggregate"] == "set" and row.iloc[0]["n_images"] == 3
    # the segmenter's maps of the stored reconstructions against the ground-truth label maps, by hand
    recon_dir = out / "recon" / "coco-mini" / "jpeg" / "50" / "s0"
    maps = [(tiny_seg.predict(np.asarray(Image.open(recon_dir / f"{s.id}.png"))), s.label_map) for s in coco3]
    assert row.iloc[0]["value"] == pytest.approx(miou_by_hand(maps), rel=1e-9)
    assert 0 < row.iloc[0]["value"] < 100
    import json

    extra = json.loads(row.iloc[0]["extra"])
    assert extra["segmenter"]["model"] == "test/tiny-segformer" and extra["segmenter"]["backend"] == "transformers"
    assert set(per_set[per_set.metric == "psnr"]["aggregate"]) == {"mean"}
    assert built == ["cpu"]
    # resume: nothing to redo, the segmenter is not rebuilt nor rerun
    res2 = run(Experiment(dataset="coco-mini", data_dir=str(coco_mini_dir), codecs=["jpeg"], points=[50],
                          metrics=["psnr", "miou"], out=str(out), limit=3))
    assert res2.units_coded == 0 and built == ["cpu"]
    assert len(pd.read_parquet(out / "per_set.parquet").query("metric == 'miou'")) == 1


# ---------------------------------------------------------------------------- PerCo's protocol: miou_cocostuff
class _StuffOracle:
    backend = "vit-adapter"

    def __init__(self, maps):
        self.maps = maps

    def predict_trainid(self, rgb):
        return self.maps[rgb.shape]

    def describe(self):
        return {"backend": "fake", "model": "oracle-171"}


def test_cocostuff_known_answer(monkeypatch):
    from bench.data.prepare import STUFF_SPACE

    gt = np.full((4, 4), 170, np.uint8)  # wood (the last class) everywhere ...
    gt[:2, :2] = 0  # ... a person top left ...
    gt[3, :] = 255  # ... and an unlabeled bottom row
    pred = np.full((4, 4), 170, np.uint8)
    pred[:2, :1] = 0  # half of the person found
    pred[3, :] = 80  # "banner" predicted on unlabeled pixels: ignored, so not a present class
    pred[2, 3] = 100  # one wood pixel called class 100
    metric = MIoU(name="miou_cocostuff", backend="vit-adapter", label_space=STUFF_SPACE)
    monkeypatch.setattr(segmenters, "build_segmenter", lambda *a, **k: _StuffOracle({(4, 4, 3): pred}))
    s = Sample("a", np.zeros((4, 4, 3), np.uint8), "x", label_maps={STUFF_SPACE: gt})
    thing_only = Sample("b", np.zeros((4, 4, 3), np.uint8), "y", label_map=np.zeros((4, 4), np.uint8))
    res = metric.compute_set([(s, s.rgb), (thing_only, thing_only.rgb)], "cpu")
    # valid pixels: rows 0-2. person: target 4, pred 2 -> I 2, U 4 ; wood: target 8, pred 9 (2 of them on the
    # person) -> I 7, U 10 ; class 100: I 0, U 1 ; banner (80) only on ignored pixels: absent
    assert res["extra"]["n_classes"] == 3
    assert res["value"] == pytest.approx(100 * (2 / 4 + 7 / 10 + 0 / 1) / 3)
    assert res["value"] == pytest.approx(miou_by_hand([(pred, gt)]))
    assert res["n_images"] == 1 and res["extra"]["skipped"] == ["b"] and res["extra"]["label_space"] == STUFF_SPACE
    assert "0 person" in res["extra"]["iou_per_class"] and "170 wood" in res["extra"]["iou_per_class"]
    assert res["extra"]["protocol"].startswith("NOT PerCo")
    with pytest.raises(ValueError, match="coco2017-val512"):
        metric.compute_set([(thing_only, thing_only.rgb)], "cpu")
    with pytest.raises(ValueError, match="needs the vit-adapter backend"):
        MIoU(label_space=STUFF_SPACE)
    assert registry.get("metric", "miou_cocostuff").obj.label_space == STUFF_SPACE


@pytest.mark.parametrize("model, head", [("tiny", "upernet"), ("tiny-mask2former", "mask2former")])
def test_cocostuff_end_to_end_on_prepared_coco(tmp_path, monkeypatch, coco_mini_dir, model, head):
    """Real coco-mini JPEGs + instance annotations and hand-made COCO-Stuff maps through `bench datasets
    prepare` (coco2017-val512: 512x512), then a run with miou_cocostuff on a tiny random ViT-Adapter of
    each head; the stored value equals the same segmenter's IoU computed by hand."""
    import json

    import pandas as pd
    from PIL import Image
    from test_datasets_prepare import card_for, coco_index, png_bytes, write_zip

    from bench.data import prepare as prep
    from bench.runner import Experiment, run

    ids = ["000000000139", "000000000802"]
    files = {}
    for i in ids:
        with Image.open(coco_mini_dir / "images" / f"{i}.jpg") as im:
            files[f"{i}.jpg"] = im.size
    z = write_zip(tmp_path / "val2017.zip", {f"val2017/{i}.jpg": (coco_mini_dir / "images" / f"{i}.jpg").read_bytes()
                                             for i in ids})
    caps = coco_index(files)
    caps["annotations"] = [{"id": k, "image_id": int(i), "caption": "a photo"} for k, i in enumerate(ids)]
    inst = coco_index(files)
    ann = write_zip(tmp_path / "annotations_trainval2017.zip",
                    {"annotations/captions_val2017.json": json.dumps(caps).encode(),
                     "annotations/instances_val2017.json": json.dumps(inst).encode()})
    rng = np.random.default_rng(0)
    stuff = write_zip(tmp_path / "stuffthingmaps_trainval2017.zip", {
        f"val2017/{i}.png": png_bytes(rng.choice([0, 2, 91, 105, 181, 255], (h, w)).astype(np.uint8))
        for i, (w, h) in zip(ids, files.values())})
    card = card_for("coco2017-val512", {z.name: z, ann.name: ann, stuff.name: stuff}, tmp_path,
                    expect={"count": 2, "size": [512, 512]})
    data = tmp_path / "prepared"
    assert prep.prepare(card, data, [z, ann, stuff], fetch=False).complete
    monkeypatch.setenv("BENCH_VIT_ADAPTER_MODEL", model)
    monkeypatch.setenv("BENCH_VIT_ADAPTER_WEIGHTS", "random")
    spec = registry.get("metric", "miou_cocostuff").obj
    monkeypatch.setattr(spec, "_segmenters", {})
    out = tmp_path / "run"
    res = run(Experiment(dataset=card.path, data_dir=str(data), codecs=["jpeg"], points=[50],
                         metrics=["miou_cocostuff"], out=str(out)))
    assert not [p for p in res.problems if not p.startswith("note:")], res.problems
    row = pd.read_parquet(out / "per_set.parquet").query("metric == 'miou_cocostuff'")
    assert len(row) == 1 and row.iloc[0]["n_images"] == 2
    extra = json.loads(row.iloc[0]["extra"])
    assert extra["segmenter"]["model"] == model and extra["segmenter"]["weights"] == "random-seed0"
    assert extra["segmenter"]["head"] == head and f"{model}+random-seed0" in spec.version()
    assert extra["protocol"].startswith("PerCo: 512")
    # by hand: the same segmenter on the stored reconstructions against the prepared COCO-Stuff maps
    from bench.metrics.vit_adapter.segmenter import ViTAdapterSegmenter

    seg = ViTAdapterSegmenter(model, "random")
    recon_dir = next((out / "recon").rglob("s0"))
    pairs = [(seg.predict_trainid(np.asarray(Image.open(recon_dir / f"{i}.png"))),
              np.asarray(Image.open(data / "labels" / prep.STUFF_SPACE / f"{i}.png"))) for i in ids]
    assert row.iloc[0]["value"] == pytest.approx(miou_by_hand(pairs), rel=1e-9)


def test_miou_things_with_vit_adapter_backend_on_coco_mini(tmp_path, monkeypatch, coco_mini_dir):
    """`bench run --dataset coco-mini --metrics miou` with BENCH_MIOU_BACKEND=vit-adapter (tiny, random)."""
    import json

    import pandas as pd

    from bench.runner import Experiment, run

    monkeypatch.setenv("BENCH_MIOU_BACKEND", "vit-adapter")
    monkeypatch.setenv("BENCH_VIT_ADAPTER_MODEL", "tiny")
    monkeypatch.setenv("BENCH_VIT_ADAPTER_WEIGHTS", "random")
    spec = registry.get("metric", "miou").obj
    monkeypatch.setattr(spec, "_segmenters", {})
    out = tmp_path / "run"
    res = run(Experiment(dataset="coco-mini", data_dir=str(coco_mini_dir), codecs=["jpeg"], points=[50],
                         metrics=["miou"], out=str(out), limit=2))
    assert not [p for p in res.problems if not p.startswith("note:")], res.problems
    row = pd.read_parquet(out / "per_set.parquet").query("metric == 'miou'")
    assert len(row) == 1 and row.iloc[0]["n_images"] == 2 and 0 <= row.iloc[0]["value"] <= 100
    extra = json.loads(row.iloc[0]["extra"])
    assert extra["segmenter"]["backend"] == "vit-adapter"
    assert extra["segmenter"]["label_mapping"]["things_matched"] == 80
    assert "vit-adapter:tiny+random-seed0" in spec.version()
