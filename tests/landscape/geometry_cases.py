"""Small models, data and exact references shared by the geometry tests (not a conftest)."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


class TinyConvNet(nn.Module):
    """Conv-BN-ReLU x2, pooling, linear: traceable by torch.fx, so BatchNorm folding applies."""

    def __init__(self, width: int = 4, classes: int = 3, affine: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width, affine=affine)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=True)
        self.bn2 = nn.BatchNorm2d(width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


def randomize_bn(model: nn.Module, seed: int) -> nn.Module:
    """Give every BatchNorm layer non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model


def tiny_convnet(seed: int, dtype: torch.dtype = torch.float32) -> TinyConvNet:
    """A seeded TinyConvNet with random BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    return randomize_bn(TinyConvNet(), seed).to(dtype).eval()


def image_batches(
    n: int = 40,
    sizes: tuple[int, ...] = (16, 16, 8),
    seed: int = 0,
    classes: int = 3,
    dtype: torch.dtype = torch.float32,
) -> list[tuple[Tensor, Tensor]]:
    """Random 1x6x6 images with labels, cut into batches of the given (unequal) sizes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=g, dtype=dtype)
    y = torch.randint(0, classes, (n,), generator=g)
    out, i = [], 0
    for s in sizes:
        out.append((x[i : i + s], y[i : i + s]))
        i += s
    assert i == n
    return out


def plain_eval(
    model: nn.Module, state: dict[str, Tensor] | None, batches, loss_fn=None
) -> tuple[float, float]:
    """Reference: load the state into a copy, eval mode, plain ``model(x)`` loop, per-sample sums."""
    net = copy.deepcopy(model)
    if state is not None:
        net.load_state_dict(state)
    net.eval()
    loss_fn = loss_fn or nn.CrossEntropyLoss(reduction="sum")
    total, hits, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in batches:
            out = net(x)
            total += float(loss_fn(out, y))
            hits += int((out.argmax(-1) == y).sum())
            n += x.shape[0]
    return total / n, hits / n


def regression_case(n: int = 50, d: int = 4, seed: int = 0):
    """A float64 linear model with MSE: its loss is an exact quadratic in (weight, bias).

    Returns ``(model, batches, loss_fn, X1, y)`` where ``X1 = [X, 1]`` so that the loss at
    parameters ``theta = [w, b]`` is ``mean((X1 @ theta - y) ** 2)``.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    torch.manual_seed(seed)
    model = nn.Linear(d, 1).double()
    batches = [(x[:20], y[:20]), (x[20:], y[20:])]
    x1 = np.concatenate([x.numpy(), np.ones((n, 1))], axis=1)
    return model, batches, nn.MSELoss(), x1, y.numpy()[:, 0]


def theta_of(state: dict[str, Tensor]) -> np.ndarray:
    """``[w, b]`` of the regression model's state as one float64 vector."""
    return np.concatenate(
        [state["weight"].double().numpy().ravel(), state["bias"].double().numpy()]
    )


def regression_loss(theta: np.ndarray, x1: np.ndarray, y: np.ndarray) -> float:
    """Exact mean squared error of the linear model."""
    r = x1 @ theta - y
    return float(np.mean(r**2))


def least_squares(x1: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The minimiser of the regression loss."""
    return np.linalg.lstsq(x1, y, rcond=None)[0]


def state_from_theta(theta: np.ndarray, d: int) -> dict[str, Tensor]:
    """The regression model's state at ``theta``."""
    t = torch.as_tensor(theta, dtype=torch.float64)
    return {"weight": t[:d].reshape(1, d).clone(), "bias": t[d:].clone()}


def distributed_surface_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """One rank of a 2-process gloo surface (run by ``torch.multiprocessing.spawn``)."""
    import torch.distributed as dist

    from landscape.geometry.surface import surface

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        model = tiny_convnet(0)
        result = surface(
            model, None, image_batches(), grid=(1.0, 5), chunk_points=3, show_progress=False
        )
        np.savez(
            f"{out_dir}/rank{rank}.npz",
            loss=result.loss,
            accuracy=result.accuracy,
            n_computed=result.n_computed,
        )
    finally:
        dist.destroy_process_group()
