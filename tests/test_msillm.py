"""MS-ILLM: cards, the release's weight table and key list, loading a file in the release's format,
real bitstreams with seeded random weights (round trips through a fresh instance, odd sizes,
determinism, batched decoding, bad bytes), offline errors, unverified weight entries, and - when
the official files are present - the published Kodak numbers.

Random weights check shapes, bytes and bit counts only, never quality. Most tests use the
``tiny`` network (same structure and key names, a few channels); the key list, the release-format
checkpoint and ``bench codecs check`` use the real one."""
from __future__ import annotations

import csv
import io
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from bench import cards, registry, weights
from bench.cli import app
from bench.codecs.base import CodecError
from bench.codecs.container import Container, ContainerError, bits_breakdown, unpack
from bench.codecs.msillm import weights as msillm_weights
from bench.codecs.msillm.adapter import FACTOR, MSILLMCodec, release_bits
from bench.codecs.torch_base import WeightsMissing
from bench.runner import build_codec
from conftest import assert_light_imports, kodak_means

REPO = Path(__file__).resolve().parent.parent
KEYS_FILE = REPO / "bench" / "codecs" / "msillm" / "release_keys.txt"
NEURALCOMPRESSION = "https://dl.fbaipublicfiles.com/NeuralCompression/2023-muckley-msillm/"
# hubconf.py @ 3f122808: entry point -> "The target bitrate is ... bits per pixel" of its docstring
HUBCONF = {"msillm_quality_vlo1": "0.00218", "msillm_quality_vlo2": "0.00438", "msillm_quality_1": "0.035",
           "msillm_quality_2": "0.07", "msillm_quality_3": "0.14", "msillm_quality_4": "0.3",
           "msillm_quality_5": "0.45", "msillm_quality_6": "0.9", "noganms_quality_1": "0.035",
           "noganms_quality_2": "0.07", "noganms_quality_3": "0.14", "noganms_quality_4": "0.3",
           "noganms_quality_5": "0.45", "noganms_quality_6": "0.9"}


def _img(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _tiny(variant="msillm", **kw) -> MSILLMCodec:
    return MSILLMCodec(init="random", variant=variant, size="tiny", **kw)


def _release_keys() -> dict[str, tuple[int, ...] | None]:
    """release_keys.txt: key -> shape (None for the CDF buffers, whose size update() sets)."""
    out = {}
    for line in KEYS_FILE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape = line.split()
            out[key] = None if shape == "*" else tuple(int(d) for d in shape.split(","))
    return out


# ---------------------------------------------------------------------------- cards and weights
def test_cards_resolve_to_the_adapter():
    gan, nogan = cards.get("codec", "msillm"), cards.get("codec", "msillm-nogan")
    for card, points in ((gan, ["vlo1", "vlo2", 1, 2, 3, 4, 5, 6]), (nogan, [1, 2, 3, 4, 5, 6])):
        assert card.target == "msillm" and registry.get("codec", "msillm").obj is MSILLMCodec
        codec = build_codec(card, "cpu")
        assert card.get("points") == list(codec.points()) == points
        assert "ICML 2023" in card.get("description") and card.get("licence").startswith("CC-BY-NC-4.0")
        assert "MIT" in card.get("licence") and card.get("colour") and "64" in card.get("padding")
        assert codec.weights == "pretrained" and codec.rate_kind == "real" and not codec.stochastic
        for point in points:  # the card states each point's training target
            assert f"{point} {msillm_weights.TARGETS[card.get('params')['variant']][point]}" in card.get("notes")
    with pytest.raises(CodecError, match="unknown variant 'nogan'"):
        MSILLMCodec(variant="nogan")
    with pytest.raises(CodecError, match="size must be one of full, tiny"):
        MSILLMCodec(size="small")
    with pytest.raises(CodecError, match="only with seeded random weights"):
        MSILLMCodec(size="tiny")  # no released weights for the test network
    with pytest.raises(CodecError, match="no rate point 'vlo1'"):
        build_codec(nogan, "cpu").weight_ids("vlo1")


def test_weight_table_is_the_release_one():
    table = weights.table()
    seen = []
    for hub, bpp in HUBCONF.items():
        family, point = hub.split("_quality_")
        point = int(point) if point.isdigit() else point
        codec = MSILLMCodec(variant=family)
        w = table[codec.weight_ids(point)[0]]
        seen.append(w.id)
        assert w.filename == f"{family}_target_{bpp}bpp.ckpt" and w.url == NEURALCOMPRESSION + w.filename
        assert w.dest == "torch-hub/checkpoints" and "CC-BY-NC-4.0" in w.licence and "MIT" in w.licence
        assert w.used_by == (msillm_weights.CARDS[family],) and hub in w.note
        assert w.sha256 == w.sha256_prefix == "" and w.verified_by == "unverified"  # none published
        assert "unknown" in w.expected
    assert sorted(seen) == sorted(w.id for w in msillm_weights.WEIGHTS) and len(seen) == 14


def test_weights_list_shows_unverified_entries(cache):
    res = CliRunner().invoke(app, ["weights", "list"], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if "msillm-quality-vlo1" in line]
    assert lines and "unverified" in lines[0] and "missing" in lines[0]


def test_light_imports(tmp_path):
    """Listing codecs and weights and fingerprints import neither torch nor compressai."""
    assert_light_imports(tmp_path, "bench.codecs.msillm.adapter:MSILLMCodec", (3, "vlo1"))


# ---------------------------------------------------------------------------- the network
def test_state_dict_is_the_release_key_list():
    """The real network's keys and shapes under the release's names are exactly release_keys.txt
    (derived from the release's sources); the tiny network has the same keys."""
    from bench.codecs.msillm.model import CONFIGS, MSILLM, release_name, release_state_dict

    expected = _release_keys()
    assert len(expected) == 163
    got = {k: tuple(v.shape) for k, v in release_state_dict(MSILLM(CONFIGS["full"])).items()}
    assert sorted(got) == sorted(expected)  # same keys (order is irrelevant to load_state_dict)
    for key, shape in expected.items():
        assert got[key] == (shape if shape is not None else (0,)), key  # CDF buffers: empty until update()
    assert set(release_state_dict(MSILLM(CONFIGS["tiny"]))) == set(expected)  # the test network: same keys
    assert release_name("hyper_bottleneck.matrices.4") == "hyper_bottleneck._matrix4"
    assert release_name("decoder.resid_blocks.3.sequence.0.weight") == "decoder.resid_blocks.3.sequence.0.weight"


def test_a_file_in_the_release_format_loads_through_the_real_path(cache):
    """A plain state dict under the release's key names (compressai 1.2.4: ``_matrix0`` ...),
    CDF tables included as after update(), saved with torch.save where torch.hub keeps it: the
    adapter loads it strictly and codes exactly as the network it was written from."""
    import torch

    from bench.codecs.msillm.model import release_state_dict

    src = MSILLMCodec(init="random").model(1)  # the real network, seeded, update()d
    state = release_state_dict(src)
    assert "hyper_bottleneck._matrix0" in state and state["latent_bottleneck._quantized_cdf"].numel() > 0
    place = weights.path("msillm-quality-1")
    assert place == cache / "torch" / "hub" / "checkpoints" / "msillm_target_0.035bpp.ckpt"
    place.parent.mkdir(parents=True)
    torch.save(state, place)
    del state
    codec = build_codec(cards.get("codec", "msillm"), "cpu")
    digest = weights.sha256_file(place)
    assert codec.model_id(1) == digest[:8]  # no digest in the table: the file in place identifies the weights
    assert codec.fingerprint(1)["weights"] == {"msillm-quality-1": {"expected": "", "sha256": digest}}
    rgb = _img(40, 70)
    data = codec.encode(rgb, 1)
    ref = MSILLMCodec(init="random").encode(rgb, 1)
    got, want = unpack(data), unpack(ref)
    assert got.model == digest[:8] and want.model == "random"
    assert got.sections == want.sections and got.dims == want.dims
    loaded = codec.model(1).state_dict()
    assert all(loaded[k].equal(v) for k, v in src.state_dict().items())
    recon = build_codec(cards.get("codec", "msillm"), "cpu").decode(data)  # a fresh instance, the file again
    assert np.array_equal(recon, MSILLMCodec(init="random").decode(ref))
    # a file that is not this network's state dict: a CodecError naming the file
    torch.save({"encoder.blocks.0.0.weight": torch.zeros(1)}, place)
    with pytest.raises(CodecError, match=r"msillm_target_0\.035bpp\.ckpt: not an MS-ILLM state dict"):
        build_codec(cards.get("codec", "msillm"), "cpu").model(1)


def test_reflect_padding_as_the_release():
    import torch
    import torch.nn.functional as F

    codec = _tiny()
    rgb = _img(40, 50)
    x = codec.to_tensor(rgb)
    ref = F.pad(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255, (0, 14, 0, 24), mode="reflect")
    assert x.shape == (1, 3, 64, 64) and torch.equal(x, ref)
    small = codec.to_tensor(_img(7, 5))  # padding larger than the image: reflected again and again
    assert small.shape == (1, 3, 64, 64)
    assert torch.equal(small[..., :7, :5], torch.from_numpy(_img(7, 5)).permute(2, 0, 1)[None].float() / 255)
    assert torch.equal(small[..., 7:13, :5], small[..., :6, :5].flip(-2))  # row 7+i mirrors row 5-i
    line = codec.to_tensor(_img(1, 3))  # a 1-pixel side cannot be reflected: repeated
    assert line.shape == (1, 3, 64, 64) and torch.equal(line[..., 63, :3], line[..., 0, :3])


# ---------------------------------------------------------------------------- random weights, real bytes
@pytest.mark.parametrize("variant,point", [("msillm", "vlo1"), ("msillm", 6), ("noganms", 3)])
@pytest.mark.parametrize("size", [(7, 5), (65, 97)])
def test_round_trip_through_a_fresh_instance(variant, point, size):
    h, w = size
    rgb = _img(h, w)
    enc = _tiny(variant)
    data = enc.encode(rgb, point)
    assert data == _tiny(variant).encode(rgb, point)  # deterministic bytes, from another instance too
    dec = _tiny(variant)
    recon = dec.decode(data)
    assert recon.shape == (h, w, 3) and recon.dtype == np.uint8
    assert np.array_equal(recon, dec.decode(data))
    c = unpack(data, enc.container_id)
    assert c.point == point and c.model == "random"
    assert c.dims == (h, w, -(-h // FACTOR), -(-w // FACTOR))
    assert [(s.name, s.side) for s in c.sections] == [("y", False), ("z", True)]
    assert all(len(s.data) > 0 for s in c.sections)
    bits = enc.bits_breakdown(data)
    assert bits == {"payload": 8 * len(c.section("y")), "side": 8 * len(c.section("z")),
                    "container": 8 * len(data) - 8 * len(c.section("y")) - 8 * len(c.section("z"))}
    assert 0 < bits["container"] <= 8 * 40  # header, names, sizes, CRC
    # the rate a run records is 8 * len(stored bytes) / (H * W): every bit counted, container included
    assert sum(bits.values()) / (h * w) == 8 * len(data) / (h * w)


def test_bytes_depend_on_point_and_variant_and_decode_only_with_them():
    rgb = _img(20, 30)
    a, b = _tiny().encode(rgb, 1), _tiny().encode(rgb, 2)
    assert a != b and unpack(a).point == 1 and unpack(b).point == 2  # different seeded weights per point
    with pytest.raises(CodecError, match="written by codec 'msillm:tiny', not by 'msillm:nogan:tiny'"):
        _tiny("noganms").decode(a)
    with pytest.raises(CodecError, match="written with seeded random weights"):
        build_codec(cards.get("codec", "msillm"), "cpu").decode(MSILLMCodec(init="random").encode(rgb, 1))


def test_batched_decode_equals_one_by_one():
    enc = _tiny()
    same = [enc.encode(_img(40, 70, i), 2) for i in range(3)]
    other = enc.encode(_img(65, 97, 9), 2)
    dec = _tiny()
    out = dec.decode_batch([same[0], other, same[1], same[2]])
    singles = [_tiny().decode(d) for d in (same[0], other, same[1], same[2])]
    assert all(np.array_equal(a, b) for a, b in zip(out, singles))
    assert out[1].shape == (65, 97, 3)


def test_bfloat16_on_cpu_and_bytes_across_dtypes():
    """Encoder, hyper-analysis and decoder may run in bfloat16; the entropy parameters stay
    float32, so bytes written in one dtype decode in the other."""
    rgb = _img(30, 50)
    bf = _tiny(dtype="bfloat16")
    data = bf.encode(rgb, 4)
    assert bf.fingerprint(4)["dtype"] == "bfloat16" and bf.fingerprint(4) != _tiny().fingerprint(4)
    assert _tiny().decode(data).shape == _tiny(dtype="bfloat16").decode(data).shape == (30, 50, 3)
    assert _tiny(dtype="bfloat16").decode(_tiny().encode(rgb, 4)).shape == (30, 50, 3)
    with pytest.raises(CodecError, match="float16 needs a CUDA device"):
        MSILLMCodec(init="random", dtype="float16")


def test_bad_bytes_are_codec_errors_with_clear_messages():
    enc = _tiny()
    data = enc.encode(_img(20, 20), 1)
    dec = _tiny()
    with pytest.raises(CodecError, match="truncated"):
        dec.decode(data[:len(data) // 2])
    with pytest.raises(CodecError, match="CRC-32 mismatch"):
        dec.decode(data[:-6] + bytes([data[-6] ^ 0x10]) + data[-5:])
    with pytest.raises(CodecError, match="empty bitstream"):
        dec.decode(b"")
    c = unpack(data)
    wrong = Container(c.codec, c.point, (c.dims[0], c.dims[1], 2, 1), c.model, c.sections).pack()
    with pytest.raises(ContainerError, match="hyper-latent size 2x1 does not fit a 20x20 image"):
        dec.decode(wrong)
    swapped = Container(c.codec, c.point, c.dims, c.model, c.sections[::-1]).pack()
    with pytest.raises(ContainerError, match=r"has sections \['y', 'z'\]"):
        dec.decode(swapped)


def test_release_bits_is_the_pickled_size_the_release_counts(monkeypatch):
    """release_bits equals the size of the pickle of the release's own NamedTuple class
    (built here under the release's module name) holding the same strings and sizes."""
    from typing import List, NamedTuple, Tuple

    mod = types.ModuleType("neuralcompression._outputs._hyperprior_output")

    class HyperpriorCompressedOutput(NamedTuple):  # field for field neuralcompression/_outputs/_hyperprior_output.py
        latent_strings: List[bytes]
        hyper_latent_strings: List[bytes]
        image_size: Tuple[int, int]
        padded_size: Tuple[int, int]

    HyperpriorCompressedOutput.__module__ = mod.__name__
    HyperpriorCompressedOutput.__qualname__ = "HyperpriorCompressedOutput"
    mod.HyperpriorCompressedOutput = HyperpriorCompressedOutput
    for name in ("neuralcompression", "neuralcompression._outputs"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    for h, w in ((7, 5), (65, 97)):
        data = _tiny().encode(_img(h, w), 3)
        c = unpack(data)
        out = HyperpriorCompressedOutput([c.section("y")], [c.section("z")], (h, w), (64 * c.dims[2], 64 * c.dims[3]))
        buf = io.BytesIO()
        pickle.dump(out, buf, protocol=4)
        assert release_bits(data) == 8 * len(buf.getvalue())
        assert release_bits(data) - bits_breakdown(data)["payload"] - bits_breakdown(data)["side"] > 8 * 100


# ---------------------------------------------------------------------------- missing and unverified weights
def test_missing_weights_name_each_file_its_url_and_place(cache):
    codec = build_codec(cards.get("codec", "msillm"), "cpu")
    ids = codec.required_weights()
    assert ids == [f"msillm-quality-{p}" for p in ("vlo1", "vlo2", 1, 2, 3, 4, 5, 6)]
    assert codec.model_id(3) == ""  # nothing in place: no identity (and nothing can be decoded)
    with pytest.raises(WeightsMissing) as err:
        codec.encode(_img(8, 8), "vlo2")
    assert "msillm_target_0.00438bpp.ckpt" in str(err.value) and err.value.missing == ["msillm-quality-vlo2"]
    with pytest.raises(weights.WeightsError) as err:
        weights.require(ids)
    msg = str(err.value)
    for wid in ids:
        w = weights.entry(wid)
        assert f"{wid} ({w.filename})" in msg and f"url:    {w.url}" in msg
        assert f"place:  {cache / 'torch' / 'hub' / 'checkpoints' / w.filename}" in msg
    assert msg.count("sha256: unknown (none published") == 8 and "bench weights fetch msillm-quality-vlo1" in msg
    assert not codec._models


def test_unverified_entries_fetch_print_the_digest_and_a_stored_digest_is_verified(cache, monkeypatch, capsys):
    import dataclasses

    wid = "noganms-quality-2"
    payload = b"not really a checkpoint"
    seen = []

    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def urlopen(req, timeout):
        seen.append(req.full_url)
        return Response(payload)

    monkeypatch.setattr(weights.urllib.request, "urlopen", urlopen)
    placed = weights.fetch([wid])
    digest = weights.hashlib.sha256(payload).hexdigest()
    assert seen == [NEURALCOMPRESSION + "noganms_target_0.07bpp.ckpt"] and placed == [weights.path(wid)]
    out = capsys.readouterr().out
    assert f"its sha256 is {digest}" in out and "UNVERIFIED" in out and wid in out
    assert weights.status(wid) == "ok"  # accepted: nothing to check it against
    weights.require([wid])
    # importing by file name (no digest to match): only an unverified entry of that name accepts it
    other = cache / "noganms_target_0.07bpp.ckpt"
    other.write_bytes(b"another copy")
    assert weights.import_file(other) == weights.path(wid)
    assert weights.path(wid).read_bytes() == b"another copy"
    assert "its sha256 is" in capsys.readouterr().out
    # once the table has the digest, every load verifies it
    stored = dataclasses.replace(weights.entry(wid), sha256=digest, sha256_prefix=digest[:8])
    monkeypatch.setitem(weights._extra, wid, stored)
    assert stored.verified_by == "sha256" and weights.status(wid) == "bad-hash"
    with pytest.raises(weights.WeightsError, match="present but its sha256 is"):
        weights.require([wid])
    weights.path(wid).write_bytes(payload)
    weights.require([wid])


# ---------------------------------------------------------------------------- bench codecs check
def test_codecs_check_with_random_weights_passes_on_the_real_network(kodak_dir):
    """The card with the released network (181 M parameters, seeded random weights), two points."""
    res = CliRunner().invoke(app, ["codecs", "check", "msillm-nogan", "--init", "random", "--images", "0",
                                   "--sizes", "64x96,7x5"])
    assert res.exit_code == 0, res.output
    assert " 0 failed" in res.output
    assert "WARN  weights" in res.output and "UNVERIFIED" in res.output  # no published digests
    for name in ("encode", "decode", "fresh-process", "deterministic", "truncated-bytes"):
        assert f"PASS  {name}" in res.output


# ---------------------------------------------------------------------------- the published numbers
REFERENCES = {"msillm": REPO / "results" / "reference" / "kodak" / "msillm",
              "msillm-nogan": REPO / "results" / "reference" / "kodak" / "msillm-nogan"}


def _reference(card):
    meta = yaml.safe_load(REFERENCES[card].with_suffix(".yaml").read_text())
    with REFERENCES[card].with_suffix(".csv").open() as f:
        rows = {int(r["point"]): {k: float(v) for k, v in r.items()} for r in csv.DictReader(f)}
    return meta, rows


@pytest.mark.parametrize("card", list(REFERENCES))
def test_reference_files_are_well_formed(card):
    from bench import reference

    meta, rows = _reference(card)
    ref = reference.load(card)
    assert meta["codec"] == card and meta["dataset"] == "kodak" and meta["n_images"] == 24
    assert meta["source"] == f"https://github.com/{meta['repository']}/blob/{meta['commit']}/{meta['path']}"
    assert sorted(rows) == list(range(1, 7)) and ref.metrics == ["psnr", "ms_ssim_rgb", "lpips", "dists"]
    bpps = [rows[q]["bpp"] for q in sorted(rows)]
    psnrs = [rows[q]["psnr"] for q in sorted(rows)]
    assert bpps == sorted(bpps) and psnrs == sorted(psnrs) and 0.03 < bpps[0] < bpps[-1] < 1
    assert set(meta["tolerance"]) == {"bpp_rel", "psnr_abs", "ms_ssim_rgb_abs", "lpips_abs", "dists_abs"}
    for col in ("psnr", "ms_ssim_rgb", "lpips", "dists"):  # every published column has a bench metric
        registry.get("metric", col)
    assert set(str(p) for p in rows) <= set(str(p) for p in cards.get("codec", card).get("points"))


def _published_case(card, quality):
    family = cards.get("codec", card).get("params")["variant"]
    return pytest.param(card, quality, marks=pytest.mark.needs_weights(msillm_weights.weight_id(family, quality)),
                        id=f"{card}-{quality}")


@pytest.mark.parametrize("card,quality", [_published_case(c, q) for c in REFERENCES for q in range(1, 7)])
def test_kodak_points_match_the_published_ones(card, quality, kodak_dir):
    """With the official file in the cache: mean bpp (the release's count and bench's) and PSNR
    over the 24 Kodak images against the release's results.csv, within the sidecar tolerance."""

    meta, rows = _reference(card)
    enc, dec = build_codec(cards.get("codec", card), "cpu"), build_codec(cards.get("codec", card), "cpu")
    means = kodak_means(kodak_dir, enc, dec, quality, release_bpp=lambda data, _: release_bits(data))
    assert means["n"] == 24
    ref, tol = rows[quality], meta["tolerance"]
    assert abs(means["release_bpp"] / ref["bpp"] - 1) <= tol["bpp_rel"]
    assert abs(means["bpp"] / ref["bpp"] - 1) <= tol["bpp_rel"]
    assert abs(means["psnr"] - ref["psnr"]) <= tol["psnr_abs"]
