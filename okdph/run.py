"""The run directory: the contract between training and analysis.

::

    RUN/
      run.json                    format, method, arch, data, members, augment, resolved config, status
      metrics.jsonl               one JSON object per epoch
      checkpoints/epoch_0005.pt   torch.load(weights_only=True): {"format", "version", "epoch", "step",
                                  "models": {member: state_dict}, "method_state", "optimizer",
                                  "scheduler", "metrics", "config"}
      checkpoints/epoch_0005.json sidecar: epoch, step, members, metrics, file (no unpickling needed)
      analysis/                   written by ``landscape analyze``

``epoch_0000`` holds the initial weights; ``epoch_N`` the weights after N epochs. Every file is
written to a temporary name and moved into place with ``os.replace``, so a crash never leaves a
half-written checkpoint or run.json behind.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

RUN_FORMAT = "okdph-run"
CHECKPOINT_FORMAT = "okdph-checkpoint"
FORMAT_VERSION = 1
_CKPT_RE = re.compile(r"^epoch_(\d+)\.pt$")


class RunDirError(ValueError):
    """The path is not a usable run directory (user-facing, one sentence)."""


def check_creatable(path: Path) -> None:
    """RunDirError (one sentence) when a file stands where directory ``path`` or one of its
    parents would be created; mkdir would fail later with a traceback instead."""
    # Path.exists is False below a file, so the first existing ancestor is the one to look at.
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or existing.is_dir():
        return
    if existing == path:
        raise RunDirError(f"{path} is a file, not a directory")
    raise RunDirError(f"{path} cannot be created: {existing} is a file, not a directory")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and os.replace.

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


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint found on disk: its epoch, the ``.pt`` path and the parsed sidecar (if any)."""

    epoch: int
    path: Path
    sidecar: dict[str, Any]


class RunDir:
    """Reads and writes one run directory."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    # ---- run.json ---------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.run_json.exists()

    def write_info(self, info: dict[str, Any]) -> None:
        atomic_write_json(self.run_json, {"format": RUN_FORMAT, "version": FORMAT_VERSION, **info})

    def read_info(self) -> dict[str, Any]:
        """The parsed run.json; RunDirError if the directory is not a run."""
        if not self.path.is_dir():
            raise RunDirError(f"run directory {self.path} does not exist")
        if not self.run_json.exists():
            raise RunDirError(f"{self.path} is not a run directory (it has no run.json)")
        try:
            info = json.loads(self.run_json.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RunDirError(
                f"{self.run_json} is not valid JSON ({err.__class__.__name__})"
            ) from None
        if not isinstance(info, dict) or info.get("format") != RUN_FORMAT:
            raise RunDirError(f"{self.run_json} is not an okdph run description")
        if info.get("version", 0) > FORMAT_VERSION:
            raise RunDirError(
                f"{self.run_json} has format version {info['version']}; "
                f"this okdph reads up to {FORMAT_VERSION}"
            )
        return info

    def update_info(self, **changes: Any) -> None:
        info = self.read_info()
        info.update(changes)
        atomic_write_json(self.run_json, info)

    # ---- metrics ----------------------------------------------------------------------------
    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line (appends are small; a torn last line is dropped on resume)."""
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")
            f.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        records = []
        # Undecodable bytes become U+FFFD, so a damaged line fails as JSON and is skipped.
        for line in self.metrics_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a crash
            if isinstance(record, dict):
                records.append(record)
        return records

    def truncate_metrics(self, last_epoch: int) -> None:
        """Keep only records up to ``last_epoch`` (used when resuming from an earlier checkpoint)."""
        kept = [r for r in self.read_metrics() if r.get("epoch", 0) <= last_epoch]
        atomic_write_bytes(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept).encode())

    # ---- checkpoints ------------------------------------------------------------------------
    def checkpoint_path(self, epoch: int) -> Path:
        return self.checkpoint_dir / f"epoch_{epoch:04d}.pt"

    def save_checkpoint(self, epoch: int, payload: dict[str, Any], sidecar: dict[str, Any]) -> Path:
        """Write ``epoch_NNNN.pt`` then its sidecar (a sidecar never points at a missing file)."""
        path = self.checkpoint_path(epoch)
        atomic_torch_save(
            path,
            {"format": CHECKPOINT_FORMAT, "version": FORMAT_VERSION, "epoch": epoch, **payload},
        )
        atomic_write_json(path.with_suffix(".json"), {"epoch": epoch, "file": path.name, **sidecar})
        return path

    def checkpoints(self) -> list[CheckpointInfo]:
        """Checkpoints on disk, by epoch."""
        found = []
        if self.checkpoint_dir.is_dir():
            for p in self.checkpoint_dir.iterdir():
                m = _CKPT_RE.match(p.name)
                if m:
                    side = p.with_suffix(".json")
                    try:
                        sidecar = json.loads(side.read_text()) if side.exists() else {}
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        sidecar = {}  # a convenience copy: the checkpoint itself decides
                    if not isinstance(sidecar, dict):
                        sidecar = {}
                    found.append(CheckpointInfo(int(m.group(1)), p, sidecar))
        return sorted(found, key=lambda c: c.epoch)

    def last_checkpoint(self) -> CheckpointInfo | None:
        ckpts = self.checkpoints()
        return ckpts[-1] if ckpts else None


class ReadOnlyRunDir(RunDir):
    """A run directory seen by a rank other than 0 of a distributed run: it reads what rank 0
    writes and writes nothing itself."""

    def write_info(self, info: dict[str, Any]) -> None:
        pass

    def update_info(self, **changes: Any) -> None:
        pass

    def append_metrics(self, record: dict[str, Any]) -> None:
        pass

    def truncate_metrics(self, last_epoch: int) -> None:
        pass

    def save_checkpoint(self, epoch: int, payload: dict[str, Any], sidecar: dict[str, Any]) -> Path:
        return self.checkpoint_path(epoch)


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint written by ``RunDir.save_checkpoint`` (weights_only, no arbitrary code)."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise RunDirError(f"checkpoint {path} does not exist") from None
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise RunDirError(
            f"{path} is not a readable checkpoint ({err.__class__.__name__})"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise RunDirError(f"{path} is not an okdph checkpoint")
    return ckpt
