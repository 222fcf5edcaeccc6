"""MS-ILLM (Muckley et al., ICML 2023; code MIT, weights CC-BY-NC-4.0): one adapter (``msillm``),
cards ``msillm`` (GAN-trained, points vlo1, vlo2, 1..6) and ``msillm-nogan`` (1..6) in ``codecs/``,
the network in ``model.py`` (its release key list in ``release_keys.txt``), weight files in
``weights.py``."""
from bench.codecs.msillm.adapter import MSILLMCodec  # noqa: F401  (registers the adapter)
