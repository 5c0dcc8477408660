"""Data as the engines see it: a list of ``(inputs, targets)`` batches already on the device.

Losses are the sample-weighted mean over all batches (the dataset loss), so batch sizes may differ.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from landscape.core.errors import LandscapeError

Batch = tuple[Tensor, Tensor]


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
