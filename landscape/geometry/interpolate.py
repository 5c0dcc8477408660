"""Loss and accuracy along the straight line between two models, and its barrier height."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor, nn

from landscape.core.batches import Batch
from landscape.core.errors import LandscapeError
from landscape.core.progress import progress
from landscape.core.records import ResultMixin
from landscape.geometry.batchnorm import check_policy, running_stat_names
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
        barrier: ``max(loss over alphas in [0, 1]) - (loss(0) + loss(1)) / 2``, in loss units
            (NaN if a loss in [0, 1] is not finite).
        barrier_alpha: where that maximum is.
        start_loss, end_loss, start_accuracy, end_accuracy: the two endpoints.
        nonfinite: mask of non-finite losses; ``n_nonfinite`` counts them.
        bn: BatchNorm policy at interior points; ``bn_endpoints``: ``"own"`` (the endpoints keep
            their own running statistics, as the trained checkpoints they are) or ``"policy"``.
        parameters: the parameter names that differ between start and end (the ones that move).
        n_samples, n_bn_samples: evaluation and BatchNorm-calibration samples (0: none).
        engine: evaluation settings.
        seconds: wall time.
    """

    alphas: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    barrier: float
    barrier_alpha: float
    start_loss: float
    end_loss: float
    start_accuracy: float
    end_accuracy: float
    nonfinite: np.ndarray
    n_nonfinite: int
    bn: str
    bn_endpoints: str
    parameters: tuple[str, ...]
    n_samples: int
    n_bn_samples: int
    engine: EngineSettings
    seconds: float


def _alphas(alphas: Sequence[float] | np.ndarray | None) -> np.ndarray:
    values = DEFAULT_ALPHAS if alphas is None else np.asarray(alphas, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(values)):
        raise LandscapeError("alphas must be finite numbers")
    return np.unique(np.concatenate([values, [0.0, 1.0]]))


def barrier_height(alphas: np.ndarray, loss: np.ndarray) -> tuple[float, float]:
    """``(max loss on [0, 1] minus the mean of the losses at 0 and 1, alpha of that maximum)``."""
    inside = (alphas >= 0.0) & (alphas <= 1.0)
    seg_a, seg_l = alphas[inside], loss[inside]
    ends = 0.5 * (loss[alphas == 0.0][0] + loss[alphas == 1.0][0])
    if not np.all(np.isfinite(seg_l)):
        return float("nan"), float("nan")
    k = int(np.argmax(seg_l))
    return float(seg_l[k] - ends), float(seg_a[k])


def interpolate(
    model: nn.Module,
    start: nn.Module | Mapping[str, Tensor],
    end: nn.Module | Mapping[str, Tensor],
    data: Iterable[Batch],
    *,
    alphas: Sequence[float] | np.ndarray | None = None,
    bn: str = "recalibrate",
    bn_data: Iterable[Batch] | None = None,
    bn_endpoints: str = "own",
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
        bn_endpoints: ``"own"`` evaluates alpha 0 and 1 with the models' own running statistics
            (so the curve's ends are the two checkpoints' losses); ``"policy"`` applies ``bn``
            there too (use it when an endpoint is a hybrid whose statistics belong to no one).
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
    barrier, where = barrier_height(alphas, loss)
    mask = ~np.isfinite(loss)
    return Curve(
        alphas=alphas,
        loss=loss,
        accuracy=acc,
        barrier=barrier,
        barrier_alpha=where,
        start_loss=float(loss[i0]),
        end_loss=float(loss[i1]),
        start_accuracy=float(acc[i0]),
        end_accuracy=float(acc[i1]),
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
