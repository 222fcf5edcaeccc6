"""``bench codecs new NAME --kind classical|external|torch``: the skeleton of a codec plugin.

It writes one installable package, outside bench::

    NAME/
      pyproject.toml          entry points: bench.codecs (the adapter class), bench.cards (the card)
      README.md               install, check, run; how to ship weights and add curves to CI
      bench_NAME/__init__.py
      bench_NAME/adapter.py   the adapter: fill in the bodies that raise NotImplementedError
      bench_NAME/codecs/NAME.yaml   the card, shipped as package data (found through bench.cards)
      bench_NAME/weights.py   (--kind torch) the weight table: URL, sha256, licence
      tests/test_bench_NAME.py      runs `bench codecs check NAME`

Until its bodies are written the adapter raises NotImplementedError saying what to write,
so ``bench codecs check NAME`` fails and says so. The guide is docs/add-a-codec.md.
"""
from __future__ import annotations

import re
from pathlib import Path
from string import Template

KINDS = ("classical", "external", "torch")
NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class ScaffoldError(ValueError):
    """A name, kind or folder the scaffold cannot use; the message says why."""


def names(name: str) -> dict[str, str]:
    """The names derived from a codec name: ``my-codec`` -> package ``bench_my_codec``,
    distribution ``bench-my-codec``, class ``MyCodec``."""
    snake = name.replace("-", "_")
    camel = "".join(part.capitalize() for part in name.split("-"))
    return {"name": name, "snake": snake, "pkg": f"bench_{snake}", "dist": f"bench-{name}",
            "cls": camel if camel.endswith("Codec") else camel + "Codec"}


def new_plugin(name: str, kind: str = "classical", out: str | Path = ".") -> Path:
    """Write the plugin package for codec ``name`` into ``out/name``; returns that folder."""
    if not NAME_RE.match(name):
        raise ScaffoldError(f"codec name {name!r}: use lower-case letters, digits and single dashes, starting "
                            "with a letter (e.g. my-codec)")
    if kind not in KINDS:
        raise ScaffoldError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    from bench import cards, registry

    if name in cards.cards("codec") or name in registry.entries("codec"):
        raise ScaffoldError(f"a codec card or adapter named {name!r} exists already: pick another name")
    root = Path(out) / name
    if root.exists() and any(root.iterdir()):
        raise ScaffoldError(f"{root} exists and is not empty: choose another --out or remove it")
    n = names(name)
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"{n['pkg']}/__init__.py": INIT,
        f"{n['pkg']}/adapter.py": ADAPTERS[kind],
        f"{n['pkg']}/codecs/{name}.yaml": CARDS[kind],
        f"tests/test_{n['pkg']}.py": TEST,
    }
    if kind == "torch":
        files[f"{n['pkg']}/weights.py"] = WEIGHTS
    values = {**n, "kind": kind, "init": ', init="random"' if kind == "torch" else "",
              "init_flag": " --init random" if kind == "torch" else ""}
    for rel, template in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(template).substitute(values))
    return root


# ---------------------------------------------------------------------------- templates
PYPROJECT = '''\
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "The $name codec as a bench plugin"
requires-python = ">=3.10"
# bench itself is installed from its checkout (it is not on PyPI under that name); list the
# other packages your codec needs here.
dependencies = []

# bench finds the adapter class through this entry point ...
[project.entry-points."bench.codecs"]
$name = "$pkg.adapter:$cls"

# ... and the card(s) in $pkg/codecs/ through this one.
[project.entry-points."bench.cards"]
$pkg = "$pkg"

[tool.setuptools]
packages = ["$pkg"]

[tool.setuptools.package-data]
$pkg = ["codecs/*.yaml"]
'''

INIT = '''\
"""The $name codec for bench (adapter in adapter.py, card in codecs/$name.yaml)."""
'''

ADAPTER_DOC = '''\
"""$name: a bench codec adapter (written by `bench codecs new $name --kind $kind`).

The contract (bench/codecs/base.py): ``encode`` turns uint8 RGB (H, W, 3) into bytes that
hold everything the decoder needs, the image size included; ``decode`` gets those bytes
alone - in another process, from a fresh instance built from the card - and returns uint8
(H, W, 3) of the original size, or raises CodecError saying what is wrong with the bytes.
Write the bodies that raise NotImplementedError, then run ``bench codecs check $name$init_flag``.
"""
'''

CLASSICAL = ADAPTER_DOC + '''\
from __future__ import annotations

from typing import Any

import numpy as np

from bench.codecs.base import Codec, CodecError, check_rgb  # noqa: F401  (CodecError: for decode)


class $cls(Codec):
    name = "$name"  # the card's `adapter:` (and the entry point's name)
    version = "1"  # bump when bytes or reconstructions change: stored results then recompute
    point_name = "quality"  # what a rate point means
    higher_point_is_better = True  # False if a larger point means fewer bits (a quantizer, a distance)
    default_points = (1, 2, 3)
    stochastic = False  # True if decode(data, seed) draws noise from seed
    lossless = False  # True if decode(encode(rgb)) == rgb

    def __init__(self, device: str = "cpu", dtype: str = "float32", init: str = "pretrained", **params: Any) -> None:
        super().__init__(device, dtype, init, **params)  # params: the card's `params:`

    def encode(self, rgb: np.ndarray, point: Any, seed: int = 0) -> bytes:
        check_rgb(rgb)
        raise NotImplementedError("$name.encode: compress rgb (uint8 H x W x 3) at rate point `point` into bytes that also hold H and W (a small header) and return them")

    def decode(self, data: bytes, seed: int = 0) -> np.ndarray:
        raise NotImplementedError("$name.decode: read H, W and the payload from `data` alone and return uint8 (H, W, 3); raise CodecError('what is wrong') for empty, truncated or corrupted bytes")

    def fingerprint(self, point: Any) -> dict:
        # Versions of what outside this file can change bytes or pixels (libraries, programs),
        # e.g. {"zlib": zlib.ZLIB_RUNTIME_VERSION}: part of every result's resume key.
        return {}
'''

EXTERNAL = ADAPTER_DOC + '''\
from __future__ import annotations

from typing import Any

from bench.codecs.external import SubprocessCodec


class $cls(SubprocessCodec):
    """Runs an encoder and a decoder program. Each is found from the card's params
    (``encoder: /path``, ``decoder: /path``), else the environment variable BENCH_<PROGRAM>
    (upper case, "-" as "_"), else PATH; their sha256 and version string are the fingerprint."""

    name = "$name"  # the card's `adapter:` (and the entry point's name)
    version = "1"  # bump when the arguments change: stored results then recompute
    point_name = "quality"
    higher_point_is_better = True  # False if a larger point means fewer bits (a quantizer, a distance)
    default_points = (1, 2, 3)
    programs = {"encoder": "$name-enc", "decoder": "$name-dec"}  # role -> executable name
    version_args = ("--version",)  # how each program prints its version
    install_hint = "Install $name's programs"
    input_suffix = ".png"  # the encoder reads this image file
    bitstream_suffix = ".bin"  # the encoder writes this file: the stored bytes
    output_suffix = ".png"  # the decoder writes this image file

    def encode_args(self, src: str, dst: str, point: Any) -> list[str]:
        raise NotImplementedError("$name.encode_args: return the encoder's arguments to read image `src` and write the bitstream `dst` at rate point `point`")

    def decode_args(self, src: str, dst: str) -> list[str]:
        raise NotImplementedError("$name.decode_args: return the decoder's arguments to read the bitstream `src` and write the image `dst`")
'''

TORCH = ADAPTER_DOC + '''\
from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.codecs.container import Container, Section  # noqa: F401
from bench.codecs.torch_base import TorchCodec
from $pkg import weights as _weights  # noqa: F401  (adds the weight files to bench.weights)


class $cls(TorchCodec):
    """A learned codec. The base builds the model of a point lazily (from its checked weight
    files, or seeded random weights under --init random), pads to ``pad_multiple``, writes the
    bench container (codec id, point, size, weights id, your sections, CRC) and crops back."""

    name = "$name"  # the card's `adapter:` (and the entry point's name)
    family = "$snake"
    version = "1"  # bump when bytes or reconstructions change
    libraries = ()  # Python packages whose versions change bytes, e.g. ("compressai",)
    default_points = (1, 2, 3)
    pad_multiple = 64
    reduced_precision = ()  # submodules that may run in --dtype (analysis / final synthesis only)

    def weight_table(self) -> dict:
        raise NotImplementedError("$name.weight_table: map each rate point to its weight id(s) in weights.py, e.g. {1: '$name-q1', 2: '$name-q2'}")

    def build_model(self, point: Any, files: list[Path] | None) -> Any:
        raise NotImplementedError("$name.build_model: build the torch.nn.Module of `point` and load files[0] into it; files is None under --init random (keep the random initial weights)")

    def encode_tensor(self, model: Any, x: Any, point: Any, seed: int) -> tuple[list[Section], tuple[int, ...]]:
        raise NotImplementedError("$name.encode_tensor: entropy-code x ((1, 3, Hp, Wp) in [0, 1], padded) into [Section('y', bytes)] and return them with the latent dims the decoder needs")

    def decode_tensor(self, model: Any, container: Container, generator: Any) -> Any:
        raise NotImplementedError("$name.decode_tensor: read container.section('y') and container.dims and return (1, 3, Hp, Wp) in [0, 1]")
'''

WEIGHTS = '''\
"""The $name weight files, as data (no torch import here): each with its official URL,
sha256 (or the 8-hex prefix its publisher puts in the file name), licence and place.
Importing this module adds them to bench.weights, so `bench weights list|fetch|import|verify`
and the runner's offline checks see them."""
from __future__ import annotations

from bench import weights
from bench.weights import WeightFile

ROOT_URL = "https://example.org/$name/"  # where the files are published
LICENCE = "state the weights' licence"

# One entry per file, e.g.:
# WeightFile("$name-q1", "$name-q1.pth", ROOT_URL + "$name-q1.pth", "<64-hex sha256>", LICENCE,
#            "bench", ("$name",)),
WEIGHTS: tuple[WeightFile, ...] = ()

for _w in WEIGHTS:
    if _w.id not in weights.table():
        weights.add(_w)
'''

_CARD_HEAD = '''\
name: $name
adapter: $name
description: "$name: say what the codec is (paper or release, version, settings)."
params: {}
'''

_CARD_TAIL = '''\
licence: "state the codec's licence (and its weights' licence, if any)"
# lossless: true   # if decode(encode(rgb)) == rgb
'''

CLASSICAL_CARD = _CARD_HEAD + '''\
point_name: quality
points: [1, 2, 3]
colour: "RGB uint8 in and out; say what the codec does to colour (matrix, range, chroma subsampling, bit depth)"
''' + _CARD_TAIL

TORCH_CARD = _CARD_HEAD + '''\
point_name: quality
points: [1, 2, 3]
colour: "RGB in [0, 1] into the network; say what the codec does to colour"
weight_files: "ids $name-q<point> in `bench weights list`"
''' + _CARD_TAIL

ADAPTERS = {"classical": CLASSICAL, "external": EXTERNAL, "torch": TORCH}
CARDS = {"classical": CLASSICAL_CARD, "external": CLASSICAL_CARD, "torch": TORCH_CARD}

TEST = '''\
"""bench's conformance check on this codec: the same check bench runs on its own codecs."""
from bench.codecs.check import run_checks


def test_bench_codecs_check():
    report = run_checks("$name"$init)
    assert not report.failed, "\\n".join(f"{c.name}: {c.detail}" for c in report.failed)
'''

README = '''\
# $dist

The $name codec as a bench plugin: adapter `$pkg/adapter.py`,
card `$pkg/codecs/$name.yaml`. Written by `bench codecs new $name --kind $kind`; the
full guide is bench's `docs/add-a-codec.md`.

```
pip install -e .                          # into the environment where bench is installed
bench codecs check $name$init_flag          # the contract, check by check
bench run --dataset kodak --data-dir ../shared/data/kodak --codec $name,jpeg,webp
pytest tests                              # runs the same check
```

* `bench codecs list` shows the card; `bench codecs check $name` says what is wrong, check
  by check, and exits non-zero until the adapter keeps the contract (until the bodies that
  raise NotImplementedError are written, that is what it says).
* Bump `version` in the adapter whenever bytes or reconstructions change, and return the
  versions of the libraries/programs that make the bytes from `fingerprint()`: both key
  stored results, so a change recomputes exactly what it affects.
* Weights (learned codecs): list every file in `weights.py` with its official https URL
  and sha256; users get them with `bench weights fetch ID` or `bench weights import FILE`.
* The card is package data found through the `bench.cards` entry point; a card file can also
  be given by path (`--codec path/to/card.yaml`) or in a folder on `BENCH_CARDS`.
'''
