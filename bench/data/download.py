"""Resumable, checksummed downloads of dataset archives (``bench datasets prepare``).

Same conventions as :mod:`bench.weights` (its timeout, its cached sha256, its
"unverified" rule): an archive whose card gives a ``sha256`` is accepted only with
that digest; one with ``sha256: null`` (no published digest could be established)
is accepted as downloaded and its sha256 is printed so it can be recorded in the
card. Unlike weight files, archives are large, so a download goes to
``<file>.part`` and an interrupted one continues from where it stopped with an HTTP
``Range`` request (a server that ignores Range restarts it from zero).
"""
from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.hashing import sha256_file_cached
from bench.weights import FETCH_TIMEOUT_S

CHUNK = 1 << 20
Progress = Callable[[int, int | None], None]  # (bytes so far, total or None)


class DownloadError(OSError):
    """A download that failed or gave the wrong bytes; the message names the URL and the file."""


@dataclass(frozen=True)
class Archive:
    """One file a dataset is made from. ``sha256``/``size``: None where unknown (unverified)."""

    file: str
    url: str | None
    sha256: str | None = None
    size: int | None = None
    digest_source: str = ""  # where the digest comes from (e.g. TFDS url_checksums)

    @classmethod
    def from_card(cls, entry: dict) -> Archive:
        return cls(str(entry["file"]), entry.get("url"), entry.get("sha256") or None,
                   int(entry["size"]) if entry.get("size") else None, str(entry.get("digest_source", "")))

    @property
    def verified_by(self) -> str:
        return "sha256" if self.sha256 else "unverified"

    def check(self, path: Path) -> str:
        """sha256 of ``path``; raises DownloadError if it differs from the card's (or its size does)."""
        if self.size is not None and path.stat().st_size != self.size:
            raise DownloadError(f"{path}: {path.stat().st_size} bytes, the card says {self.size} "
                                f"(incomplete or a different file; delete it and download {self.url})")
        digest = sha256_file_cached(path)
        if self.sha256 and digest != self.sha256:
            raise DownloadError(f"{path}: sha256 {digest}, the card says {self.sha256}: a different or corrupt "
                                f"file; delete it and download {self.url}")
        return digest


def download(archive: Archive, dest: Path, progress: Progress | None = None,
             timeout: float = FETCH_TIMEOUT_S) -> str:
    """Download ``archive.url`` to ``dest`` (resuming ``dest.part``), verify it, and return
    its sha256. Raises DownloadError (network, HTTP, wrong digest); a wrong file is removed."""
    if not archive.url:
        raise DownloadError(f"{archive.file}: no download URL (obtain it by hand and pass --from)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "bench-datasets"}
    if have:
        headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(archive.url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            if have and resp.status != 206:  # Range ignored: start again
                have = 0
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length is not None else archive.size
            with open(part, "ab" if have else "wb") as out:
                done = have
                for chunk in iter(lambda: resp.read(CHUNK), b""):
                    out.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the .part is complete
            pass
        else:
            raise DownloadError(f"{archive.url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        kept = f" (partial file kept, the next try resumes it: {part})" if part.exists() and part.stat().st_size else ""
        raise DownloadError(f"{archive.url}: {getattr(exc, 'reason', exc)}{kept}") from exc
    try:
        digest = archive.check(part)
    except DownloadError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    if not archive.sha256:
        print(f"{archive.file}: downloaded UNVERIFIED (no published digest); its sha256 is {digest}. Check it "
              f"against a trusted copy and record it in the dataset card (sha256: {digest}).", flush=True)
    return digest
