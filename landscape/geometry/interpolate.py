"""Loss and accuracy along the straight line between two models, and its barriers.

The barrier of a curve ``f`` on ``[0, 1]`` is its largest rise above the chord between its ends,
``max_alpha f(alpha) - ((1 - alpha) f(0) + alpha f(1))`` (Frankle et al. 2020; Entezari et al.
2022; Ainsworth et al. 2023), reported for the loss and for the error ``1 - accuracy``. It is 0 for
a convex or monotone-linear curve, whatever its ends, and positive only where the path rises above
the straight line between them: the sign of a barrier that linear mode connectivity lacks.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor, nn

from landscape.core.batches import Batch
from landscape.core.definitions import definition
from landscape.core.errors import LandscapeError
from landscape.core.progress import progress
from landscape.core.records import ResultMixin
from landscape.geometry.batchnorm import batchnorm_layers, check_policy, running_stat_names
from landscape.geometry.evaluate import EngineSettings, LossFn, evaluator_for_policy
from landscape.geometry.weights import State, lerp, movable, parameter_names

# Steps of 1/20 from -0.25 to 1.25, as exact fractions i / 20 (0 and 1 are hit exactly).
DEFAULT_ALPHAS = np.arange(-5, 26) / 20.0


@dataclasses.dataclass(frozen=True)
class Curve(ResultMixin):
    """Loss and accuracy along ``(1 - alpha) * start + alpha * end``.

    Attributes:
        alphas: interpolation coefficients (sorted; 0 and 1 always included; outside [0, 1] the
            line is extrapolated).
        loss: mean per-sample loss at every alpha (NaN/inf kept as computed).
        accuracy: fraction correct at every alpha (NaN without class targets).
        barrier: chord barrier of the loss, ``max over alphas in [0, 1] of loss(alpha) -
            ((1 - alpha) loss(0) + alpha loss(1))``, in loss units; at least 0, since the ends are
            on the chord (NaN if a loss in [0, 1] is not finite).
        barrier_alpha: where that maximum is.
        error_barrier, error_barrier_alpha: the same for the error ``1 - accuracy`` (a fraction;
            NaN without class targets).
        start_loss, end_loss, start_accuracy, end_accuracy: the two endpoints, evaluated as the
            interior points are when ``bn_endpoints="policy"``.
        start_own_loss, end_own_loss, start_own_accuracy, end_own_accuracy: the endpoints with
            their own running statistics (the trained checkpoints' values; equal to the above
            when ``bn_endpoints="own"`` or the model has no BatchNorm).
        nonfinite: mask of non-finite losses; ``n_nonfinite`` counts them.
        bn: BatchNorm policy at interior points; ``bn_endpoints``: ``"own"`` (the endpoints keep
            their own running statistics, as the trained checkpoints they are) or ``"policy"``.
        parameters: the parameter names that differ between start and end (the ones that move).
        n_samples, n_bn_samples: evaluation and BatchNorm-calibration samples (0: none).
        engine: evaluation settings.
        seconds: wall time.
        definition: the measure's versioned definition (``landscape.core.definitions``).
    """

    alphas: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    barrier: float
    barrier_alpha: float
    error_barrier: float
    error_barrier_alpha: float
    start_loss: float
    end_loss: float
    start_accuracy: float
    end_accuracy: float
    start_own_loss: float
    end_own_loss: float
    start_own_accuracy: float
    end_own_accuracy: float
    nonfinite: np.ndarray
    n_nonfinite: int
    bn: str
    bn_endpoints: str
    parameters: tuple[str, ...]
    n_samples: int
    n_bn_samples: int
    engine: EngineSettings
    seconds: float
    definition: str = definition("interp")


def _alphas(alphas: Sequence[float] | np.ndarray | None) -> np.ndarray:
    values = DEFAULT_ALPHAS if alphas is None else np.asarray(alphas, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(values)):
        raise LandscapeError("alphas must be finite numbers")
    return np.unique(np.concatenate([values, [0.0, 1.0]]))


def barrier_height(alphas: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """The chord barrier of ``values`` sampled at ``alphas`` and the alpha where it is reached.

    ``max over alphas in [0, 1] of values(alpha) - ((1 - alpha) values(0) + alpha values(1))``;
    ``alphas`` must hold 0 and 1, and points outside ``[0, 1]`` (extrapolation) do not count.
    The maximum is over the sampled alphas, so a finer grid can only raise it. NaN when a value in
    ``[0, 1]`` is not finite.
    """
    alphas, values = np.asarray(alphas, dtype=np.float64), np.asarray(values, dtype=np.float64)
    inside = (alphas >= 0.0) & (alphas <= 1.0)
    seg_a, seg_v = alphas[inside], values[inside]
    if not np.all(np.isfinite(seg_v)):
        return float("nan"), float("nan")
    v0, v1 = values[alphas == 0.0][0], values[alphas == 1.0][0]
    rise = seg_v - ((1.0 - seg_a) * v0 + seg_a * v1)
    k = int(np.argmax(rise))
    return float(rise[k]), float(seg_a[k])


def interpolate(
    model: nn.Module,
    start: nn.Module | Mapping[str, Tensor],
    end: nn.Module | Mapping[str, Tensor],
    data: Iterable[Batch],
    *,
    alphas: Sequence[float] | np.ndarray | None = None,
    bn: str = "recalibrate",
    bn_data: Iterable[Batch] | None = None,
    bn_endpoints: str = "policy",
    loss_fn: LossFn | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    show_progress: bool = True,
    **engine: Any,
) -> Curve:
    """Loss and accuracy along the line from ``start`` to ``end`` and the barrier between them.

    Args:
        model: the architecture (not modified).
        start, end: the two models' weights (state dicts, parameter dicts or modules).
        data: ``(inputs, targets)`` batches; the loss is their sample-weighted mean.
        alphas: coefficients to evaluate (default ``-0.25, -0.2, ..., 1.25``); 0 and 1 are added
            if missing.
        bn: BatchNorm policy at interior points: ``"recalibrate"`` (default), ``"interpolate"``
            (running statistics move with the weights) or ``"keep"`` (``start``'s statistics).
        bn_data: calibration batches for ``"recalibrate"`` (default: ``data``, as batched).
        bn_endpoints: ``"policy"`` (default, as in ``landscape analyze``) applies ``bn`` at alpha
            0 and 1 too, so the barrier compares points evaluated alike (and a hybrid endpoint,
            whose statistics belong to no one, is handled like the rest); ``"own"`` evaluates
            the ends with the models' own running statistics. Either way the result also holds
            the ends' own-statistics values (``start_own_loss`` ...).
        loss_fn: batch-mean loss (default cross-entropy).
        include, exclude: glob filters: only these parameters move (the rest stay at ``start``).
        show_progress: show a progress bar on stderr.
        **engine: keyword arguments of :class:`landscape.geometry.evaluate.Evaluator`.

    Returns:
        A :class:`Curve`.
    """
    started = time.perf_counter()
    check_policy(bn)
    if bn_endpoints not in ("own", "policy"):
        raise LandscapeError(f"bn_endpoints must be 'own' or 'policy', not {bn_endpoints!r}")
    alphas = _alphas(alphas)
    ev = evaluator_for_policy(model, data, bn, bn_data, loss_fn, **engine)
    s0, s1 = ev.state(start), ev.state(end)
    names = parameter_names(ev.module, include, exclude)
    stats = [n for n in running_stat_names(ev.module) if s0[n].is_floating_point()]
    moved = movable(s0, s1, names)
    # The end anchor: start with the selected parameters and the running statistics of ``end``.
    anchor1 = lerp(s0, s1, 1.0, names + stats)

    def point(k: int) -> tuple[State, bool]:
        a = float(alphas[k])
        if bn_endpoints == "own" and a in (0.0, 1.0):
            return (s0 if a == 0.0 else anchor1), False
        return lerp(s0, s1, a, names + stats if bn == "interpolate" else names), True

    bar = progress(total=len(alphas), desc="interpolate", enable=show_progress)
    try:
        loss, acc = ev.evaluate_points(range(len(alphas)), point, bn, bar)
    finally:
        bar.close()
    i0, i1 = int(np.flatnonzero(alphas == 0.0)[0]), int(np.flatnonzero(alphas == 1.0)[0])
    if bn_endpoints == "policy" and batchnorm_layers(ev.module):
        own = [ev.evaluate_one(s0), ev.evaluate_one(anchor1)]
    else:
        own = [(float(loss[i0]), float(acc[i0])), (float(loss[i1]), float(acc[i1]))]
    barrier, where = barrier_height(alphas, loss)
    error_barrier, error_where = barrier_height(alphas, 1.0 - acc)
    mask = ~np.isfinite(loss)
    return Curve(
        alphas=alphas,
        loss=loss,
        accuracy=acc,
        barrier=barrier,
        barrier_alpha=where,
        error_barrier=error_barrier,
        error_barrier_alpha=error_where,
        start_loss=float(loss[i0]),
        end_loss=float(loss[i1]),
        start_accuracy=float(acc[i0]),
        end_accuracy=float(acc[i1]),
        start_own_loss=own[0][0],
        end_own_loss=own[1][0],
        start_own_accuracy=own[0][1],
        end_own_accuracy=own[1][1],
        nonfinite=mask,
        n_nonfinite=int(mask.sum()),
        bn=bn,
        bn_endpoints=bn_endpoints,
        parameters=tuple(moved),
        n_samples=ev.n_samples,
        n_bn_samples=ev.settings.n_bn_samples,
        engine=ev.settings,
        seconds=time.perf_counter() - started,
    )
