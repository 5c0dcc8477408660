"""torch.distributed in the few forms the engines use; each is a no-op in a single process."""

from __future__ import annotations

from typing import Any

import torch


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of ranks (``(0, 1)`` without torch.distributed)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_rank0() -> bool:
    """Whether this process is rank 0 (always true without torch.distributed)."""
    return rank_and_world()[0] == 0


def broadcast(obj: Any, world: int) -> Any:
    """Rank 0's ``obj`` on every rank (any picklable object)."""
    if world == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any, world: int) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out
