"""Small pieces shared by every analysis: device choice, parameter selection, data, progress, results.

Nothing here computes geometry; it keeps the engines' conventions identical:

* ``data`` is any iterable of ``(inputs, targets)`` batches; losses are the sample-weighted mean over
  all batches (the dataset loss), so batch sizes may differ.
* parameters are addressed by their ``named_parameters`` names and selected with glob patterns.
* results are frozen dataclasses whose ``to_dict()`` returns plain Python values.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

Batch = tuple[Tensor, Tensor]


class LandscapeError(ValueError):
    """A user-facing error: the message is one plain sentence shown without a traceback."""


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device to compute on: ``device`` if given, else CUDA when available, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LandscapeError(f"device {str(device)!r} was requested but CUDA is not available")
    return dev


def _as_patterns(patterns: str | Sequence[str] | None) -> list[str] | None:
    if patterns is None:
        return None
    if isinstance(patterns, str):
        return [p for p in patterns.split(",") if p]
    return list(patterns)


def select_parameters(
    model: nn.Module,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> dict[str, Tensor]:
    """Trainable parameters of ``model`` by name, filtered with shell-style glob patterns.

    Args:
        model: the network.
        include: keep names matching any of these patterns (a comma-separated string or a list);
            ``None`` keeps every trainable parameter.
        exclude: then drop names matching any of these patterns.

    Returns:
        An ordered ``name -> parameter`` dict (the parameters themselves, not copies).

    Raises:
        LandscapeError: when the filter leaves no parameter.
    """
    inc, exc = _as_patterns(include), _as_patterns(exclude)
    selected = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if inc is not None and not any(fnmatch.fnmatch(name, pat) for pat in inc):
            continue
        if exc is not None and any(fnmatch.fnmatch(name, pat) for pat in exc):
            continue
        selected[name] = p
    if not selected:
        raise LandscapeError(
            f"no trainable parameter matches include={include!r} exclude={exclude!r}"
        )
    return selected


def materialize(
    data: Iterable[Batch], device: torch.device, dtype: torch.dtype | None = None
) -> list[Batch]:
    """Read every batch once onto ``device``; floating-point inputs are cast to ``dtype`` if given.

    Iterative solvers need the same data at every product; a list of device tensors guarantees it
    (a shuffling DataLoader would not) and removes loader overhead from the hot loop.
    """
    out = []
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise LandscapeError("data must yield (inputs, targets) pairs")
        x, y = batch
        x = torch.as_tensor(x).to(device)
        if dtype is not None and x.is_floating_point():
            x = x.to(dtype)
        out.append((x, torch.as_tensor(y).to(device)))
    if not out:
        raise LandscapeError("data holds no batch")
    return out


def num_samples(batches: Sequence[Batch]) -> int:
    """Total number of samples (leading dimension of the inputs) over all batches."""
    return sum(int(x.shape[0]) for x, _ in batches)


def progress(
    iterable: Iterable | None = None,
    *,
    desc: str = "",
    total: int | None = None,
    enable: bool = True,
    **kwargs: Any,
) -> Iterator | tqdm:
    """A tqdm bar on stderr that hides itself when disabled, in CI (TQDM_DISABLE) or off a TTY."""
    disable = (not enable) or os.environ.get("TQDM_DISABLE", "") not in ("", "0")
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        disable=disable or None,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
        **kwargs,
    )


def to_plain(value: Any) -> Any:
    """Convert numpy arrays, tensors, dataclasses and containers into plain Python values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Tensor):
        return to_plain(value.detach().cpu().numpy())
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, torch.dtype | torch.device):
        return str(value)
    return value


def json_safe(value: Any) -> Any:
    """``to_plain`` with non-finite floats replaced by ``None`` (strict JSON has no NaN or inf)."""
    plain = to_plain(value)
    if isinstance(plain, float) and not math.isfinite(plain):
        return None
    if isinstance(plain, dict):
        return {k: json_safe(v) for k, v in plain.items()}
    if isinstance(plain, list):
        return [json_safe(v) for v in plain]
    return plain


class ResultMixin:
    """``to_dict()`` for frozen result dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain Python values (lists, floats, str), ready for ``json.dumps``."""
        return to_plain(self)
