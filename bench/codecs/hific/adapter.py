"""The ``hific`` adapter: TFC's released HiFiC models, run by :mod:`runner` in the
isolated TensorFlow env of :mod:`env`, through the external-program base.

Rate points ``lo``, ``mi``, ``hi`` = models ``hific-lo/-mi/-hi``. Each encode and each
decode is one run of the env's python on ``runner.py`` (process group, timeout and
error reporting from :class:`~bench.codecs.external.SubprocessCodec`); the stored
bytes are the official ``.tfci`` bitstream, which names its model, so a fresh
instance decodes it with nothing else. The runner gets the metagraph files by path
from bench's weight cache (:mod:`bench.weights`, ids ``hific-lo`` ...); it downloads
nothing.

Fingerprint of a point: the env's lock sha256 and its Python/TensorFlow/TFC/numpy
versions (from the env's marker), the runner's sha256, the sha256 of that point's
metagraph file, and the TensorFlow device kind (``cpu`` unless the run's device is
``cuda``: the runner then lets TensorFlow use a GPU if its build can).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from bench import weights
from bench.codecs.base import CodecError
from bench.codecs.external import SubprocessCodec
from bench.codecs.hific import env as hific_env
from bench.codecs.hific.weights import POINTS, model_name, weight_id
from bench.hashing import sha256_file_cached
from bench.registry import register


@register("codec", "hific")
class HiFiC(SubprocessCodec):
    """HiFiC (Mentzer et al., NeurIPS 2020), official TensorFlow models (see module docstring)."""

    name = "hific"
    version = "1"
    point_name = "model"
    higher_point_is_better = True  # lo < mi < hi in bits
    default_points = POINTS
    programs: ClassVar[dict[str, str]] = {"encoder": "python", "decoder": "python"}
    bitstream_suffix = ".tfci"
    install_hint = f"Create its TensorFlow env with `{hific_env.SETUP_COMMAND}`"
    description = "HiFiC GAN codec, TFC's released hific-lo/mi/hi metagraphs in an isolated TensorFlow 2.14 env"

    def __init__(self, device: str = "cpu", init: str = "pretrained", **params: Any) -> None:
        if init == "random":
            raise CodecError("hific: no --init random (the models are TensorFlow metagraphs, not a network "
                             "bench builds); tests/test_hific.py exercises the mechanics with a tiny model "
                             "in the same format")
        super().__init__(device, init=init, **params)

    @property
    def weights(self) -> str:
        return "pretrained"

    # -- the env's python instead of a program on PATH -----------------------
    @classmethod
    def find(cls, role: str, explicit: str | None = None) -> str:
        """The isolated env's python (card/constructor param ``encoder``/``decoder``
        may name another env's python); CodecError with the setup command if absent."""
        if explicit:
            if Path(explicit).is_file():
                return str(Path(explicit))
            raise CodecError(f"hific: {role} python {explicit!r} (from the card) is not a file")
        info, why = hific_env.state()
        if info is None:
            raise CodecError(f"hific: {why}")
        return str(hific_env.env_python())

    # -- points and weights ----------------------------------------------------
    def points(self) -> tuple:
        return POINTS

    def point_key(self, point: Any) -> str:
        if point in POINTS:
            return point
        raise CodecError(f"hific: no rate point {point!r}; valid points: {', '.join(POINTS)}")

    def weight_ids(self, point: Any) -> tuple[str, ...]:
        return (weight_id(self.point_key(point)),)

    def required_weights(self, points: Any = None) -> list[str]:
        return [weight_id(self.point_key(p)) for p in (POINTS if points is None else points)]

    # -- command lines -------------------------------------------------------------
    def encode_args(self, src: str, dst: str, point: Any) -> list[str]:
        key = self.point_key(point)
        weights.require([weight_id(key)])
        return [str(hific_env.RUNNER), "encode", src, dst, "--model", model_name(key),
                "--metagraph", str(weights.path(weight_id(key))), "--device", self.tf_device]

    def decode_args(self, src: str, dst: str) -> list[str]:
        # the bitstream names its model; the runner picks that file (and says which is missing)
        args = [str(hific_env.RUNNER), "decode", src, dst, "--device", self.tf_device]
        for p in POINTS:
            args += ["--metagraph", f"{model_name(p)}={weights.path(weight_id(p))}"]
        return args

    @property
    def tf_device(self) -> str:
        return "gpu" if str(self.device).startswith("cuda") else "cpu"

    # -- what produced the bytes ---------------------------------------------------------
    def env_info(self) -> dict[str, Any]:
        info = hific_env.marker(Path(self.paths["encoder"]).parent.parent) or {}
        keep = ("lock_sha256", "python", "tensorflow", "tensorflow_compression", "numpy")
        return {k: info.get(k) for k in keep}

    def provenance(self) -> dict[str, Any]:
        return {"python": self.paths["encoder"], "env": self.env_info(), "tf_device": self.tf_device,
                "runner_sha256": sha256_file_cached(hific_env.RUNNER),
                "weights": weights.provenance(self.required_weights())}

    def fingerprint(self, point: Any = None) -> dict[str, Any]:
        fp: dict[str, Any] = {"env": self.env_info(), "runner_sha256": sha256_file_cached(hific_env.RUNNER),
                              "tf_device": self.tf_device}
        try:
            wid = weight_id(self.point_key(point))
        except CodecError:
            fp["metagraph"] = {"invalid point": repr(point)}
            return fp
        p = weights.path(wid)
        fp["metagraph"] = {"file": p.name, "sha256": sha256_file_cached(p) if p.is_file() else None}
        return fp
