"""PerCo adapter with tiny random networks built here (no download): bytes, rate, seeds, captions,
pipeline folders in the community reimplementation's layout, the conformance check and a run."""
from __future__ import annotations

import json
import math
import os
import re
import zlib
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np
import pytest
import yaml

from bench import weights
from bench.codecs.base import CodecError
from bench.codecs.container import Container, ContainerError, Section, bits_breakdown, unpack
from bench.codecs.perco import weights as perco_weights
from bench.codecs.perco.adapter import PerCo, canonical_point, index_bits, pack_indices, unpack_indices
from bench.codecs.torch_base import WeightsMissing

from conftest import SHARED

FAST = dict(init="random", caption="dataset", steps=2)  # tiny networks, 2 DDIM steps
CAPTION = "two parrots standing next to each other with leaves in the background"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks on a shared 2-core machine: one thread is ~20x faster than two contended ones
    (also for the spawned fresh-process decoder of the check, through OMP_NUM_THREADS)."""
    import torch

    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(before)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = env


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth colour image with some structure (not noise)."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    rng = np.random.default_rng(seed)
    chans = [np.sin(6 * x * rng.uniform(0.5, 2) + 4 * y * rng.uniform(0.5, 2) + rng.uniform(0, 6)) for _ in range(3)]
    return ((np.stack(chans, -1) + 1) * 127.5).astype(np.uint8)


# ---------------------------------------------------------------------------- rate table
def test_rate_settings_match_the_paper_table_and_aliases_are_the_exact_roundings():
    text = (SHARED / "papers" / "perco-iclr2024.txt").read_text()
    table = text[text.index("Spatial size\tCodebook size\tSpatial bpp"):][:400]
    rows, side = [], None
    for line in table.splitlines()[1:8]:
        cells = line.split("\t")
        side = int(cells[0].split("×")[0]) if cells[0] else side
        rows.append((side, int(cells[1]), cells[2]))
    assert len(rows) == 7
    for (side, v_paper, printed), (name, (grid, v)) in zip(rows, perco_weights.RATES.items()):
        assert grid == side and name == printed
        exact = grid * grid * math.ceil(math.log2(v)) / 512 ** 2
        truncated = str(Decimal(exact).quantize(Decimal("0.0001"), ROUND_DOWN))
        rounded = str(Decimal(exact).quantize(Decimal("0.0001"), ROUND_HALF_UP))
        assert name in (truncated, rounded)  # the paper truncates some values and rounds others
        if rounded != name:
            assert perco_weights.ALIASES[rounded] == name
        if v_paper != v:  # the paper's "8196": its printed bpp needs 13 bits, i.e. V = 8192
            assert (v_paper, v, name) == (8196, 8192, "0.0507")
            assert math.ceil(math.log2(v_paper)) * grid * grid / 512 ** 2 > 0.054
    for spelling, name in [(0.0019, "0.0019"), ("0.0020", "0.0019"), (0.002, "0.0019"), (0.125, "0.1250"),
                           ("0.1250", "0.1250"), (0.0938, "0.0937"), (0.0508, "0.0507"), (0.05, None), (True, None)]:
        assert canonical_point(spelling) == name


def test_index_packing_is_exactly_hw_ceil_log2_v_bits():
    rng = np.random.default_rng(1)
    for grid, v in perco_weights.RATES.values():
        bits = index_bits(v)
        idx = rng.integers(0, v, size=(grid, grid))
        data = pack_indices(idx, bits)
        assert 8 * len(data) == grid * grid * bits  # whole bytes for all seven settings
        assert np.array_equal(unpack_indices(data, grid * grid, bits).reshape(grid, grid), idx)
    with pytest.raises(ContainerError, match="has 63 bytes, expected 64"):
        unpack_indices(b"\0" * 63, 64, 8)


# ---------------------------------------------------------------------------- bytes and rate
@pytest.mark.parametrize("point", [0.0019, 0.0507])
def test_bytes_round_trip_through_a_fresh_adapter_with_exact_bit_counts(point):
    rgb = _image(37, 53)
    data = PerCo(**FAST).encode(rgb, point, seed=0, captions=[CAPTION, "another caption"])
    dec = PerCo(**FAST)  # fresh instance: only the bytes reach it
    recon = dec.decode(data, seed=0)
    assert recon.shape == rgb.shape and recon.dtype == np.uint8
    grid, v = PerCo.rate(point)
    box = unpack(data, "perco")
    assert box.dims == (37, 53, 512, 512, grid, grid, 0) and box.model == "random"  # 0: resized to 512x512
    bits = bits_breakdown(data)
    assert bits["payload"] == grid * grid * math.ceil(math.log2(v))
    assert bits["side"] == 8 * len(zlib.compress(CAPTION.encode(), 9))
    assert bits["container"] == 8 * len(data) - bits["payload"] - bits["side"] > 0
    assert sum(bits.values()) == 8 * len(data)
    # the index map in the bytes is the hyper-encoder's output for the 512x512 latents
    import torch

    idx, caption = dec.read_caption_and_indices(data)
    assert caption == CAPTION
    model = dec.model(point)
    small = PerCo.resize_to_coded(rgb)
    with torch.inference_mode():
        x = torch.from_numpy(small.copy()).permute(2, 0, 1)[None].float().div(127.5).sub(1)
        lat = model.vae.encode(x).latent_dist.mode()  # encoder_latent: mode (the card's default)
        expected = model.hyper_enc.encode(lat * model.scaling_factor)[0].numpy()
    assert np.array_equal(idx, expected)


def test_seeds_give_distinct_samples_of_one_bitstream_and_batches_match_single_decodes():
    rgb = _image(64, 48, seed=2)
    data = PerCo(**FAST).encode(rgb, 0.0313, seed=0)
    dec = PerCo(**FAST)
    again = PerCo(**FAST).decode(data, seed=0)
    singles = [dec.decode(data, seed=s) for s in range(3)]
    assert np.array_equal(singles[0], again)  # same seed, fresh instance: same image
    assert not np.array_equal(singles[0], singles[1]) and not np.array_equal(singles[1], singles[2])
    batch = dec.decode_batch([data] * 3, [0, 1, 2])  # N samples of one bitstream in one sampling run
    for single, batched in zip(singles, batch):
        assert np.abs(single.astype(int) - batched.astype(int)).max() <= 1  # batched convolutions: last-bit noise


def test_caption_sources(monkeypatch):
    rgb = _image(32, 32)
    none = PerCo(init="random", caption="none", steps=1).encode(rgb, 0.0019, captions=[CAPTION])
    assert unpack(none).section("caption") == b"" and bits_breakdown(none)["side"] == 0
    assert PerCo(init="random", caption="none", steps=1).read_caption_and_indices(none)[1] == ""
    uni = "Ünïcødé caption — 東京"
    data = PerCo(init="random", caption="dataset", steps=1).encode(rgb, 0.0019, captions=[uni, "second"])
    assert PerCo(**FAST).read_caption_and_indices(data)[1] == uni
    # blip2 under --init random: no captioner is built; dataset captions are used, else none
    codec = PerCo(init="random", caption="blip2", steps=1)
    monkeypatch.setattr(PerCo, "blip2_caption", lambda self, rgb: pytest.fail("BLIP-2 built under --init random"))
    assert codec.effective_caption_source == "dataset"
    assert codec.read_caption_and_indices(codec.encode(rgb, 0.0019, captions=[CAPTION]))[1] == CAPTION
    assert codec.read_caption_and_indices(codec.encode(rgb, 0.0019))[1] == ""
    # ... unless asked for: then the captioner's text (of the 512x512 image) is what the bytes carry
    asked = PerCo(init="random", caption="blip2", steps=1, captioner_under_random=True)
    seen = []
    monkeypatch.setattr(PerCo, "blip2_caption", lambda self, rgb: seen.append(rgb.shape) or "a generated caption")
    assert asked.read_caption_and_indices(asked.encode(rgb, 0.0019, captions=[CAPTION]))[1] == "a generated caption"
    assert seen == [(512, 512, 3)]
    with pytest.raises(CodecError, match="caption must be one of"):
        PerCo(init="random", caption="idefics")


def test_corrupt_or_foreign_bytes_raise_clear_errors():
    codec = PerCo(**FAST)
    data = codec.encode(_image(32, 32), 0.0019, captions=[CAPTION])
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0x10
    with pytest.raises(ContainerError, match="CRC-32 mismatch"):
        codec.decode(bytes(bad))
    with pytest.raises(ContainerError):
        codec.decode(data[: len(data) // 2])
    box = unpack(data)

    def repack(**kw):
        return Container(**{**box.__dict__, **kw}).pack()

    with pytest.raises(ContainerError, match="not zlib-compressed"):
        codec.decode(repack(sections=(box.sections[0], Section("caption", b"not zlib", side=True))))
    with pytest.raises(ContainerError, match="index map section has 63 bytes"):
        codec.decode(repack(sections=(Section("z", box.sections[0].data[:-1]), box.sections[1])))
    with pytest.raises(ContainerError, match=r"consistent with a 8x8 grid"):
        codec.decode(repack(dims=(32, 32, 512, 512, 16, 16, 0)))
    with pytest.raises(ContainerError, match=r"consistent with a 8x8 grid"):
        codec.decode(repack(dims=(32, 32, 512, 512, 8, 8, 1)))  # native mode would code 32x32 at 64x64
    with pytest.raises(ContainerError, match="no rate point"):
        codec.decode(repack(point=0.5))
    with pytest.raises(CodecError, match=r"valid points.*0\.0019\|0\.0020"):
        codec.encode(_image(8, 8), 0.05)


def test_native_resolution_codes_at_the_padded_size_and_crops():
    """resolution: native - edge-padded to a multiple of 64, grid scaled with the size, cropped on decode."""
    rgb = _image(100, 150)
    codec = PerCo(**FAST, resolution="native")
    for point, grid in ((0.0019, (2, 3)), (0.125, (16, 24))):  # 128x192 coded: 8x8 / 64x64 per 512x512
        data = codec.encode(rgb, point, captions=[CAPTION])
        assert unpack(data).dims == (100, 150, 128, 192, *grid, 1)
        grid_side, v = PerCo.rate(point)
        assert bits_breakdown(data)["payload"] == grid[0] * grid[1] * math.ceil(math.log2(v))
        # the spatial bpp of the padded image is the nominal one
        assert bits_breakdown(data)["payload"] / (128 * 192) == pytest.approx(float(canonical_point(point)), rel=0.03)
        recon = PerCo(**FAST).decode(data, seed=1)  # the mode is in the bytes: any instance decodes it
        assert recon.shape == rgb.shape
    tiny = codec.encode(_image(7, 5), 0.0019)
    assert unpack(tiny).dims == (7, 5, 64, 64, 1, 1, 1) and PerCo(**FAST).decode(tiny).shape == (7, 5, 3)
    with pytest.raises(CodecError, match="resolution must be 512 or native"):
        PerCo(**FAST, resolution=768)


def test_bfloat16_on_cpu_decodes_float32_bytes():
    data = PerCo(**FAST).encode(_image(24, 40), 0.0019, captions=[CAPTION])
    recon = PerCo(**FAST, dtype="bfloat16").decode(data, seed=0)
    assert recon.shape == (24, 40, 3) and recon.dtype == np.uint8
    with pytest.raises(CodecError, match="float16 needs a CUDA device"):
        PerCo(**FAST, dtype="float16")


# ---------------------------------------------------------------------------- pipeline folders
def _reimplementation_folder(root: Path, grid: int = 8, codebook: int = 256):
    """A tiny random pipeline folder in the community reimplementation's layout (see model.py)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from bench.codecs.perco import model as pm

    torch.manual_seed(0)
    cfg = pm.random_configs("tiny")
    folder = root / "perco-pipeline"
    AutoencoderKL(**cfg["vae"]).save_pretrained(folder / "vae")
    CLIPTextModel(CLIPTextConfig(**cfg["text"])).save_pretrained(folder / "text_encoder")
    pm.byte_level_tokenizer().save_pretrained(folder / "tokenizer")
    DDIMScheduler(**pm.SD21_SCHEDULER).save_pretrained(folder / "scheduler")
    unet = UNet2DConditionModel(in_channels=4, **cfg["unet"])  # SD's own conv_in (4 channels) ...
    unet.save_pretrained(folder / "unet")
    state = dict(unet.state_dict())  # ... plus the extended one that the reimplementation's forward uses
    state["conv_in_extended.weight"] = torch.randn(16, 4 + cfg["hyper"]["num_filters_out"], 3, 3) * 0.05
    state["conv_in_extended.bias"] = torch.zeros(16)
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "unet" / "diffusion_pytorch_model.safetensors")
    hyper = pm.HyperEncoder(grid=grid, codebook_size=codebook, **cfg["hyper"])
    hstate = dict(hyper.state_dict())
    hstate.update({"quantizer._codebook.initted": torch.tensor([True]),
                   "quantizer._codebook.cluster_size": torch.ones(1, codebook),
                   "quantizer._codebook.embed_avg": torch.randn(1, codebook, cfg["hyper"]["codebook_dim"])})
    (folder / "hyper_enc").mkdir()
    save_file(hstate, folder / "hyper_enc" / "diffusion_pytorch_model.safetensors")
    (folder / "hyper_enc" / "config.json").write_text(json.dumps(
        {"_class_name": "HyperEncoder", "_diffusers_version": "0.27.0", "in_channels": 4, "cfg_ss": grid,
         "cfg_cs": codebook, **cfg["hyper"]}))
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": "StableDiffusionPipelinePerco", "_diffusers_version": "0.27.0",
         "vae": ["diffusers", "AutoencoderKL"], "hyper_enc": ["hyper_encoder_v2", "HyperEncoder"],
         "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
         "unet": ["unet_2d_perco", "UNet2DConditionModel"], "scheduler": ["diffusers", "DDIMScheduler"],
         "safety_checker": [None, None], "feature_extractor": [None, None]}))
    return folder, state["conv_in_extended.weight"]


def test_pipeline_folder_in_the_reimplementation_layout_loads_and_codes(tmp_path, cache):
    folder, extended = _reimplementation_folder(tmp_path)
    params = dict(init="pretrained", caption="dataset", steps=2, pipelines={0.0019: str(folder)})
    enc = PerCo(**params)
    assert enc.required_weights() == []
    rgb = _image(40, 30)
    data = enc.encode(rgb, "0.0020", captions=[CAPTION])  # alias of 0.0019
    box = unpack(data)
    assert box.point == 0.0019 and re.fullmatch(r"[0-9a-f]{8}", box.model) and box.model == enc.model_id(0.0019)
    model = enc.model(0.0019)
    assert model.unet.config.in_channels == 4 + 64
    assert np.array_equal(model.unet.conv_in.weight.numpy(), extended.numpy())  # conv_in_extended is the one used
    assert model.hyper_enc.quantizer.distance == "euclidean"  # vector-quantize-pytorch's default
    assert PerCo(**params).decode(data, seed=3).shape == rgb.shape
    fp = enc.fingerprint(0.0019)
    assert fp["weights"]["folder_digest"] == box.model and "unet/diffusion_pytorch_model.safetensors" in \
        fp["weights"]["files"]
    # random-init bytes are refused by the pretrained decoder and vice versa
    with pytest.raises(ContainerError, match="seeded random weights"):
        PerCo(**params).decode(PerCo(**FAST).encode(rgb, 0.0019))
    # a point without a folder: the error names the place, the release and --init random
    with pytest.raises(WeightsMissing, match=r"perco/0\.1250[\s\S]*drive\.google\.com[\s\S]*--init random"):
        enc.encode(rgb, 0.125)
    with pytest.raises(WeightsMissing, match=r"no public folder exists for 0\.0098"):
        enc.fingerprint(0.0098)
    # a folder whose grid does not match the point is refused
    with pytest.raises(CodecError, match="8x8 grid with 256 codes, but point 0.0024"):
        PerCo(**{**params, "pipelines": {"0.0024": str(folder)}}).encode(rgb, 0.0024)


@pytest.mark.needs_weights
def test_released_pipeline_folder_decodes_if_present():
    """A real community folder (0.0019) at $BENCH_WEIGHTS/perco/0.0019 (or the card's pipelines)."""
    folder = weights.bench_dir() / "perco" / "0.0019"
    if not (folder / "unet").is_dir():
        pytest.skip(f"needs_weights: the community PerCo 0.0019 folder is not at {folder} "
                    f"(download from {perco_weights.RELEASE_URL})")
    codec = PerCo(init="pretrained", caption="dataset")
    rgb = _image(512, 512)
    data = codec.encode(rgb, 0.0019, captions=[CAPTION])
    assert bits_breakdown(data)["payload"] == 8 * 8 * 8
    recon = PerCo(init="pretrained", caption="dataset").decode(data, seed=0)
    assert recon.shape == rgb.shape and recon.std() > 5  # a real picture, not a flat field


# ---------------------------------------------------------------------------- harness
def test_codecs_check_passes_under_random_init():
    from bench.codecs.check import run_checks

    report = run_checks("perco", init="random", images=0, sizes=[(48, 64), (7, 5)])
    assert not report.failed, "\n".join(f"{c.name}: {c.detail}" for c in report.failed)
    status = {c.name: c.status for c in report.checks}
    for name in ("encode", "decode", "fresh-process", "deterministic", "seed", "empty-bytes", "truncated-bytes"):
        assert status[name] == "pass", (name, report.check(name).detail)


def test_run_writes_real_rows_with_dataset_captions_in_the_bytes(coco_mini_dir, tmp_path, cache):
    """``bench run --codec perco --init random --points 0.0019,0.0313,0.1250 --limit 1`` on coco-mini
    (the card as shipped: tiny random networks under --init random, steps auto = 20/20/5)."""
    from bench.data.loaders import open_dataset
    from bench.runner import Experiment, run
    from bench.store import read_table
    from bench import cards

    out = tmp_path / "r"
    exp = Experiment(dataset="coco-mini", data_dir=str(coco_mini_dir), codecs=["perco"],
                     points=[0.0019, 0.0313, 0.1250], metrics=["psnr"], init="random", out=str(out), limit=1,
                     seeds=[0, 1])
    res = run(exp)
    assert res.units_coded == 6 and not [p for p in res.problems if not p.startswith("note:")], res.problems
    df = read_table(out, "per_image")
    assert set(df.weights) == {"random"} and len(df) == 6 and set(df.seed) == {0, 1}
    import sqlite3

    with sqlite3.connect(out / "ledger.sqlite") as db:  # each unit's record names the coding resolution
        fps = [json.loads(r[0]) for r in db.execute("SELECT fingerprint FROM units")]
    assert len(fps) == 6 and all(fp["coded_at"].startswith("512x512") for fp in fps)
    sample = open_dataset(cards.get("dataset", "coco-mini"), coco_mini_dir)
    first = sample.load(sample.items()[0])
    for row in df.itertuples():
        rel = Path("coco-mini") / "perco" / row.point / f"s{row.seed}"
        data = (out / "bitstreams" / rel / f"{row.image_id}.bin").read_bytes()
        assert row.bits == 8 * len(data) and row.bpp == pytest.approx(8 * len(data) / (row.height * row.width))
        assert row.payload_bits + row.side_bits + row.container_bits == row.bits
        grid, v = PerCo.rate(float(row.point))
        assert row.payload_bits == grid * grid * math.ceil(math.log2(v))
        assert PerCo(init="random").read_caption_and_indices(data)[1] == first.captions[0]
    from bench.data.images import read_rgb

    a, b = (read_rgb(out / "recon" / "coco-mini" / "perco" / "0.0019" / f"s{s}" / f"{first.id}.png")[0]
            for s in (0, 1))
    assert a.shape == (first.rgb.shape) and not np.array_equal(a, b)  # two seeds, two samples ...
    for point in ("0.0019", "0.0313", "0.125"):  # ... of one bitstream (encoder_latent: mode)
        stored = {(out / "bitstreams" / "coco-mini" / "perco" / point / f"s{s}" / f"{first.id}.bin").read_bytes()
                  for s in (0, 1)}
        assert len(stored) == 1
    assert run(exp).units_coded == 0  # resumed


def test_card_lists_the_released_points_and_says_weights_are_unreleased():
    body = yaml.safe_load((Path(__file__).resolve().parent.parent / "codecs" / "perco.yaml").read_text())
    assert [canonical_point(p) for p in body["points"]] == ["0.0019", "0.0313", "0.1250"]
    assert "official weights: unreleased" in body["weight_files"]
    for name in perco_weights.RATES:
        assert name in body["all_points"]


def test_full_size_random_networks_have_sd21_shapes():
    """Built on the meta device (no memory, no compute): SD-2.1's UNet (865,910,724 parameters) plus
    the extended input convolution (320 x 320 x 3 x 3 more weights), and the hyper-encoder sizes the
    reimplementation documents without its quantiser (6,051,592 at 0.1250; 20,424,328 at 0.0019)."""
    import torch

    from bench.codecs.perco import model as pm

    def count(m):
        return sum(p.numel() for p in m.parameters())

    with torch.device("meta"):
        low = pm.build_random(8, 256, "full", "euclidean")
        high = pm.HyperEncoder(grid=64, codebook_size=256, **pm.random_configs("full")["hyper"])
    assert count(low.unet) == 865_910_724 + 320 * 320 * 9
    assert low.unet.conv_in.in_channels == 4 + 320 and low.vae_factor == 8
    for hyper, documented in ((low.hyper_enc, 20_424_328), (high, 6_051_592)):
        assert count(hyper) - count(hyper.quantizer) == documented
        assert hyper.quantizer._codebook.embed.shape == (1, 256, 32)


def test_light_imports():
    """Listing codecs and computing random-init fingerprints import neither torch nor diffusers."""
    import subprocess
    import sys

    code = ("import sys; from bench import registry, weights; registry.entries('codec'); weights.table(); "
            "from bench.codecs.perco.adapter import PerCo; PerCo(init='random').fingerprint(0.0019); "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "[]", out.stderr


def test_blip2_captioner_from_a_local_folder(tmp_path, monkeypatch):
    """The BLIP-2 code path on a tiny random BLIP-2 saved here (real layout: model + processor files)."""
    import torch
    from transformers import (Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, Blip2QFormerConfig,
                              Blip2VisionConfig, BlipImageProcessor, OPTConfig)

    from bench.codecs.perco.model import byte_level_tokenizer

    tok = byte_level_tokenizer()
    tok.add_tokens(["<image>"], special_tokens=True)
    vision = Blip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                               image_size=32, patch_size=8)
    qformer = Blip2QFormerConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                 encoder_hidden_size=32, vocab_size=520)
    text = OPTConfig(vocab_size=520, hidden_size=32, ffn_dim=64, num_hidden_layers=1, num_attention_heads=4,
                     max_position_embeddings=128, word_embed_proj_dim=32, bos_token_id=512, eos_token_id=513,
                     pad_token_id=513)
    torch.manual_seed(0)
    net = Blip2ForConditionalGeneration(Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(),
                                                    text_config=text.to_dict(), num_query_tokens=4,
                                                    image_token_index=tok.convert_tokens_to_ids("<image>")))
    folder = tmp_path / "blip2"
    net.save_pretrained(folder)
    Blip2Processor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok,
                   num_query_tokens=4).save_pretrained(folder)
    codec = PerCo(init="random", caption="blip2", captioner_under_random=True, blip2=str(folder), steps=1,
                  max_caption_tokens=6)
    data = codec.encode(_image(48, 48), 0.0019, captions=["ignored: blip2 is the source"])
    caption = PerCo(init="random", steps=1).read_caption_and_indices(data)[1]
    assert caption == codec.blip2_caption(PerCo.resize_to_coded(_image(48, 48)))  # deterministic greedy decoding
    assert 0 < len(caption.split()) <= 6  # at most 6 new tokens (each decodes to one piece here)
    assert 8 * len(unpack(data).section("caption")) == bits_breakdown(data)["side"]
    with pytest.raises(WeightsMissing, match="caption source blip2 needs the BLIP-2 model"):
        PerCo(init="random", caption="blip2", captioner_under_random=True, blip2=str(tmp_path / "absent"),
              steps=1).encode(_image(8, 8), 0.0019)


@pytest.mark.needs_gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cuda_batched_decode_in_reduced_precision(dtype):
    """On a GPU: encode on CUDA, decode a batch of seeds in half precision; sizes and seeds as on the CPU."""
    rgb = _image(96, 80)
    data = PerCo(**FAST, device="cuda").encode(rgb, 0.0313, captions=[CAPTION])
    dec = PerCo(**FAST, device="cuda", dtype=dtype)
    out = dec.decode_batch([data] * 3, [0, 1, 2])
    assert all(o.shape == rgb.shape and o.dtype == np.uint8 for o in out)
    assert not np.array_equal(out[0], out[1])
    assert np.abs(out[2].astype(int) - dec.decode(data, seed=2).astype(int)).max() <= 2


def test_encoder_latent_sample_draws_with_the_encode_seed():
    rgb = _image(64, 64, seed=5)
    codec = PerCo(**FAST, encoder_latent="sample")
    assert codec.encode(rgb, 0.125, seed=4) == PerCo(**FAST, encoder_latent="sample").encode(rgb, 0.125, seed=4)
    mode = PerCo(**FAST)
    assert mode.encode(rgb, 0.125, seed=0) == mode.encode(rgb, 0.125, seed=9)  # the mean: no seed in the bytes


def test_changed_captions_recompute_caption_coding_units_only(coco_mini_dir, tmp_path, cache):
    """A unit that codes the dataset's caption is keyed by the caption file too; others are not."""
    import shutil

    from bench.runner import Experiment, run

    import yaml

    from bench import cards

    data = tmp_path / "coco"
    shutil.copytree(coco_mini_dir, data)
    body = {k: v for k, v in cards.get("dataset", "coco-mini").body.items() if k != "annotation_sha256"}
    card = tmp_path / "coco-own.yaml"  # a user's COCO-style set: its caption file is not pinned by the card
    card.write_text(yaml.safe_dump({**body, "name": "coco-own"}))
    exp = Experiment(dataset=str(card), data_dir=str(data), metrics=["psnr"], init="random",
                     out=str(tmp_path / "r"), limit=1,
                     codecs=[{"name": "perco", "points": [0.1250]}, {"name": "jpeg", "points": [50]}])
    assert run(exp).units_coded == 2
    assert run(exp).units_coded == 0
    captions = data / "captions_val2017_subset.json"
    doc = json.loads(captions.read_text())
    doc["annotations"][0]["caption"] = "a different caption"
    captions.write_text(json.dumps(doc))
    again = run(exp)
    assert again.units_coded == 1 and again.units_skipped == 1  # perco recomputed, jpeg reused
