"""The CompressAI model zoo (BSD-3-Clause-Clear): one adapter (``compressai-zoo``), one
card per architecture and training metric in ``codecs/``, weight files in ``weights.py``."""
from bench.codecs.zoo.adapter import CompressAIZoo  # noqa: F401  (registers the adapter)
