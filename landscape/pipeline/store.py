"""The results store of ``landscape analyze``: one JSON file per finished piece of work.

::

    ANALYSIS/
      settings.json             the settings of the last call (``--resume`` reuses them)
      data/<piece key>.json     {"key", "fingerprint", "record"} for every finished piece
      partial/<piece key>/      chunk stores of surfaces still being computed (removed once stored)
      summary.json              every number, gathered from the pieces
      report.html, figures/     written from the stored records
      .lock                     held (flock) by the analysis running in the folder, then removed

A piece is kept when its fingerprint (a hash of its settings and of the checkpoint files it reads)
matches, so a re-run or a resume computes only what is missing, and a changed setting or a
retrained run recomputes exactly the pieces it affects. Every file is written atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one analysis per folder is then on the user
    fcntl = None  # type: ignore[assignment]  # checked before every use

from landscape.core.errors import LandscapeError
from landscape.core.io import atomic_write_json
from landscape.core.records import json_safe


def _same_file(handle: Any, path: Path) -> bool:
    """Whether the open ``handle`` is still the file at ``path`` (not removed or replaced)."""
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts."""
    text = json.dumps(json_safe(list(parts)), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | os.PathLike) -> str:
    """SHA-1 of a file's content (cached by path, size and modification time)."""
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha1()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _FILE_HASHES[key] = h.hexdigest()[:16]
    return _FILE_HASHES[key]


class ResultsStore:
    """Finished pieces of an analysis, addressed by keys like ``epoch_0030/student_0/eigen``."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / "data" / f"{key}.json"

    def partial_dir(self, key: str) -> Path:
        """Where a long piece keeps its own resumable chunks while it runs."""
        return self.root / "partial" / key

    def get(self, key: str, fp: str) -> dict[str, Any] | None:
        """The stored record of ``key`` if it was computed with fingerprint ``fp``."""
        entry = self._entry(key)
        if entry is None or entry.get("fingerprint") != fp:
            return None
        return entry.get("record")

    def holds(self, key: str) -> bool:
        """Whether a finished record of ``key`` is stored, whatever its fingerprint."""
        return self._entry(key) is not None

    def stored_definition(self, key: str) -> str | None:
        """The definition of the record stored under ``key`` whatever its fingerprint (``None``
        when there is none), to say why a stored piece is recomputed."""
        entry = self._entry(key)
        record = entry.get("record") if entry else None
        found = record.get("definition") if isinstance(record, dict) else None
        return found if isinstance(found, str) else None

    def _entry(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        if not path.exists():
            return None
        try:
            entry = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # a file torn outside our atomic writes: recompute it
        return entry if isinstance(entry, dict) else None

    def put(self, key: str, fp: str, record: dict[str, Any]) -> None:
        """Store a finished piece; its partial chunks, now summed up in the record, are removed."""
        atomic_write_json(self._path(key), {"key": key, "fingerprint": fp, "record": record})
        partial = self.partial_dir(key)
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
            # Prune the emptied parents up to partial/ itself.
            for parent in partial.parents:
                if parent == self.root or not parent.is_relative_to(self.root / "partial"):
                    break
                try:
                    parent.rmdir()
                except OSError:
                    break

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder's lock (``.lock``) while analysing, so that two processes never
        interleave one store. The lock is the kernel's (``flock``): it goes with its process,
        a ``kill -9`` included, so it is never stale. The file is removed when the analysis
        ends (finished, failed or interrupted), while still locked; a waiter that had opened
        it before then finds its file gone and locks the new one instead."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / ".lock"
        while True:
            handle = open(path, "a+")  # closed below, or by the with that holds the lock
            if fcntl is not None:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    handle.close()
                    raise LandscapeError(
                        f"{self.root} is being analysed by {holder}; wait for it to finish or "
                        f"choose another --out"
                    ) from None
            if _same_file(handle, path):
                break
            handle.close()  # removed by the holder that just finished: lock the new file
        with handle:
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()}")
            handle.flush()
            try:
                yield
            finally:
                # Not fatal where it fails (Windows cannot remove an open file): the next
                # analysis takes the lock over all the same.
                with contextlib.suppress(OSError):
                    path.unlink()
                if fcntl is not None:
                    fcntl.flock(handle, fcntl.LOCK_UN)

    def data_file(self, key: str) -> str:
        """Path of a piece's data file relative to the store root."""
        return str(self._path(key).relative_to(self.root))

    def read_settings(self) -> dict[str, Any] | None:
        path = self.root / "settings.json"
        if not path.exists():
            return None
        return json.loads(path.read_text())

    def write_settings(self, settings: dict[str, Any]) -> None:
        atomic_write_json(self.root / "settings.json", settings)
