"""CDC (Yang & Mandt, NeurIPS 2023; code MIT): one adapter (``cdc``), cards ``cdc-x``,
``cdc-x-rho0``, ``cdc-eps``, ``cdc-eps-rho0`` in ``codecs/``, released files in ``weights.py``."""
from bench.codecs.cdc.adapter import CDC  # noqa: F401  (registers the adapter)
