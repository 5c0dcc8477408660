"""Epsilon-sharpness in an L2 ball, plain or adaptive, average-case or worst-case.

Following Andriushchenko et al. (2023), sharpness is the increase of the dataset loss under a
weight perturbation ``delta`` bounded by ``||delta / c||_2 <= rho``, where ``c = 1`` (plain
sharpness) or ``c = |w| + eta`` elementwise (adaptive sharpness, Kwon et al. 2021, which is
invariant to rescaling a layer's filters):

* worst case: ``max L(w + delta) - L(w)`` over the ball, estimated by a few steps of normalised,
  projected gradient ascent (the maximum over the iterates is reported, so more steps can only
  raise the estimate; one step of size ``2 * rho`` is SAM's perturbation);
* average case: ``mean L(w + delta) - L(w)`` over random ``delta``: uniform on the sphere of
  radius ``rho`` (``distribution="sphere"``, default), or Gaussian with per-coordinate standard
  deviation ``rho * c`` (``distribution="gaussian"``, the paper's average-case definition).

The whole evaluation set is one "batch" (the paper's ``m`` equals the number of samples).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from landscape.core.batches import Batch
from landscape.core.definitions import definition
from landscape.core.errors import LandscapeError
from landscape.core.progress import progress
from landscape.core.records import ResultMixin
from landscape.geometry.batchnorm import check_policy
from landscape.geometry.evaluate import EngineSettings, Evaluator, LossFn, evaluator_for_policy
from landscape.geometry.weights import State, combine, norm, parameter_names

KINDS = ("average", "worst")
DISTRIBUTIONS = ("sphere", "gaussian")


@dataclasses.dataclass(frozen=True)
class Sharpness(ResultMixin):
    """Sharpness of one model.

    Attributes:
        value: mean (average case) or max (worst case) loss increase over ``clean_loss``, in loss
            units (nats for cross-entropy).
        stderr: standard error of the average-case mean (NaN for the worst case).
        clean_loss: loss at the unperturbed weights under the same BatchNorm policy as the
            perturbed points, so ``value`` measures the perturbation alone.
        own_loss: loss of the unperturbed model with its own running statistics.
        perturbed_loss: loss at every random perturbation (average case) or after every ascent
            step (worst case).
        radius: ``||delta / c||_2`` of each perturbation (at most ``rho``; about ``rho * sqrt(d)``
            for the Gaussian distribution).
        kind, rho, adaptive, eta, distribution, n_perturbations, steps, step_size, seed: settings.
        n_parameters: number of perturbed scalars; ``parameters``: their tensor names.
        bn: BatchNorm policy at perturbed points (and at the clean point).
        n_samples, n_bn_samples: evaluation and BatchNorm-calibration samples (0: none).
        engine: evaluation settings; ``seconds``: wall time.
        definition: the measure's versioned definition (``landscape.core.definitions``).
    """

    value: float
    stderr: float
    clean_loss: float
    own_loss: float
    perturbed_loss: np.ndarray
    radius: np.ndarray
    kind: str
    rho: float
    adaptive: bool
    eta: float
    distribution: str
    n_perturbations: int
    steps: int
    step_size: float
    seed: int
    n_parameters: int
    parameters: tuple[str, ...]
    bn: str
    n_samples: int
    n_bn_samples: int
    engine: EngineSettings
    seconds: float
    definition: str = definition("sharpness")


def sharpness(
    model: nn.Module,
    weights: nn.Module | Mapping[str, Tensor] | None,
    data: Iterable[Batch],
    *,
    rho: float = 0.05,
    kind: str = "average",
    adaptive: bool = False,
    eta: float = 0.0,
    distribution: str = "sphere",
    n_perturbations: int = 10,
    steps: int = 5,
    step_size: float | None = None,
    seed: int = 0,
    bn: str = "recalibrate",
    bn_data: Iterable[Batch] | None = None,
    loss_fn: LossFn | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    show_progress: bool = True,
    **engine: Any,
) -> Sharpness:
    """Average-case or worst-case (adaptive) sharpness of ``model`` at ``weights``.

    Args:
        model: the architecture (not modified).
        weights: the point (state dict, parameter dict or module; ``None``: the model's own).
        data: ``(inputs, targets)`` batches; the loss is their sample-weighted mean.
        rho: radius of the L2 ball (in units of ``c``: relative for adaptive sharpness).
        kind: ``"average"`` (random perturbations) or ``"worst"`` (projected gradient ascent).
        adaptive: scale the ball elementwise by ``c = |w| + eta``.
        eta: offset of the adaptive scale (0 in Andriushchenko et al.; ASAM uses 0.01).
        distribution: average case only: ``"sphere"`` or ``"gaussian"`` (see module docstring).
        n_perturbations: average case: number of random perturbations.
        steps: worst case: number of ascent steps.
        step_size: worst case: step length in the scaled space (default ``2 * rho / steps``).
        seed: seed of the random perturbations.
        bn: BatchNorm policy at perturbed points: ``"recalibrate"`` (default) or ``"keep"``.
        bn_data: calibration batches for ``"recalibrate"`` (default: ``data``, as batched).
        loss_fn: batch-mean loss (default cross-entropy).
        include, exclude: glob filters on the perturbed parameters.
        show_progress: show a progress bar on stderr.
        **engine: keyword arguments of :class:`landscape.geometry.evaluate.Evaluator`.
    """
    started = time.perf_counter()
    check_policy(bn)
    if bn == "interpolate":
        raise LandscapeError("bn='interpolate' needs a second model; use 'recalibrate' or 'keep'")
    if kind not in KINDS:
        raise LandscapeError(f"kind must be one of {KINDS}, not {kind!r}")
    if distribution not in DISTRIBUTIONS:
        raise LandscapeError(f"distribution must be one of {DISTRIBUTIONS}, not {distribution!r}")
    if rho <= 0 or n_perturbations < 1 or steps < 1:
        raise LandscapeError("rho must be positive and n_perturbations and steps at least 1")
    ev = evaluator_for_policy(model, data, bn, bn_data, loss_fn, **engine)
    center = ev.state(weights)
    names = parameter_names(ev.module, include, exclude)
    c = {n: center[n].abs() + eta if adaptive else torch.ones_like(center[n]) for n in names}
    own_loss, _ = ev.evaluate_one(center)
    clean_loss, _ = ev.evaluate_one(ev.apply_bn(center, bn))
    gen = torch.Generator().manual_seed(int(seed))
    if kind == "average":
        # One seed per perturbation: perturbations are drawn lazily (memory stays a few models)
        # and the same whichever worker thread draws them.
        seeds = torch.randint(0, 2**62, (n_perturbations,), generator=gen).tolist()
        radii = np.zeros(n_perturbations)

        def perturbed(k: int) -> tuple[State, bool]:
            g = torch.Generator().manual_seed(seeds[k])
            z = {n: torch.randn(center[n].shape, generator=g, dtype=torch.float64) for n in names}
            factor = rho / norm(z) if distribution == "sphere" else rho
            # Measured before scaling by c, whose zeros (adaptive, eta = 0) would give 0 / 0.
            radii[k] = norm(z) * factor
            delta = {n: (z[n] * factor).to(center[n]) * c[n] for n in names}
            return combine(center, [(1.0, delta)]), True

        bar = progress(total=n_perturbations, desc="sharpness", enable=show_progress)
        try:
            losses, _ = ev.evaluate_points(range(n_perturbations), perturbed, bn, bar)
        finally:
            bar.close()
        increase = losses - clean_loss
        value = float(increase.mean())
        n_inc = len(increase)
        stderr = float(increase.std(ddof=1) / np.sqrt(n_inc)) if n_inc > 1 else float("nan")
        step_size, steps_run = float("nan"), 0
    else:
        step_size = float(step_size if step_size is not None else 2.0 * rho / steps)
        losses, radii = _ascent(ev, center, names, c, rho, steps, step_size, bn, show_progress)
        value, stderr, steps_run = float(np.max(losses) - clean_loss), float("nan"), steps
    return Sharpness(
        value=value,
        stderr=stderr,
        clean_loss=clean_loss,
        own_loss=own_loss,
        perturbed_loss=np.asarray(losses),
        radius=np.asarray(radii),
        kind=kind,
        rho=float(rho),
        adaptive=adaptive,
        eta=float(eta),
        distribution=distribution if kind == "average" else "",
        n_perturbations=n_perturbations if kind == "average" else 0,
        steps=steps_run,
        step_size=step_size,
        seed=int(seed),
        n_parameters=sum(center[n].numel() for n in names),
        parameters=tuple(names),
        bn=bn,
        n_samples=ev.n_samples,
        n_bn_samples=ev.settings.n_bn_samples,
        engine=ev.settings,
        seconds=time.perf_counter() - started,
    )


def _ascent(
    ev: Evaluator,
    center: State,
    names: list[str],
    c: State,
    rho: float,
    steps: int,
    step_size: float,
    bn: str,
    show_progress: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised gradient ascent on ``u = delta / c``, projected onto ``||u||_2 <= rho``."""
    u = {n: torch.zeros_like(center[n]) for n in names}
    losses, radii = [], []
    bar = progress(total=steps, desc="sharpness", enable=show_progress)
    try:
        for _ in range(steps):
            point = ev.apply_bn(combine(center, [(1.0, {n: u[n] * c[n] for n in names})]), bn)
            _, grad = ev.loss_and_grad(point, names)
            # The chain rule through delta = c * u turns the gradient into c * g.
            g = {n: grad[n] * c[n] for n in names}
            g_norm = norm(g)
            if g_norm > 0.0:
                u = {n: u[n] + g[n] * (step_size / g_norm) for n in names}
                u_norm = norm(u)
                if u_norm > rho:
                    u = {n: t * (rho / u_norm) for n, t in u.items()}
            delta = {n: u[n] * c[n] for n in names}
            loss, _ = ev.evaluate_one(ev.apply_bn(combine(center, [(1.0, delta)]), bn))
            losses.append(loss)
            radii.append(norm(u))
            bar.update(1)
    finally:
        bar.close()
    return np.array(losses), np.array(radii)
