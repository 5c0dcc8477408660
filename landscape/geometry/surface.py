"""Loss and accuracy on a grid of points ``center + sum_k x_k * d_k`` (1-D lines, 2-D planes).

Grid coordinates are computed as ``i * step`` (never by repeated additions) and a symmetric grid
always holds the centre exactly. Non-finite losses are counted and masked, never replaced. Points
are evaluated in chunks; with a ``store`` directory each finished chunk is saved atomically, so
an interrupted surface resumes where it stopped and gives the same numbers. Under
``torch.distributed`` the chunks are split across ranks and every rank returns the full surface.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from landscape.core.batches import Batch
from landscape.core.definitions import definition
from landscape.core.distributed import broadcast, gather, rank_and_world
from landscape.core.errors import LandscapeError
from landscape.core.progress import progress
from landscape.core.records import ResultMixin
from landscape.geometry.batchnorm import axes_for_policy, check_policy
from landscape.geometry.chunks import ChunkStore, tensor_digest
from landscape.geometry.directions import resolve_axes
from landscape.geometry.evaluate import (
    EngineSettings,
    Evaluator,
    LossFn,
    PointBuilder,
    evaluator_for_policy,
)
from landscape.geometry.subspace import Plane, TrajectoryPCA
from landscape.geometry.weights import State, combine, norm, parameter_names

Grid = tuple[float, int] | Sequence[Sequence[float]]


def grid_coordinates(radius: float, points: int) -> np.ndarray:
    """Symmetric coordinates ``i * step`` for ``i = -(points-1)/2 ... (points-1)/2``.

    ``points`` must be odd, so the centre (coordinate 0.0, exactly) is on the grid.
    """
    if points < 1 or points % 2 == 0:
        raise LandscapeError(f"a symmetric grid needs an odd number of points, not {points}")
    half = (points - 1) // 2
    step = radius / half if half else 0.0
    return np.arange(-half, half + 1) * step


def span_coordinates(lo: float, hi: float, points: int) -> np.ndarray:
    """Coordinates ``i * step`` covering ``[lo, hi]`` with about ``points`` points, holding 0.0.

    ``step = (hi - lo) / (points - 1)``; the range is widened to whole steps, so a plane's grid
    contains its origin exactly.
    """
    if hi <= lo or points < 2:
        raise LandscapeError("a span needs hi > lo and at least two points")
    step = (hi - lo) / (points - 1)
    return np.arange(math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9) + 1) * step


def plane_grid(plane: Plane, points: int = 21, margin: float = 0.2) -> list[np.ndarray]:
    """Coordinates for a plane through models: their bounding box plus ``margin`` of its size."""
    xs, ys = zip(*plane.coordinates.values(), strict=True)
    axes = []
    for vals in (xs, ys):
        lo, hi = min(vals), max(vals)
        pad = margin * (hi - lo)
        axes.append(span_coordinates(lo - pad, hi + pad, points))
    return axes


@dataclasses.dataclass(frozen=True)
class Surface(ResultMixin):
    """Loss and accuracy on a grid around a centre.

    Attributes:
        coordinates: one array per axis; ``loss[i, j]`` is at ``(coordinates[0][i],
            coordinates[1][j])`` (matrix, "ij", indexing; transpose for Plotly's ``z[y][x]``).
        loss: mean per-sample loss at every grid point (NaN/inf kept as computed).
        accuracy: fraction correct at every point (NaN without class targets).
        nonfinite: boolean mask of points whose loss is NaN or infinite; ``n_nonfinite`` counts them.
        center_loss, center_accuracy: the centre evaluated as a trained checkpoint (its own
            BatchNorm statistics): the sanity value the grid's centre should show.
        center_index: grid index of the centre, or ``None`` if it is not on the grid.
        units: units of the coordinates, e.g. ``"filter-normalised direction units"``.
        directions: how the axes were made (kind, normalisation, seed, norms).
        parameters: the parameter names the axes move.
        bn, bn_center: the BatchNorm policy for grid points and for the centre.
        n_samples, n_bn_samples: evaluation and BatchNorm-calibration samples (0: none).
        engine: evaluation settings; ``n_computed``/``n_resumed``: points computed now / loaded
            from the store; ``seconds``: wall time of this call; ``store``: the store path.
        definition: the measure's versioned definition (``landscape.core.definitions``).
    """

    coordinates: tuple[np.ndarray, ...]
    loss: np.ndarray
    accuracy: np.ndarray
    nonfinite: np.ndarray
    n_nonfinite: int
    center_loss: float
    center_accuracy: float
    center_index: tuple[int, ...] | None
    units: str
    directions: dict[str, Any]
    parameters: tuple[str, ...]
    bn: str
    bn_center: str
    n_samples: int
    n_bn_samples: int
    engine: EngineSettings
    n_computed: int
    n_resumed: int
    seconds: float
    store: str | None
    definition: str = definition("surface")


def _coordinates(grid: Grid, dims: int) -> list[np.ndarray]:
    if len(grid) == 2 and np.isscalar(grid[0]) and np.isscalar(grid[1]):
        radius, points = cast("tuple[float, int]", grid)  # (radius, points), a tuple or a list
        return [grid_coordinates(float(radius), int(points)) for _ in range(dims)]
    coords = [np.asarray(c, dtype=np.float64) for c in grid]
    if len(coords) != dims or any(c.ndim != 1 or c.size == 0 for c in coords):
        raise LandscapeError(f"grid must be (radius, points) or {dims} coordinate arrays")
    return coords


@dataclasses.dataclass(frozen=True)
class _GridPlan:
    """The grid flattened in "ij" order and cut into chunks of ``per_chunk`` consecutive points."""

    coords: list[np.ndarray]
    points: np.ndarray  # (n_points, dims) coordinates
    center: int | None  # flat index of the origin, if it is on the grid
    per_chunk: int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.coords)

    @property
    def n_chunks(self) -> int:
        return math.ceil(len(self.points) / self.per_chunk)

    def chunk(self, i: int) -> range:
        return range(i * self.per_chunk, min((i + 1) * self.per_chunk, len(self.points)))


def _plan_grid(grid: Grid, dims: int, chunk_points: int | None) -> _GridPlan:
    coords = _coordinates(grid, dims)
    points = np.stack([g.reshape(-1) for g in np.meshgrid(*coords, indexing="ij")], axis=1)
    zero = np.flatnonzero(np.all(points == 0.0, axis=1))
    per_chunk = int(chunk_points or len(coords[-1]))
    return _GridPlan(coords, points, int(zero[0]) if zero.size else None, per_chunk)


def _open_store(
    store: str | os.PathLike | None, fingerprint: Callable[[], dict[str, Any]], n_chunks: int
) -> tuple[ChunkStore | None, dict[int, dict[str, np.ndarray]]]:
    """Rank 0 opens (or creates) the store; every rank learns which chunks it already holds."""
    rank, world = rank_and_world()
    chunk_store, done, refused = None, {}, None
    if store is not None and rank == 0:
        try:
            chunk_store = ChunkStore(store, fingerprint(), n_chunks)
            done = {i: chunk_store.load(i) for i in chunk_store.completed()}
        except LandscapeError as err:
            refused = str(err)
    # Every rank learns what is stored, or that the store was refused (none may wait forever).
    done, refused = broadcast((done, refused), world)
    if refused is not None:
        raise LandscapeError(refused)
    return chunk_store, done


def _evaluate_chunks(
    ev: Evaluator,
    plan: _GridPlan,
    point: PointBuilder,
    bn: str,
    done: dict[int, dict[str, np.ndarray]],
    chunk_store: ChunkStore | None,
    *,
    show_progress: bool,
    callback: Callable[[int, int], None] | None,
) -> int:
    """Evaluate the chunks not in ``done``, adding them to it (and to the store); the points done.

    Under ``torch.distributed`` the ranks take consecutive chunks in turn and gather each round.
    """
    rank, world = rank_and_world()
    todo = [i for i in range(plan.n_chunks) if i not in done]
    n_points = sum(len(plan.chunk(i)) for i in todo)
    bar = progress(total=n_points, desc="surface", enable=show_progress and rank == 0)
    try:
        for start in range(0, len(todo), world):
            result = None
            if start + rank < len(todo):
                mine = todo[start + rank]
                loss, acc = ev.evaluate_points(
                    plan.chunk(mine), point, bn, bar if world == 1 else None
                )
                result = (mine, {"loss": loss, "accuracy": acc})
            for item in gather(result, world):
                if item is None:
                    continue
                i, arrays = item
                if chunk_store is not None:
                    chunk_store.save(i, arrays)
                done[i] = arrays
                if world > 1:
                    bar.update(len(arrays["loss"]))
            if callback is not None:
                callback(len(done), plan.n_chunks)
    finally:
        bar.close()
    return n_points


def surface(
    model: nn.Module,
    center: nn.Module | Mapping[str, Tensor] | None,
    data: Iterable[Batch],
    *,
    directions: str | Plane | TrajectoryPCA | Sequence[Mapping[str, Tensor]] = "random",
    grid: Grid = (1.0, 21),
    dims: int = 2,
    bn: str = "recalibrate",
    bn_data: Iterable[Batch] | None = None,
    bn_center: str = "policy",
    loss_fn: LossFn | None = None,
    seed: int | None = 0,
    normalization: str = "filter",
    include_1d: bool = False,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    store: str | os.PathLike | None = None,
    chunk_points: int | None = None,
    show_progress: bool = True,
    callback: Callable[[int, int], None] | None = None,
    **engine: Any,
) -> Surface:
    """Loss and accuracy at ``center + sum_k x_k * d_k`` for every grid point ``x``.

    Args:
        model: the architecture (not modified).
        center: weights at the origin (a state dict, parameter dict or module); ``None`` takes the
            origin of a ``Plane``/``TrajectoryPCA`` given as ``directions``, else the model's own.
        data: ``(inputs, targets)`` batches; the loss is their sample-weighted mean.
        directions: ``"random"`` (``dims`` seeded Gaussian directions over the selected
            parameters, normalised by ``normalization``), a ``Plane``, a ``TrajectoryPCA``, or a
            sequence of direction dicts.
        grid: ``(radius, points)`` for a symmetric grid on every axis (``points`` odd), or one
            coordinate array per axis.
        dims: number of random directions (1 for a line, 2 for a plane).
        bn: BatchNorm policy for grid points: ``"recalibrate"`` (default), ``"interpolate"``
            (directions between models only) or ``"keep"``.
        bn_data: calibration batches for ``"recalibrate"`` (default: ``data``, as batched).
        bn_center: ``"policy"`` (default, as in ``landscape analyze``: the centre follows ``bn``
            like every other point, so the basin's depth compares like with like) or ``"own"``
            (the centre keeps its BatchNorm statistics, as the trained checkpoint it is). The
            own-statistics value is in ``center_loss`` either way.
        loss_fn: batch-mean loss (default cross-entropy).
        seed: seed of the random directions.
        normalization, include_1d: see ``landscape.geometry.directions.normalize_direction``.
        include, exclude: glob filters on parameter names (per-layer surfaces).
        store: directory of a resumable chunk store (optional).
        chunk_points: points per stored chunk (default: one row of the grid).
        show_progress: show a progress bar on stderr.
        callback: called as ``callback(chunks_done, n_chunks)`` after each stored chunk; raising
            from it aborts the run and leaves the finished chunks in the store.
        **engine: keyword arguments of :class:`landscape.geometry.evaluate.Evaluator` (``device``,
            ``dtype``, ``chunk_size``, ``memory_format``, ``fold_bn``, ``points_per_pass``,
            ``workers``, ``bf16``).

    Returns:
        A :class:`Surface`; identical on every rank under ``torch.distributed`` (launch with
        ``torchrun``; every rank must pass the same centre, directions and data, and with NCCL
        set each rank's CUDA device first). Only rank 0 writes the store.
    """
    started = time.perf_counter()
    check_policy(bn)
    if bn_center not in ("own", "policy"):
        raise LandscapeError(f"bn_center must be 'own' or 'policy', not {bn_center!r}")
    if isinstance(directions, str) and dims not in (1, 2, 3):
        raise LandscapeError(f"dims must be 1, 2 or 3, not {dims}")
    if center is None and isinstance(directions, Plane | TrajectoryPCA):
        center = directions.origin
    ev = evaluator_for_policy(model, data, bn, bn_data, loss_fn, **engine)
    c_state = ev.state(center)

    # The axes, on the centre's device and dtype, holding what the BatchNorm policy moves.
    names = parameter_names(ev.module, include, exclude)
    axes, units, meta = resolve_axes(
        directions, c_state, names, dims, seed, normalization, include_1d
    )
    axes = axes_for_policy(
        ev.module, [{k: v.to(c_state[k]) for k, v in a.items()} for a in axes], bn
    )
    all_params = {n for n, _ in ev.module.named_parameters()}
    meta["norms"] = [norm(a, [k for k in a if k in all_params]) for a in axes]
    moved = tuple(
        sorted({k for a in axes for k, v in a.items() if k in all_params and bool(v.any())})
    )

    plan = _plan_grid(grid, len(axes), chunk_points)

    def point(k: int) -> tuple[State, bool]:
        if k == plan.center and bn_center == "own":
            return c_state, False
        return combine(c_state, zip(plan.points[k].tolist(), axes, strict=True)), True

    chunk_store, done = _open_store(
        store,
        lambda: _fingerprint(ev, c_state, axes, plan.coords, bn, bn_center, plan.per_chunk),
        plan.n_chunks,
    )
    n_resumed = sum(len(plan.chunk(i)) for i in done)
    n_computed = _evaluate_chunks(
        ev,
        plan,
        point,
        bn,
        done,
        chunk_store,
        show_progress=show_progress,
        callback=callback,
    )

    loss = np.concatenate([done[i]["loss"] for i in range(plan.n_chunks)])
    acc = np.concatenate([done[i]["accuracy"] for i in range(plan.n_chunks)])
    if plan.center is not None and bn_center == "own":
        c_loss, c_acc = float(loss[plan.center]), float(acc[plan.center])
    else:
        c_loss, c_acc = ev.evaluate_one(c_state)
    mask = ~np.isfinite(loss)
    shape = plan.shape
    return Surface(
        coordinates=tuple(plan.coords),
        loss=loss.reshape(shape),
        accuracy=acc.reshape(shape),
        nonfinite=mask.reshape(shape),
        n_nonfinite=int(mask.sum()),
        center_loss=c_loss,
        center_accuracy=c_acc,
        center_index=tuple(int(i) for i in np.unravel_index(plan.center, shape))
        if plan.center is not None
        else None,
        units=units,
        directions=meta,
        parameters=moved,
        bn=bn,
        bn_center=bn_center,
        n_samples=ev.n_samples,
        n_bn_samples=ev.settings.n_bn_samples,
        engine=ev.settings,
        n_computed=n_computed,
        n_resumed=n_resumed,
        seconds=time.perf_counter() - started,
        store=str(store) if store is not None else None,
    )


def _data_digest(batches: Sequence[Batch], *, by_batch: bool = False) -> str:
    """Digest of the data; of the samples only (not of the chunking) unless ``by_batch``."""
    if not by_batch:
        try:  # chunk sizes differ between devices; a store must resume on either
            joined = {
                "x": torch.cat([x for x, _ in batches]),
                "y": torch.cat([y for _, y in batches]),
            }
            return tensor_digest(joined)
        except RuntimeError:
            pass
    return tensor_digest(
        {f"{i:06d}.{k}": t for i, b in enumerate(batches) for k, t in zip("xy", b, strict=True)}
    )


def _fingerprint(
    ev: Evaluator,
    center: State,
    axes: Sequence[State],
    coords: Sequence[np.ndarray],
    bn: str,
    bn_center: str,
    per_chunk: int,
) -> dict[str, Any]:
    """Everything that determines a surface's numbers (tensors enter as digests)."""
    return {
        "kind": "surface",
        "model": [[k, list(v.shape), str(v.dtype)] for k, v in center.items()],
        "center": tensor_digest(center),
        "axes": [tensor_digest(a) for a in axes],
        "coordinates": [c.tolist() for c in coords],
        "bn": bn,
        "bn_center": bn_center,
        "data": _data_digest(ev.chunks),
        # BatchNorm statistics depend on batch composition, so calibration batches count as given.
        "bn_data": _data_digest(ev.bn_batches, by_batch=True) if ev.bn_batches else None,
        "loss": ev.settings.loss,
        "dtype": ev.settings.dtype,
        "bf16": ev.bf16,
        "chunk_points": per_chunk,
    }
