"""Data-parallel training under ``torchrun``: the process group, batch shards, gradient sums.

``torchrun --nproc_per_node N -m okdph train ...`` starts N processes that train one run together.
Every rank builds the same networks from the same seed and draws the same data order, the same
augmentations and the same method randomness (HWM coefficients, ...): each batch is the global
batch of ``batch_size`` samples, augmented in full on every rank (so the views of a sample do not
depend on the world size), of which rank r trains on its contiguous shard. Each rank scales its
shard-mean losses by ``n_r / n`` and gradients are summed over ranks, which gives exactly the
gradient of the global batch's mean loss; every rank then takes the same optimiser step, so the
weights never drift apart (the trainer checks this at every checkpoint). BatchNorm normalises
with each rank's own shard (per-rank statistics, what DDP users expect) unless ``sync_batchnorm``
(CUDA only). Rank 0 alone writes the run directory. Plain ``DistributedDataParallel`` is not
used because the methods differentiate functions of several networks at once (the HWM, WML's
hypergradient); the sum is the same all-reduce DDP performs, without its overlap with backward.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class World:
    """This process's place among the ranks that train one run (``World()``: one process)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """Rank ``rank``'s contiguous part of a global batch of ``n`` samples."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def sum(self, t: Tensor) -> Tensor:
        """``t`` summed over ranks (in place; ``t`` itself in one process)."""
        if self.size > 1:
            torch.distributed.all_reduce(t)
        return t

    def barrier(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()

    def broadcast_object(self, obj: object) -> object:
        """Rank 0's ``obj`` on every rank."""
        if self.size == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


def current_world() -> World:
    """The process group torchrun set up (joined by :func:`init_from_env`), or one process."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def init_from_env() -> World:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1): NCCL with this
    rank's local GPU when CUDA is present, else gloo on the CPU."""
    dist = torch.distributed
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available():
        if not dist.is_initialized():
            if torch.cuda.is_available():
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return current_world()


def sum_gradients(params: Iterable[Tensor], world: World) -> None:
    """Sum every parameter's ``.grad`` over ranks, one flat all-reduce per dtype and device."""
    if world.size == 1:
        return
    groups: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for p in params:
        if p.grad is not None:
            groups.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
    for grads in groups.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        world.sum(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def weights_digest(tensors: Iterable[Tensor]) -> Tensor:
    """A float64 checksum of floating-point tensors (equal on every rank when they agree)."""
    total = torch.zeros((), dtype=torch.float64)
    for i, t in enumerate(tensors):
        if t.is_floating_point():
            total += (i + 1) * t.detach().double().sum().cpu()
    return total


__all__ = ["World", "current_world", "init_from_env", "sum_gradients", "weights_digest"]
