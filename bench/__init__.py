"""bench: a reproducible evaluation harness for image codecs."""
__version__ = "0.1.0"
