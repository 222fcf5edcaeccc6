"""HiFiC's released models as weight files, as data (a light module: no TensorFlow import).

Facts from TensorFlow Compression (``models/tfci.py``, ``models/hific/README.md``):
the three models ``hific-lo``, ``hific-mi``, ``hific-hi`` are serialized TensorFlow
MetaGraphDefs at ``https://storage.googleapis.com/tensorflow_compression/metagraphs/
<model>.metagraph``; the code and the released models are Apache-2.0 (TFC repository).
TFC publishes no digest for them (tfci.py downloads them unchecked), so the entries
carry none (``verified_by == "unverified"`` in :mod:`bench.weights`): a file of that name
is accepted, ``bench weights fetch/import`` print its sha256, and the actual sha256 is
recorded in provenance and in every result key.
Put the full sha256 here once a trusted copy has been hashed. They live in bench's
own cache (dest ``bench``), from where the adapter hands them to its runner by path.
"""
from __future__ import annotations

from bench.weights import WeightFile

URL_PREFIX = "https://storage.googleapis.com/tensorflow_compression/metagraphs/"
LICENCE = "Apache-2.0 (tensorflow/compression: HiFiC code and released models)"
POINTS = ("lo", "mi", "hi")


def model_name(point: str) -> str:
    """The TFC model name of a rate point, as written into each .tfci bitstream."""
    return f"hific-{point}"


def weight_id(point: str) -> str:
    return model_name(point)


WEIGHTS = tuple(
    WeightFile(weight_id(p), f"{model_name(p)}.metagraph", f"{URL_PREFIX}{model_name(p)}.metagraph", "",
               LICENCE, "bench", ("hific",),
               note="TFC publishes no sha256 for its metagraphs: the file is not verified, its sha256 is recorded")
    for p in POINTS)
