"""HiFiC (F. Mentzer, G. Toderici, M. Tschannen, E. Agustsson, "High-Fidelity Generative
Image Compression", NeurIPS 2020): the official models released by TensorFlow
Compression as ``hific-lo``, ``hific-mi``, ``hific-hi``.

Route (decided for issue 11): run the official TensorFlow metagraphs, exactly as TFC's
``models/tfci.py`` does, in an isolated venv (TensorFlow 2.14.1, tensorflow-compression
2.14.1, scipy 1.11, numpy 1.26: ``requirements.lock``) driven through the
external-program base. Why: it is the only route that reproduces the official
bitstreams and numbers exactly (same graph, same range coder, same ``.tfci`` format),
and TFC 2.14.1 cannot share bench's environment (it pins TensorFlow 2.14 and
scipy ~1.11, numpy < 2). The community PyTorch port was not taken: its converted
weights and its own entropy coder give other bytes and other numbers.

Parts: :mod:`.env` makes the venv (``python -m bench.codecs.hific.env``,
:func:`.env.ensure_env`); :mod:`.runner` is the script that venv's python runs
(encode PNG -> .tfci, decode .tfci -> PNG); :mod:`.adapter` is the ``hific`` codec;
:mod:`.weights` lists the three metagraphs for :mod:`bench.weights`.
"""
from bench.codecs.hific.adapter import HiFiC  # noqa: F401  (registers the adapter)
