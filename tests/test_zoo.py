"""The CompressAI zoo adapter: cards, weight table, real bitstreams with seeded random weights
(round trips through a fresh instance, odd sizes, determinism, bad bytes), offline errors, and
- when the official files are present - the published Kodak curve."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml

from bench import cards, registry, weights
from bench.codecs.base import CodecError
from bench.codecs.container import unpack
from bench.codecs.torch_base import WeightsMissing
from bench.codecs.zoo import weights as zoo_weights
from bench.codecs.zoo.adapter import ARCHS, CompressAIZoo
from bench.runner import build_codec
from conftest import assert_light_imports, kodak_means

REPO = Path(__file__).resolve().parent.parent

CARDS = [zoo_weights.card_name(a, m) for a in ARCHS for m in zoo_weights.METRICS]
REFERENCE = REPO / "results" / "reference" / "kodak" / "compressai-bmshj2018-hyperprior"


def _img(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _random(name, **kw) -> CompressAIZoo:
    return build_codec(cards.get("codec", name), "cpu", kw.pop("dtype", "float32"), "random")


# ---------------------------------------------------------------------------- cards and weights
def test_twelve_cards_resolve_to_the_adapter():
    assert len(CARDS) == 12
    for name in CARDS:
        card = cards.get("codec", name)
        assert card.target == "compressai-zoo" and registry.get("codec", card.target).obj is CompressAIZoo
        codec = build_codec(card, "cpu")
        assert card.get("points") == list(codec.points()) == list(range(1, 7 if "cheng" in name else 9))
        assert card.get("licence").startswith("BSD-3-Clause-Clear") and card.get("colour")
        assert ("ICLR 2018" if "bmshj" in name else "NeurIPS 2018" if "mbt" in name else "CVPR 2020") in \
            card.get("description")
        assert ("MS-SSIM" in card.get("description")) == name.endswith("-msssim")
        assert codec.weights == "pretrained" and codec.rate_kind == "real"
    with pytest.raises(CodecError, match="unknown arch 'bmshj2018'"):
        CompressAIZoo(arch="bmshj2018")
    with pytest.raises(CodecError, match="metric must be one of mse, ms-ssim"):
        CompressAIZoo(metric="msssim")


def test_weight_table_is_the_official_one_and_in_the_registry():
    from compressai.zoo.image import model_urls  # the installed release's own table

    table = weights.table()
    ids = []
    for arch, by_metric in model_urls.items():
        for metric, urls in by_metric.items():
            codec = CompressAIZoo(arch=arch, metric=metric)
            for quality, url in urls.items():
                w = table[codec.weight_ids(quality)[0]]
                ids.append(w.id)
                assert w.url == url and w.url == zoo_weights.ROOT_URL + w.filename
                assert w.sha256 == "" and w.filename.endswith(f"-{w.sha256_prefix}.pth.tar")
                assert w.dest == "torch-hub/checkpoints" and "BSD-3-Clause-Clear" in w.licence
                assert w.used_by == (zoo_weights.card_name(arch, metric),)
                assert codec.model_id(quality) == w.sha256_prefix
    assert len(ids) == len(set(ids)) == 88 == len(zoo_weights.WEIGHTS)


def test_light_imports(tmp_path):
    """Listing codecs and weights and computing fingerprints import neither torch nor compressai."""
    assert_light_imports(tmp_path, "bench.codecs.zoo.adapter:CompressAIZoo", (3, 3))


# ---------------------------------------------------------------------------- random weights, real bytes
@pytest.mark.parametrize("arch", list(ARCHS))
def test_round_trip_through_a_fresh_instance(arch):
    rgb = _img(7, 5)  # odd size: padded to 64x64 and cropped back
    enc = _random(arch)
    data = enc.encode(rgb, 1)
    assert enc.weights == "random"
    assert data == enc.encode(rgb, 1)  # deterministic bytes
    dec = _random(arch)  # a second adapter object from the same card
    recon = dec.decode(data)
    assert recon.shape == (7, 5, 3) and recon.dtype == np.uint8
    again = dec.decode_batch([data, data])  # deterministic pixels, batched or not
    assert np.array_equal(recon, again[0]) and np.array_equal(recon, again[1])
    # the fresh instance rebuilt the very same seeded network (entropy tables included)
    mine, theirs = enc.model(1).state_dict(), dec.model(1).state_dict()
    assert mine.keys() == theirs.keys() and all(mine[k].equal(theirs[k]) for k in mine)
    c = unpack(data, enc.container_id)
    names = ["y"] if arch == "bmshj2018-factorized" else ["y", "z"]
    assert [s.name for s in c.sections] == names and [s.side for s in c.sections] == [False, True][:len(names)]
    latent = (4, 4) if arch == "bmshj2018-factorized" else (1, 1)  # compress()'s shape: y at 1/16, z at 1/64
    assert c.dims == (7, 5, *latent)
    bits = enc.bits_breakdown(data)
    assert sum(bits.values()) == 8 * len(data) and bits["container"] < 8 * 32
    assert bits["payload"] + bits["side"] == 8 * sum(len(s.data) for s in c.sections)


def test_large_odd_image_and_batched_decode():
    rgb = _img(513, 769)
    enc = _random("bmshj2018-factorized")
    data = enc.encode(rgb, 2)
    assert unpack(data).dims == (513, 769, 576 // 16, 832 // 16)  # padded to 576x832, y at 1/16
    small = [enc.encode(_img(70, 40, i), 2) for i in range(3)]
    dec = _random("bmshj2018-factorized")
    out = dec.decode_batch([small[0], data, small[1], small[2]])
    assert out[1].shape == (513, 769, 3)
    for i, d in zip((0, 2, 3), small):
        assert np.array_equal(out[i], dec.decode(d))


def test_batched_synthesis_matches_single_decodes():
    enc = _random("bmshj2018-hyperprior")
    datas = [enc.encode(_img(40, 70, i), 1) for i in range(3)]
    dec = _random("bmshj2018-hyperprior")
    for data, img in zip(datas, dec.decode_batch(datas)):
        assert np.array_equal(img, dec.decode(data))


def test_bfloat16_on_cpu_and_bytes_across_dtypes():
    rgb = _img(30, 50)
    bf = _random("mbt2018-mean", dtype="bfloat16")
    data = bf.encode(rgb, 1)
    assert bf.fingerprint(1)["dtype"] == "bfloat16" and bf.fingerprint(1) != _random("mbt2018-mean").fingerprint(1)
    assert bf.decode(data).shape == _random("mbt2018-mean").decode(data).shape == (30, 50, 3)
    with pytest.raises(CodecError, match="float16 needs a CUDA device"):
        build_codec(cards.get("codec", "mbt2018-mean"), "cpu", "float16", "random")


def test_bad_bytes_are_codec_errors_with_clear_messages():
    enc = _random("bmshj2018-hyperprior")
    data = enc.encode(_img(20, 20), 1)
    dec = _random("bmshj2018-hyperprior")
    with pytest.raises(CodecError, match="truncated"):
        dec.decode(data[:len(data) // 2])
    with pytest.raises(CodecError, match="CRC-32 mismatch"):
        dec.decode(data[:-6] + bytes([data[-6] ^ 0x10]) + data[-5:])
    with pytest.raises(CodecError, match="empty bitstream"):
        dec.decode(b"")
    with pytest.raises(CodecError, match="written by codec 'zoo:bh', not by 'zoo:bh:ms'"):
        _random("bmshj2018-hyperprior-msssim").decode(data)
    with pytest.raises(CodecError, match="written with seeded random weights"):
        build_codec(cards.get("codec", "bmshj2018-hyperprior"), "cpu").decode(data)  # no weights needed to refuse


# ---------------------------------------------------------------------------- pretrained weights
def test_offline_message_names_url_sha_prefix_and_path(cache):
    codec = build_codec(cards.get("codec", "bmshj2018-hyperprior"), "cpu")
    assert codec.fingerprint(3) != codec.fingerprint(4)  # different files, and no model built for it
    assert codec.fingerprint(3)["weights"] == {"compressai-bmshj2018-hyperprior-mse-3":
                                               {"expected": "6d87be32", "sha256": None}}
    assert codec.fingerprint(3)["libraries"]["compressai"] == "1.2.8"
    assert not codec._models
    with pytest.raises(WeightsMissing) as err:
        codec.encode(_img(8, 8), 3)
    msg = str(err.value)
    name = "bmshj2018-hyperprior-3-6d87be32.pth.tar"
    assert f"https://compressai.s3.amazonaws.com/models/v1/{name}" in msg
    assert "6d87be32" in msg and str(cache / "torch" / "hub" / "checkpoints" / name) in msg
    assert "bench weights fetch compressai-bmshj2018-hyperprior-mse-3" in msg


def test_pretrained_loading_path_with_a_file_made_here(cache, monkeypatch):
    """The real loading code (torch.load, CompressAI's key renaming, from_state_dict) on a file
    written from a seeded random model and registered under its own sha256."""
    import dataclasses

    import torch

    src = _random("mbt2018-mean").model(1)
    wid = "compressai-mbt2018-mean-mse-1"
    tmp = cache / "q1.pth.tar"
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, tmp)  # DataParallel-style keys
    digest = weights.sha256_file(tmp)
    entry = dataclasses.replace(weights.entry(wid), sha256=digest, sha256_prefix=digest[:8],
                                filename=f"mbt2018-mean-1-{digest[:8]}.pth.tar")
    monkeypatch.setitem(weights._extra, wid, entry)
    weights.import_file(tmp, wid)
    codec = build_codec(cards.get("codec", "mbt2018-mean"), "cpu")
    rgb = _img(64, 64)
    data = codec.encode(rgb, 1)
    same_net = _random("mbt2018-mean").encode(rgb, 1)  # the network the file was written from
    got, ref = unpack(data), unpack(same_net)
    assert got.model == digest[:8] and ref.model == "random"
    assert got.sections == ref.sections and got.dims == ref.dims
    recon = build_codec(cards.get("codec", "mbt2018-mean"), "cpu").decode(data)
    assert np.array_equal(recon, _random("mbt2018-mean").decode(same_net))
    assert codec.fingerprint(1)["weights"][wid]["sha256"] == digest


# ---------------------------------------------------------------------------- the published curve
def _reference():
    meta = yaml.safe_load(REFERENCE.with_suffix(".yaml").read_text())
    with REFERENCE.with_suffix(".csv").open() as f:
        rows = {int(r["point"]): {k: float(v) for k, v in r.items()} for r in csv.DictReader(f)}
    return meta, rows


def test_reference_files_are_well_formed():
    meta, rows = _reference()
    assert meta["codec"] == "bmshj2018-hyperprior" and meta["dataset"] == "kodak"
    assert meta["source"].startswith("https://github.com/InterDigitalInc/CompressAI/")
    assert meta["path"] in meta["source"] and meta["commit"] in meta["source"]
    assert set(meta["tolerance"]) == {"bpp_rel", "psnr_abs", "ms_ssim_rgb_abs"}
    assert sorted(rows) == list(range(1, 9))
    bpps = [rows[q]["bpp"] for q in sorted(rows)]
    assert bpps == sorted(bpps) and 0.1 < bpps[0] < bpps[-1] < 2
    assert cards.get("codec", meta["codec"]).get("params")["metric"] == "mse"


@pytest.mark.needs_weights
@pytest.mark.parametrize("quality", range(1, 9))
def test_kodak_curve_matches_the_published_one(quality, kodak_dir):

    meta, rows = _reference()
    card = cards.get("codec", meta["codec"])
    wid = build_codec(card, "cpu").weight_ids(quality)[0]
    state = weights.status(wid)
    if state != "ok":
        w = weights.entry(wid)
        pytest.skip(f"weight file {w.filename} is {state} at {weights.path(wid)} ({w.url}); "
                    f"`bench weights fetch {wid}` or `bench weights import FILE`")
    enc, dec = build_codec(card, "cpu"), build_codec(card, "cpu")

    def coded(data, decoder):  # what CompressAI counts: its strings, not bench's container
        bits = decoder.bits_breakdown(data)
        return bits["payload"] + bits["side"]

    means = kodak_means(kodak_dir, enc, dec, quality, coded_bpp=coded)
    assert means["n"] == 24
    ref, tol = rows[quality], meta["tolerance"]
    assert abs(means["coded_bpp"] / ref["bpp"] - 1) <= tol["bpp_rel"]
    assert abs(means["bpp"] / ref["bpp"] - 1) <= tol["bpp_rel"]
    assert abs(means["psnr"] - ref["psnr"]) <= tol["psnr_abs"]
