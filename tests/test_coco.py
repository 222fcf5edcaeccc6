"""COCO loader: real coco-mini images, captions and instance-derived label maps."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import cards
from bench.cards import Card
from bench.data.coco import BACKGROUND, COCO_THINGS, CocoLoader
from bench.data.images import ImageError
from bench.data.loaders import DatasetError, open_dataset

THING_IDS = {cid for cid, _ in COCO_THINGS}


@pytest.fixture(scope="module")
def loader(coco_mini_dir):
    ld = open_dataset(cards.get("dataset", "coco-mini"), coco_mini_dir)
    ld.check()
    return ld


@pytest.fixture(scope="module")
def samples(loader):
    return {it.id: loader.load(it) for it in loader.items()}


def test_items_and_card(loader):
    items = loader.items()
    assert len(items) == 50 and len({it.id for it in items}) == 50
    assert items[0].id == "000000000139" and items[0].url == "http://images.cocodataset.org/val2017/000000000139.jpg"
    assert all(it.pixel_sha256 and len(it.pixel_sha256) == 64 for it in items)


def test_captions_and_label_maps(samples):
    for sid, s in samples.items():
        assert len(s.captions) == 5 and all(isinstance(c, str) and c == c.strip() and c for c in s.captions), sid
        if sid in ("000000142238", "000000439180"):  # no instance record in the subset
            assert s.label_map is None
            continue
        assert s.label_map is not None, sid
        assert s.label_map.shape == s.rgb.shape[:2] and s.label_map.dtype == np.uint8
        assert set(np.unique(s.label_map).tolist()) <= THING_IDS | {BACKGROUND}
    # captions in annotation-id order, verbatim from captions_val2017.json
    assert samples["000000000139"].captions[0] == "A woman stands in the dining area at the table."


def test_known_category_pixels(samples):
    lm = samples["000000000139"].label_map  # living room: 2 tvs (13245 + 5833 px), 2 persons, chairs, ...
    tv = int((lm == 72).sum())
    assert abs(tv - (13245 + 5833)) / (13245 + 5833) < 0.03
    ys, xs = np.nonzero(lm == 72)
    assert xs.min() >= 7 and xs.max() <= 640 and ys.min() >= 167  # inside the two tv boxes
    assert (lm == 1).sum() > 2500 and (lm == 67).sum() > 500  # person, dining table
    assert {1, 62, 64, 67, 72, 78, 82, 84, 85, 86} <= set(np.unique(lm).tolist())
    zebra = samples["000000244592"].label_map  # 3 zebras, overlapping: <= sum of areas
    assert 0.8 * 56298 < (zebra == 24).sum() <= 56298 * 1.02
    assert set(np.unique(zebra).tolist()) == {0, 24}
    crowd = samples["000000217285"].label_map  # a person crowd region (uncompressed RLE, area 104752)
    assert (crowd == 1).sum() >= 104752 * 0.98


def _mini_coco(root: Path, with_instances: bool = True) -> Card:
    """A two-image COCO-format dataset with hand-made annotations."""
    (root / "imgs").mkdir(parents=True)
    for i, name in ((1, "a.png"), (2, "b.png")):
        Image.fromarray(np.full((40, 50, 3), 30 * i, np.uint8)).save(root / "imgs" / name)
    images = [{"id": 1, "file_name": "a.png", "height": 40, "width": 50},
              {"id": 2, "file_name": "b.png", "height": 40, "width": 50}]
    caps = {"images": images, "annotations": [
        {"id": 9, "image_id": 1, "caption": " second by id "}, {"id": 3, "image_id": 1, "caption": "first"},
        {"id": 4, "image_id": 2, "caption": "only"}]}
    (root / "caps.json").write_text(json.dumps(caps))
    body = {"name": "tiny", "loader": "coco", "images_dir": "imgs", "captions": "caps.json", "count": 2}
    if with_instances:
        small = [[20, 10, 30, 10, 30, 20, 20, 20]]  # 10x10 square, listed first
        big = [[5, 5, 45, 5, 45, 35, 5, 35]]  # 40x30 rectangle around it
        inst = {"images": images, "categories": [], "annotations": [
            {"id": 1, "image_id": 1, "category_id": 18, "segmentation": small, "area": 100.0, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 62, "segmentation": big, "area": 1200.0, "iscrowd": 0}]}
        (root / "inst.json").write_text(json.dumps(inst))
        body["instances"] = "inst.json"
    return Card("dataset", "tiny", body, str(root / "tiny.yaml"))


def test_hand_made_annotations(tmp_path):
    ld = CocoLoader(_mini_coco(tmp_path), tmp_path)
    ld.check()
    a, b = (ld.load(it) for it in ld.items())
    assert [it.id for it in ld.items()] == ["a", "b"]
    assert a.captions == ["first", "second by id"] and b.captions == ["only"]
    lm = a.label_map
    assert lm.shape == (40, 50)
    assert (lm[12:19, 22:29] == 18).all()  # the small square stays on top of the larger rectangle
    assert (lm[7:34, 7:19] == 62).all() and (lm[7:34, 32:44] == 62).all()
    assert (lm[:4] == 0).all() and (lm[:, :4] == 0).all() and (lm[:, 46:] == 0).all()
    assert 90 <= (lm == 18).sum() <= 130 and 1000 <= (lm == 62).sum() <= 1250
    assert b.label_map is not None and not b.label_map.any()  # a record without annotations: all background


def test_no_instances_file_means_no_label_map(tmp_path):
    ld = CocoLoader(_mini_coco(tmp_path, with_instances=False), tmp_path)
    assert all(ld.load(it).label_map is None for it in ld.items())


def test_size_mismatch_and_hash_guard(tmp_path):
    card = _mini_coco(tmp_path)
    Image.fromarray(np.zeros((41, 50, 3), np.uint8)).save(tmp_path / "imgs" / "a.png")
    ld = CocoLoader(card, tmp_path)
    with pytest.raises(ImageError, match="differs from its COCO record"):
        ld.load(ld.items()[0])
    body = dict(card.body, annotation_sha256={"caps.json": "0" * 64})
    with pytest.raises(DatasetError, match="differs from the card"):
        CocoLoader(Card("dataset", "tiny", body), tmp_path).load(ld.items()[1])


def test_missing_files_message(tmp_path):
    ld = open_dataset(cards.get("dataset", "coco-val2017"), tmp_path)
    with pytest.raises(DatasetError) as err:
        ld.check()
    msg = str(err.value)
    assert "annotations/captions_val2017.json" in msg and "annotations_trainval2017.zip" in msg
    assert "BENCH_COCO_VAL2017_DIR" in msg
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "captions_val2017.json").write_text(json.dumps(
        {"images": [{"id": 139, "file_name": "000000000139.jpg", "height": 426, "width": 640,
                     "coco_url": "http://images.cocodataset.org/val2017/000000000139.jpg"}], "annotations": []}))
    (tmp_path / "annotations" / "instances_val2017.json").write_text('{"images": [], "annotations": []}')
    with pytest.raises(DatasetError) as err:
        ld.check()
    assert "000000000139.jpg" in str(err.value) and "http://images.cocodataset.org/val2017/" in str(err.value)
