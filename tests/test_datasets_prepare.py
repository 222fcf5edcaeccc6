"""`bench datasets prepare`: official archive layouts built here (tiny), the cards' real
protocols applied to them, manifests, resume, downloads, and the real Kodak / COCO val2017
subset from ../shared through the same path."""
from __future__ import annotations

import copy
import hashlib
import http.server
import io
import json
import os
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from bench import cards
from bench.cards import Card
from bench.cli import app
from bench.data import prepare as prep
from bench.data.coco import LABEL_SPACE
from bench.data.download import Archive, DownloadError, download
from bench.data.images import ImageError
from bench.data.loaders import DatasetError, open_dataset
from bench.hashing import sha256_file

runner = CliRunner()


# ---------------------------------------------------------------------------- builders
def image(w: int, h: int, seed: int) -> np.ndarray:
    """A smooth RGB test image (compresses well) with some per-seed texture."""
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y + seed * 37) % 256], -1)
    return (base + rng.integers(0, 8, (h, w, 3))).clip(0, 255).astype(np.uint8)


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def card_for(name: str, archives: dict[str, Path], tmp: Path, **prepare_overrides) -> Card:
    """The real card ``name`` with each archive's sha256/size set to the test archive's
    (so verification runs) and ``prepare_overrides`` (e.g. a smaller expected count)."""
    body = copy.deepcopy(cards.get("dataset", name).body)
    for a in body["prepare"].get("archives", []):
        if a["file"] in archives:
            a["sha256"], a["size"] = sha256_file(archives[a["file"]]), archives[a["file"]].stat().st_size
    body["prepare"].update(prepare_overrides)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    return cards.load_file("dataset", path)


def load_all(card: Card, data_dir: Path):
    loader = open_dataset(card, data_dir)
    loader.check()
    return loader, {it.id: loader.load(it) for it in loader.items()}


def torchvision_like(arr: np.ndarray, n: int, crop: int) -> np.ndarray:
    """Resize(n, bicubic) + CenterCrop(crop) written out by hand, for comparison."""
    im = Image.fromarray(arr)
    w, h = im.size
    size = (n, int(n * h / w)) if w <= h else (int(n * w / h), n)
    im = im.resize(size, Image.Resampling.BICUBIC, reducing_gap=None)
    left, top = int(round((size[0] - crop) / 2)), int(round((size[1] - crop) / 2))
    return np.asarray(im.crop((left, top, left + crop, top + crop)))


# ---------------------------------------------------------------------------- DIV2K
def test_div2k_protocol_manifest_and_loader(tmp_path):
    srcs = {f"DIV2K_valid_HR/{i:04d}.png": image(w, h, i) for i, (w, h) in
            zip((801, 802, 803), ((1000, 800), (800, 1020), (900, 900)))}
    z = write_zip(tmp_path / "DIV2K_valid_HR.zip", {k: png_bytes(v) for k, v in srcs.items()})
    card = card_for("div2k", {"DIV2K_valid_HR.zip": z}, tmp_path, expect={"count": 3, "size": [768, 768]})
    out = tmp_path / "prepared"
    res = prep.prepare(card, out, [z], fetch=False)
    assert res.complete and res.count == 3 and res.written == 3, res.problems
    _, samples = load_all(card, out)
    assert sorted(samples) == ["0801", "0802", "0803"]
    for name, arr in srcs.items():
        s = samples[Path(name).stem]
        assert s.rgb.shape == (768, 768, 3)
        assert np.array_equal(s.rgb, torchvision_like(arr, 768, 768)), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["manifest_sha256"] == res.manifest_sha256 == prep.manifest_digest(manifest)
    assert [e["source"] for e in manifest["images"]] == sorted(srcs)
    assert manifest["images"][0]["orig_size"] == [1000, 800]
    # the same pixels from the extracted folder give the same manifest hash
    ext = tmp_path / "extracted"
    zipfile.ZipFile(z).extractall(ext)
    res2 = prep.prepare(card, tmp_path / "prepared2", [ext], fetch=False)
    assert res2.manifest_sha256 == res.manifest_sha256
    # a card that records another manifest hash refuses this copy
    body = dict(card.body, manifest_sha256="0" * 64)
    with pytest.raises(DatasetError, match="not the same pixels"):
        open_dataset(Card("dataset", "div2k", body), out).check()


def test_archive_with_wrong_sha256_is_refused(tmp_path):
    z = write_zip(tmp_path / "DIV2K_valid_HR.zip", {"DIV2K_valid_HR/0801.png": png_bytes(image(800, 800, 1))})
    card = cards.get("dataset", "div2k")  # the real digest: this archive is not the official one
    with pytest.raises(DatasetError, match="DIV2K_valid_HR.zip.*the card says"):
        prep.prepare(card, tmp_path / "out", [z], fetch=False)


# ---------------------------------------------------------------------------- Tecnick, ArtBench, CLIC
def test_tecnick_600_set_resized_to_512(tmp_path):
    members = {f"testimages/RGB/RGB_R02_0600x0600/RGB_R02_0600x0600_{i:03d}.png": png_bytes(image(600, 600, i))
               for i in (1, 2)}
    members["testimages/RGB/RGB_OR_1200x1200/RGB_OR_1200x1200_001.png"] = png_bytes(image(64, 64, 9))  # not used
    z = write_zip(tmp_path / "testimages.zip", members)
    card = card_for("tecnick", {"testimages.zip": z}, tmp_path, expect={"count": 2, "size": [512, 512]})
    res = prep.prepare(card, tmp_path / "out", [tmp_path], fetch=False)
    assert res.complete and res.count == 2, res.problems
    _, samples = load_all(card, tmp_path / "out")
    want = np.asarray(Image.fromarray(image(600, 600, 1)).resize((512, 512), Image.Resampling.BICUBIC, reducing_gap=None))
    assert np.array_equal(samples["RGB_R02_0600x0600_001"].rgb, want)


def test_artbench_seeded_choice_from_train_and_test(tmp_path):
    root = "artbench-10-imagefolder-split"
    names = [f"{root}/train/surrealism/artist-{i}_work.jpg" for i in range(6)]
    names += [f"{root}/test/surrealism/artist-t{i}_work.jpg" for i in range(3)]
    members = {n: jpeg_bytes(image(256, 256, k)) for k, n in enumerate(names)}
    members[f"{root}/train/baroque/other_work.jpg"] = jpeg_bytes(image(256, 256, 99))
    t = write_tar(tmp_path / "artbench-10-imagefolder-split.tar", members)
    select = {"rule": "random", "n": 4, "seed": 0}
    card = card_for("artbench-surrealism", {t.name: t}, tmp_path, select=select, expect={"count": 4, "size": [256, 256]})
    res = prep.prepare(card, tmp_path / "out", [t], fetch=False)
    assert res.complete, res.problems
    stems = [Path(n).stem for n in names]
    want = sorted(sorted(stems, key=lambda s: hashlib.sha256(f"0:{s}".encode()).hexdigest())[:4])
    _, samples = load_all(card, tmp_path / "out")
    assert sorted(samples) == want and "other_work" not in samples
    # another seed, another choice; the same seed on a second machine, the same one
    assert prep.select(stems, dict(select, seed=1)) != want and prep.select(stems, select) == want


def test_clic_professional_and_mobile_together(tmp_path):
    pro = write_zip(tmp_path / "CLIC2020Professional_test.zip", {"test/alpha.png": png_bytes(image(70, 50, 1))})
    mob = write_zip(tmp_path / "CLIC2020Mobile_test.zip", {"test/IMG_1.png": png_bytes(image(50, 70, 2)),
                                                           "test/IMG_2.png": png_bytes(image(40, 30, 3))})
    card = card_for("clic2020", {pro.name: pro, mob.name: mob}, tmp_path, expect={"count": 3})
    res = prep.prepare(card, tmp_path / "out", [tmp_path], fetch=False)
    assert res.complete, res.problems
    _, samples = load_all(card, tmp_path / "out")
    assert sorted(samples) == ["m_IMG_1", "m_IMG_2", "p_alpha"] and samples["p_alpha"].rgb.shape == (50, 70, 3)
    assert np.array_equal(samples["m_IMG_2"].rgb, image(40, 30, 3))  # full size, untouched


# ---------------------------------------------------------------------------- COCO
def coco_index(files: dict[str, tuple[int, int]], start_id: int = 1) -> dict:
    return {"images": [{"id": int(Path(f).stem.split("_")[-1]), "file_name": f, "width": w, "height": h}
                       for f, (w, h) in files.items()], "annotations": [], "categories": []}


def test_coco30k_selection_captions_and_256(tmp_path):
    files = {f"COCO_val2014_{i:012d}.jpg": (64 + 8 * i, 48 + 4 * i) for i in range(1, 7)}
    imgs = {f: image(w, h, k) for k, (f, (w, h)) in enumerate(files.items())}
    z = write_zip(tmp_path / "val2014.zip", {f"val2014/{f}": jpeg_bytes(a) for f, a in imgs.items()})
    caps = coco_index(files)
    caps["annotations"] = [{"id": 100 + k, "image_id": int(Path(f).stem[-12:]), "caption": f" cap {k} "}
                           for k, f in enumerate(files)] + [{"id": 1, "image_id": 1, "caption": "first"}]
    ann = write_zip(tmp_path / "annotations_trainval2014.zip",
                    {"annotations/captions_val2014.json": json.dumps(caps).encode()})
    card = card_for("coco30k", {z.name: z, ann.name: ann}, tmp_path, select={"rule": "random", "n": 4, "seed": 0},
                    expect={"count": 4, "size": [256, 256]})
    res = prep.prepare(card, tmp_path / "out", [tmp_path], fetch=False)
    assert res.complete, res.problems
    loader, samples = load_all(card, tmp_path / "out")
    assert "captions" in loader.provides and len(samples) == 4
    assert sorted(samples) == prep.select([Path(f).stem for f in files], {"rule": "random", "n": 4, "seed": 0})
    for sid, s in samples.items():
        assert s.rgb.shape == (256, 256, 3)
        with Image.open(io.BytesIO(jpeg_bytes(imgs[sid + ".jpg"]))) as im:
            decoded = np.asarray(im.convert("RGB"))
        assert np.array_equal(s.rgb, torchvision_like(decoded, 256, 256))
    listed = prep.prepare(prep.with_ids(card, ["2", "COCO_val2014_000000000005"], "test"), tmp_path / "ids",
                          [tmp_path], fetch=False)
    assert listed.complete and listed.count == 2
    assert [e["id"] for e in prep.read_manifest(tmp_path / "ids")["images"]] == [
        "COCO_val2014_000000000002", "COCO_val2014_000000000005"]
    want = {Path(f).stem: [f"cap {k}"] for k, f in enumerate(files)}
    want["COCO_val2014_000000000001"] = ["first", "cap 0"]  # ordered by annotation id, stripped
    assert {sid: s.captions for sid, s in samples.items()} == {sid: want[sid] for sid in samples}
    _, listed_samples = load_all(card, tmp_path / "ids")
    assert listed_samples["COCO_val2014_000000000002"].captions == ["cap 1"]


def stuff_png(h: int, w: int) -> bytes:
    raw = np.zeros((h, w), np.uint8)  # person (id 1 -> raw 0)
    raw[:, : w // 3] = 91  # id 92 (banner): the first stuff class
    raw[: h // 2, w // 3:] = 255  # unlabeled
    raw[-2:, -2:] = 11  # id 12: not a COCO-Stuff class -> ignore
    return png_bytes(raw)


def test_coco2017_val512_label_maps_stuff_and_things(tmp_path):
    files = {"000000000139.jpg": (640, 480), "000000000285.jpg": (480, 600)}
    z = write_zip(tmp_path / "val2017.zip", {f"val2017/{f}": jpeg_bytes(image(w, h, k))
                                             for k, (f, (w, h)) in enumerate(files.items())})
    caps = coco_index(files)
    caps["annotations"] = [{"id": 5, "image_id": 139, "caption": "a room"}, {"id": 6, "image_id": 285, "caption": "a bear"}]
    inst = coco_index(files)
    inst["annotations"] = [{"id": 1, "image_id": 139, "category_id": 62, "iscrowd": 0, "area": 40000.0,
                            "segmentation": [[100, 100, 300, 100, 300, 300, 100, 300]]}]
    ann = write_zip(tmp_path / "annotations_trainval2017.zip",
                    {"annotations/captions_val2017.json": json.dumps(caps).encode(),
                     "annotations/instances_val2017.json": json.dumps(inst).encode()})
    stuff = write_zip(tmp_path / "stuffthingmaps_trainval2017.zip",
                      {f"val2017/{Path(f).stem}.png": stuff_png(h, w) for f, (w, h) in files.items()})
    card = card_for("coco2017-val512", {z.name: z, ann.name: ann, stuff.name: stuff}, tmp_path,
                    expect={"count": 2, "size": [512, 512]})
    res = prep.prepare(card, tmp_path / "out", [z, ann, stuff], fetch=False)
    assert res.complete, res.problems
    loader, samples = load_all(card, tmp_path / "out")
    assert loader.provides == {"captions", "label_map"}
    s = samples["000000000139"]
    assert s.captions == ["a room"] and s.rgb.shape == (512, 512, 3)
    assert set(s.label_maps) == {prep.THINGS_SPACE, prep.STUFF_SPACE} and prep.THINGS_SPACE == LABEL_SPACE
    things, stuff_map = s.label_map, s.label_maps[prep.STUFF_SPACE]
    assert things.shape == stuff_map.shape == (512, 512)
    assert set(np.unique(things)) == {0, 62}  # the chair polygon, resized by NEAREST
    # 640x480 -> 682x512 (int(512*640/480)), crop left = round(170/2) = 85: the polygon x 100..300 -> 106..319
    cols = np.where((things == 62).any(0))[0]
    assert abs(cols[0] - (int(100 * 682 / 640) - 85)) <= 1 and abs(cols[-1] - (int(300 * 682 / 640) - 85)) <= 1
    assert set(np.unique(stuff_map)) == {0, 80, 255}  # person -> 0, banner (92) -> 80, unlabeled & id 12 -> 255
    assert samples["000000000285"].captions == ["a bear"]
    assert samples["000000000285"].label_maps[prep.THINGS_SPACE].max() == 0  # no instances: all background


def test_coco2017_cdc_size_rule_and_384(tmp_path):
    files = {"000000000001.jpg": (640, 600), "000000000002.jpg": (640, 480), "000000000003.jpg": (513, 513),
             "000000000004.jpg": (512, 640)}
    z = write_zip(tmp_path / "test2017.zip", {f"test2017/{f}": jpeg_bytes(image(w, h, k))
                                              for k, (f, (w, h)) in enumerate(files.items())})
    info = write_zip(tmp_path / "image_info_test2017.zip",
                     {"annotations/image_info_test2017.json": json.dumps(coco_index(files)).encode()})
    card = card_for("coco2017-cdc", {z.name: z, info.name: info}, tmp_path)  # expects 2695
    res = prep.prepare(card, tmp_path / "out", [tmp_path], fetch=False)
    assert not res.complete and res.count == 2 and "2695" in " ".join(res.problems)
    assert res.notes == [("of 4 images: 2 have width > 512 and height > 512; 3 have both >= ; 4 have more than "
                          "512x512 pixels")]
    loader = open_dataset(card, tmp_path / "out")
    assert loader.status()[0] == "partial"
    assert sorted(it.id for it in loader.items()) == ["000000000001", "000000000003"]
    assert all(loader.load(it).rgb.shape == (384, 384, 3) for it in loader.items())


# ---------------------------------------------------------------------------- resume, corruption
def test_interrupted_prepare_resumes_without_redoing(tmp_path, monkeypatch):
    srcs = {f"DIV2K_valid_HR/{i:04d}.png": png_bytes(image(770, 770, i)) for i in range(801, 806)}
    z = write_zip(tmp_path / "DIV2K_valid_HR.zip", srcs)
    card = card_for("div2k", {z.name: z}, tmp_path, expect={"count": 5, "size": [768, 768]})
    real, calls = prep._prepare_one, []

    def dies_on_third(job, *a, **k):
        calls.append(job.id)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job, *a, **k)

    monkeypatch.setattr(prep, "_prepare_one", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare(card, tmp_path / "out", [z], fetch=False)
    assert not (tmp_path / "out" / "manifest.json").exists()
    monkeypatch.setattr(prep, "_prepare_one", real)
    res = prep.prepare(card, tmp_path / "out", [z], fetch=False)
    assert (res.reused, res.written, res.complete) == (2, 3, True)
    again = prep.prepare(card, tmp_path / "out", [z], fetch=False)  # finished: nothing redone
    assert (again.reused, again.written) == (5, 0) and again.manifest_sha256 == res.manifest_sha256


def test_corrupt_source_and_prepared_files_are_named(tmp_path):
    good = png_bytes(image(800, 800, 1))
    z = write_zip(tmp_path / "DIV2K_valid_HR.zip", {"DIV2K_valid_HR/0801.png": good,
                                                    "DIV2K_valid_HR/0802.png": good[: len(good) // 2]})
    card = card_for("div2k", {z.name: z}, tmp_path, expect={"count": 2, "size": [768, 768]})
    res = prep.prepare(card, tmp_path / "out", [z], fetch=False)
    assert not res.complete and res.count == 1 and "0802.png" in res.problems[0]
    loader = open_dataset(card, tmp_path / "out")
    (item,) = loader.items()
    arr = np.array(Image.open(item.path))
    arr[0, 0] ^= 1
    Image.fromarray(arr).save(item.path)
    with pytest.raises(ImageError, match="0801.png"):
        loader.load(item)


# ---------------------------------------------------------------------------- downloads
class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with single-range support (like the COCO/ETH hosts)."""

    ranges: list[str] = []

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        path = Path(self.directory) / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        RangeHandler.ranges.append(rng or "")
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


@pytest.fixture()
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a, **k: RangeHandler(*a, directory=str(root), **k)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    RangeHandler.ranges = []
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_resumes_and_checks_sha256(tmp_path, server):
    root, base = server
    data = os.urandom(3 << 20)
    (root / "a.zip").write_bytes(data)
    arch = Archive("a.zip", f"{base}/a.zip", hashlib.sha256(data).hexdigest(), len(data))
    dest = tmp_path / "dl" / "a.zip"
    dest.parent.mkdir()
    dest.with_name("a.zip.part").write_bytes(data[: 1 << 20])  # an interrupted earlier download
    seen = []
    assert download(arch, dest, lambda d, t: seen.append((d, t))) == arch.sha256
    assert dest.read_bytes() == data and RangeHandler.ranges == [f"bytes={1 << 20}-"]
    assert seen[-1] == (len(data), len(data))
    bad = Archive("a.zip", f"{base}/a.zip", "0" * 64)
    with pytest.raises(DownloadError, match="sha256"):
        download(bad, tmp_path / "dl2" / "a.zip")
    assert not (tmp_path / "dl2" / "a.zip.part").exists() and not (tmp_path / "dl2" / "a.zip").exists()


def test_prepare_downloads_then_offline_message(tmp_path, server, capsys):
    root, base = server
    z = write_zip(root / "DIV2K_valid_HR.zip", {"DIV2K_valid_HR/0801.png": png_bytes(image(800, 780, 3))})
    body = copy.deepcopy(cards.get("dataset", "div2k").body)
    body["prepare"]["archives"][0].update(url=f"{base}/DIV2K_valid_HR.zip", sha256=None, size=None)
    body["prepare"]["expect"] = {"count": 1}
    card = Card("dataset", "div2k", body)
    res = prep.prepare(card, tmp_path / "out", fetch=True)
    assert res.complete and (tmp_path / "out" / "downloads" / "DIV2K_valid_HR.zip").is_file()
    assert f"its sha256 is {sha256_file(z)}" in capsys.readouterr().out  # unverified: digest printed
    offline = cards.get("dataset", "coco2017-val512").body | {}
    offline = copy.deepcopy(offline)
    for a in offline["prepare"]["archives"]:
        a["url"] = "http://127.0.0.1:9/" + a["file"]  # nothing listens: "offline"
    with pytest.raises(DatasetError) as exc:
        prep.prepare(Card("dataset", "coco2017-val512", offline), tmp_path / "coco", fetch=True)
    msg = str(exc.value)
    for f in ("val2017.zip", "annotations_trainval2017.zip", "stuffthingmaps_trainval2017.zip"):
        assert f in msg
    assert str(tmp_path / "coco" / "downloads") in msg and "--from" in msg
    assert "4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05" in msg


# ---------------------------------------------------------------------------- real data from ../shared
def test_kodak_real_files_through_prepare(kodak_dir, tmp_path):
    card = cards.get("dataset", "kodak")
    res = prep.prepare(card, tmp_path / "kodak", [kodak_dir], fetch=False)
    assert res.complete and res.count == 24
    assert res.manifest_sha256 == card.get("manifest_sha256")  # the hash the card publishes
    loader = open_dataset(card, tmp_path / "kodak")  # the card's own (files) loader reads the prepared folder
    loader.check()
    assert loader.load(loader.items()[0]).sha256 == card.get("images")[0]["pixel_sha256"]


def test_coco_val2017_subset_real_through_coco_path(coco_mini_dir, tmp_path):
    """The 50 real val2017 images + official captions/instances, laid out as the official
    archives extract, prepared with coco2017-val512's protocol (no COCO-Stuff maps here)."""
    root = tmp_path / "coco"
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    for p in (coco_mini_dir / "images").glob("*.jpg"):
        (root / "val2017" / p.name).symlink_to(p)
    (root / "annotations/captions_val2017.json").symlink_to(coco_mini_dir / "captions_val2017_subset.json")
    (root / "annotations/instances_val2017.json").symlink_to(coco_mini_dir / "instances_val2017_subset.json")
    body = copy.deepcopy(cards.get("dataset", "coco2017-val512").body)
    del body["prepare"]["stuff"]
    body["prepare"]["archives"] = [a for a in body["prepare"]["archives"] if "stuff" not in a["file"]]
    body["prepare"]["expect"] = {"count": 50, "size": [512, 512]}
    card = Card("dataset", "coco2017-val512", body)
    res = prep.prepare(card, tmp_path / "out", [root], fetch=False)
    assert res.complete and res.count == 50, res.problems
    _, samples = load_all(card, tmp_path / "out")
    mini = open_dataset(cards.get("dataset", "coco-mini"), coco_mini_dir)
    for it in mini.items()[:5]:
        ref = mini.load(it)
        s = samples[it.id]
        assert s.captions == ref.captions and len(s.captions) >= 5
        assert np.array_equal(s.rgb, torchvision_like(ref.rgb, 512, 512))
        if ref.label_map is not None:
            lm = Image.fromarray(ref.label_map)
            w, h = lm.size
            size = (512, int(512 * h / w)) if w <= h else (int(512 * w / h), 512)
            lm = lm.resize(size, Image.Resampling.NEAREST, reducing_gap=None)
            left, top = int(round((size[0] - 512) / 2)), int(round((size[1] - 512) / 2))
            assert np.array_equal(s.label_map, np.asarray(lm.crop((left, top, left + 512, top + 512))))
    assert sum(s.label_map is not None for s in samples.values()) == 48  # two images have no instance record


# ---------------------------------------------------------------------------- CLI and a run on a prepared set
def test_cli_prepare_list_and_run(tmp_path, monkeypatch):
    srcs = {f"DIV2K_valid_HR/{i:04d}.png": png_bytes(image(770, 800, i)) for i in (801, 802)}
    z = write_zip(tmp_path / "DIV2K_valid_HR.zip", srcs)
    card = card_for("div2k", {z.name: z}, tmp_path, expect={"count": 2, "size": [768, 768]})
    out = tmp_path / "prepared"
    r = runner.invoke(app, ["datasets", "prepare", card.path, "--from", str(z), "--data-dir", str(out), "--no-download"])
    assert r.exit_code == 0, r.output
    digest = json.loads((out / "manifest.json").read_text())["manifest_sha256"]
    assert f"manifest sha256: {digest}" in r.stdout and "2 images" in r.stdout
    r = runner.invoke(app, ["datasets", "check", card.path, "--data-dir", str(out)])
    assert r.exit_code == 0 and "2 of 2 images OK" in r.stdout and digest in r.stdout
    monkeypatch.setenv("BENCH_DIV2K_DIR", str(out))
    r = runner.invoke(app, ["datasets", "list"])
    row = next(line for line in r.stdout.splitlines() if line.startswith("│ div2k"))
    assert "prepared" in row
    r = runner.invoke(app, ["datasets", "prepare", "tecnick", "--data-dir", str(tmp_path / "t"), "--no-download"])
    assert r.exit_code == 1 and "testimages.zip" in r.output and "--from" in r.output
    r = runner.invoke(app, ["run", "--dataset", "div2k", "--codec", "jpeg", "--points", "50", "--metrics", "psnr",
                            "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    import pandas as pd

    rows = pd.read_parquet(next((tmp_path / "run").rglob("per_image*.parquet")))
    psnr = rows[rows["metric"] == "psnr"]
    assert sorted(psnr["image_id"]) == ["0801", "0802"] and (psnr["value"] > 20).all()
    assert (psnr["dataset"] == "div2k").all()


PAPER_COUNTS = {"coco30k": 30000, "coco2017-cdc": 2695, "tecnick": 100, "div2k": 100, "artbench-surrealism": 1800,
                "coco2017-val512": 5000, "tecnick-1200": 100, "clic2020": 428, "clic2020-valid": 102, "kodak": 24}


@pytest.mark.parametrize("name", sorted(PAPER_COUNTS))
def test_cards_state_sources_digests_and_counts(name):
    card = cards.get("dataset", name)
    spec = card.get("prepare")
    assert spec["expect"]["count"] == PAPER_COUNTS[name]
    for a in prep.card_archives(card):
        assert a.url and a.url.startswith(("http://", "https://")), a
        assert a.sha256 is None or (len(a.sha256) == 64 and int(a.sha256, 16) >= 0), a
        if a.sha256:
            assert a.size and any(a.file in str(e) for e in spec["archives"])
    for op in card.get("transform") or []:
        assert op["op"] in ("resize", "resize_shorter", "center_crop") and op.get("filter", "bicubic") in prep.FILTERS
    for key in ("source", "license", "protocol"):
        assert card.get(key), f"{name}: no {key}"
    assert "manifest_sha256" in card.body  # recorded, or null with the reason beside it


def test_glob_matching_nothing_names_the_archive(tmp_path):
    z = write_zip(tmp_path / "testimages.zip", {"other/x.png": png_bytes(image(8, 8, 1)), "__MACOSX/._x.png": b"junk"})
    card = card_for("tecnick", {"testimages.zip": z}, tmp_path)
    with pytest.raises(DatasetError, match=r"no file in .*testimages.zip matches .*RGB_R02_0600x0600.*other/x.png"):
        prep.prepare(card, tmp_path / "out", [z], fetch=False)


def test_run_on_prepared_set_reports_a_corrupt_image_and_goes_on(tmp_path, monkeypatch):
    from bench.runner import Experiment, run

    srcs = {f"DIV2K_valid_HR/{i:04d}.png": png_bytes(image(770, 780, i)) for i in (801, 802, 803)}
    z = write_zip(tmp_path / "DIV2K_valid_HR.zip", srcs)
    card = card_for("div2k", {z.name: z}, tmp_path, expect={"count": 3, "size": [768, 768]})
    out = tmp_path / "prepared"
    assert prep.prepare(card, out, [z], fetch=False).complete
    (out / "images" / "0802.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    res = run(Experiment(dataset=card.path, data_dir=str(out), codecs=["jpeg"], points=[50], metrics=["psnr"],
                         out=str(tmp_path / "run")))
    assert res.units_failed == 1 and any("0802.png" in p for p in res.problems), res.problems
    assert res.units_coded == 2


def test_a_16_bit_rgb_source_is_refused_not_truncated(tmp_path):
    """Pillow decodes 16-bit RGB PNG to 8-bit by dropping the low byte: prepare reads the depth from
    the file before decoding and refuses it, naming the file (the images policy)."""
    from test_hostile_inputs import png16

    good = png_bytes(image(800, 800, 1))
    deep = png16(np.full((800, 800, 3), 40000, np.uint16), 2)
    z = write_zip(tmp_path / "DIV2K_valid_HR.zip", {"DIV2K_valid_HR/0801.png": good,
                                                    "DIV2K_valid_HR/0802.png": deep})
    card = card_for("div2k", {z.name: z}, tmp_path, expect={"count": 2, "size": [768, 768]})
    res = prep.prepare(card, tmp_path / "out", [z], fetch=False)
    assert not res.complete and res.count == 1
    assert "0802.png" in res.problems[0] and "16" in res.problems[0]
