"""Curvature per layer: the top eigenvalue and the trace of each diagonal block of the Hessian.

A "layer" is a group of parameters named by the first ``depth`` components of their module's
path (``layer1.0.conv1.weight`` is in ``layer1.0`` at depth 2); its block ``H_gg`` is the
Hessian of the loss with respect to the group's parameters alone, the others held fixed. Block
eigenvalues are not eigenvalues of ``H`` (``lambda_max(H_gg) <= lambda_max(H)``, by Cauchy
interlacing), but block traces add up to ``tr(H)``, so ``trace / n_parameters`` compares layers
of different sizes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from landscape.core.batches import Batch
from landscape.core.definitions import definition
from landscape.core.records import ResultMixin
from landscape.core.selection import select_parameters
from landscape.curvature.eigenvalues import top_eigenvalues
from landscape.curvature.trace import hessian_trace


def parameter_groups(
    model: nn.Module,
    depth: int = 2,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> dict[str, list[str]]:
    """Trainable parameter names grouped by the first ``depth`` components of their module path,
    in ``named_parameters`` order (a parameter of the root module forms the group ``""``)."""
    groups: dict[str, list[str]] = {}
    for name in select_parameters(model, include, exclude):
        module = name.split(".")[:-1]
        groups.setdefault(".".join(module[:depth]), []).append(name)
    return groups


@dataclasses.dataclass(frozen=True)
class LayerCurvature(ResultMixin):
    """Block curvature of each parameter group.

    Attributes:
        groups: group names; ``parameters``: each group's parameter names.
        n_parameters: scalars per group.
        lambda_max: top eigenvalue of each block (a Ritz value: a lower bound, within
            ``lambda_max_bound`` of an eigenvalue of the block when ``converged``).
        trace: Hutch++ trace of each block, with ``trace_stderr`` and 95% ``trace_interval``.
        trace_per_parameter: ``trace / n_parameters``.
        n_hvp: block Hessian-vector products spent per group (eigen-solve plus trace).
        depth, seed: settings; ``seconds``: wall time.
    """

    groups: tuple[str, ...]
    parameters: tuple[tuple[str, ...], ...]
    n_parameters: tuple[int, ...]
    lambda_max: tuple[float, ...]
    lambda_max_bound: tuple[float, ...]
    converged: tuple[bool, ...]
    trace: tuple[float, ...]
    trace_stderr: tuple[float, ...]
    trace_interval: tuple[tuple[float, float], ...]
    trace_per_parameter: tuple[float, ...]
    n_hvp: tuple[int, ...]
    depth: int
    seed: int
    seconds: float
    definition: str = definition("layers")


def layer_curvature(
    model: nn.Module,
    loss_fn: Any,
    data: Iterable[Batch],
    *,
    depth: int = 2,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    tol: float = 1e-3,
    rtol: float = 0.05,
    seed: int = 0,
    show_progress: bool = False,
    **kwargs: Any,
) -> LayerCurvature:
    """Top eigenvalue and trace of the Hessian block of every parameter group.

    Args:
        model, loss_fn, data: as for :func:`landscape.curvature.eigenvalues.top_eigenvalues`.
        depth: module-path components that name a group (:func:`parameter_groups`).
        include, exclude: glob filters applied before grouping.
        tol: relative tolerance of each block's eigen-solve; ``rtol``: of each block's trace.
        seed: seed of the probes (the same for every group).
        show_progress: progress bars on stderr.
        **kwargs: passed to both estimators (``device``, ``dtype`` ...).
    """
    started = time.perf_counter()
    data = list(data)
    groups = parameter_groups(model, depth, include, exclude)
    sizes = dict(select_parameters(model, include, exclude))
    rows = []
    for names in groups.values():
        common = {"include": names, "seed": seed, "show_progress": show_progress, **kwargs}
        eig = top_eigenvalues(model, loss_fn, data, k=1, which="largest", tol=tol, **common)
        tr = hessian_trace(model, loss_fn, data, rtol=rtol, **common)
        n = sum(sizes[p].numel() for p in names)
        rows.append((names, n, eig, tr))
    return LayerCurvature(
        groups=tuple(groups),
        parameters=tuple(tuple(names) for names, *_ in rows),
        n_parameters=tuple(n for _, n, *_ in rows),
        lambda_max=tuple(float(e.values[0]) for *_, e, _ in rows),
        lambda_max_bound=tuple(float(e.error_bounds[0]) for *_, e, _ in rows),
        converged=tuple(bool(e.converged[0]) for *_, e, _ in rows),
        trace=tuple(float(t.value) for *_, t in rows),
        trace_stderr=tuple(float(t.stderr) for *_, t in rows),
        trace_interval=tuple((float(t.interval[0]), float(t.interval[1])) for *_, t in rows),
        trace_per_parameter=tuple(float(t.value) / n for _, n, _, t in rows),
        n_hvp=tuple(int(e.n_hvp) + int(t.n_hvp) for *_, e, t in rows),
        depth=int(depth),
        seed=int(seed),
        seconds=time.perf_counter() - started,
    )
