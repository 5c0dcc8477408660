"""Sharpness as defined by Andriushchenko et al. (2023), worst case and average case.

Sharpness is the increase of the loss under a weight perturbation ``delta = c * u`` with ``u`` in
a ball of radius ``rho``, where ``c = 1`` (plain) or ``c = |w| + eta`` elementwise (adaptive,
Kwon et al. 2021: invariant to rescaling a layer's filters; the ball becomes an ellipsoid in
``delta``, and projecting ``u`` onto the ball is the exact projection in the scaled space):

* worst case: ``max L(w + delta) - L(w)`` over ``||u||_2 <= rho`` or ``||u||_inf <= rho``, by
  Auto-PGD (:mod:`landscape.geometry.ascent`). With ``m`` set, m-sharpness: the maximisation
  is done separately on each group of ``m`` samples and the increases averaged (the paper's
  definition; ``m=None`` is the whole set as one group). The ascent curve (the value had the
  ascent stopped at each iteration) is kept, and whether it had plateaued;
* average case: ``E L(w + delta) - L(w)`` over Gaussian ``u`` with per-coordinate standard
  deviation ``rho`` (``distribution="gaussian"``, the paper's) or ``u`` uniform on the sphere of
  radius ``rho``. Draws come in antithetic pairs ``(delta, -delta)``, which cancel the gradient's
  first-order term, and continue until the relative standard error is below ``rtol``.

BatchNorm is in eval mode throughout: the statistics are fixed at the centre's (``bn="keep"``),
so the ascent's gradient is the gradient of the loss it maximises. A model without usable
statistics (the HWM) gets them recalibrated once at the centre (``center_bn="recalibrate"``),
then frozen. ``bn="recalibrate"`` (statistics recomputed at every point) remains for the
average case only.
"""

from __future__ import annotations

import dataclasses
import math
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
from landscape.geometry.ascent import NORMS, auto_pgd
from landscape.geometry.evaluate import EngineSettings, Evaluator, LossFn
from landscape.geometry.weights import State, combine, norm, parameter_names

KINDS = ("average", "worst")
DISTRIBUTIONS = ("gaussian", "sphere")
PLATEAU_SHARE = 0.01  # the last quarter of the ascent raised the value by under 1% of it


class NormalizedLogits(nn.Module):
    """``loss_fn`` applied to logits centred and scaled to unit L2 norm per sample (the logit
    normalisation of Andriushchenko et al., which removes the logits' scale from sharpness)."""

    def __init__(self, loss_fn: LossFn) -> None:
        super().__init__()
        self.loss_fn = loss_fn

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        centred = logits - logits.mean(dim=-1, keepdim=True)
        size = centred.norm(dim=-1, keepdim=True).clamp_min(1e-10)
        return self.loss_fn(centred / size, targets)


@dataclasses.dataclass(frozen=True)
class Sharpness(ResultMixin):
    """Sharpness of one model.

    Attributes:
        value: worst case: mean over sample groups of the largest loss increase found; average
            case: mean increase over the draws. Loss units (nats for cross-entropy).
        stderr: average case: standard error of ``value`` over antithetic pairs (NaN for the
            worst case); ``rel_stderr``: ``stderr / |value|``.
        clean_loss: loss at the centre (BatchNorm as at the perturbed points), whole set.
        own_loss: loss of the unperturbed model with its own running statistics.
        perturbed_loss: average case: loss at ``+delta`` and ``-delta``, shape ``(pairs, 2)``;
            worst case: objective at every iterate, shape ``(groups, restarts, iterations + 1)``.
        ascent: worst case: the value had the ascent stopped after each iteration, shape
            ``(iterations + 1,)`` (non-decreasing; its last entry is ``value``).
        plateaued: worst case: the last quarter of the iterations raised ``value`` by less than
            1% of it (``False`` means a longer ascent would likely find more).
        radius: ``||u||`` of each draw (average case) or of each group's maximiser (worst case).
        kind, norm, rho, adaptive, eta, distribution, m, iterations, restarts, rtol, seed, normalize_logits: the settings (``m = 0``: the whole set as one group).
        n_groups: sample groups maximised over; ``n_evaluations``: forward(-backward) passes.
        n_parameters: number of perturbed scalars; ``parameters``: their tensor names.
        bn, center_bn: BatchNorm at perturbed points and at the centre.
        n_samples, n_bn_samples: samples used and BatchNorm-calibration samples (0: none).
        engine: evaluation settings; ``seconds``: wall time.
        definition: the measure's versioned definition (``landscape.core.definitions``).
    """

    value: float
    stderr: float
    rel_stderr: float
    clean_loss: float
    own_loss: float
    perturbed_loss: np.ndarray
    ascent: np.ndarray
    plateaued: bool
    radius: np.ndarray
    kind: str
    norm: str
    rho: float
    adaptive: bool
    eta: float
    distribution: str
    m: int
    iterations: int
    restarts: int
    rtol: float
    seed: int
    normalize_logits: bool
    n_groups: int
    n_evaluations: int
    n_parameters: int
    parameters: tuple[str, ...]
    bn: str
    center_bn: str
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
    rho: float = 0.1,
    kind: str = "worst",
    norm: str = "l2",
    adaptive: bool = True,
    eta: float = 0.0,
    m: int | None = 128,
    iterations: int = 20,
    restarts: int = 1,
    distribution: str = "gaussian",
    rtol: float = 0.05,
    min_pairs: int = 16,
    max_pairs: int = 512,
    seed: int = 0,
    bn: str = "keep",
    center_bn: str = "own",
    bn_data: Iterable[Batch] | None = None,
    normalize_logits: bool = False,
    loss_fn: LossFn | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    show_progress: bool = True,
    **engine: Any,
) -> Sharpness:
    """Worst-case or average-case (adaptive) sharpness of ``model`` at ``weights``.

    Args:
        model: the architecture (not modified).
        weights: the point (state dict, parameter dict or module; ``None``: the model's own).
        data: ``(inputs, targets)`` batches; losses are sample-weighted means.
        rho: radius of the ball in the scaled space (relative to ``|w|`` when adaptive).
        kind: ``"worst"`` (Auto-PGD) or ``"average"`` (random draws).
        norm: worst case: ``"l2"`` or ``"linf"`` ball.
        adaptive: scale the ball elementwise by ``c = |w| + eta``.
        eta: offset of the adaptive scale (0 in Andriushchenko et al.; ASAM uses 0.01).
        m: worst case: samples per group (m-sharpness); ``None``: the whole set as one group.
        iterations, restarts: worst case: Auto-PGD budget per group (restarts start at random
            points of the ball; the first at the centre).
        distribution: average case: ``"gaussian"`` or ``"sphere"`` (module docstring).
        rtol, min_pairs, max_pairs: average case: draw antithetic pairs (``min_pairs`` first,
            then rounds sized by the relative error so far, 1.25x to 2x the pairs before) until
            ``stderr <= rtol * |value|`` or ``max_pairs`` are drawn.
        seed: seed of the random draws and restarts.
        bn: BatchNorm at perturbed points: ``"keep"`` (the centre's statistics, eval mode) or,
            average case only, ``"recalibrate"`` (recomputed at every point).
        center_bn: ``"own"`` (the model's statistics) or ``"recalibrate"`` (once, at the centre).
        bn_data: calibration batches (default: ``data``, as batched).
        normalize_logits: apply the loss to normalised logits (:class:`NormalizedLogits`).
        loss_fn: batch-mean loss (default cross-entropy).
        include, exclude: glob filters on the perturbed parameters.
        show_progress: show a progress bar on stderr.
        **engine: keyword arguments of :class:`landscape.geometry.evaluate.Evaluator`.
    """
    started = time.perf_counter()
    _check(kind, norm, distribution, bn, center_bn, rho, iterations, restarts, rtol, min_pairs)
    base_loss = loss_fn or nn.CrossEntropyLoss()
    loss = NormalizedLogits(base_loss) if normalize_logits else base_loss
    calibrate = bn == "recalibrate" or center_bn == "recalibrate"
    data = list(data)
    ev = Evaluator(
        model, data, loss_fn=loss, bn_data=(bn_data or data) if calibrate else None, **engine
    )
    own = ev.state(weights)
    center = ev.recalibrated(own) if center_bn == "recalibrate" else own
    names = parameter_names(ev.module, include, exclude)
    c = {n: center[n].abs() + eta if adaptive else torch.ones_like(center[n]) for n in names}
    own_loss, _ = ev.evaluate_one(own)
    clean_loss, _ = ev.evaluate_one(ev.apply_bn(center, bn))
    settings: dict[str, Any] = {
        "kind": kind,
        "rho": float(rho),
        "adaptive": adaptive,
        "eta": float(eta),
        "seed": int(seed),
        "normalize_logits": normalize_logits,
        "n_parameters": sum(center[n].numel() for n in names),
        "parameters": tuple(names),
        "bn": bn,
        "center_bn": center_bn,
        "n_bn_samples": ev.settings.n_bn_samples,
        "engine": ev.settings,
    }
    if kind == "average":
        found = _average(
            ev,
            center,
            names,
            c,
            rho,
            distribution,
            rtol,
            min_pairs,
            max_pairs,
            seed,
            bn,
            clean_loss,
            show_progress,
        )
        found.update(
            norm="",
            distribution=distribution,
            m=0,
            iterations=0,
            restarts=0,
            rtol=float(rtol),
            n_samples=ev.n_samples,
        )
    else:
        found = _worst(
            ev, center, names, c, rho, norm, m, iterations, restarts, seed, show_progress
        )
        found.update(
            norm=norm,
            distribution="",
            m=int(m or 0),
            iterations=iterations,
            restarts=restarts,
            rtol=float("nan"),
        )
    return Sharpness(
        clean_loss=clean_loss,
        own_loss=own_loss,
        seconds=time.perf_counter() - started,
        **settings,
        **found,
    )


def _check(
    kind: str,
    norm_kind: str,
    distribution: str,
    bn: str,
    center_bn: str,
    rho: float,
    iterations: int,
    restarts: int,
    rtol: float,
    min_pairs: int,
) -> None:
    if kind not in KINDS:
        raise LandscapeError(f"kind must be one of {KINDS}, not {kind!r}")
    if norm_kind not in NORMS:
        raise LandscapeError(f"norm must be one of {NORMS}, not {norm_kind!r}")
    if distribution not in DISTRIBUTIONS:
        raise LandscapeError(f"distribution must be one of {DISTRIBUTIONS}, not {distribution!r}")
    if bn not in ("keep", "recalibrate"):
        raise LandscapeError(f"bn must be 'keep' or 'recalibrate' for sharpness, not {bn!r}")
    if bn == "recalibrate" and kind == "worst":
        raise LandscapeError(
            "worst-case sharpness needs bn='keep': the ascent's gradient cannot follow "
            "statistics recomputed at every point"
        )
    if center_bn not in ("own", "recalibrate"):
        raise LandscapeError(f"center_bn must be 'own' or 'recalibrate', not {center_bn!r}")
    if rho <= 0 or iterations < 1 or restarts < 1 or rtol <= 0 or min_pairs < 2:
        raise LandscapeError(
            "rho and rtol must be positive, iterations and restarts at least 1, min_pairs at least 2"
        )


def _worst(
    ev: Evaluator,
    center: State,
    names: list[str],
    c: State,
    rho: float,
    kind: str,
    m: int | None,
    iterations: int,
    restarts: int,
    seed: int,
    show_progress: bool,
) -> dict[str, Any]:
    """Auto-PGD on every group of ``m`` samples; the increases are averaged over the groups."""
    if m is not None and not 1 <= m <= ev.n_samples:
        raise LandscapeError(f"m must be between 1 and the {ev.n_samples} samples, not {m}")
    groups = ev.sample_groups(m) if m is not None else [list(ev.chunks)]
    total = len(groups) * restarts * (iterations + 1)
    bar = progress(total=total, desc="sharpness", enable=show_progress)
    traces = []
    try:
        for j, group in enumerate(groups):

            def objective(u: State, group: list[Batch] = group) -> tuple[float, State]:
                point = combine(center, [(1.0, {n: u[n] * c[n] for n in names})])
                value, grad = ev.loss_and_grad(point, names, group)
                # The chain rule through delta = c * u turns the gradient into c * g.
                return value, {n: grad[n] * c[n] for n in names}

            start = {n: torch.zeros_like(center[n]) for n in names}
            traces.append(
                auto_pgd(
                    objective,
                    start,
                    rho,
                    kind,
                    iterations=iterations,
                    restarts=restarts,
                    seed=seed + j,
                    on_iteration=lambda: bar.update(1),
                )
            )
    finally:
        bar.close()
    values = np.stack([t.values for t in traces])  # (groups, restarts, iterations + 1)
    clean = values[:, 0, 0]  # each group's loss at the centre
    # Stopping after iteration k keeps the best over every restart's first k iterations.
    running = np.maximum.accumulate(values, axis=2).max(axis=1)
    ascent = (running - clean[:, None]).mean(axis=0)
    late = ascent[int(np.ceil(0.75 * iterations))]
    scale = max(abs(float(ascent[-1])), 1e-12)
    return {
        "value": float(ascent[-1]),
        "stderr": float("nan"),
        "rel_stderr": float("nan"),
        "perturbed_loss": values,
        "ascent": ascent,
        "plateaued": bool(ascent[-1] - late <= PLATEAU_SHARE * scale),
        "radius": np.array([_radius(t.best_point, kind) for t in traces]),
        "n_groups": len(groups),
        "n_evaluations": sum(t.n_evaluations for t in traces),
        "n_samples": sum(int(y.shape[0]) for g in groups for _, y in g),
    }


def _radius(u: State, kind: str) -> float:
    if kind == "l2":
        return norm(u)
    return max((float(t.abs().max()) for t in u.values() if t.numel()), default=0.0)


def _next_round(n: int, rel_stderr: float, rtol: float, max_pairs: int) -> int:
    """Pairs to have after the next round: as many as the current relative standard error says
    reach ``rtol`` (it falls as ``1 / sqrt(n)``), with a 10% margin for the noise of that
    estimate, growing by at least a quarter (so the looks stay few) and at most doubling."""
    wanted = math.ceil(1.1 * n * (rel_stderr / rtol) ** 2) if math.isfinite(rel_stderr) else 2 * n
    return min(max_pairs, max(math.ceil(1.25 * n), min(2 * n, wanted)))


def _average(
    ev: Evaluator,
    center: State,
    names: list[str],
    c: State,
    rho: float,
    distribution: str,
    rtol: float,
    min_pairs: int,
    max_pairs: int,
    seed: int,
    bn: str,
    clean_loss: float,
    show_progress: bool,
) -> dict[str, Any]:
    """Antithetic pairs, in rounds sized by :func:`_next_round`, until the relative stderr is
    below rtol."""
    max_pairs = max(max_pairs, min_pairs)
    # One seed per pair: draws are built lazily (memory stays a few models), the same whichever
    # worker thread builds them and however many rounds are drawn.
    gen = torch.Generator().manual_seed(int(seed))
    seeds = torch.randint(0, 2**62, (max_pairs,), generator=gen).tolist()
    radii = np.zeros(max_pairs)

    def perturbed(k: int) -> tuple[State, bool]:
        g = torch.Generator().manual_seed(seeds[k // 2])
        z = {n: torch.randn(center[n].shape, generator=g, dtype=torch.float64) for n in names}
        factor = rho / norm(z) if distribution == "sphere" else rho
        # Measured before scaling by c, whose zeros (adaptive, eta = 0) would give 0 / 0.
        radii[k // 2] = norm(z) * factor
        sign = 1.0 if k % 2 == 0 else -1.0
        delta = {n: (z[n] * factor).to(center[n]) * c[n] for n in names}
        return combine(center, [(sign, delta)]), True

    losses = np.zeros((0, 2))
    bar = progress(total=2 * min_pairs, desc="sharpness", enable=show_progress)
    try:
        n = min_pairs
        while True:
            done = len(losses)
            new, _ = ev.evaluate_points(range(2 * done, 2 * n), perturbed, bn, bar)
            losses = np.concatenate([losses, new.reshape(-1, 2)])
            increase = losses.mean(axis=1) - clean_loss
            value = float(increase.mean())
            stderr = float(increase.std(ddof=1) / np.sqrt(len(increase)))
            if stderr <= rtol * abs(value) or n >= max_pairs:
                break
            n = _next_round(n, stderr / max(abs(value), 1e-300), rtol, max_pairs)
            bar.total = 2 * n
            bar.refresh()
    finally:
        bar.close()
    return {
        "value": value,
        "stderr": stderr,
        "rel_stderr": stderr / abs(value) if value != 0 else float("inf"),
        "perturbed_loss": losses,
        "ascent": np.zeros(0),
        "plateaued": False,
        "radius": radii[: len(losses)],
        "n_groups": 1,
        "n_evaluations": 2 * len(losses),
    }
