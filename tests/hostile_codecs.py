"""Every registered codec card, built so that it runs on this machine (a helper of
tests/test_hostile_bitstreams.py): classical cards as they are; programs that users build
(VTM, libbpg) as the fake programs of tests/test_yuv_codecs.py; learned cards with seeded
random weights (CDC on its tiny architecture, PerCo on its tiny networks, as tests/test_cdc.py
and tests/test_perco.py do). HiFiC needs its TensorFlow metagraphs (never downloadable here)."""
from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from bench import cards
from bench.cards import Card

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
NEEDS_WEIGHTS = {"hific": ("hific-lo", "hific-mi", "hific-hi")}


@dataclass
class Setup:
    card: Card
    init: str  # "pretrained" (no learned parameters) or "random"
    point: object
    size: tuple[int, int]  # (H, W) of the real crop it codes
    encode_extra: dict


def all_card_names() -> list[str]:
    return sorted(p.stem for p in (REPO / "codecs").glob("*.yaml"))


def _fake_programs(root: Path) -> dict[str, str]:
    """bpgenc/bpgdec and a VTM build dir of fake programs (tests/test_yuv_codecs.py's)."""
    import test_yuv_codecs as y

    root.mkdir(parents=True, exist_ok=True)
    log = root / "argv.log"
    vtm = root / "VVCSoftware_VTM"
    (vtm / "bin").mkdir(parents=True, exist_ok=True)
    (vtm / "cfg").mkdir(exist_ok=True)
    (vtm / "cfg" / "encoder_intra_vtm.cfg").write_text("InternalBitDepth : 10\n")
    progs = {"EncoderAppStatic": (vtm / "bin", y.FAKE_VTM_ENC, {}), "DecoderAppStatic": (vtm / "bin", y.FAKE_VTM_DEC,
                                                                                          {"garbage": b""}),
             "bpgenc": (root, y.FAKE_BPGENC, {}), "bpgdec": (root, y.FAKE_BPGDEC, {"root": str(REPO)})}
    out = {"vtm": str(vtm)}
    for name, (folder, body, extra) in progs.items():
        exe = folder / name
        exe.write_text(f"#!{sys.executable}\nimport sys; sys.path.insert(0, {str(REPO)!r})\n"
                       + textwrap.dedent(body.format(tests=str(TESTS), log=str(log), **extra)))
        exe.chmod(0o755)
        out[name] = str(exe)
    return out


SLOW_CONTEXT = ("mbt2018", "mbt2018-msssim", "cheng2020-anchor", "cheng2020-anchor-msssim", "cheng2020-attn",
                "cheng2020-attn-msssim")  # serial context models: tiny images on a CPU


def setup(name: str, tmp: Path) -> Setup:
    """``name``'s card, changed only where this machine needs it (fake programs, tiny random
    networks, a short program timeout so that a hang shows in seconds)."""
    card = cards.get("codec", name)
    body = {**card.body, "params": dict(card.body.get("params") or {})}
    params = body["params"]
    points = list(body.get("points") or [])
    point, init, size, extra = points[0], "pretrained", (48, 64), {}
    target = card.target
    if name == "bpg":
        fakes = _fake_programs(tmp / "fakes")
        params.update(encoder=fakes["bpgenc"], decoder=fakes["bpgdec"])
    elif target == "vtm":
        fakes = _fake_programs(tmp / "fakes")
        params.update(build_dir=fakes["vtm"])
    if target in ("bpg", "vtm", "avifenc", "cjxl", "x265"):
        params["timeout_s"] = 60
    if target in ("compressai-zoo", "msillm", "cdc", "perco"):
        init = "random"
        if name in SLOW_CONTEXT:
            size = (32, 48)
    if target == "cdc":
        params.update(size="tiny", steps=2)
    if target == "perco":
        params.update(caption="dataset", steps=2)
        extra = {"captions": ["a hostile test"]}
    return Setup(Card("codec", name, body, card.path), init, point, size, extra)
