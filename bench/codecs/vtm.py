"""VVC intra through the VTM reference software (EncoderApp / DecoderApp), driven the way
CompressAI's bench drives it.

Facts (``compressai.utils.bench.codecs.VTM``, CompressAI 1.2.8): the RGB image is
converted to 4:4:4 8-bit YCbCr (BT.709, see ``colour.compressai_rgb_to_planes``),
written as a planar ``.yuv`` and encoded with

    EncoderAppStatic -i in.yuv -c <VTM>/cfg/encoder_intra_vtm.cfg -q QP -o /dev/null
        -b out.bin -wdt W -hgt H -fr 1 -f 1 --InputChromaFormat=444 --InputBitDepth=8
        --ConformanceWindowMode=1

then decoded with ``DecoderAppStatic -b out.bin -o rec.yuv -d 8``; bpp = 8 x size of
``out.bin`` / (H x W). The internal bit depth is the config file's (VTM's
``encoder_intra_vtm.cfg`` says ``InternalBitDepth : 10``); the card's
``internal_bits`` overrides it when set. CompressAI's published Kodak curve uses
QP 47, 42, ..., 12 (``examples/run-benchmarks.sh``).

Programs are found from the card/flag (``encoder:``/``decoder:`` paths, or
``build_dir:`` holding ``EncoderAppStatic``/``EncoderApp``, as CompressAI's
``-b``), ``BENCH_ENCODERAPPSTATIC``/``BENCH_DECODERAPPSTATIC``, then PATH. The
configuration file from ``config:``, ``$BENCH_VTM_CFG``, else
``cfg/encoder_intra_vtm.cfg`` in a parent folder of the encoder (VTM's source
tree layout: ``VVCSoftware_VTM/bin/...`` and ``VVCSoftware_VTM/cfg/``). Its sha256
is part of every result's fingerprint.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench.codecs.base import CodecError
from bench.codecs.yuv_program import YuvProgramCodec
from bench.hashing import sha256_file_cached
from bench.registry import register

CONFIG_NAME = "encoder_intra_vtm.cfg"
CONFIG_ENV = "BENCH_VTM_CFG"


def find_in_build_dir(build_dir: str, names: tuple[str, ...]) -> str:
    """The first of ``names`` in ``build_dir`` or ``build_dir/bin`` (CodecError if none)."""
    for folder in (Path(build_dir), Path(build_dir) / "bin"):
        for name in names:
            if (folder / name).is_file():
                return str(folder / name)
    raise CodecError(f"vtm: none of {', '.join(names)} in build_dir {build_dir} (or its bin/)")


def find_config(explicit: str | None, encoder: str) -> str:
    """The all-intra configuration file (see module docstring), or CodecError saying where it was looked for."""
    candidate = explicit or os.environ.get(CONFIG_ENV)
    if candidate:
        if not Path(candidate).is_file():
            raise CodecError(f"vtm: config {candidate!r} (from {'card' if explicit else CONFIG_ENV}) is not a file")
        return str(Path(candidate).resolve())
    for parent in list(Path(encoder).resolve().parents)[:6]:
        if (parent / "cfg" / CONFIG_NAME).is_file():
            return str(parent / "cfg" / CONFIG_NAME)
    raise CodecError(f"vtm: no cfg/{CONFIG_NAME} above {encoder}; give the card param config: "
                     f"/path/to/VVCSoftware_VTM/cfg/{CONFIG_NAME} or set {CONFIG_ENV}")


@register("codec", "vtm")
class VTM(YuvProgramCodec):
    """VVC intra (VTM). Rate point = QP 0..63 (lower = better)."""

    name = "vtm"
    point_name = "qp"
    higher_point_is_better = False
    default_points = (47, 42, 37, 32, 27, 22, 17, 12)
    programs = {"encoder": "EncoderAppStatic", "decoder": "DecoderAppStatic"}
    program_alternatives = {"encoder": ("EncoderApp",), "decoder": ("DecoderApp",)}
    version_args = ("--help",)  # both print "VVCSoftware: VTM Encoder/Decoder Version X [...]" first
    install_hint = ("VTM is not packaged: build it from https://vcgit.hhi.fraunhofer.de/jvet/VVCSoftware_VTM "
                    "(cmake; binaries land in bin/), then give the card param build_dir:/encoder:/decoder:, "
                    "or `bench run --program EncoderAppStatic=PATH`")
    bitstream_suffix = ".bin"
    standard = "vvc"
    timeout_s = 3600.0  # CompressAI measured up to ~260 s per Kodak image at QP 12

    def __init__(self, device: str = "cpu", build_dir: str | None = None, config: str | None = None,
                 internal_bits: int | None = None, **params: Any) -> None:
        params.update(self.program_params(build_dir, params))
        super().__init__(device, internal_bits=internal_bits, **params)
        self.config = find_config(config, self.paths["encoder"])
        self.internal_bits = None if internal_bits is None else int(internal_bits)

    @classmethod
    def program_params(cls, build_dir: str | None, params: dict[str, Any]) -> dict[str, str | None]:
        """Each role's program path: the card's ``encoder:``/``decoder:``, else found in
        ``build_dir`` (CodecError if it is given and lacks one), else None (environment, PATH)."""
        return {role: params.get(role) or (find_in_build_dir(build_dir, (exe, *cls.program_alternatives[role]))
                                           if build_dir else None)
                for role, exe in cls.programs.items()}

    @classmethod
    def available(cls, **params: Any) -> tuple[bool, str]:
        """Programs (from ``build_dir`` too) and the configuration file found."""
        try:
            paths = cls.program_params(params.get("build_dir"), params)
            find_config(params.get("config"), cls.find("encoder", paths["encoder"]))
        except CodecError as exc:
            return False, str(exc)
        return super().available(**paths)

    def encode_args(self, src: str, dst: str, point: Any) -> list[str]:
        qp = int(point)
        if qp != point or not 0 <= qp <= 63:
            raise CodecError(f"vtm: rate point is an integer QP in [0, 63], got {point!r}")
        w, h = self.frame
        args = ["-i", src, "-c", self.config, "-q", str(qp), "-o", os.devnull, "-b", dst,
                "-wdt", str(w), "-hgt", str(h), "-fr", "1", "-f", "1",
                f"--InputChromaFormat={self.chroma}", f"--InputBitDepth={self.bits}", "--ConformanceWindowMode=1"]
        if self.internal_bits is not None:
            args.append(f"--InternalBitDepth={self.internal_bits}")
        return args

    def decode_args(self, src: str, dst: str) -> list[str]:
        return ["-b", src, "-o", dst, "-d", str(self.bits)]

    def provenance(self) -> dict[str, Any]:
        """Programs plus the configuration file (its sha256, not its path, enters the fingerprint)."""
        return {**super().provenance(), "config": {"path": self.config, "sha256": sha256_file_cached(self.config)}}
