"""Conformance check of a codec adapter and its card: ``bench codecs check NAME|CARD``.

Every adapter, built-in or plugin, must keep the contract of :mod:`bench.codecs.base`;
this module runs that contract as checks and says, for each, pass / warn / fail and why.
``tests/test_codecs_check.py`` runs it over every built-in card, so CI fails when an
adapter breaks the contract.

The checks, in order (``warn`` never fails the run; ``n/a``: the check does not apply;
``skip``: not run because a check it needs failed):

==================  =========================================================================
card                the card has ``name``, ``adapter``, ``points`` (a non-empty list),
                    ``colour`` (the colour contract), ``licence`` and ``description``
                    (non-empty). A plugin without a card gets a default card and fails here:
                    ship one (``bench codecs new`` writes it).
adapter             the adapter is registered, ``available()`` here, and builds from the card's
                    ``params`` with the run's device, dtype and init.
points              every point of the card is valid: learned adapters (``points()``) must
                    list it; others must encode a 16x16 crop of a real image at it.
weights             learned adapters (``weight_ids``): every weight id of every card point is
                    in :mod:`bench.weights` with an https URL, a sha256 (or its 8-hex prefix;
                    an entry with neither, because none is published, warns: unverified)
                    and a licence; under ``--init pretrained`` the files of the checked
                    points are in place. ``n/a`` for adapters without learned parameters.
fingerprint         ``fingerprint(point)`` of every checked point is JSON (no ``default=str``),
                    equal for two fresh instances here and for one in the fresh process.
                    Empty fails for adapters that run external programs or learned weights
                    (``SubprocessCodec``, ``TorchCodec``, or declaring ``programs`` /
                    ``libraries``) and warns otherwise: it is what makes resume recompute
                    when a library, program or weight file changes.
encode              ``encode(rgb, point, seed=0)`` returns non-empty ``bytes`` for every image
                    at every checked point.
rate                bits = 8 x len(bytes) (the harness never asks the adapter); ``rate_kind`` is
                    ``real`` (``estimated`` warns: such rows are labelled); ``bits_breakdown``,
                    when given, has only payload/side/container, non-negative ints that add
                    up to exactly 8 x len(bytes).
decode              a fresh instance (not the encoder's) decodes the bytes to uint8 of exactly
                    the input's shape (H, W, 3).
fresh-process       a separate Python process (``python -m bench.codecs.check --decode``, a new
                    interpreter: spawned, never forked, in an empty working folder) that gets
                    only the card file and the bitstream files decodes every bitstream to the
                    same pixels as this process. A module-level cache, a class attribute or
                    anything else outside the bytes cannot reach it.
lossy               the reconstruction differs from the input on every image of at least
                    32x32 pixels (``MIN_JUDGED_PIXELS``), unless the card says
                    ``lossless: true`` (or the class sets ``lossless = True``): then it must be
                    identical.
plausible           no image of at least 32x32 pixels decodes to PSNR > 60 dB at < 0.05 bpp
                    (``TOO_GOOD_PSNR_DB``, ``TOO_GOOD_BPP``): that is more than the bytes can
                    hold, e.g. a decoder that looks the original up somewhere.
deterministic       the same image, point and seed give the same bytes from a second instance
                    (not the one that encoded first), and the same bytes and seed decode to
                    the same pixels twice.
seed                an adapter not declared ``stochastic`` decodes the same pixels with seed 1
                    as with seed 0; one declared ``stochastic = True`` decodes different pixels.
empty-bytes         ``decode(b"")`` raises :class:`CodecError` with a message.
truncated-bytes     the first half of a bitstream raises :class:`CodecError` with a message
                    (no grey fill: a truncated file must not pass as an image).
bit-flips           three single-bit flips (first byte, middle, last byte): a ``CodecError``
                    passes; an image returned without error warns (formats without an
                    integrity check decode flipped bits silently - the harness still checks its
                    size); another exception type, a crash or a hang fails.
==================  =========================================================================

Time limits (separate process): building the adapter ``STARTUP_LIMIT_S``; a clean decode
``CLEAN_LIMIT_S``; a corrupted decode ``timeout + CORRUPT_FACTOR x`` the clean decode time
of the same bitstream (``timeout`` default ``CORRUPT_BASE_S``). A decoder past its limit is
killed and reported as a hang; a decoder that kills its process (segfault, ``os._exit``) is
reported as a crash; either way the checker goes on with a new process for the jobs left.

Images: ``images`` real images at full size (Kodak from ``$BENCH_SHARED/data/kodak`` or
``<checkout>/../shared/data/kodak``, the same place the tests use; else the photos
scikit-image ships; or ``data_dir``) plus crops of real images at ``sizes`` (default 7x5 and
513x769; a size larger than its source is reached by mirroring the image at its edges).
Points: ``points``, else the first and last of the card's.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REQUIRED_CARD_FIELDS = ("name", "adapter", "points", "colour", "licence", "description")
BREAKDOWN_KEYS = ("payload", "side", "container")
TOO_GOOD_PSNR_DB = 60.0
TOO_GOOD_BPP = 0.05
MIN_JUDGED_PIXELS = 32 * 32
DEFAULT_IMAGES = 2
DEFAULT_SIZES = ((7, 5), (513, 769))
STARTUP_LIMIT_S = 180.0
CLEAN_LIMIT_S = 600.0
CORRUPT_BASE_S = 10.0
CORRUPT_FACTOR = 5.0
POINT_PROBE = (16, 16)  # image size the `points` check encodes at every card point

STATUSES = ("pass", "warn", "fail", "n/a", "skip")
CHECKS = ("card", "adapter", "points", "weights", "fingerprint", "encode", "rate", "decode", "fresh-process", "lossy",
          "plausible", "deterministic", "seed", "empty-bytes", "truncated-bytes", "bit-flips")


@dataclass
class Check:
    name: str
    status: str  # one of STATUSES
    detail: str = ""


@dataclass
class CheckImage:
    id: str
    rgb: np.ndarray

    @property
    def pixels(self) -> int:
        return self.rgb.shape[0] * self.rgb.shape[1]

    @property
    def size(self) -> str:
        return f"{self.rgb.shape[0]}x{self.rgb.shape[1]}"


@dataclass
class Coded:
    """One image at one point: its bytes and what became of them."""

    image: CheckImage
    point: Any
    data: bytes | None = None
    enc_s: float = 0.0
    encode_error: str = ""
    recon: np.ndarray | None = None  # decoded in this process by a fresh instance
    decode_error: str = ""
    fresh: dict | None = None  # the separate process's answer for these bytes
    fresh_recon: np.ndarray | None = None

    @property
    def where(self) -> str:
        return f"{self.image.id} ({self.image.size}) at point {self.point!r}"

    @property
    def bpp(self) -> float:
        return 8 * len(self.data or b"") / self.image.pixels

    @property
    def psnr(self) -> float | None:
        if self.recon is None or self.recon.shape != self.image.rgb.shape:
            return None
        return psnr(self.image.rgb, self.recon)


@dataclass
class Report:
    card: Any
    init: str
    points: list
    images: list[CheckImage] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    coded: list[Coded] = field(default_factory=list)
    fingerprints: dict[str, Any] = field(default_factory=dict)
    adapter: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def add(self, name: str, status: str, detail: str = "") -> Check:
        assert status in STATUSES, status
        c = Check(name, status, detail)
        self.checks.append(c)
        return c

    def verdict(self, name: str, problems: list[str], passed: str) -> Check:
        """``fail`` listing the first problems, or ``pass`` with ``passed``."""
        return self.add(name, "fail", _short(problems)) if problems else self.add(name, "pass", passed)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def describe(exc: BaseException) -> str:
    """``Type: message``, and what to do for the adapter-template placeholders."""
    text = f"{type(exc).__name__}: {exc}".rstrip(": ")
    if isinstance(exc, NotImplementedError):
        text = f"not written yet - {text}"
    return text


def _short(items: Sequence[str | tuple[str, str]], n: int = 3) -> str:
    """The first ``n`` problems, joined; ``(where, message)`` items with the same message are
    said once, with where they happened."""
    groups: dict[str, list[str]] = {}
    for item in items:
        where, message = item if isinstance(item, tuple) else ("", item)
        groups.setdefault(message, []).append(where)
    texts = []
    for message, wheres in groups.items():
        wheres = [w for w in wheres if w]
        more = f" and {len(wheres) - 2} more" if len(wheres) > 2 else ""
        texts.append(f"{', '.join(wheres[:2])}{more}: {message}" if wheres else message)
    tail = f"; and {len(texts) - n} more" if len(texts) > n else ""
    return "; ".join(texts[:n]) + tail


# ---------------------------------------------------------------------------- images
def shared_dir() -> Path:
    """``$BENCH_SHARED``, else ``../shared`` beside the checkout (as tests/conftest.py)."""
    repo = Path(__file__).resolve().parents[2]
    return Path(os.environ.get("BENCH_SHARED") or repo.parent / "shared")


def real_image_files(data_dir: str | Path | None = None) -> list[Path]:
    """Image files to check with: ``data_dir``, else the shared Kodak images, else the
    photos scikit-image ships inside its wheel."""
    exts = (".png", ".jpg", ".jpeg", ".ppm", ".bmp", ".tif", ".tiff", ".webp")
    if data_dir is not None:
        files = sorted(p for p in Path(data_dir).iterdir() if p.suffix.lower() in exts)
        if not files:
            raise ValueError(f"no images ({', '.join(exts)}) in {data_dir}")
        return files
    kodak = sorted((shared_dir() / "data" / "kodak").glob("kodim*.png"))
    if kodak:
        return kodak
    import skimage.data

    root = Path(skimage.data.__file__).parent
    return [root / f for f in ("astronaut.png", "chelsea.png", "coffee.png") if (root / f).is_file()]


def crop(rgb: np.ndarray, h: int, w: int) -> np.ndarray:
    """A centred ``h`` x ``w`` crop; a source smaller than that is first mirrored at its edges."""
    ph, pw = max(0, h - rgb.shape[0]), max(0, w - rgb.shape[1])
    if ph or pw:
        rgb = np.pad(rgb, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode="symmetric")
    top, left = (rgb.shape[0] - h) // 2, (rgb.shape[1] - w) // 2
    return np.ascontiguousarray(rgb[top:top + h, left:left + w])


def check_images(images: int = DEFAULT_IMAGES, sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
                data_dir: str | Path | None = None) -> list[CheckImage]:
    """``images`` real images at full size, then one crop per size (of real image i mod n)."""
    from bench.data.images import read_rgb

    files = real_image_files(data_dir)
    wanted = max(images, min(len(sizes), len(files)), 1)
    sources = [(p.stem, read_rgb(p)[0]) for p in files[:wanted]]
    out = [CheckImage(name, rgb) for name, rgb in sources[:images]]
    for i, (h, w) in enumerate(sizes):
        name, rgb = sources[i % len(sources)]
        out.append(CheckImage(f"{name}[{h}x{w}]", crop(rgb, h, w)))
    return out


def parse_size(text: str) -> tuple[int, int]:
    """``"513x769"`` (height x width) -> (513, 769)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"a size is HxW (height x width), e.g. 513x769; got {text!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"a size needs a positive height and width, got {text!r}")
    return h, w


# ---------------------------------------------------------------------------- the check
def run_checks(target: Any, init: str = "pretrained", points: Sequence[Any] | None = None,
               images: int = DEFAULT_IMAGES, sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
               data_dir: str | Path | None = None, device: str = "cpu", dtype: str = "float32",
               timeout: float = CORRUPT_BASE_S) -> Report:
    """Check the codec card ``target`` (a card name, a card file, or a :class:`bench.cards.Card`)
    and its adapter; returns the report (``report.failed`` lists the failed checks)."""
    from bench.runner import resolve_card

    t0 = time.perf_counter()
    card = resolve_card("codec", target) if isinstance(target, (str, Path)) else target
    report = Report(card, init, [])
    _Checker(report, points, device, dtype, timeout, images, sizes, data_dir).run()
    report.seconds = time.perf_counter() - t0
    return report


class _Checker:
    def __init__(self, report: Report, points, device, dtype, timeout, images, sizes, data_dir) -> None:
        self.r = report
        self.card = report.card
        self.settings = (device, dtype, report.init)
        self.want_points = list(points) if points else None
        self.timeout = float(timeout)
        self.image_spec = (images, tuple(sizes), data_dir)
        self.cls = None
        self.codec = None
        self.decoder = None
        self.probe: Coded | None = None

    def build(self):
        from bench.runner import build_codec

        return build_codec(self.card, *self.settings)

    # -------------------------------------------------------------- order of the checks
    def run(self) -> None:
        self.run_all()
        self.r.checks.sort(key=lambda c: CHECKS.index(c.name))

    def run_all(self) -> None:
        r = self.r
        self.check_card()
        if not self.check_adapter():
            for name in CHECKS[2:]:
                r.add(name, "skip", "needs an adapter instance (see `adapter`)")
            return
        card_points = list(self.card.get("points") or self.cls.default_points or ())
        r.points = self.want_points or list(dict.fromkeys([card_points[0], card_points[-1]] if card_points else []))
        r.images = check_images(*self.image_spec)
        self.check_points(card_points)
        if not self.check_weights(card_points):
            for name in CHECKS[4:]:
                r.add(name, "skip", "needs the weight files of the checked points (see `weights`), or --init random")
            return
        fps = self.check_fingerprint_here()
        self.encode_all()
        self.check_rate()
        self.decode_here()
        self.decode_elsewhere()
        self.check_fingerprint_there(fps)
        self.check_pixels()
        self.check_corruption()

    # -------------------------------------------------------------- card and adapter
    def check_card(self) -> None:
        body = self.card.body
        problems = []
        for key in REQUIRED_CARD_FIELDS:
            value = body.get(key)
            if key == "points":
                if not isinstance(value, list) or not value:
                    problems.append("`points:` must be a non-empty list of rate points")
                elif not all(isinstance(p, (int, float, str)) and not isinstance(p, bool) for p in value):
                    problems.append(f"`points:` must hold numbers or strings, got {value!r}")
            elif not isinstance(value, str) or not value.strip():
                problems.append(f"`{key}:` is missing or empty" + {
                    "colour": " (say what the codec does to colour: e.g. \"RGB -> YCbCr BT.601, 4:2:0, 8 bit\")",
                    "licence": " (the codec's and its weights' licence)",
                }.get(key, ""))
        if "lossless" in body and not isinstance(body["lossless"], bool):
            problems.append(f"`lossless:` must be true or false, got {body['lossless']!r}")
        where = self.card.path or "<card>"
        if problems:
            self.r.add("card", "fail", f"{where}: " + "; ".join(problems))
        else:
            self.r.add("card", "pass", f"{where}: all of {', '.join(REQUIRED_CARD_FIELDS)}")

    def check_adapter(self) -> bool:
        from bench import registry

        try:
            entry = registry.get("codec", self.card.target)
        except KeyError as exc:
            self.r.add("adapter", "fail", f"{exc}. A plugin registers its class in the entry-point group "
                                          "`bench.codecs` of its pyproject.toml (and is installed)")
            return False
        self.cls = entry.obj
        self.r.adapter = f"{self.cls.__module__}.{self.cls.__qualname__} ({entry.source})"
        ok, why = entry.available(**(self.card.get("params") or {}))
        if not ok:
            self.r.add("adapter", "fail", f"{self.card.target} is not available here: {why}")
            return False
        try:
            self.codec = self.build()
        except Exception as exc:  # noqa: BLE001 - any failure to build is the finding
            self.r.add("adapter", "fail", f"cannot build {self.card.target} from the card's params "
                                          f"{self.card.get('params') or {}}: {describe(exc)}")
            return False
        self.r.add("adapter", "pass", f"{self.r.adapter}, version {self.cls.version!r}, weights {self.codec.weights}")
        return True

    def check_points(self, card_points: list) -> None:
        if not card_points:
            self.r.add("points", "fail", "no rate points: put `points:` in the card")
            return
        bad = []
        listed = getattr(self.codec, "points", None)
        if callable(listed):  # learned: the weight table decides, no model is built
            try:
                valid = list(listed())
            except Exception as exc:  # noqa: BLE001
                self.r.add("points", "fail", f"{type(self.codec).__name__}.points() failed: {describe(exc)}")
                return
            bad = [(f"point {p!r}", f"not one of the adapter's points {valid}")
                   for p in [*card_points, *(self.want_points or [])] if p not in valid]
            how = f"all in the adapter's points {valid}"
        else:
            probe = check_images(0, (POINT_PROBE,), self.image_spec[2])[0].rgb
            for p in dict.fromkeys([*card_points, *(self.want_points or [])]):
                try:
                    data = self.codec.encode(probe, p, 0)
                    if not isinstance(data, (bytes, bytearray)) or not data:
                        bad.append((f"point {p!r}", f"encode returned {type(data).__name__} of length "
                                                    f"{len(data) if hasattr(data, '__len__') else '?'}"))
                except Exception as exc:  # noqa: BLE001
                    bad.append((f"point {p!r}", describe(exc)))
            how = f"a {POINT_PROBE[0]}x{POINT_PROBE[1]} crop encodes at each"
        if bad:
            self.r.add("points", "fail", _short(bad))
        else:
            self.r.add("points", "pass", f"{len(card_points)} card points ({how}); checked at {self.r.points}")

    def check_weights(self, card_points: list) -> bool:
        """False when the files the checked points need are not in place (nothing to run)."""
        if not callable(getattr(self.codec, "weight_ids", None)):
            self.r.add("weights", "n/a", f"no learned parameters (weights = {self.codec.weights})")
            return True
        from bench import weights

        problems, ids, unverified = [], [], []
        for p in card_points:
            try:
                pids = list(self.codec.weight_ids(p))
            except Exception as exc:  # noqa: BLE001
                problems.append(f"point {p!r}: {describe(exc)}")
                continue
            for wid in pids:
                ids.append(wid)
                try:
                    w = weights.entry(wid)
                except KeyError:
                    problems.append(f"weight id {wid!r} (point {p!r}) is not in bench.weights: add a "
                                    "bench.weights.WeightFile (url, sha256, licence, dest)")
                    continue
                if not w.url.startswith("https://"):
                    problems.append(f"{wid}: url {w.url!r} is not https")
                if not (w.sha256 or w.sha256_prefix):
                    unverified.append(wid)
                if not w.licence:
                    problems.append(f"{wid}: no licence")
        if problems:
            self.r.add("weights", "fail", _short(problems))
            return True
        detail = f"{len(set(ids))} files for {len(card_points)} points, each with url, sha256 and licence"
        status = "pass"
        if unverified:  # allowed (the publisher gives no digest), but said: such files are not verified
            status = "warn"
            detail = (f"{len(set(ids))} files for {len(card_points)} points, each with url and licence; "
                      f"{len(set(unverified))} UNVERIFIED (no published sha256; `bench weights fetch` prints the "
                      f"digest to store in the table): {', '.join(dict.fromkeys(unverified))}")
        if self.codec.init == "random":
            self.r.add("weights", status, detail + "; --init random: the files themselves are not needed")
            return True
        try:
            weights.require(self.codec.required_weights(self.r.points))
        except weights.WeightsError as exc:
            self.r.add("weights", "fail", f"{exc}\nOr check the adapter without them: --init random")
            return False
        except Exception as exc:  # noqa: BLE001 - e.g. a point without weight ids
            self.r.add("weights", "fail", describe(exc))
            return True
        self.r.add("weights", status, detail + "; files of the checked points in place" +
                   (" (sha256 verified where known)" if unverified else " (sha256 verified)"))
        return True

    # -------------------------------------------------------------- fingerprint
    def uses_versions(self) -> bool:
        from bench.codecs.external import SubprocessCodec
        from bench.codecs.torch_base import TorchCodec

        return isinstance(self.codec, (SubprocessCodec, TorchCodec)) or bool(
            getattr(self.cls, "programs", None) or getattr(self.cls, "libraries", None))

    def check_fingerprint_here(self) -> dict[str, str] | None:
        """Two fresh instances here: JSON and equal. Returns {point: canonical JSON}."""
        out, problems = {}, []
        try:
            other = self.build()
        except Exception as exc:  # noqa: BLE001
            self.r.add("fingerprint", "fail", f"a second instance failed to build: {describe(exc)}")
            return None
        for p in self.r.points:
            try:
                a, b = (canonical_json(c.fingerprint(p)) for c in (self.codec, other))
            except TypeError as exc:
                problems.append(f"fingerprint({p!r}) is not JSON ({exc}): use str/int/float/bool/None, lists, dicts")
                continue
            except Exception as exc:  # noqa: BLE001
                problems.append(f"fingerprint({p!r}) failed: {describe(exc)}")
                continue
            if a != b:
                problems.append(f"fingerprint({p!r}) differs between two fresh instances: {a} vs {b}")
            out[p] = a
            self.r.fingerprints[str(p)] = json.loads(a)
        if problems:
            self.r.add("fingerprint", "fail", _short(problems))
            return None
        return out

    def check_fingerprint_there(self, here: dict | None) -> None:
        if here is None:
            return  # already failed
        there = self.fresh_info.get("fingerprints")
        if there is None:
            self.r.add("fingerprint", "fail", "the fresh process could not compute it: "
                                              f"{self.fresh_info.get('error', 'no answer')}")
            return
        problems = []
        for p, a in here.items():
            b = there.get(json.dumps(p))
            if b != a:
                problems.append(f"fingerprint({p!r}) in a fresh process is {b}, here {a}: it must not depend on "
                                "process state (object ids, hash(), time, paths in temporary folders)")
        empty = [p for p, a in here.items() if json.loads(a) in ({}, [], None, "")]
        if problems:
            self.r.add("fingerprint", "fail", _short(problems))
        elif empty and self.uses_versions():
            self.r.add("fingerprint", "fail", f"fingerprint({empty[0]!r}) is empty, but {self.cls.__name__} runs "
                                              "external programs or learned weights: list their versions / sha256 "
                                              "so results recompute when they change")
        elif empty:
            self.r.add("fingerprint", "warn", f"fingerprint({empty[0]!r}) is empty: if a library produces the bytes, "
                                              "return its version (e.g. {\"zlib\": zlib.ZLIB_RUNTIME_VERSION}) so "
                                              "results recompute when it changes")
        else:
            self.r.add("fingerprint", "pass", f"JSON, same in two fresh instances and in a fresh process, "
                                              f"{len(here)} point(s)")

    # -------------------------------------------------------------- encode, rate, decode here
    def encode_all(self) -> None:
        if not self.r.points:
            self.r.add("encode", "fail", "no rate point to encode at: put `points:` in the card or pass --point")
            return
        problems = []
        for img in self.r.images:
            for p in self.r.points:
                c = Coded(img, p)
                self.r.coded.append(c)
                t = time.perf_counter()
                try:
                    data = self.codec.encode(img.rgb, p, 0)
                except Exception as exc:  # noqa: BLE001
                    c.encode_error = describe(exc)
                    problems.append((c.where, c.encode_error))
                    continue
                c.enc_s = time.perf_counter() - t
                if not isinstance(data, (bytes, bytearray)):
                    c.encode_error = f"encode returned {type(data).__name__}, not bytes"
                    problems.append((c.where, c.encode_error))
                elif not data:
                    c.encode_error = "encode returned 0 bytes: the decoder needs at least the image size"
                    problems.append((c.where, c.encode_error))
                else:
                    c.data = bytes(data)
        self.r.verdict("encode", problems, f"bytes for {len(self.r.images)} images x {len(self.r.points)} points")

    @property
    def good(self) -> list[Coded]:
        return [c for c in self.r.coded if c.data is not None]

    def check_rate(self) -> None:
        if not self.good:
            self.r.add("rate", "skip", "no bytes (see `encode`)")
            return
        try:
            decoder = self.build()
        except Exception as exc:  # noqa: BLE001
            self.r.add("rate", "fail", f"a fresh instance failed to build: {describe(exc)}")
            return
        self.decoder = decoder
        problems, given = [], 0
        for c in self.good:
            try:
                bd = decoder.bits_breakdown(c.data)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{c.where}: bits_breakdown failed: {describe(exc)}")
                continue
            if bd is None:
                continue
            given += 1
            bits = 8 * len(c.data)
            if not isinstance(bd, dict) or set(bd) - set(BREAKDOWN_KEYS):
                problems.append(f"{c.where}: bits_breakdown must be a dict with keys from {BREAKDOWN_KEYS}, got {bd!r}")
            elif not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in bd.values()):
                problems.append(f"{c.where}: bits_breakdown values must be non-negative ints, got {bd!r}")
            elif sum(bd.values()) != bits:
                problems.append(f"{c.where}: bits_breakdown {bd} adds up to {sum(bd.values())}, not 8 x "
                                f"{len(c.data)} bytes = {bits}")
        kind = getattr(self.cls, "rate_kind", "real")
        split = f"bits_breakdown adds up on {given}" if given else "no bits_breakdown (optional)"
        if problems:
            self.r.add("rate", "fail", _short(problems))
        elif kind not in ("real", "estimated"):
            self.r.add("rate", "fail", f"rate_kind must be 'real' or 'estimated', got {kind!r}")
        elif kind == "estimated":
            self.r.add("rate", "warn", f"rate_kind = 'estimated': rows are labelled so; {split}")
        else:
            self.r.add("rate", "pass", f"bits = 8 x stored bytes; rate_kind real; {split}")

    def decode_here(self) -> None:
        decoder = self.decoder
        if decoder is None:
            self.r.add("decode", "skip", "no bytes or no decoder instance (see `encode`, `rate`)")
            return
        problems = []
        for c in self.good:
            try:
                recon = decoder.decode(c.data, 0)
            except Exception as exc:  # noqa: BLE001
                c.decode_error = describe(exc)
                problems.append((c.where, c.decode_error))
                continue
            if not isinstance(recon, np.ndarray) or recon.dtype != np.uint8:
                c.decode_error = (f"decoded to {type(recon).__name__} of dtype {getattr(recon, 'dtype', '-')}, "
                                  "not a uint8 array")
            elif recon.shape != c.image.rgb.shape:
                c.decode_error = (f"decoded shape {recon.shape} for an original of shape {c.image.rgb.shape}: "
                                  "decode must return exactly the input's size (undo padding and cropping, keep "
                                  "the size in the bytes)")
            else:
                c.recon = recon
            if c.decode_error:
                problems.append((c.where, c.decode_error))
        self.r.verdict("decode", problems, f"a fresh instance decoded {len(self.good)} bitstreams to uint8 of the "
                                           "input's shape")

    # -------------------------------------------------------------- the separate process
    def decode_elsewhere(self) -> None:
        """One separate process decodes every bitstream, repeats, other seeds and corrupt bytes."""
        self.fresh_info: dict = {}
        self.fresh: dict[str, dict] = {}
        jobs: list[dict] = []
        with tempfile.TemporaryDirectory(prefix="bench-check-") as tmp:
            tmp_path = Path(tmp)
            card_path = tmp_path / "card.yaml"
            import yaml

            card_path.write_text(yaml.safe_dump(self.card.body, sort_keys=False))  # only the card, as data

            def job(name: str, data: bytes, seed: int = 0, ref: str | None = None) -> None:
                f = tmp_path / f"{name}.bin"
                f.write_bytes(data)
                jobs.append({"id": name, "file": str(f), "seed": seed, "ref": ref})

            for i, c in enumerate(self.good):
                job(f"clean-{i}", c.data)
            self.probe = self.pick_probe()
            if self.probe is not None:
                i = self.good.index(self.probe)
                d = self.probe.data
                job("again", d, 0)
                job("seed1", d, 1)
                job("empty", b"", 0, f"clean-{i}")
                job("truncated", d[:len(d) // 2], 0, f"clean-{i}")
                for name, pos in (("flip-first", 0), ("flip-middle", len(d) // 2), ("flip-last", len(d) - 1)):
                    flipped = bytearray(d)
                    flipped[pos] ^= 0x10 if pos else 0x01
                    job(name, bytes(flipped), 0, f"clean-{i}")
            self.fresh_info, self.fresh = decode_in_fresh_process(
                card_path, self.settings, self.r.points, jobs, tmp_path, self.timeout)
            for res in self.fresh.values():  # read before the folder goes
                res["array"] = _load_recon(res)
            for i, c in enumerate(self.good):
                c.fresh = self.fresh.get(f"clean-{i}")
                c.fresh_recon = _load_recon(c.fresh)

    def pick_probe(self) -> Coded | None:
        """The bitstream the determinism and corruption checks use: the smallest image of at
        least MIN_JUDGED_PIXELS that decoded here (cheap for slow decoders), else any."""
        ok = [c for c in self.good if c.recon is not None] or self.good
        if not ok:
            return None
        big = [c for c in ok if c.image.pixels >= MIN_JUDGED_PIXELS] or ok
        return min(big, key=lambda c: (c.image.pixels, self.r.points.index(c.point)))

    # -------------------------------------------------------------- pixels
    def check_pixels(self) -> None:
        r = self.r
        good = self.good
        if not good:
            for name in ("fresh-process", "lossy", "plausible", "deterministic", "seed"):
                r.add(name, "skip", "no bytes (see `encode`)")
            return
        # fresh process = this process
        problems = []
        if "error" in self.fresh_info:
            problems.append(f"a fresh process could not decode: {self.fresh_info['error']}")
        for c in good if not problems else ():
            res = c.fresh or {}
            if not res.get("ok"):
                here = "and here too" if c.recon is None else "but here it worked: the decoder depends on " \
                    "state outside the bytes (a module-level cache, a class attribute, a file the encoder left)"
                problems.append((f"{c.where} ({res.get('error', 'no answer')})",
                                 f"a fresh process with only the bytes and the card failed, {here}"))
            elif c.recon is not None and not _same(c.fresh_recon, c.recon):
                got = "no array" if c.fresh_recon is None else f"{c.fresh_recon.dtype} {c.fresh_recon.shape}"
                diff = ""
                if c.fresh_recon is not None and c.fresh_recon.shape == c.recon.shape:
                    diff = f", PSNR between them {psnr(c.recon, c.fresh_recon):.1f} dB"
                problems.append(f"{c.where}: a fresh process decoded other pixels ({got}{diff}) than this process: "
                                "the decoder depends on state outside the bytes")
        secs = sum((c.fresh or {}).get("seconds", 0) for c in good)
        r.verdict("fresh-process", problems, f"{len(good)} bitstreams decoded in a separate process from the bytes and "
                                           f"the card alone, identical to this process ({secs:.2f} s of decoding)")
        self.check_lossy(good)
        self.check_plausible(good)
        self.check_determinism()
        self.check_seed()

    def check_lossy(self, good: list[Coded]) -> None:
        lossless = bool(self.card.get("lossless", getattr(self.cls, "lossless", False)))
        judged = [c for c in good if c.recon is not None and c.image.pixels >= MIN_JUDGED_PIXELS]
        if not judged:
            self.r.add("lossy", "skip", f"no reconstruction of an image of at least {MIN_JUDGED_PIXELS} pixels")
            return
        same = [c for c in judged if np.array_equal(c.recon, c.image.rgb)]
        if lossless:
            differ = [c for c in judged if c not in same]
            if differ:
                self.r.add("lossy", "fail", "the card says lossless: true, but " + _short(
                    [f"{c.where} decodes to PSNR {c.psnr:.2f} dB" for c in differ]))
            else:
                self.r.add("lossy", "pass", f"lossless: true, and {len(judged)} reconstructions are identical")
        elif same:
            self.r.add("lossy", "fail", "reconstruction identical to the input for " + _short(
                [c.where for c in same]) + " - a lossy codec cannot do that; if it is lossless, say `lossless: true` "
                                           "in the card")
        else:
            self.r.add("lossy", "pass", f"{len(judged)} reconstructions differ from the input (lossy codec)")

    def check_plausible(self, good: list[Coded]) -> None:
        judged = [c for c in good if c.recon is not None and c.image.pixels >= MIN_JUDGED_PIXELS]
        if not judged:
            self.r.add("plausible", "skip", f"no reconstruction of an image of at least {MIN_JUDGED_PIXELS} pixels")
            return
        bad = [c for c in judged if c.psnr > TOO_GOOD_PSNR_DB and c.bpp < TOO_GOOD_BPP]
        if bad:
            self.r.add("plausible", "fail", "too good to be true: " + _short(
                [f"{c.where}: PSNR {c.psnr:.1f} dB at {c.bpp:.5f} bpp ({len(c.data)} bytes)" for c in bad]) +
                f" (PSNR > {TOO_GOOD_PSNR_DB:g} dB at < {TOO_GOOD_BPP:g} bpp): the bytes cannot hold that image")
        else:
            best = max(judged, key=lambda c: (c.psnr, -c.bpp))
            self.r.add("plausible", "pass", f"no PSNR > {TOO_GOOD_PSNR_DB:g} dB at < {TOO_GOOD_BPP:g} bpp (best: "
                                            f"{best.psnr:.1f} dB at {best.bpp:.3f} bpp)")

    def check_determinism(self) -> None:
        probe = self.probe
        if probe is None:
            self.r.add("deterministic", "skip", "no bytes")
            return
        problems = []
        try:  # the decoding instance: another instance than the encoder (and its models are built)
            again = (self.decoder or self.build()).encode(probe.image.rgb, probe.point, 0)
            if bytes(again) != probe.data:
                problems.append(f"{probe.where}: a second instance wrote other bytes ({len(again)} vs "
                                f"{len(probe.data)}): seed every random choice from `seed`")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{probe.where}: a second instance failed to encode: {describe(exc)}")
        first, rep = probe.fresh or {}, self.fresh.get("again") or {}
        if first.get("ok") and rep.get("ok"):
            a, b = _load_recon(first), rep.get("array")
            if not _same(a, b):
                problems.append(f"{probe.where}: decoding the same bytes twice with seed 0 gave other pixels")
        elif first.get("ok"):
            problems.append(f"{probe.where}: decoding the same bytes a second time failed: {rep.get('error')}")
        self.r.verdict("deterministic", problems, f"{probe.where}: same bytes from a second instance, same pixels "
                                                  "from a second decode")

    def check_seed(self) -> None:
        probe = self.probe
        first, other = (probe.fresh if probe else None) or {}, self.fresh.get("seed1") or {}
        if not (first.get("ok") and other.get("ok")):
            self.r.add("seed", "skip", "needs two decodes in the fresh process: " + str(
                other.get("error") or first.get("error") or "no answer"))
            return
        a, b = _load_recon(first), other.get("array")
        same = _same(a, b)
        if getattr(self.cls, "stochastic", False):
            if same:
                self.r.add("seed", "fail", "declared stochastic, but seeds 0 and 1 decode the same pixels: draw the "
                                           "decoder's noise from `seed`, or set stochastic = False")
            else:
                self.r.add("seed", "pass", f"stochastic: seeds 0 and 1 decode different samples "
                                           f"(PSNR between them {psnr(a, b):.1f} dB)")
        elif same:
            self.r.add("seed", "pass", "not stochastic: seed 1 decodes the same pixels as seed 0")
        else:
            self.r.add("seed", "fail", "not declared stochastic, but seeds 0 and 1 decode different pixels: set "
                                       "`stochastic = True` (runs then take --seeds) or make decode ignore the seed")

    # -------------------------------------------------------------- corrupt bytes
    def check_corruption(self) -> None:
        if self.probe is None:
            for name in ("empty-bytes", "truncated-bytes", "bit-flips"):
                self.r.add(name, "skip", "no bytes (see `encode`)")
            return
        n = len(self.probe.data)
        for name, jobs, what in (("empty-bytes", ["empty"], "0 bytes"),
                                 ("truncated-bytes", ["truncated"], f"the first {n // 2} of {n} bytes")):
            res = self.fresh.get(jobs[0]) or {"error": "no answer"}
            status, text = self.judge_corrupt(res, strict=True)
            self.r.add(name, status, f"{what} of {self.probe.where}: {text}")
        results = [(j, self.fresh.get(j) or {"error": "no answer"}) for j in ("flip-first", "flip-middle", "flip-last")]
        judged = [(j, *self.judge_corrupt(res, strict=False)) for j, res in results]
        worst = "fail" if any(s == "fail" for _, s, _ in judged) else "warn" if any(
            s == "warn" for _, s, _ in judged) else "pass"
        self.r.add("bit-flips", worst, f"{self.probe.where}: " + "; ".join(
            f"{j.removeprefix('flip-')}: {text}" for j, _, text in judged))

    def judge_corrupt(self, res: dict, strict: bool) -> tuple[str, str]:
        """(status, text) of one decode of corrupt bytes. ``strict``: returning an image fails."""
        secs = f" in {res.get('seconds', 0):.2f} s"
        if "ok" not in res and not res.get("hang") and not res.get("crash"):
            return "fail", f"no answer from the decoding process: {res.get('error', '')}"
        if res.get("hang"):
            return "fail", f"hang: no answer within {res['limit']:.0f} s (the decoder was killed)"
        if res.get("crash"):
            return "fail", f"crashed the decoding process ({res['error']})"
        if res.get("ok"):
            if strict:
                return "fail", (f"decoded to an image{secs} without an error: refuse bytes you cannot fully read "
                                "(raise CodecError; no grey fill)")
            return "warn", f"decoded{secs} without an error (no integrity check in the format)"
        if not res.get("codec_error"):
            return "fail", (f"raised {res.get('error', 'nothing')}{secs}, not a CodecError: catch the decoder's "
                            "errors and raise CodecError('what is wrong with the bytes')")
        if not res.get("message"):
            return "fail", f"CodecError without a message{secs}: say what is wrong with the bytes"
        return "pass", f"CodecError{secs}: {_clip(res['message'])}"


def _clip(text: str, n: int = 120) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n - 1] + "…"


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Both arrays there, of one shape and dtype, with equal values."""
    return a is not None and b is not None and a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)


def canonical_json(obj: Any) -> str:
    """Strict JSON (TypeError for anything JSON cannot hold), keys sorted."""
    return json.dumps(obj, sort_keys=True, allow_nan=False)


def _load_recon(res: dict | None) -> np.ndarray | None:
    if not res or not res.get("recon"):
        return None
    if "array" in res:
        return res["array"]
    try:
        return np.load(res["recon"], allow_pickle=False)
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------- parent side of the process
def child_env() -> dict[str, str]:
    """The environment of the decoding process: this one's, with this process's import path
    (absolute) as PYTHONPATH, so the child imports the same bench and plugins."""
    paths: list[str] = []
    for p in sys.path:
        p = os.path.abspath(p or os.getcwd())
        if os.path.exists(p) and p not in paths:
            paths.append(p)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}


def decode_in_fresh_process(card_path: Path, settings: tuple, points: list, jobs: list[dict], tmp: Path,
                            timeout: float = CORRUPT_BASE_S) -> tuple[dict, dict[str, dict]]:
    """Decode ``jobs`` (``{"id", "file", "seed", "ref"}``) in a new interpreter that builds
    the adapter from ``card_path`` alone. Returns (``{"fingerprints": {json(point): json}}``
    from the process, or ``{"error": why it could not start}``; {job id: result}). A job
    past its time limit is killed and marked ``hang``; one that takes its process down is
    marked ``crash``; a new process then takes the jobs left."""
    results: dict[str, dict] = {}
    info: dict = {"error": "no answer"}
    pending = list(jobs)
    for round_no in range(1, len(jobs) + 2):  # each round finishes, or gives up on, at least one job
        work = tmp / f"process-{round_no}"
        (work / "cwd").mkdir(parents=True)
        spec = {"card": str(card_path), "device": settings[0], "dtype": settings[1], "init": settings[2],
                "points": points, "jobs": pending, "out": str(work / "events.jsonl"), "recon_dir": str(work)}
        (work / "spec.json").write_text(json.dumps(spec))
        with open(work / "log.txt", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "bench.codecs.check", "--decode", str(work / "spec.json")],
                                    cwd=work / "cwd", env=child_env(), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
            try:
                state = _watch(proc, work / "events.jsonl", results, pending, timeout)
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
        tail = (work / "log.txt").read_bytes().decode(errors="replace").strip()[-600:]
        exited = f"exit status {proc.returncode}" + (f": {tail}" if tail else "")
        if state["ready"] is None:  # the adapter did not build (or the process never got that far)
            error = state["error"] or f"the process ended before it was ready ({exited})"
            if round_no == 1:
                info = {"error": error}
            for j in pending:
                results.setdefault(j["id"], {"ok": False, "error": error})
            break
        if round_no == 1:
            info = state["ready"]
        if state["current"] is not None and state["current"] not in results:  # it took the process down
            results[state["current"]] = {"ok": False, "crash": True, "error": exited}
        left = [j for j in pending if j["id"] not in results]
        if left and len(left) == len(pending):  # no progress: never loop
            for j in left:
                results[j["id"]] = {"ok": False, "error": f"the decoding process stopped ({exited})"}
            left = []
        pending = left
        if not pending:
            break
    return info, results


def _watch(proc: subprocess.Popen, events_file: Path, results: dict, pending: list[dict], timeout: float) -> dict:
    """Follow the child's events until it ends; kill it when it runs past a limit. Returns
    ``{"ready": the ready event or None, "error": build error or None, "current": job in flight}``."""
    jobs = {j["id"]: j for j in pending}
    state: dict[str, Any] = {"ready": None, "error": None, "current": None}
    offset, buf = 0, b""
    started = since = time.monotonic()
    while True:
        alive = proc.poll() is None
        if events_file.exists():
            with open(events_file, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            offset += len(chunk)
            *lines, buf = (buf + chunk).split(b"\n")
            for line in filter(None, (ln.strip() for ln in lines)):
                ev = json.loads(line)
                kind = ev.pop("event")
                if kind == "ready":
                    state["ready"] = ev
                elif kind == "build_error":
                    state["error"] = f"building the adapter from the card failed: {ev['error']}"
                elif kind == "start":
                    state["current"], since = ev["id"], time.monotonic()
                elif kind == "done":
                    results[ev.pop("id")] = ev
                    state["current"] = None
        if not alive or state["error"]:
            return state
        now = time.monotonic()
        if state["ready"] is None and now - started > STARTUP_LIMIT_S:
            state["error"] = f"the adapter did not build within {STARTUP_LIMIT_S:.0f} s"
            return state
        current = state["current"]
        if current is not None:
            ref = jobs[current].get("ref")
            limit = timeout + CORRUPT_FACTOR * results.get(ref, {}).get("seconds", 0.0) if ref else CLEAN_LIMIT_S
            if now - since > limit:
                results[current] = {"ok": False, "hang": True, "limit": limit,
                                    "error": f"no answer within {limit:.0f} s"}
                return state
        time.sleep(0.01)


# ---------------------------------------------------------------------------- child side
def _child(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    out = open(spec["out"], "a", encoding="utf-8")

    def emit(**event: Any) -> None:
        out.write(json.dumps(event, default=str) + "\n")
        out.flush()

    t0 = time.perf_counter()
    try:
        from bench import cards
        from bench.codecs.base import CodecError
        from bench.runner import build_codec

        card = cards.load_file("codec", spec["card"])
        codec = build_codec(card, spec["device"], spec["dtype"], spec["init"])
        fps = {}
        for p in spec["points"]:
            try:
                fps[json.dumps(p)] = canonical_json(codec.fingerprint(p))
            except Exception as exc:  # noqa: BLE001
                fps[json.dumps(p)] = f"error: {describe(exc)}"
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        emit(event="build_error", error=describe(exc))
        return 3
    emit(event="ready", seconds=time.perf_counter() - t0, fingerprints=fps)
    for job in spec["jobs"]:
        emit(event="start", id=job["id"])
        data = Path(job["file"]).read_bytes()
        t = time.perf_counter()
        res: dict[str, Any] = {}
        try:
            recon = codec.decode(data, job["seed"])
            res["ok"] = True
        except Exception as exc:  # noqa: BLE001
            res.update(ok=False, error=describe(exc), codec_error=isinstance(exc, CodecError), message=str(exc))
        except SystemExit as exc:
            res.update(ok=False, error=f"SystemExit({exc.code})", codec_error=False, message="")
        res["seconds"] = time.perf_counter() - t
        if res["ok"]:
            res["type"] = type(recon).__name__
            if isinstance(recon, np.ndarray) and recon.dtype != object:
                path = Path(spec["recon_dir"]) / f"{job['id']}.npy"
                np.save(path, recon, allow_pickle=False)
                res.update(recon=str(path), shape=list(recon.shape), dtype=str(recon.dtype))
        emit(event="done", id=job["id"], **res)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "--decode":
        print("usage: python -m bench.codecs.check --decode SPEC.json  (the decoding process of "
              "`bench codecs check`; run `bench codecs check NAME` instead)", file=sys.stderr)
        return 2
    return _child(args[1])


if __name__ == "__main__":
    sys.exit(main())
