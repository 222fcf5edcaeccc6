"""MS-ILLM and No-GAN (mean-scale HiFiC) weight files, as data (a light module: no torch import).

Facts from facebookresearch/NeuralCompression at commit
3f122808255a2278eea049119367eb3abc434862 (2024-09-20):

* ``hubconf.py`` names ``msillm_quality_vlo1``, ``msillm_quality_vlo2``,
  ``msillm_quality_1`` .. ``msillm_quality_6`` and ``noganms_quality_1`` ..
  ``noganms_quality_6`` (vlo1/vlo2 were added in 8e9c2ed5, "Add very low MS-ILLM rates").
* ``neuralcompression/zoo/_msillm.py`` and ``_noganms.py`` build every one of them as
  ``HiFiCAutoencoder()`` with its default configuration (no per-model architecture
  change, the vlo models included) and load
  ``https://dl.fbaipublicfiles.com/NeuralCompression/2023-muckley-msillm/<family>_target_<bpp>bpp.ckpt``
  with ``torch.hub.load_state_dict_from_url`` into ``model.load_state_dict`` (strict): each
  file is a plain state dict. ``torch.hub`` keeps it at
  ``$TORCH_HOME/hub/checkpoints/<file>``; bench uses the same place (``dest``
  ``torch-hub/checkpoints``), so a file a user already has from ``torch.hub.load`` is found.
* Licences: code MIT (``LICENSE``); weights CC-BY-NC 4.0 (``WEIGHTS_LICENSE``, stated in
  ``hubconf.py`` and the zoo loaders).

No sha256 is published (the file names carry none either): every entry has
``sha256 = sha256_prefix = ""``, i.e. *unverified*. ``bench weights fetch`` prints the
digest of what it downloaded so that it can be stored here (``SHA256`` below); once an
entry has a digest, every load verifies it.
"""
from __future__ import annotations

from bench.weights import WeightFile

ROOT_URL = "https://dl.fbaipublicfiles.com/NeuralCompression/2023-muckley-msillm/"
LICENCE = ("CC-BY-NC-4.0 (weights, facebookresearch/NeuralCompression WEIGHTS_LICENSE); "
           "model code MIT")
FAMILIES = ("msillm", "noganms")

# rate point -> training target bpp (the release's name of each file), per family
TARGETS: dict[str, dict[int | str, str]] = {
    "msillm": {"vlo1": "0.00218", "vlo2": "0.00438", 1: "0.035", 2: "0.07", 3: "0.14", 4: "0.3", 5: "0.45",
               6: "0.9"},
    "noganms": {1: "0.035", 2: "0.07", 3: "0.14", 4: "0.3", 5: "0.45", 6: "0.9"},
}
# bench card of each family
CARDS = {"msillm": "msillm", "noganms": "msillm-nogan"}
# full sha256 of a file, once a trusted copy has been hashed: weight id -> 64 hex digits
SHA256: dict[str, str] = {}


def hub_name(family: str, point: int | str) -> str:
    """The release's ``torch.hub`` entry point: ``msillm_quality_3``, ``msillm_quality_vlo1``."""
    return f"{family}_quality_{point}"


def weight_id(family: str, point: int | str) -> str:
    return f"{family}-quality-{point}"


def filename(family: str, point: int | str) -> str:
    return f"{family}_target_{TARGETS[family][point]}bpp.ckpt"


def _entries() -> tuple[WeightFile, ...]:
    out = []
    for family, targets in TARGETS.items():
        for point, bpp in targets.items():
            wid, name = weight_id(family, point), filename(family, point)
            out.append(WeightFile(
                wid, name, ROOT_URL + name, SHA256.get(wid, ""), LICENCE, "torch-hub/checkpoints", (CARDS[family],),
                note=f"torch.hub entry {hub_name(family, point)} of facebookresearch/NeuralCompression "
                     f"(training target {bpp} bpp); no published sha256"))
    return tuple(out)


WEIGHTS: tuple[WeightFile, ...] = _entries()
