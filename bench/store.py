"""The run directory: stored bitstreams and reconstructions, a ledger of finished
work, parquet tables and a provenance manifest.

Layout of a run directory::

    manifest.json        run id + one provenance record per invocation
    ledger.sqlite        finished units and metric values (the source of truth)
    bitstreams/<dataset>/<codec>/<point>/s<seed>/<image_id>.bin
    recon/<dataset>/<codec>/<point>/s<seed>/<image_id>.png
    per_image.parquet    long format, exported from the ledger
    per_set.parquet      per (codec, point, seed, metric): set means and set metrics

Resume: a unit (image × codec point × seed) is keyed by everything that can
change its result (see ``bench.runner``: the image's pixel sha256, the card's
parameters, the adapter version, the adapter's fingerprint — library, program
and weight versions —, point and seed); a metric value by the unit key and the
metric's version; a set metric by the keys of the units it covers, its version
and the annotations it reads. Each finished unit is committed to SQLite at once,
so a killed run loses at most the units in flight. A unit recomputed under a new
key replaces the old one and its metric values (no duplicate rows).

Scope: the ledger may hold work of earlier experiments (other codecs, points,
metrics, or results of older versions). Each invocation records its experiment's
scope (the unit keys it planned, its metrics with their versions, the keys of its
set-metric results); the parquet tables hold exactly that scope, and
:meth:`RunStore.outside_scope` lists the rest. Files and tables are written to a
temporary name and renamed (atomic).

Rate kinds: a unit's ``bits``/``bpp`` are 8 x its stored bytes (``rate_kind`` = the
adapter's, ``real`` for every adapter that writes a real bitstream). An adapter whose
official code only *estimates* the rate may also report that estimate for the stored
bytes (``estimated_bits(data)``, e.g. CDC); the runner keeps it with the unit
(``est_bits``), and both tables then carry, besides the real row, a second row for the
same unit/point with ``rate_kind = "estimated"``, ``bpp = est_bits / (H x W)`` (``bits``
rounded to an integer; no payload/side/container split) and *identical* metric values.
Rows of the two kinds are never averaged together: per_set groups by ``rate_kind`` and
set metrics (FID, ...) are repeated with the mean estimated bpp of their units. Real rows
come first (`rate_kind` descending), so a reader that keeps the first row of a point sees
the real rate.
"""
from __future__ import annotations

import errno
import json
import os
import sqlite3
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from bench.hashing import sha256_json

PER_IMAGE_COLUMNS = ["run_id", "dataset", "image_id", "codec", "point", "seed", "height", "width", "bits", "bpp",
                     "rate_kind", "enc_s", "dec_s", "metric", "value", "weights", "payload_bits", "side_bits",
                     "container_bits"]
PER_SET_COLUMNS = ["run_id", "dataset", "codec", "point", "seed", "metric", "value", "n_images", "n_patches",
                   "aggregate", "mean_bpp", "weights", "rate_kind"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS units (
    unit_key TEXT PRIMARY KEY, dataset TEXT, image_id TEXT, image_sha256 TEXT, codec TEXT,
    card_hash TEXT, point TEXT, seed INTEGER, height INTEGER, width INTEGER, bits INTEGER,
    bpp REAL, rate_kind TEXT, enc_s REAL, dec_s REAL, breakdown TEXT, bitstream TEXT,
    recon TEXT, bitstream_sha256 TEXT, finished_at REAL, weights TEXT, fingerprint TEXT,
    UNIQUE (dataset, image_id, codec, point, seed));
CREATE TABLE IF NOT EXISTS metrics (
    unit_key TEXT, metric TEXT, metric_version TEXT, value REAL, device TEXT, finished_at REAL,
    PRIMARY KEY (unit_key, metric));
CREATE TABLE IF NOT EXISTS set_metrics (
    dataset TEXT, codec TEXT, point TEXT, seed INTEGER, metric TEXT, value REAL, n_images INTEGER,
    extra TEXT, key TEXT, finished_at REAL, mean_bpp REAL, weights TEXT,
    PRIMARY KEY (dataset, codec, point, seed, metric));
CREATE TABLE IF NOT EXISTS images (
    path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT, height INTEGER, width INTEGER);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS scope (kind TEXT, key TEXT, version TEXT, PRIMARY KEY (kind, key));
"""
# Columns added after the first ledgers were written: (table, column, type).
_ADDED_COLUMNS = (("units", "weights", "TEXT"), ("units", "fingerprint", "TEXT"),
                  ("set_metrics", "mean_bpp", "REAL"), ("set_metrics", "weights", "TEXT"),
                  ("units", "est_bits", "REAL"))


class StoreError(OSError):
    """The run directory cannot be used; says why."""


_FULL = {errno.ENOSPC, errno.EDQUOT}
_FORBIDDEN = {errno.EROFS, errno.EACCES, errno.EPERM}
RESUME_HINT = "finished units are kept: run the same command again to resume"


def output_error(exc: OSError, *paths: Path) -> str | None:
    """A message when ``exc``, raised while writing ``paths``, means the run directory can take
    no more data: its disk (or quota) is full, or its folders cannot be written (read-only
    filesystem, permissions). None for any other error (which fails one unit only)."""
    hit = [p.parent for p in paths if exc.filename and _related(Path(exc.filename), p.parent)]
    folder = (hit or [p.parent for p in paths] or ["the run directory"])[0]
    if exc.errno in _FULL:
        why = "the disk is full (or the quota used up)"
    elif exc.errno in _FORBIDDEN and hit:
        why = "the folder cannot be written (read-only filesystem or no permission)"
    else:
        return None
    return (f"cannot write to {folder}: {why} ({exc.strerror or exc}). Free space or make the folder writable "
            f"(or choose another --out); {RESUME_HINT}")


def _scope_rows(unit_keys: list[str], metrics: dict[str, str], set_keys: list[str] = ()) -> list[tuple]:
    """Rows of the ``scope`` table: (kind, key, version) for units, per-image metrics and set results."""
    return ([("unit", k, "") for k in unit_keys] + [("metric", m, v) for m, v in metrics.items()]
            + [("set", k, "") for k in set_keys])


def _related(a: Path, b: Path) -> bool:
    return a == b or b in a.parents or a in b.parents


def content_key(**parts: Any) -> str:
    """sha256 of the canonical JSON of ``parts``: the resume key of a unit of work."""
    return sha256_json(parts)


def point_str(point: Any) -> str:
    """Canonical text of a rate point (10 -> "10", 0.5 -> "0.5", "hi" -> "hi")."""
    if isinstance(point, float) and point.is_integer():
        point = int(point)
    return f"{point:g}" if isinstance(point, (int, float)) else str(point)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yields a temporary sibling path; renames it onto ``path`` if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class UnitPaths:
    bitstream: Path
    recon: Path


class RunStore:
    """A run directory (created if needed). Only one process writes the ledger."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).absolute()  # absolute: Ray workers elsewhere (other cwd) write to the same paths
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StoreError(f"cannot write to output directory {self.root}: {exc.strerror or exc}. "
                             "Choose another --out directory or fix its permissions") from exc
        self.db = sqlite3.connect(self.root / "ledger.sqlite", timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        for table, column, kind in _ADDED_COLUMNS:
            have = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        self.db.commit()
        self.run_id = self._state("run_id") or self._set_state("run_id", f"{self.root.name}-{uuid.uuid4().hex[:8]}")

    # -- small key/value state ------------------------------------------------
    def _state(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM state WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def _set_state(self, key: str, value: str) -> str:
        with self._tx():
            self.db.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (key, value))
        return value

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """One ledger transaction; a write the disk refuses (full, read-only) becomes a
        StoreError naming the run directory (the transaction is rolled back: nothing half-written)."""
        try:
            with self.db:
                yield
        except sqlite3.OperationalError as exc:
            what = ("Free space or make the folder writable (or choose another --out)"
                    if any(w in str(exc) for w in ("full", "readonly", "I/O")) else "Is another process writing it?")
            raise StoreError(f"cannot write the ledger of {self.root}: {exc}. {what}; {RESUME_HINT}") from exc

    # -- paths -----------------------------------------------------------------
    def unit_paths(self, dataset: str, codec: str, point: str, seed: int, image_id: str) -> UnitPaths:
        rel = Path(dataset) / codec / point / f"s{seed}"
        return UnitPaths(self.root / "bitstreams" / rel / f"{image_id}.bin", self.root / "recon" / rel / f"{image_id}.png")

    # -- image identity cache --------------------------------------------------------
    def cached_image(self, path: Path) -> tuple[str, int, int] | None:
        """(pixel sha256, height, width) if ``path`` is unchanged since it was hashed."""
        try:
            st = path.stat()
        except OSError:
            return None
        row = self.db.execute("SELECT size, mtime_ns, sha256, height, width FROM images WHERE path=?",
                              (str(path.resolve()),)).fetchone()
        if row and row[0] == st.st_size and row[1] == st.st_mtime_ns:
            return row[2], row[3], row[4]
        return None

    def remember_image(self, path: Path, sha256: str, height: int, width: int) -> None:
        st = path.stat()
        with self._tx():
            self.db.execute("INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?, ?)",
                            (str(path.resolve()), st.st_size, st.st_mtime_ns, sha256, height, width))

    # -- units -----------------------------------------------------------------
    def unit_done(self, unit_key: str) -> bool:
        row = self.db.execute("SELECT bitstream, recon FROM units WHERE unit_key=?", (unit_key,)).fetchone()
        return bool(row) and (self.root / row[0]).is_file() and (self.root / row[1]).is_file()

    def metric_versions(self, unit_key: str) -> dict[str, str]:
        rows = self.db.execute("SELECT metric, metric_version FROM metrics WHERE unit_key=?", (unit_key,))
        return dict(rows.fetchall())

    def recon_path(self, unit_key: str) -> Path:
        row = self.db.execute("SELECT recon FROM units WHERE unit_key=?", (unit_key,)).fetchone()
        return self.root / row[0]

    def add_unit(self, row: dict) -> None:
        """Insert a finished unit; replaces (with its metrics) any unit at the same coordinates."""
        with self._tx():
            old = self.db.execute(
                "SELECT unit_key FROM units WHERE dataset=? AND image_id=? AND codec=? AND point=? AND seed=?",
                (row["dataset"], row["image_id"], row["codec"], row["point"], row["seed"])).fetchall()
            for (key,) in old:
                if key != row["unit_key"]:
                    self.db.execute("DELETE FROM metrics WHERE unit_key=?", (key,))
            self.db.execute("DELETE FROM units WHERE dataset=? AND image_id=? AND codec=? AND point=? AND seed=?",
                            (row["dataset"], row["image_id"], row["codec"], row["point"], row["seed"]))
            for p in ("bitstream", "recon"):
                row[p] = str(Path(row[p]).relative_to(self.root))
            row.setdefault("finished_at", time.time())
            cols = ", ".join(row)
            self.db.execute(f"INSERT INTO units ({cols}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
        self._set_state("dirty", "1")

    def add_metrics(self, unit_key: str, values: dict[str, float], versions: dict[str, str], device: str) -> None:
        if not values:
            return
        now = time.time()
        with self._tx():
            self.db.executemany("INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?, ?)",
                                [(unit_key, m, versions[m], v, device, now) for m, v in values.items()])
        self._set_state("dirty", "1")

    def add_set_metric(self, dataset: str, codec: str, point: str, seed: int, metric: str, value: float,
                       n_images: int, key: str, extra: dict | None = None, mean_bpp: float | None = None,
                       weights: str | None = None) -> None:
        """Store a set metric computed from the units whose keys ``key`` covers; ``mean_bpp``
        is the mean bpp of exactly those units (plots draw the value there)."""
        with self._tx():
            self.db.execute("INSERT OR REPLACE INTO set_metrics (dataset, codec, point, seed, metric, value, n_images, "
                            "extra, key, finished_at, mean_bpp, weights) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (dataset, codec, point, seed, metric, value, n_images, json.dumps(extra or {}), key,
                             time.time(), mean_bpp, weights))
        self._set_state("dirty", "1")

    def units_of(self, keys: list[str]) -> list[tuple[str, str, float, str]]:
        """(unit_key, recon path relative to the run, bpp, weights) of the finished units among ``keys``."""
        out = []
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            rows = self.db.execute(f"SELECT unit_key, recon, bpp, weights FROM units WHERE unit_key IN "
                                   f"({', '.join('?' * len(chunk))})", chunk).fetchall()
            out += rows
        order = {k: i for i, k in enumerate(keys)}
        return sorted(out, key=lambda r: order[r[0]])

    # -- scope: what the current experiment covers ---------------------------------
    def set_scope(self, unit_keys: list[str], metrics: dict[str, str], set_keys: list[str]) -> None:
        """Record the experiment of this invocation: its planned unit keys, its per-image
        metrics ``{name: version}`` and the keys of its set-metric results. The tables
        are re-exported when the scope changed."""
        new = set(_scope_rows(unit_keys, metrics, set_keys))
        old = set(self.db.execute("SELECT kind, key, version FROM scope").fetchall())
        if new == old:
            return
        with self._tx():
            self.db.execute("DELETE FROM scope")
            self.db.executemany("INSERT INTO scope VALUES (?, ?, ?)", sorted(new))
        self._set_state("dirty", "1")

    def widen_scope(self, unit_keys: list[str], metrics: dict[str, str]) -> None:
        """Add to the recorded scope without removing anything: the tables written while a run
        goes on then hold the earlier scope plus what this run planned so far, and only grow.
        The end of the run records the exact scope (:meth:`set_scope`)."""
        new = _scope_rows(unit_keys, metrics)
        with self._tx():
            before = self.db.total_changes
            self.db.executemany("INSERT OR IGNORE INTO scope VALUES (?, ?, ?)", new)
            added = self.db.total_changes != before
        if added:
            self._set_state("dirty", "1")

    def outside_scope(self) -> list[tuple[str, str, str, int, int]]:
        """What the directory holds beyond the current experiment: one
        (dataset, codec, point, seed, number of units) per codec point with such units
        (other codecs or points, or results of other versions)."""
        return self.db.execute("""
            SELECT dataset, codec, point, seed, COUNT(*) FROM units
            WHERE unit_key NOT IN (SELECT key FROM scope WHERE kind='unit')
            GROUP BY dataset, codec, point, seed ORDER BY 1, 2, 3, 4""").fetchall()

    def set_metric_key(self, dataset: str, codec: str, point: str, seed: int, metric: str) -> str | None:
        row = self.db.execute("SELECT key FROM set_metrics WHERE dataset=? AND codec=? AND point=? AND seed=? "
                              "AND metric=?", (dataset, codec, point, seed, metric)).fetchone()
        return row[0] if row else None

    # -- tables ------------------------------------------------------------------
    # Tables are built in SQL and written with pyarrow: no pandas import on the hot path.
    # Only the current scope: units it planned, metric values of its metric versions, set
    # results of its keys. A mean's n_images and mean_bpp are over the images that have
    # that metric's value (a metric that does not fit some images covers fewer).
    _SCOPED = """units u JOIN scope su ON su.kind = 'unit' AND su.key = u.unit_key
        JOIN metrics m ON m.unit_key = u.unit_key
        JOIN scope sm ON sm.kind = 'metric' AND sm.key = m.metric AND sm.version = m.metric_version"""
    _PER_IMAGE_COLS = """u.dataset, u.image_id, u.codec, u.point, u.seed, u.height, u.width, {bits} AS bits,
               {bpp} AS bpp, {kind} AS rate_kind, u.enc_s, u.dec_s, m.metric, m.value, u.weights,
               {payload} AS payload_bits, {side} AS side_bits, {container} AS container_bits,
               u.image_sha256, u.card_hash, m.metric_version, u.breakdown"""
    _EST_BPP = "u.est_bits / (u.height * u.width)"
    _PER_IMAGE_SQL = f"""
        SELECT {_PER_IMAGE_COLS.format(bits="u.bits", bpp="u.bpp", kind="u.rate_kind",
                                       payload="json_extract(u.breakdown, '$.payload')",
                                       side="json_extract(u.breakdown, '$.side')",
                                       container="json_extract(u.breakdown, '$.container')")}
        FROM {_SCOPED}
        UNION ALL
        SELECT {_PER_IMAGE_COLS.format(bits="CAST(ROUND(u.est_bits) AS INTEGER)", bpp=_EST_BPP, kind="'estimated'",
                                       payload="NULL", side="NULL", container="NULL")}
        FROM {_SCOPED} WHERE u.est_bits IS NOT NULL
        ORDER BY dataset, codec, point, seed, image_id, metric, rate_kind DESC"""
    # set metrics: the rate kind of their units, and their mean estimated bpp where units have estimates
    _UNITS_OF_SET = """FROM units u JOIN scope su ON su.kind = 'unit' AND su.key = u.unit_key
               WHERE u.dataset = s.dataset AND u.codec = s.codec AND u.point = s.point AND u.seed = s.seed"""
    _PER_SET_SQL = f"""
        SELECT u.dataset, u.codec, u.point, u.seed, m.metric, AVG(m.value) AS value,
               COUNT(DISTINCT u.image_id) AS n_images, NULL AS n_patches, 'mean' AS aggregate,
               AVG(u.bpp) AS mean_bpp, u.weights, NULL AS extra, u.rate_kind AS rate_kind
        FROM {_SCOPED}
        GROUP BY u.dataset, u.codec, u.point, u.seed, m.metric, u.weights, u.rate_kind
        UNION ALL
        SELECT u.dataset, u.codec, u.point, u.seed, m.metric, AVG(m.value), COUNT(DISTINCT u.image_id), NULL,
               'mean', AVG({_EST_BPP}), u.weights, NULL, 'estimated'
        FROM {_SCOPED} WHERE u.est_bits IS NOT NULL
        GROUP BY u.dataset, u.codec, u.point, u.seed, m.metric, u.weights
        UNION ALL
        SELECT s.dataset, s.codec, s.point, s.seed, s.metric, s.value, s.n_images,
               json_extract(s.extra, '$.n_patches'), 'set', s.mean_bpp, s.weights, s.extra,
               COALESCE((SELECT u.rate_kind {_UNITS_OF_SET} LIMIT 1), 'real')
        FROM set_metrics s JOIN scope ss ON ss.kind = 'set' AND ss.key = s.key
        UNION ALL
        SELECT * FROM (
            SELECT s.dataset, s.codec, s.point, s.seed, s.metric, s.value, s.n_images,
                   json_extract(s.extra, '$.n_patches'), 'set',
                   (SELECT AVG({_EST_BPP}) {_UNITS_OF_SET} AND u.est_bits IS NOT NULL) AS est_bpp,
                   s.weights, s.extra, 'estimated'
            FROM set_metrics s JOIN scope ss ON ss.kind = 'set' AND ss.key = s.key) WHERE est_bpp IS NOT NULL
        ORDER BY 1, 2, 3, 4, 5, 13 DESC, 9"""
    _TYPES = {"seed": "int64", "height": "int64", "width": "int64", "bits": "int64", "n_images": "int64",
              "n_patches": "int64", "bpp": "float64", "enc_s": "float64", "dec_s": "float64", "value": "float64",
              "mean_bpp": "float64", "payload_bits": "int64", "side_bits": "int64", "container_bits": "int64"}

    def _arrow(self, sql: str):
        import pyarrow as pa

        cur = self.db.execute(sql)
        names = [d[0] for d in cur.description]
        columns = list(zip(*cur.fetchall())) or [()] * len(names)
        arrays = {"run_id": pa.array([self.run_id] * len(columns[0]), pa.string())}
        for name, values in zip(names, columns):
            arrays[name] = pa.array(list(values), getattr(pa, self._TYPES.get(name, "string"))())
        return pa.table(arrays)

    def per_image_table(self):
        """per_image as a pyarrow Table (columns: PER_IMAGE_COLUMNS, then provenance columns)."""
        return self._arrow(self._PER_IMAGE_SQL)

    def per_set_table(self):
        """per_set as a pyarrow Table: per-image metric means per point (aggregate "mean") and set
        metrics (aggregate "set", with their ``extra`` JSON and ``n_patches``)."""
        return self._arrow(self._PER_SET_SQL)

    def export_tables(self, force: bool = False) -> bool:
        """Write per_image.parquet and per_set.parquet atomically if the ledger changed."""
        if not force and self._state("dirty") != "1" and (self.root / "per_image.parquet").exists():
            return False
        import pyarrow.parquet as pq

        for name, table in (("per_image", self.per_image_table()), ("per_set", self.per_set_table())):
            try:
                with atomic_path(self.root / f"{name}.parquet") as tmp:
                    pq.write_table(table, tmp)
            except OSError as exc:  # the previous table (if any) is still there, whole
                raise StoreError(f"cannot write {name}.parquet in {self.root}: {exc}. Free space or make the "
                                 f"folder writable (or choose another --out); {RESUME_HINT}") from exc
        self._set_state("dirty", "0")
        return True

    # -- manifest ------------------------------------------------------------------
    def record_invocation(self, record: dict) -> None:
        path = self.root / "manifest.json"
        manifest = json.loads(path.read_text()) if path.exists() else {"run_id": self.run_id, "invocations": []}
        manifest["invocations"].append(record)
        atomic_write_bytes(path, json.dumps(manifest, indent=2, default=str).encode())


def read_table(run_dir: str | Path, name: str):
    """Load ``per_image`` or ``per_set`` of a run directory as a DataFrame.

    Safe while a run refreshes its tables: the file is opened once, so the read sees one
    whole version (a reader that opens a path twice, as ``pandas.read_parquet(path)`` does
    through pyarrow's dataset API, can pair one version's size with the next one's bytes)."""
    import pandas as pd

    path = Path(run_dir) / f"{name}.parquet"
    try:
        with open(path, "rb") as f:
            return pd.read_parquet(f)
    except FileNotFoundError:
        raise StoreError(f"{path} does not exist: is {run_dir} a finished bench run directory?") from None
