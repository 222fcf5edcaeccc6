"""Read a released ViT-Adapter checkpoint and load it unchanged into :class:`~.model.ViTAdapterSegmentor`.

File formats (:func:`torch_file`): a torch checkpoint is read as is, whatever its suffix (the
UperNet release is named ``.pth.tar`` but mmcv's ``load_checkpoint`` reads it directly); a zip or
tar archive that is *not* a torch file (the Mask2Former ``.zip`` releases) is unpacked once into
``<file>.unpacked/`` beside it and its single ``.pth``/``.pt``/``.pth.tar`` member is read.

:func:`load` takes the checkpoint's ``state_dict`` (mmcv's ``{"meta", "state_dict", ...}``; a
bare state dict is accepted too), checks it against the official key list of the config
(:func:`~.model.official_keys`: names and shapes; missing, unexpected and misshapen keys are all
listed in the error), checks each block's ``relative_position_index`` against the one timm
computes (they are buffers, not learned; timm does not store them), and loads the rest with
``strict=True``. Nothing is renamed or converted.

``torch.load`` runs with ``weights_only=True`` (numpy scalars/arrays/dtypes allowed: mmcv's
metadata holds some); ``BENCH_TRUST_CHECKPOINT=1`` allows full unpickling for a file whose
metadata needs more (only for a file you trust).
"""
from __future__ import annotations

import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import torch

from bench.metrics.vit_adapter.model import (
    ViTAdapterSegmentor,
    model_keys,
    official_keys,
)

CKPT_SUFFIXES = (".pth", ".pt", ".pth.tar", ".pkl")


class CheckpointError(ValueError):
    """A checkpoint that is not the expected model or cannot be read; says which file and why."""


def _is_torch_zip(names: list[str]) -> bool:
    return any(n == "data.pkl" or n.endswith("/data.pkl") for n in names)


def _is_torch_tar(names: list[str]) -> bool:  # torch's legacy (<1.6) tar format
    return {"storages", "tensors", "pickle"} <= {n.strip("./") for n in names}


def _member(path: Path, names: list[str]) -> str:
    cands = [n for n in names if n.endswith(CKPT_SUFFIXES) and not n.endswith("/")]
    if len(cands) != 1:
        raise CheckpointError(f"{path}: an archive with {len(cands)} checkpoint files ({cands[:5]}); expected one "
                              f".pth inside")
    return cands[0]


def torch_file(path: str | os.PathLike) -> Path:
    """The torch checkpoint to read for ``path``: itself, or the member of the archive it is
    (unpacked once into ``<path>.unpacked/``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    # tar first: a tar holding a torch (zip-format) file also looks like a zip to zipfile
    if tarfile.is_tarfile(path):
        with tarfile.open(path) as tf:
            names = tf.getnames()
            if _is_torch_tar(names):
                return path
            member = _member(path, names)
            info = tf.getmember(member)

            def open_tar_member():
                src = tf.extractfile(info)
                if src is None:
                    raise CheckpointError(f"{path}: member {member} is not a regular file")
                return src

            return _unpack_once(path, member, info.size, open_tar_member)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if _is_torch_zip(names):
                return path
            member = _member(path, names)
            return _unpack_once(path, member, zf.getinfo(member).file_size, lambda: zf.open(member))
    return path


def _unpack_once(archive: Path, member: str, size: int, open_member) -> Path:
    """``<archive>.unpacked/<member's name>``, copied out of the archive unless a file of ``size``
    bytes is already there (written to ``.part`` and renamed: a killed copy is never taken whole)."""
    out = archive.with_name(archive.name + ".unpacked") / Path(member).name
    if not (out.is_file() and out.stat().st_size == size):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".part")
        with open_member() as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, out)
    return out


def _numpy_data_globals() -> list:
    """numpy scalars, arrays and dtypes, which mmcv's checkpoint metadata may hold (e.g. the
    ``best_score`` of ``save_best``): plain data, allowed in the weights-only unpickler."""
    import numpy as np

    mod = np.core.multiarray
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return [mod.scalar, mod._reconstruct, np.ndarray, np.dtype, *dtypes]


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a checkpoint file (archives unpacked, see module doc), on the CPU."""
    return read_checkpoint(path)[0]


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(``state_dict``, ``meta``) of a checkpoint file; ``meta`` is {} when it has none. mmcv's
    meta holds e.g. ``CLASSES`` (the class names in train-id order) and ``mmseg_version``."""
    f = torch_file(path)
    trust = os.environ.get("BENCH_TRUST_CHECKPOINT") == "1"
    try:
        with torch.serialization.safe_globals(_numpy_data_globals()):
            obj = torch.load(f, map_location="cpu", weights_only=not trust)
    except Exception as exc:
        hint = "" if trust else (" If the file is the official release and only its metadata needs full unpickling, "
                                 "set BENCH_TRUST_CHECKPOINT=1.")
        raise CheckpointError(f"{f}: cannot read it as a torch checkpoint ({type(exc).__name__}: {exc}).{hint}") from exc
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{f}: no state_dict of tensors in it (top-level keys: "
                              f"{list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__})")
    meta = obj.get("meta") if sd is not obj else None
    return sd, meta if isinstance(meta, dict) else {}


def check_keys(sd: dict[str, torch.Tensor], expected: dict[str, tuple], where: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` listing missing, unexpected and misshapen keys."""
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = sorted(f"{k}: {tuple(sd[k].shape)} != {expected[k]}" for k in set(sd) & set(expected)
                    if tuple(sd[k].shape) != tuple(expected[k]))
    if missing or unexpected or shapes:
        parts = [f"{len(x)} {what} (first: {', '.join(x[:4])})" for what, x in
                 (("missing", missing), ("unexpected", unexpected), ("with another shape", shapes)) if x]
        raise CheckpointError(f"{where} does not match the official ViT-Adapter layout: {'; '.join(parts)}. Is it "
                              "the right variant (BENCH_VIT_ADAPTER_MODEL)?")


def load(model: ViTAdapterSegmentor, sd: dict[str, torch.Tensor], where: str = "checkpoint") -> ViTAdapterSegmentor:
    """Load ``sd`` into ``model`` strictly (see module doc); returns the model."""
    check_keys(sd, official_keys(model.cfg), where)
    ours = dict(model.named_buffers())
    rest = {}
    for k, v in sd.items():
        if k.endswith("attn.relative_position_index"):
            if not torch.equal(v.to(ours[k].device, ours[k].dtype), ours[k]):
                raise CheckpointError(f"{where}: {k} differs from BEiT's relative position index for a "
                                      f"{model.cfg.window} window")
            continue
        rest[k] = v
    model.load_state_dict(rest, strict=True)
    if set(model_keys(model)) != set(sd):  # belt and braces: every official key was consumed
        raise CheckpointError(f"{where}: keys left over after loading")
    return model


def check_classes(meta: dict, names, where: str = "checkpoint") -> None:
    """If the checkpoint's meta lists its classes (mmcv's ``CLASSES``), they must be ``names`` in
    that order (the train ids the metric compares with); no list: nothing to check."""
    from bench.metrics.segmenters import normalise

    # spelling-tolerant (case, "_"/"-", aliases), order-strict

    classes = meta.get("CLASSES")
    if classes is None:
        return
    ours, theirs = [normalise(n) for n in names], [normalise(n) for n in classes]
    if ours != theirs:
        diff = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), min(len(theirs), len(ours)))
        raise CheckpointError(f"{where}: its classes differ from COCO-Stuff-164k's train-id order at index {diff} "
                              f"({len(classes)} classes; e.g. {list(classes)[diff:diff + 2]}): not a COCO-Stuff model")
