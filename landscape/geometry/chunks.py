"""A resumable results store: a directory of finished chunks plus a manifest of the settings.

Layout::

    STORE/manifest.json       {"format": 1, "digest": ..., "settings": {...}, "n_chunks": ...}
    STORE/chunk_00000.npz     arrays of one finished chunk
    STORE/chunk_00001.npz     ...

Every file is written to a temporary name in the same directory and moved into place with
``os.replace``, so a chunk file exists only once it is complete: a run killed at any moment
leaves a valid store, and a rerun with the same settings computes only the missing chunks. A
store made with different settings (a different digest) is refused, never silently mixed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from landscape.core.errors import LandscapeError
from landscape.core.io import atomic_write_bytes
from landscape.core.records import json_safe

FORMAT = 1
_CHUNK = re.compile(r"^chunk_(\d{5,})\.npz$")


def tensor_digest(tensors: Mapping[str, Tensor] | Tensor) -> str:
    """SHA-256 of names, dtypes, shapes and values (device and memory layout do not matter)."""
    h = hashlib.sha256()
    items = tensors.items() if isinstance(tensors, Mapping) else [("", tensors)]
    for name, t in sorted(items, key=lambda kv: kv[0]):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class ChunkStore:
    """Finished chunks of one computation, keyed by chunk index.

    Args:
        path: the store directory (created if missing).
        settings: everything that determines the numbers (plain JSON values; tensors enter as
            digests). Its digest is written to the manifest on creation and checked on reopening.
        n_chunks: how many chunks the computation has.

    Raises:
        LandscapeError: when ``path`` holds a store made with other settings.
    """

    def __init__(self, path: str | os.PathLike, settings: Mapping[str, Any], n_chunks: int) -> None:
        self.path = Path(path)
        self.settings = json_safe(dict(settings))
        self.n_chunks = int(n_chunks)
        text = json.dumps(self.settings, sort_keys=True)
        self.digest = hashlib.sha256(text.encode()).hexdigest()
        manifest = self.path / "manifest.json"
        if manifest.exists():
            old = json.loads(manifest.read_text())
            if old.get("digest") != self.digest or old.get("n_chunks") != self.n_chunks:
                before = old.get("settings", {})
                changed = sorted(
                    k
                    for k in set(before) | set(self.settings)
                    if before.get(k) != self.settings.get(k)
                )
                raise LandscapeError(
                    f"the store {self.path} was made with different settings "
                    f"({', '.join(changed) or 'format'}); use another directory or delete it"
                )
            return
        if self.path.exists() and any(self.path.iterdir()):
            raise LandscapeError(
                f"{self.path} is not empty and holds no manifest; refusing to use it"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        body = {
            "format": FORMAT,
            "digest": self.digest,
            "n_chunks": self.n_chunks,
            "settings": self.settings,
        }
        atomic_write_bytes(manifest, json.dumps(body, indent=1, sort_keys=True).encode())

    def _file(self, index: int) -> Path:
        return self.path / f"chunk_{index:05d}.npz"

    def completed(self) -> list[int]:
        """Indices of the chunks already stored, ascending."""
        found = (_CHUNK.match(p.name) for p in self.path.iterdir())
        return sorted(int(m.group(1)) for m in found if m and int(m.group(1)) < self.n_chunks)

    def save(self, index: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Store one finished chunk atomically."""
        if not 0 <= index < self.n_chunks:
            raise IndexError(f"chunk {index} outside 0..{self.n_chunks - 1}")
        buffer = io.BytesIO()
        np.savez(buffer, **dict(arrays))  # type: ignore[arg-type]  # numpy's stubs match **kwds to allow_pickle
        atomic_write_bytes(self._file(index), buffer.getvalue())

    def load(self, index: int) -> dict[str, np.ndarray]:
        """The arrays of a stored chunk."""
        with np.load(self._file(index)) as f:
            return {k: f[k] for k in f.files}
