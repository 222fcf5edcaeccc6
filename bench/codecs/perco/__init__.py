"""PerCo (Careil et al., ICLR 2024): one adapter (``perco``), card ``codecs/perco.yaml``; rate
settings and released folders in ``weights.py``, networks in ``model.py``, DDIM sampling in
``sampler.py``."""
from bench.codecs.perco.adapter import PerCo  # noqa: F401  (registers the adapter)
