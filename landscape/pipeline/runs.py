"""Find the checkpoints of a training run and rebuild its networks.

Three layouts are read:

* ``okdph``: our run directories (``run.json``, ``checkpoints/epoch_NNNN.pt``); architecture and
  data come from ``run.json``.
* ``reference``: the OKDPH reference code's ``--save DIR`` folders: ``net{i}_{epoch}ep.pkl`` raw
  state dicts, the highest index being the HWM; needs ``arch`` and ``data``.
* ``state_dicts``: a folder of plain state-dict files (``*.pt``, ``*.pth``, ``*.pkl``), one member
  per file (named by its stem), needs ``arch`` and ``data``.

Networks are rebuilt through okdph's model factory (``okdph.models.create``, via
:mod:`landscape.pipeline.okdph_adapter`): a registry name, an entry point of the ``okdph.models``
group, or an import path ``package.module:callable``. An import path in run.json imports that
module, as training did; state dicts load with ``weights_only=True``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from landscape.core.errors import LandscapeError
from landscape.pipeline.okdph_adapter import (
    build_model,
    model_accepts,
    num_classes,
    parse_arch,
    read_run_info,
    run_checkpoints,
)

_REFERENCE = re.compile(r"^net(\d+)_(\d+)ep\.pkl$")
_STATE_SUFFIXES = (".pt", ".pth", ".pkl", ".ckpt")


@dataclass(frozen=True)
class Checkpoint:
    """One saved point of a run: its epoch and, per member, the file that holds its weights."""

    epoch: int
    files: dict[str, Path]
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def members(self) -> list[str]:
        return list(self.files)


@dataclass
class Run:
    """A training run as the analyses see it.

    Attributes:
        path: the directory.
        layout: ``"okdph"``, ``"reference"`` or ``"state_dicts"``.
        arch: ``{"name": ..., "kwargs": {...}}`` for the registry, per member in ``member_arch``.
        data: ``{"name": ..., "kwargs": {...}}`` for ``okdph.data.load_dataset``.
        checkpoints: sorted by epoch.
        roles: member -> ``"network"`` or ``"hybrid"``.
        method: training method if known (``okdph``, ``dml``, ...).
        info: the parsed run.json (empty for foreign layouts).
    """

    path: Path
    layout: str
    arch: dict[str, Any]
    data: dict[str, Any]
    checkpoints: list[Checkpoint]
    roles: dict[str, str]
    member_arch: dict[str, dict[str, Any]]
    method: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    _cache: dict[Path, Any] = field(default_factory=dict, repr=False)

    @property
    def members(self) -> list[str]:
        return list(self.roles)

    @property
    def networks(self) -> list[str]:
        """Members that were trained (students, peers), i.e. not the hybrid."""
        return [m for m, r in self.roles.items() if r != "hybrid"]

    @property
    def hybrid(self) -> str | None:
        return next((m for m, r in self.roles.items() if r == "hybrid"), None)

    def checkpoint(self, epoch: int) -> Checkpoint:
        for ckpt in self.checkpoints:
            if ckpt.epoch == epoch:
                return ckpt
        raise LandscapeError(
            f"{self.path} has no checkpoint for epoch {epoch}; "
            f"available: {', '.join(str(c.epoch) for c in self.checkpoints)}"
        )

    def state_dict(self, checkpoint: Checkpoint, member: str) -> dict[str, Tensor]:
        """The member's weights at ``checkpoint`` (CPU tensors)."""
        if member not in checkpoint.files:
            raise LandscapeError(
                f"epoch {checkpoint.epoch} of {self.path} has no member {member!r}; "
                f"members: {', '.join(checkpoint.members)}"
            )
        path = checkpoint.files[member]
        if path not in self._cache:
            self._cache.clear()  # keep one file's tensors in memory at a time
            self._cache[path] = _torch_load(path)
        obj = self._cache[path]
        state = obj["models"][member] if self.layout == "okdph" else _unwrap_state_dict(obj, path)
        return state

    def build_model(self, member: str) -> nn.Module:
        """A fresh network of the member's architecture (random weights)."""
        return build_model(self.member_arch.get(member, self.arch))

    def load_model(
        self, checkpoint: Checkpoint, member: str, device: torch.device | str = "cpu"
    ) -> nn.Module:
        """The member's network at ``checkpoint``, in eval mode on ``device``."""
        model = self.build_model(member)
        state = self.state_dict(checkpoint, member)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            arch = self.member_arch.get(member, self.arch)["name"]
            reason = str(err).split("\n\t")[1].strip() if "\n\t" in str(err) else str(err)
            raise LandscapeError(
                f"{checkpoint.files[member]}: the weights of {member} do not fit "
                f"architecture {arch!r} ({reason.rstrip('.')})"
            ) from None
        return model.to(device).eval()


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise LandscapeError(f"checkpoint file {path} does not exist") from None
    except Exception as err:  # truncated files and foreign formats raise many types
        raise LandscapeError(
            f"{path} is not a readable PyTorch checkpoint "
            f"({err.__class__.__name__}); it may be truncated"
        ) from None


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    """A state dict, possibly wrapped as ``{"state_dict": ...}`` / ``{"model": ...}``."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return {k.removeprefix("module."): v for k, v in obj.items()}  # DataParallel prefixes
    raise LandscapeError(f"{path} does not hold a state dict (a mapping of names to tensors)")


def _need_both(arch: Any, data: Any, layout: str, path: Path) -> None:
    """One sentence naming every option a foreign layout still needs (--arch, --data)."""
    missing = [flag for flag, value in (("--arch", arch), ("--data", data)) if not value]
    if missing:
        raise LandscapeError(
            f"{path} is a {layout} folder; pass {' and '.join(missing)} to say how to rebuild it"
        )


def _arch_spec(arch: str | dict[str, Any] | None, num_classes: int | None) -> dict[str, Any] | None:
    if arch is None:
        return None
    spec = (
        parse_arch(arch)
        if isinstance(arch, str)
        else {"name": arch["name"], "kwargs": dict(arch.get("kwargs", {}))}
    )
    if num_classes is not None and model_accepts(spec["name"], "num_classes"):
        spec["kwargs"].setdefault("num_classes", num_classes)
    return spec


def _data_spec(data: str | dict[str, Any] | None) -> dict[str, Any] | None:
    if data is None or isinstance(data, dict):
        return data
    return {"name": data, "kwargs": {}}


def _num_classes(data: dict[str, Any] | None) -> int | None:
    return num_classes(data) if data else None


def open_run(
    path: str | Path,
    arch: str | dict[str, Any] | None = None,
    data: str | dict[str, Any] | None = None,
    data_root: str | Path | None = None,
) -> Run:
    """Read a run directory of any supported layout.

    Args:
        path: the directory.
        arch: registry name (or ``{"name", "kwargs"}``) of the architecture; required for the
            reference and state-dict layouts, ignored for ours (run.json knows it).
        data: dataset name (or ``{"name", "kwargs"}``); as ``arch``.
        data_root: folder holding the dataset files (CIFAR), for any layout (``data.root``).

    Raises:
        LandscapeError: a missing or empty directory, missing ``arch``/``data``, an unreadable
            run.json; the message names the path.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise LandscapeError(f"run directory {path} does not exist")
    if not path.is_dir():
        raise LandscapeError(f"{path} is not a directory")
    if data_root is not None:
        spec = _data_spec(data)
        if spec is not None:  # the classes of a foreign layout are counted from these files
            data = {**spec, "kwargs": {**spec.get("kwargs", {}), "root": str(data_root)}}
        run = open_run(path, arch, data)
        run.data = {**run.data, "kwargs": {**run.data.get("kwargs", {}), "root": str(data_root)}}
        return run
    if (path / "run.json").exists():
        return _open_ours(path)
    files = sorted(p for p in path.iterdir() if p.is_file())
    reference = [(p, m) for p in files if (m := _REFERENCE.match(p.name))]
    data_spec = _data_spec(data)
    if reference:
        _need_both(arch, data_spec, "reference-layout (net{i}_{epoch}ep.pkl)", path)
        arch_spec = _arch_spec(arch, _num_classes(data_spec))
        assert arch_spec is not None and data_spec is not None
        hybrid_index = max(int(m.group(1)) for _, m in reference)
        by_epoch: dict[int, dict[str, Path]] = {}
        for p, m in reference:
            index, epoch = int(m.group(1)), int(m.group(2))
            name = "hybrid" if index == hybrid_index and hybrid_index > 0 else f"student_{index}"
            by_epoch.setdefault(epoch, {})[name] = p
        checkpoints = [
            Checkpoint(e, dict(sorted(f.items(), key=lambda kv: (kv[0] == "hybrid", kv[0]))))
            for e, f in sorted(by_epoch.items())
        ]
        roles = {
            m: ("hybrid" if m == "hybrid" else "network") for c in checkpoints for m in c.files
        }
        roles = dict(sorted(roles.items(), key=lambda kv: (kv[1] == "hybrid", kv[0])))
        return Run(
            path,
            "reference",
            arch_spec,
            data_spec,
            checkpoints,
            roles,
            {m: arch_spec for m in roles},
            method="okdph",
        )
    states = [p for p in files if p.suffix in _STATE_SUFFIXES]
    if not states:
        raise LandscapeError(
            f"{path} holds no checkpoint: no run.json, no net{{i}}_{{epoch}}ep.pkl "
            f"files and no state-dict files ({', '.join(_STATE_SUFFIXES)})"
        )
    _need_both(arch, data_spec, "state-dict", path)
    arch_spec = _arch_spec(arch, _num_classes(data_spec))
    assert arch_spec is not None and data_spec is not None
    members = {p.stem: p for p in states}
    roles = {m: ("hybrid" if m.lower() in ("hybrid", "hwm") else "network") for m in members}
    return Run(
        path,
        "state_dicts",
        arch_spec,
        data_spec,
        [Checkpoint(0, members)],
        roles,
        {m: arch_spec for m in roles},
    )


def _open_ours(path: Path) -> Run:
    info = read_run_info(path)
    try:
        arch = info["arch"]
        data = {"name": info["data"]["name"], "kwargs": dict(info["data"].get("kwargs", {}))}
        members_info = info["members"]
    except (KeyError, TypeError) as err:
        raise LandscapeError(f"{path / 'run.json'} lacks the field {err}") from None
    checkpoints = []
    for found in run_checkpoints(path):
        sidecar = found.sidecar
        names = sidecar.get("members", list(members_info))
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            names = list(members_info)
        metrics = sidecar.get("metrics")
        checkpoints.append(
            Checkpoint(
                found.epoch,
                {n: found.path for n in names},
                metrics if isinstance(metrics, dict) else {},
            )
        )
    if not checkpoints:
        raise LandscapeError(f"{path} has no checkpoint yet (checkpoints/epoch_NNNN.pt)")
    checkpoints.sort(key=lambda c: c.epoch)
    roles = {
        n: (v.get("role", "network") if isinstance(v, dict) else "network")
        for n, v in members_info.items()
    }
    member_arch = {
        n: (v.get("arch", arch) if isinstance(v, dict) else arch) for n, v in members_info.items()
    }
    return Run(
        path,
        "okdph",
        arch,
        data,
        checkpoints,
        roles,
        member_arch,
        method=info.get("method", {}).get("name"),
        info=info,
    )
