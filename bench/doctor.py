"""``bench doctor``: what this machine has and lacks for bench, and how to get the rest.

:func:`collect` gathers the facts (plain dicts, the same ones ``bench doctor --json``
prints); :func:`check_needs` answers a ``--need`` list against them. Sections:

- programs: every program of every registered :class:`SubprocessCodec` adapter, found
  (path, version string, sha256 — the cached helpers provenance uses) or missing (the
  Debian package and the ``BENCH_<PROGRAM>`` variable), and the codec cards using it;
- packages: optional Python packages, by ``importlib.metadata`` only (nothing heavy is
  imported). ``mmcv.ops`` is checked by importing it in a child process with a timeout,
  and only when mmcv and mmsegmentation are both installed (``find_spec`` first);
- weights: files present / missing per consumer (``bench.weights.table()``; existence and
  size only, no hashing) and the cache directories;
- device: torch version, CUDA, GPU names, CPU count, usable dtypes (imports torch once);
- datasets: which dataset cards have their files in their default place (no decoding).

``--need`` syntax (comma list; each item must hold or doctor exits 1):

- ``PROGRAM`` or ``program:PROGRAM``  an external program (``avifenc``, ``cjxl``...);
- ``PACKAGE`` or ``package:PACKAGE``  an optional Python package, by distribution or
  import name (``compressai``, ``open_clip``, ``mmcv.ops``...);
- ``cuda``                            torch sees a CUDA device;
- ``codec:CARD``                      everything the codec card needs: its programs, its
  Python libraries, the weight files of all its points;
- ``weights:X``                       weight file id X, or every file of consumer X (a metric
  or a codec card name);
- ``dataset:CARD``                    the dataset's files in their default place.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from typing import Any

# (distribution, import name, what uses it, pip argument or hint)
PACKAGES: tuple[tuple[str, str, str, str], ...] = (
    ("compressai", "compressai", "learned codecs (CompressAI zoo)", "pip install compressai"),
    ("diffusers", "diffusers", "diffusion decoders", "pip install diffusers"),
    ("transformers", "transformers", "mIoU segmenter (Mask2Former, default)", "pip install transformers"),
    ("open_clip_torch", "open_clip", "clip_score", "pip install open_clip_torch"),
    ("mmsegmentation", "mmseg", "mIoU segmenter (mmseg backend)", "pip install mmsegmentation"),
    ("mmcv", "mmcv", "mmseg backend (needs mmcv.ops)",
     "mmcv 2.1 built from source with -std=c++20 (~22 min on 2 cores): pip install mmcv==2.1.0 --no-binary mmcv"),
    ("clean-fid", "cleanfid", "fid, kid (and patch variants)", "pip install clean-fid"),
    ("lpips", "lpips", "LPIPS linear-layer weights (bench weights import)", "pip install lpips"),
    ("pycocotools", "pycocotools", "COCO label maps (miou on coco datasets)", "pip install pycocotools"),
)
MMCV_OPS_TIMEOUT_S = 60.0


# ---------------------------------------------------------------------------- programs
def _external_adapters() -> dict[str, type]:
    from bench import registry
    from bench.codecs.external import SubprocessCodec

    return {name: e.obj for name, e in sorted(registry.entries("codec").items())
            if isinstance(e.obj, type) and issubclass(e.obj, SubprocessCodec) and e.obj.programs}


def programs() -> list[dict[str, Any]]:
    """One row per program of every external adapter: found (path, version, sha256) or
    missing (install hint, variable), with the adapters and cards using it."""
    from bench import cards
    from bench.codecs.base import CodecError
    from bench.codecs.external import env_var_for, program_version
    from bench.hashing import sha256_file_cached

    adapters = _external_adapters()
    codec_cards = cards.cards("codec")
    rows: dict[str, dict[str, Any]] = {}
    for name, cls in adapters.items():
        for role, exe in cls.programs.items():
            row = rows.get(exe)
            if row is None:
                row = rows[exe] = {"program": exe, "role": role, "adapters": [], "cards": [], "env": env_var_for(exe),
                                   "install": cls.install_hint, "found": False, "path": None, "version": None,
                                   "sha256": None, "error": None}
                try:
                    path = cls.find(role)
                except CodecError as exc:
                    row["error"] = str(exc)
                else:
                    row.update(found=True, path=path, version=program_version(path, cls.version_args_for(role)),
                               sha256=sha256_file_cached(path))
            if name not in row["adapters"]:  # one adapter may run the same program in two roles
                row["adapters"].append(name)
                row["cards"] += [c for c, card in sorted(codec_cards.items()) if card.target == name]
    return list(rows.values())


# ---------------------------------------------------------------------------- packages
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def mmcv_ops() -> dict[str, Any]:
    """Whether ``mmcv.ops`` imports: find_spec first (no mmcv or no mmseg: no), then an
    import in a child process with a timeout (the compiled ops may be slow or crash)."""
    if importlib.util.find_spec("mmcv") is None:
        return {"ok": False, "how": "find_spec", "why": "mmcv is not installed"}
    if importlib.util.find_spec("mmseg") is None:
        return {"ok": False, "how": "find_spec", "why": "mmsegmentation is not installed"}
    try:
        proc = subprocess.run([sys.executable, "-c", "import mmcv.ops"], capture_output=True,
                              timeout=MMCV_OPS_TIMEOUT_S, text=True)
    except subprocess.TimeoutExpired:
        return {"ok": False, "how": "subprocess", "why": f"import mmcv.ops took over {MMCV_OPS_TIMEOUT_S:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["exit " + str(proc.returncode)])[-1]
        return {"ok": False, "how": "subprocess", "why": tail}
    return {"ok": True, "how": "subprocess", "why": ""}


def packages() -> list[dict[str, Any]]:
    rows = []
    for dist, module, used, hint in PACKAGES:
        version = _version(dist)
        rows.append({"package": dist, "module": module, "used_by": used, "version": version,
                     "install": None if version else hint})
    ops = mmcv_ops()
    rows.append({"package": "mmcv.ops", "module": "mmcv.ops", "used_by": "mmseg backend",
                 "version": "imports" if ops["ok"] else None,
                 "install": None if ops["ok"] else f"{ops['why']} (checked by {ops['how']}); needs mmcv built "
                                                   "from source (see README: mIoU segmenter)",
                 "check": ops["how"]})
    from bench.codecs.hific import env as hific_env  # a separate venv: TensorFlow must not enter bench's

    info, why = hific_env.state()
    rows.append({"package": "HiFiC TensorFlow env", "module": str(hific_env.env_dir()), "used_by": "hific",
                 "version": f"tensorflow {info['tensorflow']}, tensorflow-compression "
                            f"{info['tensorflow_compression']}" if info else None,
                 "install": None if info else why})
    return rows


# ---------------------------------------------------------------------------- weights
def weights() -> dict[str, Any]:
    """Present / missing weight files per consumer (existence and size: no hashing)."""
    from bench import weights as w

    table = w.table()
    state = {i: w.status(i, verify=False) for i in table}
    consumers: dict[str, dict[str, list[str]]] = {}
    for i, entry in table.items():
        for user in entry.used_by:
            c = consumers.setdefault(user, {"present": [], "missing": []})
            c["present" if state[i] == "ok" else "missing"].append(i)
    return {"files": len(table), "present": sum(s == "ok" for s in state.values()),
            "missing": sorted(i for i, s in state.items() if s != "ok"), "state": state,
            "consumers": dict(sorted(consumers.items())),
            "dirs": {"torch_hub": str(w.torch_hub_dir()), "bench": str(w.bench_dir()), "tmp": "/tmp"}}


# ---------------------------------------------------------------------------- device
def device() -> dict[str, Any]:
    out: dict[str, Any] = {"cpu_count": os.cpu_count(), "torch": None, "cuda": False, "cuda_version": None,
                           "gpus": [], "dtypes": ["float32"]}
    if importlib.util.find_spec("torch") is None:
        out["error"] = "torch is not installed (pip install torch)"
        return out
    import torch

    out["torch"] = torch.__version__
    out["cuda_version"] = torch.version.cuda
    out["cuda"] = bool(torch.cuda.is_available())
    if out["cuda"]:
        out["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        out["dtypes"] = ["float32", "bfloat16", "float16"]
    else:
        out["dtypes"] = ["float32", "bfloat16 (slow on CPU)"]
    return out


# ---------------------------------------------------------------------------- datasets
def datasets() -> list[dict[str, Any]]:
    """Each dataset card: files in the default place or not (as ``bench datasets list``)."""
    from bench import cards
    from bench.data.loaders import open_dataset

    rows = []
    for name, card in sorted(cards.cards("dataset").items()):
        row = {"dataset": name, "ok": False, "images": None, "dir": None, "why": ""}
        try:
            loader = open_dataset(card)
            row["dir"] = str(loader.data_dir)
            loader.check()
            row.update(ok=True, images=len(loader.items()))
        except (OSError, KeyError) as exc:
            row["why"] = str(exc).splitlines()[0]
        rows.append(row)
    return rows


def collect() -> dict[str, Any]:
    from bench import registry

    facts = {"programs": programs(), "packages": packages(), "weights": weights(), "device": device(),
             "datasets": datasets()}
    facts["plugin_errors"] = list(registry.plugin_errors)  # plugins that failed to load (after the registry loaded)
    return facts


# ---------------------------------------------------------------------------- --need
class NeedError(ValueError):
    """A ``--need`` item that names nothing known."""


def _package_row(facts: dict, name: str) -> dict | None:
    return next((p for p in facts["packages"] if name in (p["package"], p["module"])), None)


def _program_row(facts: dict, name: str) -> dict | None:
    return next((p for p in facts["programs"] if p["program"] == name), None)


def _weights_need(facts: dict, ids: list[str]) -> tuple[bool, str]:
    missing = [i for i in ids if facts["weights"]["state"].get(i) != "ok"]
    if missing:
        return False, f"weight files missing: {', '.join(missing)} (bench weights fetch {' '.join(missing)})"
    return True, f"{len(ids)} weight file(s) present"


def _card_weight_ids(card) -> list[str]:
    """Weight ids a learned codec card needs for its points ([] for other adapters)."""
    from bench import registry
    from bench.codecs.torch_base import TorchCodec
    from bench.runner import build_codec

    cls = registry.get("codec", card.target).obj
    if isinstance(cls, type) and issubclass(cls, TorchCodec):
        return build_codec(card).required_weights(card.get("points") or None)
    if getattr(cls, "required_weights", None) is not None:  # e.g. hific's metagraphs
        try:
            return build_codec(card).required_weights(card.get("points") or None)
        except Exception:  # noqa: BLE001 - an adapter that cannot be built here: its availability says why
            return []
    return []


def _codec_need(facts: dict, name: str) -> tuple[bool, str]:
    """Everything codec card ``name`` needs: its programs (a path in the card's params wins,
    as in a run), its Python libraries, the weight files of its points."""
    from bench import cards, registry
    from bench.codecs.base import CodecError
    from bench.codecs.external import SubprocessCodec
    from bench.codecs.torch_base import TorchCodec

    card = cards.get("codec", name)
    cls = registry.get("codec", card.target).obj
    problems, have = [], []
    if isinstance(cls, type) and issubclass(cls, SubprocessCodec):
        params = card.get("params") or {}
        ok, why = cls.available(**params)  # the adapter's own rule (e.g. VTM's build_dir and config file)
        if not ok:
            problems.append(why)
        for role in cls.programs:
            try:
                have.append(cls.find(role, params.get(role)))
            except CodecError as exc:
                if ok:  # found another way (build_dir)
                    have.append(f"{role} found through the card's params")
                elif str(exc) not in why:
                    problems.append(str(exc))
    elif isinstance(cls, type) and issubclass(cls, TorchCodec):
        libs = [d for d in ("torch", *cls.libraries) if _version(d) is None]
        if libs:
            problems.append(f"Python packages missing: {', '.join(libs)} (pip install {' '.join(libs)})")
        ok, why = _weights_need(facts, _card_weight_ids(card))
        (have if ok else problems).append(why)
    else:
        ok, why = cls.available(**(card.get("params") or {})) if hasattr(cls, "available") else (True, "")
        (have if ok else problems).append(why or "available")
    if not (isinstance(cls, type) and issubclass(cls, TorchCodec)):
        ids = _card_weight_ids(card)  # weight files of other adapters (hific's metagraphs)
        if ids:
            ok, why = _weights_need(facts, ids)
            (have if ok else problems).append(why)
    return (not problems), "; ".join(problems or have)


def check_needs(facts: dict, items: list[str]) -> list[dict[str, Any]]:
    """Each ``--need`` item with ``ok`` and ``why``; NeedError for an item naming nothing known."""
    out = []
    for item in items:
        kind, _, name = item.partition(":") if ":" in item else ("", "", item)
        if not kind:
            if name == "cuda":
                kind = "cuda"
            elif _program_row(facts, name):
                kind = "program"
            elif _package_row(facts, name):
                kind = "package"
            else:
                raise NeedError(f"--need {item!r}: not a program ({', '.join(p['program'] for p in facts['programs'])}), "
                                f"package ({', '.join(p['package'] for p in facts['packages'])}) or cuda; "
                                "use codec:NAME, weights:ID, dataset:NAME")
        if kind == "cuda":
            dev = facts["device"]
            ok, why = dev["cuda"], (", ".join(dev["gpus"]) if dev["cuda"] else "torch sees no CUDA device")
        elif kind == "program":
            row = _program_row(facts, name)
            if row is None:
                raise NeedError(f"--need {item!r}: unknown program")
            ok = row["found"]
            why = row["path"] if ok else f"{row['install']} or set {row['env']}=/path/to/{name}"
        elif kind == "package":
            row = _package_row(facts, name)
            if row is None:
                raise NeedError(f"--need {item!r}: unknown package")
            ok = row["version"] is not None
            why = row["version"] if ok else row["install"]
        elif kind == "weights":
            from bench import weights as w

            table = w.table()
            if name in table:
                ids = [name]
            elif name in facts["weights"]["consumers"]:
                c = facts["weights"]["consumers"][name]
                ids = c["present"] + c["missing"]
            else:
                from bench import cards

                try:
                    ids = _card_weight_ids(cards.get("codec", name))
                except KeyError as exc:
                    raise NeedError(f"--need {item!r}: not a weight id, consumer or codec card ({exc})") from exc
            ok, why = _weights_need(facts, ids)
        elif kind == "codec":
            try:
                ok, why = _codec_need(facts, name)
            except KeyError as exc:
                raise NeedError(f"--need {item!r}: {exc}") from exc
        elif kind == "dataset":
            row = next((d for d in facts["datasets"] if d["dataset"] == name), None)
            if row is None:
                raise NeedError(f"--need {item!r}: unknown dataset; datasets: "
                                f"{', '.join(d['dataset'] for d in facts['datasets'])}")
            ok, why = row["ok"], (f"{row['images']} images in {row['dir']}" if row["ok"] else row["why"])
        else:
            raise NeedError(f"--need {item!r}: unknown kind {kind!r} (program, package, cuda, codec, weights, dataset)")
        out.append({"need": item, "ok": bool(ok), "why": why or ""})
    return out


# ---------------------------------------------------------------------------- printing
def render(facts: dict, console) -> None:
    from rich.table import Table

    def table(title, columns, rows):
        t = Table(title=title, title_justify="left")
        for c in columns:
            t.add_column(c, overflow="fold")
        for r in rows:
            t.add_row(*r)
        console.print(t)

    yes, no = "[green]found[/]", "[red]missing[/]"
    table("external programs", ["program", "status", "path / how to get it", "version", "sha256", "cards"],
          [[p["program"], yes if p["found"] else no,
            p["path"] if p["found"] else f"{p['install']}, or set {p['env']}=/path/to/{p['program']}",
            p["version"] or "", (p["sha256"] or "")[:16], ", ".join(p["cards"])] for p in facts["programs"]])
    table("optional Python packages", ["package", "version", "used by", "how to get it"],
          [[p["package"], p["version"] or "[red]missing[/]", p["used_by"], p["install"] or ""]
           for p in facts["packages"]])
    wt = facts["weights"]
    table(f"weight files: {wt['present']} of {wt['files']} present", ["consumer", "present", "missing"],
          [[c, str(len(v["present"])), str(len(v["missing"]))] for c, v in wt["consumers"].items()])
    console.print(f"caches: torch hub {wt['dirs']['torch_hub']} (TORCH_HOME), bench {wt['dirs']['bench']} "
                  "(BENCH_WEIGHTS), /tmp (clean-fid). Details and URLs: `bench weights list`; "
                  "get files: `bench weights fetch ID`", highlight=False, soft_wrap=True)
    dev = facts["device"]
    gpus = ", ".join(dev["gpus"]) or "none"
    console.print(f"device: torch {dev['torch'] or 'missing'}, CUDA {'available' if dev['cuda'] else 'not available'}"
                  f" (built for CUDA {dev['cuda_version']}), GPUs: {gpus}, {dev['cpu_count']} CPUs; dtypes: "
                  f"{', '.join(dev['dtypes'])}" + ("" if dev["cuda"] else " (--dtype float16 needs CUDA)"),
                  highlight=False, soft_wrap=True)
    table("datasets", ["dataset", "files", "where / what is missing"],
          [[d["dataset"], f"[green]{d['images']} images[/]" if d["ok"] else no, d["dir"] if d["ok"] else d["why"]]
           for d in facts["datasets"]])
    for e in facts.get("plugin_errors", []):
        console.print(f"[red]{e}[/]", highlight=False, soft_wrap=True)


def summary(facts: dict, needs: list[dict] | None = None) -> str:
    progs = facts["programs"]
    pk = facts["packages"]
    line = (f"{sum(p['found'] for p in progs)}/{len(progs)} programs, "
            f"{sum(p['version'] is not None for p in pk)}/{len(pk)} optional packages, "
            f"{facts['weights']['present']}/{facts['weights']['files']} weight files, "
            f"{sum(d['ok'] for d in facts['datasets'])}/{len(facts['datasets'])} datasets, "
            f"CUDA {'yes' if facts['device']['cuda'] else 'no'}")
    if needs is not None:
        bad = [n["need"] for n in needs if not n["ok"]]
        line += f"; needs: {len(needs) - len(bad)}/{len(needs)} met" + (f" (missing: {', '.join(bad)})" if bad else "")
    return line
