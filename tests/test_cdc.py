"""CDC (Yang & Mandt 2023): release key list, checkpoint loading in the official format, real
bitstreams with tiny seeded random networks (round trip through a fresh instance, bpp from
bytes, odd sizes, seeds, N samples of one bitstream, corrupt bytes), the official rate
estimate as separate ``rate_kind=estimated`` rows, the codec check, and - when present -
a real checkpoint."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from bench import cards, registry, weights
from bench.codecs.base import CodecError
from bench.codecs.cdc import model as cdc_model
from bench.codecs.cdc import weights as cdc_weights
from bench.codecs.cdc.adapter import CDC, DEFAULT_STEPS
from bench.codecs.container import ContainerError, bits_breakdown, unpack
from bench.codecs.torch_base import WeightsMissing
from bench.runner import build_codec

REPO = Path(__file__).resolve().parent.parent
KEYS = json.loads((Path(__file__).parent / "cdc_release_keys.json").read_text())
CARDS = {"cdc-x": ("x", 0.9), "cdc-x-rho0": ("x", 0.0), "cdc-eps": ("eps", 0.9), "cdc-eps-rho0": ("eps", 0.0)}


def _img(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _tiny(param="x", **kw) -> CDC:
    kw = {"steps": 2, **kw}
    return CDC(init="random", param=param, size="tiny", **kw)


def _tiny_card(tmp_path: Path, name="cdc-x", **params) -> Path:
    """A copy of a released card with the tiny architecture and few steps (random init only)."""
    body = yaml.safe_load((REPO / "codecs" / f"{name}.yaml").read_text())
    body["name"] = f"{name}-tiny"
    body["params"] = {**body["params"], "size": "tiny", "steps": 2, **params}
    path = tmp_path / f"{name}-tiny.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


# ---------------------------------------------------------------------------- cards and weights
def test_cards_resolve_to_the_adapter_with_the_official_sampler_defaults():
    for name, (param, rho) in CARDS.items():
        card = cards.get("codec", name)
        assert card.target == "cdc" and registry.get("codec", "cdc").obj is CDC
        codec = build_codec(card, "cpu")
        assert (codec.param, codec.rho, codec.sampler, codec.gamma) == (param, rho, "ddim", 0.8)
        assert codec.steps == DEFAULT_STEPS[param] == card.get("params")["steps"]
        assert card.get("points") == list(codec.points()) == list(cdc_weights.betas(param, rho))
        assert codec.stochastic and codec.rate_kind == "real" and codec.weights == "pretrained"
        assert card.get("licence").startswith("MIT") and "NeurIPS 2023" in card.get("description")
    with pytest.raises(CodecError, match="param must be one of x, eps"):
        CDC(param="v")
    with pytest.raises(CodecError, match="sampler must be one of ddim, ddpm"):
        CDC(sampler="euler")
    with pytest.raises(CodecError, match="size 'tiny' .* --init random"):
        CDC(size="tiny")
    with pytest.raises(CodecError, match="no rate point 0.5; valid points: 0.0512, 0.1024, 0.2048"):
        CDC().weight_ids(0.5)


def test_weight_table_lists_every_released_file_unverified():
    table = weights.table()
    ids = [w.id for w in cdc_weights.WEIGHTS]
    assert len(ids) == 12 == len(set(ids))
    for (param, rho), (folder, files) in cdc_weights.FILES.items():
        assert len(files) == 3
        for beta, name in files:
            w = table[cdc_weights.weight_id(param, rho, beta)]
            assert w.url == f"https://huggingface.co/rhyang/CDC_params/resolve/main/{folder}/{name}"
            assert f"-b{beta}-" in name and (("lpips" in name) == (rho > 0))
            assert w.verified_by == "unverified" and w.dest == "bench" and w.licence.startswith("MIT")
            assert w.used_by == (cdc_weights.card_name(param, rho),)


# ---------------------------------------------------------------------------- the release's keys
@pytest.mark.parametrize("param", ["x", "eps"])
def test_state_dict_keys_and_shapes_match_the_release(param):
    """The real configuration's state dict equals the key list derived from the release
    (tests/cdc_release_keys.json, sources named there), plus hand-derived spot checks."""
    net = cdc_model.CDC(cdc_model.CONFIGS[param])
    got = [[k, list(v.shape)] for k, v in net.state_dict().items()]
    assert got == KEYS[param]
    assert KEYS["source"]["commit"] == cdc_model.SOURCE[1]
    shapes = dict((k, tuple(s)) for k, s in KEYS[param])
    ctx = 64 if param == "x" else 3  # test_xparam.py: context_channels=64; test_epsilonparam.py: 3
    assert shapes["denoise_fn.downs.0.0.block1.block.0.weight"] == (64, 3 + ctx, 7, 7)  # large filter, + context
    assert shapes["denoise_fn.downs.3.0.block1.block.0.weight"] == (256, 192 + 192, 3, 3)
    assert shapes["denoise_fn.downs.4.0.block1.block.0.weight"] == (320, 256, 3, 3)  # no context at level 4
    assert "denoise_fn.downs.5.3.conv.weight" not in shapes  # last level: Identity, no downsampling
    assert shapes["denoise_fn.mid_attn.fn.fn.to_qkv.weight"] == (3 * 384, 384, 1, 1)
    assert shapes["denoise_fn.ups.0.0.block1.block.0.weight"] == (320, 2 * 384, 3, 3)
    assert shapes["denoise_fn.ups.4.3.conv.weight"] == (64, 64, 4, 4)  # ConvTranspose2d(64, 64)
    assert shapes["denoise_fn.time_mlp.0.weight"] == (256, 1) and shapes["denoise_fn.final_conv.1.weight"] == (3, 64, 7, 7)
    assert shapes["context_fn.prior.affine.0.weight"] == (256, 1, 1, 1, 3)
    assert shapes["context_fn.prior.affine.3.bias"] == (256, 1, 1, 1, 1)
    assert shapes["context_fn.prior._medians"] == (1, 256, 1, 1) and shapes["context_fn.prior.a.2"] == (256, 1, 1, 1, 3)
    down, up = (1, 1) if param == "x" else (2, 2)  # BigCompressor: empty VBR slot in the middle of each unit
    assert shapes[f"context_fn.enc.3.{down}.conv.weight"] == (256, 256, 3, 3)
    assert shapes[f"context_fn.dec.3.{up}.conv.weight"] == (64, ctx, 4, 4)
    assert shapes["context_fn.hyper_dec.0.0.weight"] == (256, 256, 5, 5)
    assert shapes["context_fn.hyper_dec.2.0.weight"] == (512, 256, 3, 3)
    assert ("train_snr" in shapes) == (param == "x")
    assert shapes["train_betas"] == ((8193,) if param == "x" else (20000,))
    assert not any(k.startswith("loss_fn_vgg") for k in shapes)


def test_schedule_buffers_are_the_releases_formulas():
    cos = cdc_model.cosine_betas(8193)
    assert cos.shape == (8193,) and 0 < cos[0] < cos[-1] <= 0.999
    lin = cdc_model.linear_betas(20000)
    assert lin[0] == pytest.approx(1000 / 20000 * 1e-4) and lin[-1] == pytest.approx(1000 / 20000 * 0.02)


@pytest.mark.parametrize("param", ["x", "eps"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_sampler_lands_on_x0_with_an_oracle_denoiser(param, eta):
    """With a denoiser that knows the target x0 (x-param: predicts it; eps-param: predicts the
    noise that makes x_t from it, reading the step from its time input i/N), DDIM and DDPM both
    end exactly at x0 from any start: the schedule, the time inputs and the update agree."""
    import torch

    from bench.codecs.cdc.sampler import sample

    net = cdc_model.CDC(cdc_model.TINY[param])
    steps, T = 7, net.cfg.timesteps
    idx = torch.linspace(0, T - 1, steps).long()
    target = torch.rand(2, 3, 8, 8) * 1.6 - 0.8
    seen = []

    def oracle(x, time, context):
        seen.append(float(time[0, 0]))
        if param == "x":
            return target
        i = round(float(time[0, 0]) * steps)  # eps-param time input: position i / N
        ac = net.train_alphas_cumprod[idx[i]]
        return (x - ac.sqrt() * target) / (1 - ac).sqrt()

    net.denoise = oracle
    g = torch.Generator().manual_seed(0)
    out = sample(net, [], torch.randn(2, 3, 8, 8, generator=g) * 0.8, steps, eta,
                 noise_fn=lambda shape: torch.randn((2, *shape), generator=g))
    assert torch.allclose(out, target, atol=1e-4)
    expected = [float(idx[i]) / T if param == "x" else i / steps for i in reversed(range(steps))]
    assert seen == pytest.approx(expected)


# ---------------------------------------------------------------------------- official checkpoint format
def _official_file(path: Path, param: str, rho: float, state: dict, junk_online: bool = True) -> None:
    """A file as the release's trainer saves it: x-param {step, model, ema (ema_pytorch 0.2.3:
    online_model.*, ema_model.*, initted, step)}; eps {step, model}; rho>0 adds loss_fn_vgg.*."""
    import torch

    state = dict(state)
    if rho > 0:
        state["loss_fn_vgg.net.slice1.0.weight"] = torch.zeros(64, 3, 3, 3)
        state["loss_fn_vgg.lin0.model.1.weight"] = torch.zeros(1, 64, 1, 1)
    if param == "x":
        online = {k: (v + 1.0 if v.is_floating_point() else v) for k, v in state.items()}
        ema = {**{f"online_model.{k}": v for k, v in online.items()}, **{f"ema_model.{k}": v for k, v in state.items()},
               "initted": torch.tensor([True]), "step": torch.tensor([1000])}
        torch.save({"step": 1000, "model": online, "ema": ema}, path)
    else:
        torch.save({"step": 1000, "model": state}, path)


@pytest.mark.parametrize("param,rho", [("x", 0.9), ("eps", 0.0)])
def test_official_checkpoint_loads_strictly_from_the_cache(param, rho, cache, monkeypatch, tmp_path):
    """Through the real path: weights.require (unverified entry), torch.load, EMA extraction,
    LPIPS keys dropped, strict load; bytes round trip through a fresh pretrained instance.
    The architecture is the tiny one (patched in) so that the file stays small."""
    import torch

    monkeypatch.setitem(cdc_model.CONFIGS, param, cdc_model.TINY[param])
    beta = cdc_weights.betas(param, rho)[0]
    wid = cdc_weights.weight_id(param, rho, beta)
    codec = CDC(param=param, rho=rho, steps=2)
    with pytest.raises(WeightsMissing, match=rf"{wid}[\s\S]*huggingface\.co/rhyang/CDC_params/resolve/main/"):
        codec.encode(_img(64, 64), beta)
    torch.manual_seed(7)
    reference = cdc_model.CDC(cdc_model.TINY[param])
    for p in reference.parameters():  # not the random init the adapter would draw
        p.data.normal_(0, 0.02)
    state = reference.state_dict()
    dest = weights.path(wid)
    assert dest.parent == Path(cache / "bench")
    dest.parent.mkdir(parents=True)
    _official_file(dest, param, rho, state)
    codec = CDC(param=param, rho=rho, steps=2)
    data = codec.encode(_img(64, 96), beta)
    loaded = codec.model(beta).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())  # the EMA weights, not the online ones
    assert unpack(data).model == weights.sha256_file(dest)[:8]
    fresh = CDC(param=param, rho=rho, steps=2)
    assert fresh.decode(data, 0).shape == (64, 96, 3)
    assert fresh.provenance()["weights"][wid]["sha256"] == weights.sha256_file(dest)
    # a file of another architecture is refused with the keys that do not fit
    _official_file(dest, param, rho, {k: v for k, v in state.items() if "time_mlp" not in k})
    with pytest.raises(CodecError, match=r"missing keys \['denoise_fn\.time_mlp"):
        CDC(param=param, rho=rho).model(beta)


# ---------------------------------------------------------------------------- real bitstreams
@pytest.mark.parametrize("param", ["x", "eps"])
def test_bytes_round_trip_through_a_fresh_instance_at_odd_sizes(param):
    enc = _tiny(param)
    for h, w in ((37, 70), (7, 5), (64, 65)):
        rgb = _img(h, w, seed=h)
        data = enc.encode(rgb, enc.points()[0])
        box = unpack(data)
        assert box.codec == f"cdc:{param}:0.9:tiny" and box.dims == (h, w) and box.model == "random"
        assert [s.name for s in box.sections] == ["y", "z"] and [s.side for s in box.sections] == [False, True]
        split = bits_breakdown(data)
        assert sum(split.values()) == 8 * len(data) and split["payload"] > 0 and split["side"] > 0
        assert enc.encode(rgb, enc.points()[0]) == data  # deterministic encoder
        out = _tiny(param).decode(data, 3)
        assert out.shape == (h, w, 3) and out.dtype == np.uint8
        assert np.array_equal(out, _tiny(param).decode(data, 3))  # same seed, fresh instance: same image


def test_seeds_give_different_samples_of_one_bitstream_and_batches_match_single_decodes():
    enc = _tiny("x")
    data = enc.encode(_img(40, 72), 0.1024)
    dec = _tiny("x")
    singles = [dec.decode(data, s) for s in (0, 1, 2)]
    assert not np.array_equal(singles[0], singles[1]) and not np.array_equal(singles[1], singles[2])
    batch = dec.decode_batch([data] * 3, [0, 1, 2])  # N samples from one bitstream, one forward pass
    for a, b in zip(batch, singles):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # batched convs may differ in the last bit
    # DDPM draws noise at every step; DDIM with gamma 0 is deterministic whatever the seed
    ddpm = _tiny("eps", sampler="ddpm", steps=3)
    d2 = ddpm.encode(_img(40, 72), 0.2048)
    assert not np.array_equal(ddpm.decode(d2, 0), ddpm.decode(d2, 1))
    assert np.array_equal(ddpm.decode(d2, 5), _tiny("eps", sampler="ddpm", steps=3).decode(d2, 5))
    flat = _tiny("eps", gamma=0.0)
    assert np.array_equal(flat.decode(d2, 0), flat.decode(d2, 1))


def test_sampler_settings_change_the_decode_and_the_fingerprint():
    data = _tiny("x").encode(_img(33, 40), 0.0512)
    a, b = _tiny("x", steps=2), _tiny("x", steps=3)
    assert a.fingerprint(0.0512)["decoder"] == {"sampler": "ddim", "steps": 2, "gamma": 0.8, "size": "tiny"}
    assert a.fingerprint(0.0512) != b.fingerprint(0.0512)
    assert not np.array_equal(a.decode(data, 0), b.decode(data, 0))


def test_corrupt_or_foreign_bytes_raise_clear_errors():
    enc = _tiny("x")
    data = enc.encode(_img(32, 32), 0.0512)
    dec = _tiny("x")
    for bad in (b"", data[: len(data) // 2], data[:-1] + bytes([data[-1] ^ 1]), b"\x00" * 40):
        with pytest.raises(CodecError):
            dec.decode(bad, 0)
    with pytest.raises(ContainerError, match="cdc:x:0.9:tiny"):
        _tiny("eps").decode(data, 0)
    with pytest.raises(ContainerError, match="written by codec 'cdc:x:0.9:tiny', not by 'cdc:x:0.9'"):
        CDC(param="x").decode(data, 0)  # the released architecture refuses them before loading anything


# ---------------------------------------------------------------------------- estimated rate
@pytest.mark.parametrize("param", ["x", "eps"])
def test_estimated_bits_are_the_official_likelihood_estimate(param):
    """estimated_bits(bytes) equals Compressor.bpp x padded H.W computed the release's way on the
    encoder's own tensors (no entropy coding involved)."""
    import torch

    codec = _tiny(param)
    rgb = _img(64, 128, seed=4)
    data = codec.encode(rgb, codec.points()[0])
    net = codec.model(codec.points()[0])
    cf = net.context_fn
    with torch.no_grad():
        y, z = cf.analysis(codec.to_tensor(rgb) * 2 - 1)
        med = cf.prior.medians
        zq = torch.round(z - med) + med  # quantize(..., "dequantize", offset)
        mean, scale = cf.hyper_synthesis(zq)
        yq = torch.round(y - mean) + mean
        expected = float(-cf.prior.likelihood(zq).log2().sum() - cdc_model.gaussian_likelihood(yq, mean, scale)
                         .log2().sum())
    assert codec.estimated_bits(data) == pytest.approx(expected, rel=1e-5)
    assert _tiny(param).estimated_bits(data) == pytest.approx(expected, rel=1e-5)  # from the bytes alone
    with pytest.raises(CodecError):
        codec.estimated_bits(data[:10])


def test_run_stores_real_and_estimated_rows_apart(tmp_path, cache):
    """`bench run --codec cdc-x --init random --points 0.0512 --seeds 0,1 --limit 1` on the tiny
    architecture (a card copy with size: tiny): real rows from the stored bytes, estimated rows
    beside them with the same metric values, per_set grouped by rate_kind."""
    from bench.data.images import write_png
    from bench.runner import Experiment, run
    from bench.store import read_table

    data_dir = tmp_path / "imgs"
    data_dir.mkdir()
    write_png(_img(48, 80, seed=1), data_dir / "a.png")
    write_png(_img(48, 80, seed=2), data_dir / "b.png")
    card = _tiny_card(tmp_path)
    out = tmp_path / "run"
    exp = Experiment(dataset="folder", data_dir=str(data_dir), codecs=[str(card)], points=[0.0512], seeds=[0, 1],
                     metrics=["psnr"], init="random", out=str(out), limit=1)
    res = run(exp)
    assert res.units_coded == 2, res.problems
    df = read_table(out, "per_image")
    real, est = df[df.rate_kind == "real"], df[df.rate_kind == "estimated"]
    assert len(real) == len(est) == 2 and sorted(real.seed) == sorted(est.seed) == [0, 1]
    for row in real.itertuples():
        stored = next((out / "bitstreams").rglob(f"s{row.seed}/{row.image_id}.bin")).read_bytes()
        assert row.bits == 8 * len(stored) and row.bpp == pytest.approx(8 * len(stored) / (48 * 80))
        assert row.payload_bits + row.side_bits + row.container_bits == row.bits
        twin = est[est.seed == row.seed].iloc[0]
        assert twin.value == row.value and twin.image_id == row.image_id  # identical metric values
        expected = _tiny("x").estimated_bits(stored)
        assert twin.bpp == pytest.approx(expected / (48 * 80)) and twin.bits == round(expected)
        assert math.isnan(twin.payload_bits) if isinstance(twin.payload_bits, float) else twin.payload_bits is None
    assert real.value.iloc[0] != real.value.iloc[1]  # two seeds, two samples
    ps = read_table(out, "per_set")
    assert set(ps.rate_kind) == {"real", "estimated"} and len(ps) == 4  # 2 seeds x 2 kinds, psnr
    for kind, rows in ps.groupby("rate_kind"):
        src = df[df.rate_kind == kind]
        for r in rows.itertuples():
            assert r.mean_bpp == pytest.approx(src[src.seed == r.seed].bpp.mean())
    assert run(exp).units_coded == 0  # resumed


def test_store_tables_keep_estimated_rows_apart_for_set_metrics_and_leave_others_alone(tmp_path):
    """Ledger level: a unit with est_bits yields a second (estimated) row everywhere, set metrics
    (FID, ...) included at the mean estimated bpp of their units; a unit without it (every other
    codec) yields exactly its real rows."""
    from bench.store import RunStore

    store = RunStore(tmp_path / "r")
    keys = []
    for codec, est in (("cdc-x", 3000.0), ("jpeg", None)):
        for img in ("a", "b"):
            key = f"{codec}-{img}"
            keys.append(key)
            paths = store.unit_paths("ds", codec, "1", 0, img)
            for p in (paths.bitstream, paths.recon):
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(b"x")
            store.add_unit(dict(unit_key=key, dataset="ds", image_id=img, image_sha256=img, codec=codec, card_hash="h",
                                point="1", seed=0, height=10, width=20, bits=4000 + (img == "b") * 400, bpp=0.0,
                                rate_kind="real", enc_s=0.1, dec_s=0.1, breakdown=None, bitstream=str(paths.bitstream),
                                recon=str(paths.recon), bitstream_sha256="s", weights="pretrained", fingerprint="{}",
                                est_bits=None if est is None else est + (img == "b") * 200))
            store.add_metrics(key, {"psnr": 20.0 + (img == "b")}, {"psnr": "1"}, "cpu")
        store.add_set_metric("ds", codec, "1", 0, "fid", 50.0, 2, key=f"fid-{codec}", mean_bpp=21.0,
                             weights="pretrained")
    store.set_scope(keys, {"psnr": "1"}, ["fid-cdc-x", "fid-jpeg"])
    img, st = store.per_image_table().to_pandas(), store.per_set_table().to_pandas()
    assert sorted(img[img.codec == "jpeg"].rate_kind) == ["real", "real"]
    cdc = img[img.codec == "cdc-x"].sort_values(["image_id", "rate_kind"])
    assert list(cdc.rate_kind) == ["estimated", "real"] * 2 and list(cdc.value) == [20.0, 20.0, 21.0, 21.0]
    assert list(cdc[cdc.rate_kind == "estimated"].bpp) == pytest.approx([3000 / 200, 3200 / 200])
    got = {(r.codec, r.metric, r.rate_kind): r.mean_bpp for r in st.itertuples()}
    assert got == pytest.approx({("cdc-x", "psnr", "real"): 0.0, ("cdc-x", "psnr", "estimated"): 3100 / 200,
                                 ("cdc-x", "fid", "real"): 21.0, ("cdc-x", "fid", "estimated"): 3100 / 200,
                                 ("jpeg", "psnr", "real"): 0.0, ("jpeg", "fid", "real"): 21.0})
    assert set(st[(st.codec == "cdc-x") & (st.metric == "fid")].value) == {50.0}
    # real rows first: readers that keep the first row of a point (the CLI summary) show the real rate
    assert all(g.rate_kind.iloc[0] == "real" for _, g in st.groupby(["codec", "metric"], sort=False))
    assert all(g.rate_kind.iloc[0] == "real" for _, g in img.groupby(["codec", "image_id"], sort=False))
    store.close()


def test_figure_draws_estimated_rate_as_its_own_dashed_line():
    import pandas as pd

    from bench.figures import rate_figure

    rows = [dict(dataset="kodak", codec="cdc-x", point=str(p), seed=0, metric="psnr", value=v, n_images=1,
                 n_patches=None, aggregate="mean", mean_bpp=b, weights="pretrained", rate_kind=k)
            for k, shift in (("real", 0.0), ("estimated", -0.01))
            for p, v, b in ((0.0512, 25.0, 0.2 + shift), (0.1024, 24.0, 0.1 + shift))]
    rows.append(dict(rows[0], codec="jpeg", rate_kind=None))  # tables without the kind count as real
    ax = rate_figure(pd.DataFrame(rows), "psnr").axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert set(lines) == {"cdc-x", "cdc-x (estimated rate)", "jpeg"}
    assert lines["cdc-x (estimated rate)"].get_linestyle() == "--" and lines["cdc-x"].get_linestyle() == "-"
    assert list(lines["cdc-x (estimated rate)"].get_xdata()) == pytest.approx([0.09, 0.19])


# ---------------------------------------------------------------------------- the codec check
@pytest.mark.parametrize("name", ["cdc-x", "cdc-eps-rho0"])  # both parameterisations, both rho
def test_codec_check_passes_for_a_tiny_copy_of_the_card(name, tmp_path):
    """`bench codecs check CARD --init random` on the card with size: tiny and 2 steps (the released
    architecture needs minutes per decode on a CPU; tests/test_codecs_check.py leaves cdc cards out)."""
    from bench.codecs.check import run_checks

    report = run_checks(str(_tiny_card(tmp_path, name)), init="random", images=0, sizes=[(48, 64), (7, 5)])
    assert not report.failed, "\n".join(f"{c.name}: {c.detail}" for c in report.failed)
    status = {c.name: c.status for c in report.checks}
    assert status["weights"] == "warn" and "UNVERIFIED" in report.check("weights").detail  # no published digest
    for check_name in ("card", "adapter", "points", "encode", "decode", "fresh-process", "lossy", "deterministic",
                       "seed", "empty-bytes", "truncated-bytes"):
        assert status[check_name] == "pass", (check_name, report.check(check_name).detail)


# ---------------------------------------------------------------------------- devices and real weights
def test_bfloat16_decodes_float32_bytes_on_the_cpu():
    """Only the U-Net runs in --dtype; entropy decoding stays float32, so bytes cross dtypes."""
    data = _tiny("x").encode(_img(40, 72), 0.0512)
    ref = _tiny("x").decode(data, 0)
    low = _tiny("x", dtype="bfloat16")
    out = low.decode(data, 0)
    assert out.shape == ref.shape and np.array_equal(out, low.decode(data, 0))
    assert str(next(low.model(0.0512).denoise_fn.parameters()).dtype) == "torch.bfloat16"
    assert str(low.model(0.0512).context_fn.prior._medians.dtype) == "torch.float32"


@pytest.mark.needs_gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_batched_decode_on_cuda_in_reduced_precision(dtype):
    data = _tiny("x", steps=4).encode(_img(64, 96), 0.0512)  # CPU float32 bytes
    gpu = CDC(init="random", param="x", size="tiny", steps=4, device="cuda", dtype=dtype)
    out = gpu.decode_batch([data] * 3, [0, 1, 2])  # one batch of three samples of one bitstream
    assert [o.shape for o in out] == [(64, 96, 3)] * 3 and not np.array_equal(out[0], out[1])
    again = gpu.decode_batch([data], [1])[0]
    assert np.abs(again.astype(int) - out[1].astype(int)).max() <= 2  # item 1 does not depend on its batch
    cuda_bytes = gpu.encode(_img(64, 96), 0.0512)
    assert CDC(init="random", param="x", size="tiny", steps=4, device="cuda").decode(cuda_bytes, 0).shape == (64, 96, 3)


@pytest.mark.needs_weights("cdc-x-rho0.9-b0.0512")
def test_released_checkpoint_codes_a_kodak_crop(kodim01):
    """The real x-param rho=0.9 file: loads strictly, codes a 256x256 crop for real, and the real
    rate lies close to the official estimate (a trained entropy model codes near its likelihood)."""
    codec = CDC(param="x", rho=0.9, steps=8)
    rgb = np.ascontiguousarray(kodim01[:256, :256])
    data = codec.encode(rgb, 0.0512)
    out = CDC(param="x", rho=0.9, steps=8).decode(data, 0)
    assert out.shape == rgb.shape
    payload = bits_breakdown(data)
    est = codec.estimated_bits(data)
    assert abs(payload["payload"] + payload["side"] - est) < 0.05 * est + 64


def test_reference_comparison_reads_only_rows_of_the_reference_rate_kind(tmp_path):
    """The CDC paper's bpp are entropy-model estimates: a reference may say rate_kind: estimated and
    is then compared with the estimated rows only (the default stays real)."""
    import pandas as pd

    from bench.reference import Reference, compare

    rows = [dict(run_id="r", dataset="kodak", codec="cdc-x", point="0.0512", seed=0, metric="psnr", value=25.0,
                 n_images=24, n_patches=None, aggregate="mean", mean_bpp=bpp, weights="pretrained", rate_kind=kind)
            for kind, bpp in (("real", 0.105), ("estimated", 0.100))]
    (tmp_path / "run").mkdir()
    pd.DataFrame(rows).to_parquet(tmp_path / "run" / "per_set.parquet")
    meta = dict(codec="cdc-x", dataset="kodak", n_images=24, tolerance={"bpp_rel": 0.01, "psnr_abs": 0.1})
    for kind, expected in ((None, 0.105), ("estimated", 0.100)):
        ref = Reference("cdc", tmp_path / "cdc.csv", {"0.0512": {"bpp": 0.1, "psnr": 25.0}},
                        {**meta, **({"rate_kind": kind} if kind else {})})
        bpp = next(c for c in compare(tmp_path / "run", ref).checks if c.quantity == "bpp")
        assert bpp.ours == pytest.approx(expected) and bpp.passed == (kind == "estimated")
