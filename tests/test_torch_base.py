"""TorchCodec, the base of learned adapters, on a tiny two-convolution codec: lazy build through
the weight registry, init, dtype/device rules, pad/crop, batched and seeded decoding, fingerprints."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from bench import weights
from bench.codecs.base import CodecError
from bench.codecs.container import ContainerError, Section, bits_breakdown, unpack
from bench.codecs.torch_base import TorchCodec, WeightsMissing
from bench.hashing import sha256_file
from bench.weights import WeightFile


class ToyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.g_a = torch.nn.Conv2d(3, 2, 4, stride=4)  # analysis: may run in reduced precision
        self.g_s = torch.nn.ConvTranspose2d(2, 3, 4, stride=4)  # synthesis: may too
        self.h_s = torch.nn.Conv2d(2, 2, 1)  # stands for entropy parameters: stays float32


class Toy(TorchCodec):
    """Latent = round(g_a(x) * 4 * point) as int8 bytes; decoder = g_s of it."""

    name = "toy"
    family = "test"
    pad_multiple = 8
    reduced_precision = ("g_a", "g_s")
    built: list = []

    def weight_table(self):
        return {1: "toy-1", 2: "toy-2"}

    def build_model(self, point, files):
        net = ToyNet()
        if files is not None:
            net.load_state_dict(torch.load(files[0], map_location="cpu", weights_only=True))
        self.built.append((point, files))
        return net

    def encode_tensor(self, model, x, point, seed):
        y = (model.g_a(x) * 4 * point).round().clamp(-127, 127).to(torch.int8)
        return [Section("y", y.cpu().numpy().tobytes())], tuple(y.shape[1:])

    def decode_tensor(self, model, container, generator):
        c, h, w = container.dims[2:]
        y = np.frombuffer(container.section("y"), np.int8).reshape(1, c, h, w)
        return model.g_s(torch.from_numpy(y.copy()).float().to(self.device) / (4 * container.point)).sigmoid()


class NoisyToy(Toy):
    name = "noisy-toy"
    stochastic = True

    def decode_tensor(self, model, container, generator):
        x = super().decode_tensor(model, container, generator)
        return x + 0.2 * self.batch_noise(x.shape[1:], [generator])


@pytest.fixture(autouse=True)
def _reset_built():
    Toy.built.clear()


def _img(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _toy_weights(monkeypatch, sha256s):
    for point, sha in sha256s.items():
        w = WeightFile(f"toy-{point}", f"toy-{point}-{sha[:8]}.pth", f"https://example.org/toy-{point}-{sha[:8]}.pth",
                       sha, "MIT (test)", "torch-hub/checkpoints", ("toy",))
        monkeypatch.setitem(weights._extra, w.id, w)


# ---------------------------------------------------------------------------- settings
@pytest.mark.parametrize("kwargs, message", [
    (dict(dtype="float64"), "dtype must be one of float32, float16, bfloat16, got 'float64'"),
    (dict(dtype="float16"), "float16 needs a CUDA device"),
    (dict(device="gpu"), "device must be cpu, cuda or cuda:N"),
    (dict(init="zeros"), "init must be one of"),
])
def test_bad_settings_fail_at_construction(kwargs, message):
    with pytest.raises(CodecError, match=message):
        Toy(**kwargs)


def test_unknown_point_lists_the_valid_ones():
    with pytest.raises(CodecError, match="no rate point 3; valid points: 1, 2"):
        Toy(init="random").encode(_img(8, 8), 3)
    assert Toy(init="random").point_key(2.0) == 2 and Toy.built == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    codec = Toy(device="cuda:0", dtype="float16", init="random")  # settings are fine; the build says why not
    with pytest.raises(CodecError, match="sees no CUDA device"):
        codec.encode(_img(8, 8), 1)


def test_bfloat16_on_cpu_runs_only_the_declared_modules_reduced():
    codec = Toy(dtype="bfloat16", init="random")
    data = codec.encode(_img(16, 24), 1)
    model = codec.model(1)
    assert type(model.g_a).__name__ == "CastTo" and model.g_a.inner.weight.dtype == torch.bfloat16
    assert type(model.g_s).__name__ == "CastTo"
    assert model.h_s.weight.dtype == torch.float32  # entropy-parameter side stays float32
    recon = Toy(init="random").decode(data)  # bytes written under bfloat16 decode under float32
    assert recon.shape == (16, 24, 3) and recon.dtype == np.uint8
    assert Toy(dtype="bfloat16", init="random").decode(data).shape == (16, 24, 3)


# ---------------------------------------------------------------------------- init, bytes, pixels
@pytest.mark.parametrize("h, w", [(7, 5), (8, 8), (17, 9)])
def test_random_init_round_trip_through_a_fresh_instance(h, w):
    rgb = _img(h, w)
    enc, dec = Toy(init="random"), Toy(init="random")
    assert enc.weights == dec.weights == "random" and Toy.built == []  # nothing built before use
    data = enc.encode(rgb, 2)
    assert data == Toy(init="random").encode(rgb, 2)  # deterministic, same seeded weights
    recon = dec.decode(data)
    assert recon.shape == (h, w, 3) and recon.dtype == np.uint8
    assert np.array_equal(recon, dec.decode(data))
    c = unpack(data, "toy")
    pad = (-h % 8, -w % 8)
    assert (c.point, c.model, c.dims) == (2, "random", (h, w, 2, (h + pad[0]) // 4, (w + pad[1]) // 4))
    bits = bits_breakdown(data)
    assert sum(bits.values()) == 8 * len(data) and bits["payload"] == 8 * len(c.section("y"))
    assert enc.bits_breakdown(data) == bits


def test_random_seed_depends_on_family_arch_and_point_only():
    a, b = Toy(init="random"), Toy(init="random", dtype="bfloat16")
    assert a.random_seed(1) == b.random_seed(1) != a.random_seed(2)
    assert NoisyToy(init="random").random_seed(1) != a.random_seed(1)  # another arch (name)
    assert torch.equal(a.model(1).g_a.weight, Toy(init="random").model(1).g_a.weight)
    state = torch.get_rng_state()
    Toy(init="random").model(2)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone


@pytest.mark.parametrize("mode, center, expect", [
    ("replicate", False, (0, 3, 0, 1)), ("zeros", True, (1, 2, 0, 1)),
])
def test_padding_and_crop(monkeypatch, mode, center, expect):
    monkeypatch.setattr(Toy, "pad_mode", mode)
    monkeypatch.setattr(Toy, "pad_center", center)
    codec = Toy(init="random")
    assert codec.padding(7, 5) == expect  # (left, right, top, bottom) to 8x8
    rgb = _img(7, 5)
    x = codec.to_tensor(rgb)
    left, _, top, _ = expect
    assert x.shape == (1, 3, 8, 8)
    assert np.array_equal(codec.to_rgb(x, 7, 5)[0], rgb)  # crop inverts pad exactly
    border = x[0, :, 7, :] if not center else x[0, :, :, 0]
    if mode == "zeros":
        assert float(border.abs().sum()) == 0.0
    else:
        assert torch.equal(x[0, :, 7, :5], x[0, :, 6, :5])  # bottom row repeats the last image row
    assert codec.decode(codec.encode(rgb, 1)).shape == (7, 5, 3)


def test_decode_batch_groups_same_shapes_and_keeps_order(monkeypatch):
    codec = Toy(init="random")
    datas = [codec.encode(_img(16, 16, i), 1) for i in range(3)] + [codec.encode(_img(9, 12), 2),
                                                                     codec.encode(_img(16, 16, 7), 1)]
    calls = []
    real = Toy.decode_tensors
    monkeypatch.setattr(Toy, "decode_tensors", lambda self, m, cs, gs: calls.append(len(cs)) or real(self, m, cs, gs))
    fresh = Toy(init="random")
    batch = fresh.decode_batch(datas)
    assert sorted(calls) == [1, 4]  # four 16x16 images at point 1 in one call, the 9x12 one alone
    for data, img in zip(datas, batch):
        assert np.array_equal(img, Toy(init="random").decode(data))
    with pytest.raises(CodecError, match="2 bitstreams but 1 seeds"):
        fresh.decode_batch(datas[:2], [0])


def test_seeded_generator_gives_n_samples_of_one_bitstream():
    codec = NoisyToy(init="random")
    data = codec.encode(_img(16, 16), 1)
    fresh = NoisyToy(init="random")
    s1, s2 = fresh.decode(data, seed=1), fresh.decode(data, seed=2)
    assert not np.array_equal(s1, s2)
    assert np.array_equal(s1, NoisyToy(init="random").decode(data, seed=1))
    batch = fresh.decode_batch([data, data, data], [2, 1, 2])  # one forward pass, one generator per item
    assert np.array_equal(batch[0], s2) and np.array_equal(batch[1], s1) and np.array_equal(batch[2], s2)
    g = codec.generator(5)
    assert torch.equal(torch.randn(3, generator=g), torch.randn(3, generator=codec.generator(5)))


# ---------------------------------------------------------------------------- bad bytes
def test_corrupt_truncated_and_foreign_bytes_are_codec_errors():
    codec = Toy(init="random")
    data = codec.encode(_img(16, 16), 1)
    for bad, message in [(b"", "empty"), (data[:-7], "truncated"), (data[:20] + bytes([data[20] ^ 4]) + data[21:],
                                                                      "CRC-32 mismatch|corrupted|truncated")]:
        with pytest.raises(CodecError, match=message):
            codec.decode(bad)
    with pytest.raises(ContainerError, match="written by codec 'toy', not by 'noisy-toy'"):
        NoisyToy(init="random").decode(data)


# ---------------------------------------------------------------------------- pretrained weights
def test_missing_weight_file_names_url_sha_and_path(cache, monkeypatch):
    _toy_weights(monkeypatch, {1: "ab" * 32, 2: "cd" * 32})
    codec = Toy()
    assert codec.weights == "pretrained" and codec.required_weights() == ["toy-1", "toy-2"]
    with pytest.raises(WeightsMissing) as err:
        codec.encode(_img(8, 8), 1)
    msg = str(err.value)
    place = cache / "torch" / "hub" / "checkpoints" / f"toy-1-{'ab' * 4}.pth"
    assert "https://example.org/toy-1-abababab.pth" in msg and "ab" * 32 in msg and str(place) in msg
    assert err.value.missing == ["toy-1"] and isinstance(err.value, CodecError)
    assert Toy.built == []


def test_pretrained_files_load_and_identify_the_bytes(cache, monkeypatch):
    folder = cache / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    digests = {}
    for point in (1, 2):
        torch.manual_seed(point)
        tmp = folder / f"tmp-{point}.pth"
        torch.save(ToyNet().state_dict(), tmp)
        digests[point] = sha256_file(tmp)
        tmp.rename(folder / f"toy-{point}-{digests[point][:8]}.pth")
    _toy_weights(monkeypatch, digests)
    codec = Toy()
    rgb = _img(8, 16)
    data = codec.encode(rgb, 1)
    assert Toy.built == [(1, [folder / f"toy-1-{digests[1][:8]}.pth"])]
    assert unpack(data).model == digests[1][:8] and Toy().decode(data).shape == (8, 16, 3)
    # a decoder with other weights refuses the bytes instead of decoding garbage
    with pytest.raises(ContainerError, match=f"written with weights {digests[1][:8]}, but this instance has "
                                             "seeded random weights"):
        Toy(init="random").decode(data)
    with pytest.raises(ContainerError, match="written with seeded random weights"):
        Toy().decode(Toy(init="random").encode(rgb, 1))
    prov = codec.provenance()
    assert prov["weights"]["toy-2"]["sha256"] == digests[2] and prov["dtype"] == "float32"


def test_fingerprint_is_cheap_and_per_point(cache, monkeypatch):
    _toy_weights(monkeypatch, {1: "ab" * 32, 2: "cd" * 32})
    codec = Toy()
    f1, f2 = codec.fingerprint(1), codec.fingerprint(2)
    assert f1 != f2 and Toy.built == []  # no model built, no file needed
    assert f1["weights"] == {"toy-1": {"expected": "ab" * 32, "sha256": None}}
    assert f1["libraries"]["torch"] == torch.__version__.split("+")[0] and f1["dtype"] == "float32"
    assert f1["device"] == "cpu"
    assert Toy(dtype="bfloat16").fingerprint(1) != f1
    rnd = Toy(init="random")
    assert rnd.fingerprint(1)["weights"] == {"init": "random", "seed": rnd.random_seed(1)}
    assert rnd.fingerprint(1) != rnd.fingerprint(2) and rnd.fingerprint(1) != f1
    assert codec.fingerprint(7)["weights"] == {"invalid point": "7"}  # its units fail at encode instead
    # the file's actual hash joins the key once the file is there: a new file recomputes only its point
    place = weights.path("toy-1")
    place.parent.mkdir(parents=True)
    place.write_bytes(b"not the real file")
    assert codec.fingerprint(1)["weights"]["toy-1"]["sha256"] == sha256_file(place)
    assert codec.fingerprint(2) == f2


def test_model_cache_is_bounded_when_asked(monkeypatch):
    monkeypatch.setattr(Toy, "max_cached_models", 1)
    codec = Toy(init="random")
    codec.model(1), codec.model(2), codec.model(1)
    assert [p for p, _ in Toy.built] == [1, 2, 1] and list(codec._models) == [1]
