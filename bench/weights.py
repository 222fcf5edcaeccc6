"""Every pretrained file bench needs: where it comes from, its sha256, its licence, where it must be.

One table (``TABLE``), in the style of CompressAI's model zoo: each :class:`WeightFile`
names its official URL, its sha256, its licence, the place where the consuming
library looks for it (``dest``) and what uses it. Nothing here downloads during
a run:

- :func:`require` (called by the runner before any work, and by every learned
  metric's ``build``) checks that each file is in place with the right hash and
  otherwise raises :class:`WeightsError`, whose message gives, for every missing
  file, the URL, the expected sha256 and the exact path to put it at;
- :func:`fetch` (``bench weights fetch``) downloads explicitly, with a short
  network timeout so that an offline machine fails in seconds, not minutes;
- :func:`import_file` (``bench weights import FILE``) copies a file obtained
  elsewhere into place after matching its content to a table entry.

Hashes. ``sha256`` is the full 64-hex digest where it could be established
(torchvision backbones, LPIPS, DISTS, PieAPP, MUSIQ, the clean-fid Inception,
OpenAI CLIP: the digest is published, or the file ships in a package, or several
independent sources agree). For three files hosted by pyiqa (CKDN, DBCNN KonIQ,
DBCNN SCNN) and the mmsegmentation checkpoint only the 8-hex prefix that their
publishers put in the file name is known: those entries have ``sha256 = ""`` and
``sha256_prefix`` set, and a file is accepted when its sha256 *starts with* that
prefix (``WeightFile.verified_by`` says which check applies; ``bench weights list``
shows it). Replace them by the full digest once a trusted copy has been hashed.
A publisher may give no digest at all (the MS-ILLM release): such an entry has both
fields empty and is *unverified* (``verified_by == "unverified"``): any file in place is
accepted, and :func:`fetch` and :func:`import_file` print the sha256 of what they install
(to stdout) so that it can be stored in the table; from then on every load verifies it.

Destinations (``dest``):

- ``torch-hub/pyiqa``: ``$TORCH_HOME/hub/pyiqa/<file>``, where pyiqa 0.1.16's
  ``load_file_from_url`` looks (it checks existence only, no hash);
- ``torch-hub/checkpoints``: ``$TORCH_HOME/hub/checkpoints/<file>``, where
  ``torch.hub.load_state_dict_from_url`` (torchvision, compressai) looks;
- ``tmp``: ``/tmp/<file>``, hard-coded by clean-fid 0.1.35 for its Inception file;
- ``bench``: bench's own cache, ``$BENCH_WEIGHTS`` or ``$XDG_CACHE_HOME/bench/weights``
  (default ``~/.cache/bench/weights``), for files bench hands to a library by path.

``$TORCH_HOME`` defaults to ``$XDG_CACHE_HOME/torch`` (``~/.cache/torch``), as in
torch; if torch is already imported, ``torch.hub.get_dir()`` is used so that
``torch.hub.set_dir`` is honoured too.

Learned codec families keep their own table beside their adapter, as data:
``bench/codecs/<family>/weights.py`` defines ``WEIGHTS`` (e.g. the CompressAI zoo's
files in ``bench/codecs/zoo/weights.py``); :func:`table` merges them in, so
``bench weights list|fetch|import|verify`` and :func:`require` see every file.

This module imports no heavy package (it is imported by ``bench metrics list``),
and family weight modules must not either.
"""
from __future__ import annotations

import contextlib
import hashlib

from bench import hashing
import os
import re
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

DESTS = ("torch-hub/pyiqa", "torch-hub/checkpoints", "tmp", "bench")
FETCH_TIMEOUT_S = 10.0  # per connection attempt / read stall: offline machines fail fast
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX8 = re.compile(r"^[0-9a-f]{8}$")


class WeightsError(FileNotFoundError):
    """Weight files missing, wrong, or not obtainable; the message says what to do.

    ``missing`` lists the ids concerned."""

    def __init__(self, message: str, missing: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.missing = list(missing)

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class WeightFile:
    """One pretrained file. ``sha256`` is the full digest, or "" when only
    ``sha256_prefix`` (the 8 hex digits in the publisher's file name) is known; both
    "" when no digest is known at all (unverified: any file in place is accepted)."""

    id: str
    filename: str
    url: str  # official URL
    sha256: str
    licence: str
    dest: str  # one of DESTS
    used_by: tuple[str, ...]
    sha256_prefix: str = ""
    size: int | None = None  # bytes, where known
    mirrors: tuple[str, ...] = ()  # other official locations of the same bytes
    note: str = ""

    def __post_init__(self) -> None:
        if not self.sha256_prefix and self.sha256:
            object.__setattr__(self, "sha256_prefix", self.sha256[:8])

    @property
    def verified_by(self) -> str:
        return "sha256" if self.sha256 else "sha256-prefix" if self.sha256_prefix else "unverified"

    @property
    def expected(self) -> str:
        """The expected digest as shown to users."""
        if self.sha256:
            return self.sha256
        if self.sha256_prefix:
            return f"{self.sha256_prefix}… (prefix only: the full sha256 is not published)"
        return "unknown (none published: the file is not verified; `bench weights fetch` prints its sha256)"

    def matches(self, digest: str) -> bool:
        return digest == self.sha256 if self.sha256 else digest.startswith(self.sha256_prefix)


_HF_PYIQA = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/"
_GH_PYIQA = "https://github.com/chaofengc/IQA-PyTorch/releases/download/v0.1-weights/"
_TV = "https://download.pytorch.org/models/"
_TV_LIC = ("BSD-3-Clause (torchvision); trained on ImageNet-1k, whose terms restrict the data to "
           "non-commercial research")
_VIA_PYIQA = "converted and hosted by pyiqa (chaofengc/IQA-PyTorch-Weights)"


def _pyiqa(id: str, filename: str, sha256: str, licence: str, used_by: tuple[str, ...], prefix: str = "",
           size: int | None = None, note: str = "") -> WeightFile:
    return WeightFile(id, filename, _HF_PYIQA + filename, sha256, licence, "torch-hub/pyiqa", used_by,
                      sha256_prefix=prefix, size=size, mirrors=(_GH_PYIQA + filename,), note=note)


TABLE: tuple[WeightFile, ...] = (
    # ---- pyiqa 0.1.16 metric files (names and URLs from pyiqa/archs/*_arch.py)
    _pyiqa("lpips-alex-v0.1", "LPIPS_v0.1_alex-df73285e.pth",
           "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
           "BSD-2-Clause (richzhang/PerceptualSimilarity)", ("lpips",), size=6009,
           note="same bytes as lpips/weights/v0.1/alex.pth in the lpips 0.1.4 wheel"),
    _pyiqa("lpips-vgg-v0.1", "LPIPS_v0.1_vgg-a78928a0.pth",
           "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
           "BSD-2-Clause (richzhang/PerceptualSimilarity)", ("lpips_vgg",), size=7289,
           note="same bytes as lpips/weights/v0.1/vgg.pth in the lpips 0.1.4 wheel"),
    _pyiqa("dists", "DISTS_weights-f5e65c96.pth",
           "f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218",
           "MIT (dingkeyan93/DISTS)", ("dists",), size=12288,
           note="same bytes as DISTS_pytorch/weights.pt in dingkeyan93/DISTS"),
    _pyiqa("pieapp", "PieAPPv0.1-0937b014.pth",
           "0937b01480c7a637ae3018af755faa8ecde4788b52bb246b7ae62cf96fb6baf0",
           f"PieAPP authors' terms (prashnani/PerceptualImageError); {_VIA_PYIQA}", ("pieapp",),
           note="same bytes as piq's PieAPPv0.1.pth"),
    _pyiqa("ckdn", "CKDN_model_best-38b27dc6.pth", "",
           f"CKDN authors' terms (researchmm/CKDN); {_VIA_PYIQA}", ("ckdn",), prefix="38b27dc6"),
    _pyiqa("musiq-koniq", "musiq_koniq_ckpt-e95806b9.pth",
           "e95806b9eae5f3814c410f574ba8e552362bd5bc63d758ed5b97860f5d6185aa",
           f"Apache-2.0 (google-research/musiq); {_VIA_PYIQA}", ("musiq",)),
    _pyiqa("dbcnn-koniq", "DBCNN_KonIQ10k-2de81c0a.pth", "",
           f"DBCNN authors' terms (zwx8981/DBCNN-PyTorch); {_VIA_PYIQA}", ("dbcnn",), prefix="2de81c0a"),
    _pyiqa("dbcnn-scnn", "DBCNN_scnn-7ea73d75.pth", "",
           f"DBCNN authors' terms (zwx8981/DBCNN-PyTorch); {_VIA_PYIQA}", ("dbcnn",), prefix="7ea73d75",
           note="pyiqa's DBCNN loads it unconditionally while building the network"),
    # ---- torchvision ImageNet backbones (file names carry the sha256 prefix; torchvision checks it)
    WeightFile("torchvision-alexnet", "alexnet-owt-7be5be79.pth", _TV + "alexnet-owt-7be5be79.pth",
               "7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02", _TV_LIC,
               "torch-hub/checkpoints", ("lpips",), size=244_408_911),
    WeightFile("torchvision-vgg16", "vgg16-397923af.pth", _TV + "vgg16-397923af.pth",
               "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0", _TV_LIC,
               "torch-hub/checkpoints", ("lpips_vgg", "dists", "dbcnn"), size=553_433_881),
    WeightFile("torchvision-resnet50", "resnet50-19c8e357.pth", _TV + "resnet50-19c8e357.pth",
               "19c8e3572231adff6824a2da93fd67b5986919a2e65f8b6007eab4edee220097", _TV_LIC,
               "torch-hub/checkpoints", ("ckdn",),
               note="the older torchvision ResNet-50 file; pyiqa's CKDN hard-codes this URL"),
    # ---- FID / KID: clean-fid's Inception-v3 (TorchScript port of TF inception-2015-12-05)
    WeightFile("inception-2015-12-05", "inception-2015-12-05.pt",
               "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",
               "f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4",
               "Apache-2.0 (TensorFlow inception-2015-12-05 graph); TorchScript port by NVIDIA (stylegan2-ada-pytorch)",
               "tmp", ("fid", "kid", "fid_patch", "kid_patch", "fid_patch_hific", "kid_patch_hific"),
               note="clean-fid 0.1.35 looks for it at the hard-coded /tmp/inception-2015-12-05.pt"),
    # ---- CLIP score: open_clip ViT-B-32 with OpenAI weights (the URL path is the file's sha256)
    WeightFile("clip-vit-b-32-openai", "ViT-B-32.pt",
               "https://openaipublic.azureedge.net/clip/models/"
               "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
               "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af", "MIT (openai/CLIP)",
               "bench", ("clip_score",),
               note="OpenAI's TorchScript archive; bench loads it into open_clip's ViT-B-32-quickgelu (OpenAI's CLIP uses QuickGELU)"),
    # ---- segmentation (mIoU): an official mmsegmentation model-zoo checkpoint trained on COCO-Stuff 164k
    WeightFile("seg-deeplabv3-r101-cocostuff164k",
               "deeplabv3_r101-d8_512x512_4x4_320k_coco-stuff164k_20210709_155402-3cbca14d.pth",
               "https://download.openmmlab.com/mmsegmentation/v0.5/deeplabv3/"
               "deeplabv3_r101-d8_512x512_4x4_320k_coco-stuff164k/"
               "deeplabv3_r101-d8_512x512_4x4_320k_coco-stuff164k_20210709_155402-3cbca14d.pth",
               "", "Apache-2.0 (open-mmlab/mmsegmentation model zoo)", "bench", ("miou",),
               sha256_prefix="3cbca14d",
               note="config configs/deeplabv3/deeplabv3_r101-d8_4xb4-320k_coco-stuff164k-512x512.py "
                    "(171 classes; mIoU 42.61 in the zoo's metafile); not PerCo's ViT-Adapter"),
)

_extra: dict[str, WeightFile] = {}  # entries added at run time by plugins (see add())
FAMILIES_PACKAGE = "bench.codecs"
FAMILIES_PACKAGES = (FAMILIES_PACKAGE, "bench.metrics")  # metric subpackages may keep a table too (vit_adapter)
_families: dict[str, WeightFile] | None = None  # learned codec families' tables, loaded on first use


def family_entries() -> dict[str, WeightFile]:
    """The weight tables of the learned codec families (and of metric subpackages such as
    ``bench/metrics/vit_adapter/``): each subpackage ``bench/codecs/<family>/`` may hold a light module ``weights.py`` (no torch import)
    whose ``WEIGHTS`` is a sequence of :class:`WeightFile`. Imported once per process."""
    global _families
    if _families is None:
        import importlib
        import importlib.util
        import pkgutil

        found: dict[str, WeightFile] = {}
        builtin = {w.id for w in TABLE}
        for pkg_name in FAMILIES_PACKAGES:
            package = importlib.import_module(pkg_name)
            for info in pkgutil.iter_modules(package.__path__):
                name = f"{pkg_name}.{info.name}.weights"
                if not info.ispkg or importlib.util.find_spec(name) is None:
                    continue
                for w in getattr(importlib.import_module(name), "WEIGHTS", ()):
                    _check_entry(w)
                    if w.id in found or w.id in builtin:
                        raise ValueError(f"{name}: weight id {w.id!r} is already in the table")
                    found[w.id] = w
        _families = found
    return _families


def table() -> dict[str, WeightFile]:
    """Every entry by id: built-ins, the codec families' tables (:func:`family_entries`),
    then those added with :func:`add`."""
    out = {w.id: w for w in TABLE}
    out.update(family_entries())
    out.update(_extra)
    return out


def add(entry: WeightFile) -> WeightFile:
    """Add an entry (codec adapters and plugins with their own files); ids must be new."""
    if entry.id in table():
        raise ValueError(f"weight id {entry.id!r} is already in the table")
    _check_entry(entry)
    _extra[entry.id] = entry
    return entry


def _check_entry(w: WeightFile) -> None:
    if w.dest not in DESTS:
        raise ValueError(f"{w.id}: dest {w.dest!r} is not one of {DESTS}")
    if not (_HEX64.match(w.sha256) or (w.sha256 == "" and (_HEX8.match(w.sha256_prefix) or not w.sha256_prefix))):
        raise ValueError(f"{w.id}: needs a 64-hex sha256, an 8-hex sha256_prefix, or neither (unverified)")
    if not w.url.startswith("https://"):
        raise ValueError(f"{w.id}: url must be https")


def entry(id: str) -> WeightFile:
    """The entry ``id`` (a file name is accepted too); KeyError lists the valid ids."""
    tab = table()
    if id in tab:
        return tab[id]
    for w in tab.values():
        if w.filename == id:
            return w
    from bench.registry import lookup

    return lookup(tab, "weight file", id)


# ---------------------------------------------------------------------------- places
def torch_hub_dir() -> Path:
    """torch's hub directory, as ``torch.hub.get_dir()`` would say (without importing torch)."""
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "hub"):
        return Path(torch.hub.get_dir())
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "torch")
    return Path(os.path.expanduser(home)) / "hub"


def bench_dir() -> Path:
    """bench's own weight cache: ``$BENCH_WEIGHTS`` or ``$XDG_CACHE_HOME/bench/weights``."""
    if os.environ.get("BENCH_WEIGHTS"):
        return Path(os.path.expanduser(os.environ["BENCH_WEIGHTS"]))
    return Path(os.path.expanduser(os.environ.get("XDG_CACHE_HOME") or "~/.cache")) / "bench" / "weights"


def dest_dir(dest: str) -> Path:
    if dest == "torch-hub/pyiqa":
        return torch_hub_dir() / "pyiqa"
    if dest == "torch-hub/checkpoints":
        return torch_hub_dir() / "checkpoints"
    if dest == "tmp":
        return Path("/tmp")
    if dest == "bench":
        return bench_dir()
    raise ValueError(f"unknown weights destination {dest!r}")


def path(id: str) -> Path:
    """Where the file ``id`` must be for its consumer to find it."""
    w = entry(id)
    return dest_dir(w.dest) / w.filename


# ---------------------------------------------------------------------------- checks
sha256_file = hashing.sha256_file_cached  # cached in-process by path, size and mtime


def status(id: str, verify: bool = True) -> str:
    """``"ok"``, ``"missing"`` or ``"bad-hash"``. With ``verify=False`` only existence
    (and size, where known) is checked: cheap enough for listings."""
    w = entry(id)
    p = path(id)
    if not p.is_file():
        return "missing"
    if w.size is not None and p.stat().st_size != w.size:
        return "bad-hash"
    if not verify:
        return "ok"
    return "ok" if w.matches(sha256_file(p)) else "bad-hash"


def _describe(w: WeightFile, state: str, reason: str = "") -> str:
    p = dest_dir(w.dest) / w.filename
    what = {"missing": "missing", "bad-hash": f"present but its sha256 is {_digest_or(p)} (wrong file or "
                                              "incomplete download: delete or replace it)"}.get(state, state)
    lines = [f"  - {w.id} ({w.filename}), used by {', '.join(w.used_by)}: {what}"]
    if reason:
        lines.append(f"      error:  {reason}")
    lines += [f"      url:    {w.url}"]
    lines += [f"      mirror: {m}" for m in w.mirrors]
    lines += [f"      sha256: {w.expected}", f"      place:  {p}"]
    if w.note:
        lines.append(f"      note:   {w.note}")
    return "\n".join(lines)


def _digest_or(p: Path) -> str:
    try:
        return sha256_file(p)
    except OSError as exc:
        return f"unreadable ({exc})"


def _how_to(ids: list[str]) -> str:
    return ("Get them with `bench weights fetch " + " ".join(ids) + "` (needs internet), or download each URL "
            "on another machine and run `bench weights import FILE` here (it checks the sha256 and puts the file "
            "at the path above). `bench weights list` shows every file and where it goes.")


def require(ids: Iterable[str]) -> None:
    """Raise :class:`WeightsError` unless every file in ``ids`` is in place with the right
    sha256. The message lists, for each missing or wrong file, its URL, expected sha256
    and exact path. Nothing is downloaded; when files are missing, the process is also
    switched to offline mode for Hugging Face based loaders (see :func:`offline_env`)."""
    ids = list(dict.fromkeys(ids))
    bad = []
    for i in ids:
        w = entry(i)
        state = status(w.id)
        if state != "ok":
            bad.append((w, state))
    if not bad:
        return
    offline_env()
    body = "\n".join(_describe(w, s) for w, s in bad)
    names = [w.id for w, _ in bad]
    raise WeightsError(f"{len(bad)} weight file(s) needed are not in place (bench downloads nothing during a run):\n"
                       f"{body}\n{_how_to(names)}", names)


def provenance(ids: Iterable[str]) -> dict[str, dict]:
    """For a run's provenance record: each file's path, expected and actual sha256 (hashes
    present files; cached in-process)."""
    out = {}
    for i in dict.fromkeys(ids):
        w, p = entry(i), path(i)
        out[w.id] = {"file": w.filename, "path": str(p), "url": w.url, "expected_sha256": w.sha256 or w.sha256_prefix,
                     "sha256": sha256_file(p) if p.is_file() else None, "licence": w.licence}
    return out


def offline_env() -> None:
    """Make Hugging Face based loaders (open_clip, transformers, timm) fail at once
    instead of retrying the network: used once we know files are missing."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None and hasattr(constants, "HF_HUB_OFFLINE"):
        constants.HF_HUB_OFFLINE = True


@contextlib.contextmanager
def no_downloads() -> Iterator[None]:
    """Within this block, torch.hub / pyiqa downloads raise :class:`WeightsError`
    instead of silently fetching a file (a guard behind :func:`require`)."""

    def refuse(url, dst, *args, **kwargs):
        raise WeightsError(f"bench blocked a download of {url} to {dst}: weight files are never downloaded during "
                           "a run. Use `bench weights fetch` or `bench weights import FILE`; `bench weights list` "
                           "shows what is missing.", [])

    patched = []
    for modname in ("torch.hub", "pyiqa.utils.download_util"):
        mod = sys.modules.get(modname)
        if mod is not None and hasattr(mod, "download_url_to_file"):
            patched.append((mod, mod.download_url_to_file))
            mod.download_url_to_file = refuse
    try:
        yield
    finally:
        for mod, fn in patched:
            mod.download_url_to_file = fn


# ---------------------------------------------------------------------------- getting files
def _copy_hashed(src, dst_dir: Path, name: str) -> tuple[Path, str, int]:
    """Stream ``src`` (a file object) into a temp file in ``dst_dir``; returns (temp, sha256, bytes)."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dst_dir)
    h, n = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                h.update(chunk)
                out.write(chunk)
                n += len(chunk)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp), h.hexdigest(), n


def _place(tmp: Path, digest: str, w: WeightFile) -> Path:
    if not w.matches(digest):
        tmp.unlink(missing_ok=True)
        raise WeightsError(f"{w.id}: got sha256 {digest}, expected {w.expected}; the file was not installed", [w.id])
    final = dest_dir(w.dest) / w.filename
    os.replace(tmp, final)
    if w.verified_by == "unverified":
        print(f"{w.id}: installed {final} UNVERIFIED (no published digest); its sha256 is {digest}. Check it "
              f"against a trusted copy and store it in the weights table (sha256=\"{digest}\") so that every "
              "later load verifies it.", flush=True)
    return final


def fetch(ids: Iterable[str], timeout: float = FETCH_TIMEOUT_S,
          progress: Callable[[str, int], None] | None = None) -> list[Path]:
    """Download the files ``ids`` (those not already in place) from their official URLs
    (then mirrors) into place, checking sha256 before moving each one in. Each attempt
    waits at most ``timeout`` seconds; a host that cannot be reached is not tried again,
    and once two hosts have failed to connect the machine is taken to be offline and
    nothing more is tried, so an offline ``fetch --all`` ends in seconds.
    :class:`WeightsError` lists every file not obtained with its URL, sha256 and path."""
    from urllib.parse import urlparse

    ids = list(dict.fromkeys(ids))
    done, failed = [], []
    dead: dict[str, str] = {}  # host -> connection error
    offline = ""
    for i in ids:
        w = entry(i)
        if status(w.id) == "ok":
            done.append(path(w.id))
            continue
        if offline:
            failed.append((w, f"not tried: {offline}"))
            continue
        errors, ok = [], False
        for url in (w.url, *w.mirrors):
            host = urlparse(url).netloc
            if host in dead:
                errors.append(f"{url}: not tried ({host} unreachable: {dead[host]})")
                continue
            try:
                req = urllib.request.Request(url, headers={"User-Agent": "bench-weights"})
                with urllib.request.urlopen(req, timeout=timeout) as resp:
                    tmp, digest, n = _copy_hashed(resp, dest_dir(w.dest), w.filename)
                done.append(_place(tmp, digest, w))
                if progress:
                    progress(w.id, n)
                ok = True
                break
            except urllib.error.HTTPError as exc:  # the server answered: try the mirror
                errors.append(f"{url}: HTTP {exc.code} {exc.reason}")
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                dead[host] = str(getattr(exc, "reason", exc))
                errors.append(f"{url}: {dead[host]}")
                if len(dead) >= 2:
                    offline = f"network unreachable ({'; '.join(f'{h}: {e}' for h, e in dead.items())})"
                    break
            except WeightsError as exc:  # wrong bytes: try the mirror
                errors.append(str(exc))
        if not ok:
            failed.append((w, "; ".join(errors)))
    if failed:
        body = "\n".join(_describe(w, status(w.id), reason) for w, reason in failed)
        names = [w.id for w, _ in failed]
        raise WeightsError(f"could not fetch {len(failed)} weight file(s):\n{body}\n"
                           "No internet here? Download each URL on another machine and run `bench weights import "
                           "FILE` (it checks the sha256 and puts the file at the path above).", names)
    return done


def identify(digest: str, filename: str = "") -> WeightFile | None:
    """The entry whose content hash is ``digest`` (full match first, then prefix-only entries)."""
    tab = table().values()
    for w in tab:
        if w.sha256 and w.sha256 == digest:
            return w
    for w in tab:
        if not w.sha256 and w.sha256_prefix and digest.startswith(w.sha256_prefix):
            return w
    for w in tab:  # no digest known: only the file name can tell
        if w.verified_by == "unverified" and filename and w.filename == filename:
            return w
    return None


def import_file(src: str | os.PathLike, id: str | None = None) -> Path:
    """Copy a user-supplied file into its place after matching its sha256 to a table
    entry (or, for prefix-only entries, its sha256 prefix; for unverified entries, which
    have no digest, its file name). With ``id`` the file must be that entry's. A file that
    matches nothing is refused, naming what was expected."""
    src = Path(src)
    if not src.is_file():
        raise WeightsError(f"{src}: no such file", [id] if id else [])
    digest = sha256_file(src)
    if id is not None:
        w = entry(id)
        if not w.matches(digest):
            raise WeightsError(f"{src} has sha256 {digest}, but {w.id} ({w.filename}) must have {w.expected}; "
                               f"not imported (official URL: {w.url})", [w.id])
    else:
        w = identify(digest, src.name)
        if w is None:
            same_name = [e for e in table().values() if e.filename == src.name]
            hint = (f" A file named {src.name} must have sha256 {same_name[0].expected} ({same_name[0].id}, "
                    f"{same_name[0].url}): this one is a different file (corrupt or another version)."
                    if same_name else " `bench weights list` shows the files bench knows.")
            raise WeightsError(f"{src} (sha256 {digest}) matches no entry of the weights table; not imported.{hint}",
                               [same_name[0].id] if same_name else [])
    final = path(w.id)
    if status(w.id) == "ok" and (w.verified_by != "unverified" or sha256_file(final) == digest):
        return final
    with open(src, "rb") as f:
        tmp, got, _ = _copy_hashed(f, final.parent, w.filename)
    return _place(tmp, got, w)
