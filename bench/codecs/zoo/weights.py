"""CompressAI model zoo weight files, as data (a light module: no torch import).

Facts from CompressAI 1.2.8 (``compressai/zoo/image.py``, ``model_urls``): every
file is at ``https://compressai.s3.amazonaws.com/models/v1/<file>``, named
``<stem>-<quality>-<8 hex>.pth.tar`` where the 8 hex digits are the start of the
file's sha256 (``torch.hub`` checks them). CompressAI publishes no full digests,
so entries are checked by that prefix (``sha256_prefix``); put the full sha256
here once a trusted copy has been hashed. Files go where CompressAI's own loader
looks: ``$TORCH_HOME/hub/checkpoints/<file>``. Licence: the zoo's weights are
released with CompressAI under BSD-3-Clause-Clear.
"""
from __future__ import annotations

from bench.weights import WeightFile

ROOT_URL = "https://compressai.s3.amazonaws.com/models/v1/"
LICENCE = "BSD-3-Clause-Clear (InterDigital CompressAI model zoo)"
METRICS = ("mse", "ms-ssim")

# (architecture, training metric) -> (file-name stem, sha256 prefixes of qualities 1, 2, ...)
FILES: dict[tuple[str, str], tuple[str, str]] = {
    ("bmshj2018-factorized", "mse"): (
        "bmshj2018-factorized-prior", "446d5c7f 87279a02 5c6f152b 1ed4405a 866ba797 9b02ea3a 6dfd6734 5232faa3"),
    ("bmshj2018-factorized", "ms-ssim"): (
        "bmshj2018-factorized-ms-ssim", "9781d705 4a584386 5352f123 4f91b847 b3a88897 ee028763 8c265a29 8811bd14"),
    ("bmshj2018-hyperprior", "mse"): (
        "bmshj2018-hyperprior", "7eb97409 93677231 6d87be32 de1b779c f8b614e1 1ab9c41e 3804dcbd a583f0cf"),
    ("bmshj2018-hyperprior", "ms-ssim"): (
        "bmshj2018-hyperprior-ms-ssim", "5cf249be 1ff60d1f 92dd7878 4377354e c34afc8d 3a6d8229 8747d3bc cc15b5f3"),
    ("mbt2018-mean", "mse"): (
        "mbt2018-mean", "e522738d e54a039d 723404a8 6dba02a3 d504e8eb a19628ab d5d441d1 8089ae3e"),
    ("mbt2018-mean", "ms-ssim"): (
        "mbt2018-mean-ms-ssim", "5bf9c0b6 e2a1bf3f 640ce819 12626c13 1be7f059 b83bf379 ddf9644c 0cc7b94f"),
    ("mbt2018", "mse"): (
        "mbt2018", "3f36cd77 43b70cdd 22901978 456e2af9 b4a046dd 7052e5ea 8ba2bf82 dd0097aa"),
    ("mbt2018", "ms-ssim"): (
        "mbt2018-ms-ssim", "2878436b c41cb208 d0dd64e8 a120e037 9b30e3b7 f8b3626f 16e6ff50 0cb49d43"),
    ("cheng2020-anchor", "mse"): (
        "cheng2020-anchor", "dad2ebff a29008eb e49be189 98b0b468 23852949 4c052b1a"),
    ("cheng2020-anchor", "ms-ssim"): (
        "cheng2020_anchor-ms-ssim", "20f521db c7ff5812 c23e22d5 0e658304 c0a95e77 f2dc1913"),
    ("cheng2020-attn", "mse"): (
        "cheng2020_attn-mse", "465f2b64 e0805385 2d07bbdf f7b0ccf2 26c8920e 730501f2"),
    ("cheng2020-attn", "ms-ssim"): (
        "cheng2020_attn-ms-ssim", "c5381d91 5dad201d 5c9be841 8b2f647e 5ca1f34c 216423ec"),
}


def card_name(arch: str, metric: str) -> str:
    """The codec card of an architecture and training metric: ``mbt2018`` / ``mbt2018-msssim``."""
    return arch if metric == "mse" else f"{arch}-msssim"


def weight_id(arch: str, metric: str, quality: int) -> str:
    return f"compressai-{arch}-{metric}-{quality}"


def qualities(arch: str, metric: str = "mse") -> tuple[int, ...]:
    return tuple(range(1, len(FILES[arch, metric][1].split()) + 1))


def _entries() -> tuple[WeightFile, ...]:
    out = []
    for (arch, metric), (stem, prefixes) in FILES.items():
        for quality, prefix in enumerate(prefixes.split(), start=1):
            filename = f"{stem}-{quality}-{prefix}.pth.tar"
            out.append(WeightFile(weight_id(arch, metric, quality), filename, ROOT_URL + filename, "", LICENCE,
                                  "torch-hub/checkpoints", (card_name(arch, metric),), sha256_prefix=prefix))
    return tuple(out)


WEIGHTS: tuple[WeightFile, ...] = _entries()
