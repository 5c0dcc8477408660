"""Atomic file writes: every file landscape writes appears whole or not at all.

A crash or a ``kill -9`` mid-write leaves the previous file (or none), never a torn one, so a
re-run or ``--resume`` can trust whatever it finds.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from landscape.core.records import json_safe


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    The file gets the mode a plain ``open(path, "w")`` would give (0666 less the umask), not the
    private 0600 of the temporary file, so collaborators and web servers can read results.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as strict JSON (non-finite floats become null) atomically."""
    text = json.dumps(json_safe(obj), indent=1, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode())
