"""Small problems with exactly known Hessians for the curvature tests (float64 throughout).

* ``tiny_problem``: a 2-layer tanh MLP with cross-entropy whose dense Hessian comes from
  ``torch.autograd.functional.hessian`` of the sample-weighted dataset loss.
* ``Quadratic``: a module whose "loss" is ``0.5 theta^T A theta`` for a chosen symmetric ``A``, so
  the Hessian is ``A`` and its spectrum is whatever the test asks for.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

DTYPE = torch.float64


def tiny_problem(seed: int = 0, n_samples: int = 30) -> tuple[nn.Module, nn.Module, Tensor, Tensor]:
    """A 43-parameter MLP (4 -> 5 -> 3, tanh), cross-entropy, and ``n_samples`` random points."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(DTYPE)
    x = torch.randn(n_samples, 4, generator=gen, dtype=DTYPE) * 2
    y = torch.randint(0, 3, (n_samples,), generator=gen)
    return model, nn.CrossEntropyLoss(), x, y


def dense_hessian(
    model: nn.Module,
    loss_fn: nn.Module,
    batches: list[tuple[Tensor, Tensor]],
    names: list[str] | None = None,
) -> Tensor:
    """The dense Hessian of ``sum_b (n_b / N) loss_fn(model(x_b), y_b)`` w.r.t. ``names``."""
    params = dict(model.named_parameters())
    names = names or list(params)
    shapes = [params[n].shape for n in names]
    total = sum(int(x.shape[0]) for x, _ in batches)

    def loss(flat: Tensor) -> Tensor:
        state, i = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            state[name] = flat[i : i + shape.numel()].view(shape)
            i += shape.numel()
        return sum(
            loss_fn(functional_call(model, state, (x,)), y) * x.shape[0] / total for x, y in batches
        )

    flat0 = torch.cat([params[n].detach().flatten() for n in names])
    return torch.autograd.functional.hessian(loss, flat0)


class Quadratic(nn.Module):
    """``forward(x)`` returns ``0.5 theta^T A theta`` for each row of ``x``; the Hessian is ``A``."""

    def __init__(self, matrix: Tensor, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("matrix", matrix)
        self.theta = nn.Parameter(torch.randn(matrix.shape[0], generator=gen, dtype=matrix.dtype))

    def forward(self, x: Tensor) -> Tensor:
        value = 0.5 * self.theta @ (self.matrix @ self.theta)
        return value.expand(x.shape[0])


def mean_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """The batch mean of per-sample outputs (the quadratic's loss)."""
    return outputs.mean()


def matrix_with_spectrum(eigenvalues: Tensor, seed: int = 0) -> Tensor:
    """``Q diag(eigenvalues) Q^T`` for a random orthogonal ``Q``."""
    gen = torch.Generator().manual_seed(seed)
    n = eigenvalues.numel()
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DTYPE))
    a = q @ torch.diag(eigenvalues.to(DTYPE)) @ q.T
    return (a + a.T) / 2


def quadratic_problem(eigenvalues: Tensor, seed: int = 0, n_samples: int = 8):
    """A :class:`Quadratic` with the given spectrum, its loss and one batch of dummy data."""
    model = Quadratic(matrix_with_spectrum(eigenvalues, seed), seed)
    x = torch.zeros(n_samples, 1, dtype=DTYPE)
    return model, mean_loss, [(x, torch.zeros(n_samples, dtype=DTYPE))]


def decaying_spectrum(n: int = 200, seed: int = 0) -> Tensor:
    """A few large outliers over a small bulk of mixed sign, as in trained networks."""
    gen = torch.Generator().manual_seed(seed)
    outliers = torch.tensor([50.0, 31.0, 20.0, 12.0, 7.5, 4.0])
    bulk = 0.3 * torch.randn(n - len(outliers), generator=gen, dtype=DTYPE) - 0.05
    return torch.cat([outliers.to(DTYPE), bulk])


def distributed_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """One gloo rank of the distributed test: shard ``tiny_problem``'s data, save its results."""
    import os

    from landscape.curvature.eigenvalues import top_eigenvalues
    from landscape.curvature.products import HessianOperator

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, loss_fn, x, y = tiny_problem()
        shard = slice(0, 17) if rank == 0 else slice(17, 30)
        op = HessianOperator(model, loss_fn, [(x[shard], y[shard])])
        vectors = torch.randn(3, op.n, dtype=DTYPE, generator=torch.Generator().manual_seed(6))
        top = top_eigenvalues(op, k=2, tol=1e-10, show_progress=False).values
        result = {
            "n_samples": op.n_samples,
            "products": op.matmat(vectors),
            "top": torch.from_numpy(top),
        }
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()
