"""CDC released checkpoints, as data (a light module: no torch import).

Release: the Hugging Face repository ``rhyang/CDC_params`` (linked from the README of
``buggyyang/CDC_compression``, code MIT; the weights carry no separate licence statement,
so the code's MIT licence is the best statement available). Every file is at
``https://huggingface.co/rhyang/CDC_params/resolve/main/<folder>/<file>``.

File names follow the training scripts' ``model_name`` patterns
(``xparam/train.py``: ``image-l2-use_weight5-vimeo-d64-t8193-b<β>-x-cosine-01-float32-aux<ρ>``
+ ``lpips`` when ρ > 0, then ``_<slot>.pt``; ``epsilonparam/train.py``:
``big-l1-vimeo-d64-t20000-b<β>-vbrFalse-noise-linear-aux<α>`` + ``lpips`` when α > 0). The
exact list below (which β exists with which ρ, the save slot suffix, ``_ckpt`` on the ε
ρ=0 files, and the folders ``x_param/`` and ``epsilon_param/``) is not in the official
repository: it was taken from public evaluation scripts that loop over *all* released
checkpoints (x_param and epsilon_param folders of a copy of the HF repository) and from
one published ``resolve/main/x_param/...`` URL. Check it against the repository's file
list before a first fetch; a wrong name fails the fetch with HTTP 404, never silently.
The ε files with ρ = 0 were trained with α = -1 (no LPIPS term, name ``aux-1.0``).

No digest is published: entries are *unverified* (``sha256 = sha256_prefix = ""``): any
file in place is accepted, and ``bench weights fetch|import`` print the sha256 to store
here. Format: ``torch.save`` of a dict; x-param ``{"step", "model", "ema"}`` where
``ema`` is an ``ema_pytorch`` 0.2.3 ``EMA`` state dict (``online_model.*``,
``ema_model.*``, ``initted``, ``step``) and the official test loads ``ema_model``;
ε-param ``{"step", "model"}``. ρ = 0.9 files also hold ``loss_fn_vgg.*`` (the LPIPS-VGG
training loss), which decoding does not use.
"""
from __future__ import annotations

from bench.weights import WeightFile

ROOT_URL = "https://huggingface.co/rhyang/CDC_params/resolve/main/"
LICENCE = "MIT (buggyyang/CDC_compression code licence; the weights state no other)"
PARAMS = ("x", "eps")
RHOS = (0.0, 0.9)

# (parameterisation, rho) -> (folder, [(beta, file name), ...])
_X = "image-l2-use_weight5-vimeo-d64-t8193-b{}-x-cosine-01-float32-aux{}_2.pt"
_E = "big-l1-vimeo-d64-t20000-b{}-vbrFalse-noise-linear-aux{}.pt"
FILES: dict[tuple[str, float], tuple[str, list[tuple[float, str]]]] = {
    ("x", 0.0): ("x_param", [(b, _X.format(b, "0.0")) for b in (0.0032, 0.0064, 0.0128)]),
    ("x", 0.9): ("x_param", [(b, _X.format(b, "0.9lpips")) for b in (0.0512, 0.1024, 0.2048)]),
    ("eps", 0.0): ("epsilon_param", [(b, _E.format(b, "-1.0_0_ckpt")) for b in (0.0128, 0.0256, 0.0512)]),
    ("eps", 0.9): ("epsilon_param", [(b, _E.format(b, "0.9lpips_0")) for b in (0.1024, 0.2048, 0.3072)]),
}


def weight_id(param: str, rho: float, beta: float) -> str:
    return f"cdc-{param}-rho{rho:g}-b{beta:g}"


def card_name(param: str, rho: float) -> str:
    """``cdc-x`` / ``cdc-eps`` for ρ = 0.9 (the paper's perceptual models), ``cdc-x-rho0`` for ρ = 0."""
    return f"cdc-{param}" + ("" if rho else "-rho0")


def betas(param: str, rho: float) -> tuple[float, ...]:
    """The released rates β of one (parameterisation, ρ)."""
    return tuple(b for b, _ in FILES[param, rho][1])


def _entries() -> tuple[WeightFile, ...]:
    out = []
    for (param, rho), (folder, files) in FILES.items():
        for beta, name in files:
            out.append(WeightFile(weight_id(param, rho, beta), name, f"{ROOT_URL}{folder}/{name}", "", LICENCE,
                                  "bench", (card_name(param, rho),),
                                  note=f"CDC {param}-parameterisation, rho={rho:g}, beta={beta:g}; no published "
                                       "digest (unverified); file list from public scripts, see "
                                       "bench/codecs/cdc/weights.py"))
    return tuple(out)


WEIGHTS: tuple[WeightFile, ...] = _entries()
