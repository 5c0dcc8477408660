"""Lines and planes spanned by models: the plane through three models and PCA of a trajectory.

Both return orthonormal axes (unit Euclidean norm, mutually orthogonal over the moved parameters),
so coordinates on them are true Euclidean distances in weight space ("L2 distance" units), and
they record where the models that define them sit on the plane.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
from torch import Tensor

from landscape.core.errors import LandscapeError
from landscape.core.records import ResultMixin
from landscape.geometry.weights import State, dot, norm

L2_UNITS = "L2 distance"


@dataclasses.dataclass(frozen=True)
class Plane(ResultMixin):
    """The plane through three models ``a``, ``b``, ``c`` with Gram-Schmidt axes.

    ``u = (b - a) / |b - a|``; ``v`` is ``c - a`` minus its component along ``u``, normalised.
    The point at coordinates ``(x, y)`` is ``origin + x * u + y * v``.

    Attributes:
        origin: the state of model ``a`` (coordinates ``(0, 0)``).
        axes: ``(u, v)`` over the moved parameters; floating-point buffers (BatchNorm running
            statistics) get the same linear map, for the ``bn="interpolate"`` policy.
        names: the parameter names the axes move.
        lengths: true lengths ``|b - a|`` and ``|c - a|`` of the raw axes.
        angle_deg: angle between ``b - a`` and ``c - a`` in degrees.
        coordinates: plane coordinates of ``a``, ``b`` and ``c`` (under their labels).
        units: ``"L2 distance"``.
    """

    origin: State
    axes: tuple[State, State]
    names: tuple[str, ...]
    lengths: tuple[float, float]
    angle_deg: float
    coordinates: dict[str, tuple[float, float]]
    units: str = L2_UNITS

    def to_dict(self) -> dict[str, Any]:
        """Everything but the tensors (origin and axes), as plain values."""
        return {
            "names": list(self.names),
            "lengths": list(self.lengths),
            "angle_deg": self.angle_deg,
            "coordinates": {k: list(v) for k, v in self.coordinates.items()},
            "units": self.units,
        }


def plane_through(
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    c: Mapping[str, Tensor],
    names: Sequence[str],
    *,
    buffers: Sequence[str] = (),
    labels: tuple[str, str, str] = ("a", "b", "c"),
) -> Plane:
    """Orthonormal axes of the plane through three models (Garipov et al. 2018, ``plane.py``).

    Args:
        a, b, c: full states of the three models; ``a`` becomes the origin.
        names: the parameters that span the plane (others stay at ``a``'s values).
        buffers: floating-point buffer names to carry along the same linear map (optional).
        labels: names for the three models in ``coordinates`` (e.g. ``("student_0", "student_1",
            "hybrid")``).

    Raises:
        LandscapeError: when the three models are collinear (no plane) or two coincide.
    """
    names = list(names)
    ab = {n: b[n].double() - a[n].double() for n in list(names) + list(buffers)}
    ac = {n: c[n].double() - a[n].double() for n in list(names) + list(buffers)}
    len_ab, len_ac = norm(ab, names), norm(ac, names)
    if len_ab == 0.0 or len_ac == 0.0:
        raise LandscapeError("two of the three models are identical, so they span no plane")
    cos = dot(ab, ac, names) / (len_ab * len_ac)
    along = dot(ac, ab, names) / len_ab
    u = {n: t / len_ab for n, t in ab.items()}
    v_raw = {n: ac[n] - along * u[n] for n in ac}
    height = norm(v_raw, names)
    if height <= 1e-9 * len_ac:
        raise LandscapeError("the three models are collinear, so they span no plane")
    v = {n: t / height for n, t in v_raw.items()}
    dtype_of = {n: a[n].dtype for n in ab}
    return Plane(
        origin=dict(a),
        axes=(
            {n: t.to(dtype_of[n]) for n, t in u.items()},
            {n: t.to(dtype_of[n]) for n, t in v.items()},
        ),
        names=tuple(names),
        lengths=(len_ab, len_ac),
        angle_deg=math.degrees(math.acos(max(-1.0, min(1.0, cos)))),
        coordinates={labels[0]: (0.0, 0.0), labels[1]: (len_ab, 0.0), labels[2]: (along, height)},
    )


@dataclasses.dataclass(frozen=True)
class TrajectoryPCA(ResultMixin):
    """Principal directions of a sequence of checkpoints, computed through their Gram matrix.

    Attributes:
        origin: the point the coordinates are measured from (the last checkpoint or the mean).
        axes: unit-norm principal directions over ``names``, by decreasing variance.
        names: the parameter names used.
        explained_variance: variance along each axis (squared singular value / (n - 1)).
        explained_variance_ratio: the same as a fraction of the total variance.
        singular_values: singular values of the centred checkpoint matrix.
        coordinates: ``(n_checkpoints, k)`` projections of ``checkpoint - origin`` onto the axes.
        origin_kind: ``"last"``, ``"mean"`` or ``"given"``.
        units: ``"L2 distance"``.
    """

    origin: State
    axes: tuple[State, ...]
    names: tuple[str, ...]
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    singular_values: np.ndarray
    coordinates: np.ndarray
    origin_kind: str
    units: str = L2_UNITS

    def to_dict(self) -> dict[str, Any]:
        """Everything but the tensors (origin and axes), as plain values."""
        out = ResultMixin.to_dict(self)
        del out["origin"], out["axes"]
        return out


def _gram(vectors: Sequence[Mapping[str, Tensor]], names: Sequence[str]) -> np.ndarray:
    n = len(vectors)
    gram = np.zeros((n, n))
    for i in range(n):
        for j in range(i, n):
            gram[i, j] = gram[j, i] = dot(vectors[i], vectors[j], names)
    return gram


def pca_trajectory(
    checkpoints: Sequence[Mapping[str, Tensor]],
    names: Sequence[str],
    *,
    k: int = 2,
    origin: str | Mapping[str, Tensor] = "last",
) -> TrajectoryPCA:
    """PCA of a trajectory of checkpoints without forming an ``n_ckpt x n_params`` matrix.

    With ``X`` the centred checkpoints (rows, over ``names``), the eigenvectors ``u_i`` and
    eigenvalues ``s_i^2`` of the ``n x n`` Gram matrix ``X X^T`` give the principal axes
    ``X^T u_i / s_i``: the same axes as an SVD of ``X``, at the cost of ``n^2 / 2`` dot products.

    Args:
        checkpoints: states (or parameter dicts) in trajectory order.
        names: the parameters to analyse.
        k: number of axes (at most ``n_checkpoints - 1``).
        origin: ``"last"`` (default; the final model, around which surfaces are usually drawn),
            ``"mean"``, or a state to measure coordinates from.

    Returns:
        Axes, explained variance and every checkpoint's coordinates (in L2 distance).
    """
    n = len(checkpoints)
    if n < 2:
        raise LandscapeError("a trajectory PCA needs at least two checkpoints")
    if not 1 <= k <= n - 1:
        raise LandscapeError(f"k must be between 1 and {n - 1} for {n} checkpoints, not {k}")
    names = list(names)
    # sum() of the (at least two) checkpoints' tensors is a tensor, not its int start
    mean = {nm: cast(Tensor, sum(c[nm].double() for c in checkpoints)) / n for nm in names}
    centred = [{nm: c[nm].double() - mean[nm] for nm in names} for c in checkpoints]
    evals, evecs = np.linalg.eigh(_gram(centred, names))
    order = np.argsort(evals)[::-1]
    evals, evecs = np.clip(evals[order], 0.0, None), evecs[:, order]
    if evals[k - 1] <= 1e-12 * max(evals[0], 1e-300):
        raise LandscapeError(f"the checkpoints span fewer than {k} dimensions")
    sing = np.sqrt(evals)
    axes = []
    for i in range(k):
        axis = {
            nm: sum(float(evecs[j, i]) * centred[j][nm] for j in range(n)) / sing[i] for nm in names
        }
        # Fix the sign so the last checkpoint has a non-negative coordinate: runs are comparable.
        if evecs[-1, i] < 0:
            axis = {nm: -t for nm, t in axis.items()}
        axes.append(axis)
    last = checkpoints[-1]
    if isinstance(origin, str):
        if origin not in ("last", "mean"):
            raise LandscapeError(f"origin must be 'last', 'mean' or a state, not {origin!r}")
        kind = origin
        base = dict(last)
        if origin == "mean":  # the mean over ``names``; other tensors (buffers) from the last
            base.update({nm: mean[nm].to(last[nm].dtype) for nm in names})
    else:
        kind, base = "given", dict(origin)
    ref = mean if kind == "mean" else {nm: base[nm].double() for nm in names}
    coords = np.array(
        [
            [dot({nm: c[nm].double() - ref[nm] for nm in names}, ax, names) for ax in axes]
            for c in checkpoints
        ]
    )
    return TrajectoryPCA(
        origin=base,
        axes=tuple({nm: t.to(last[nm].dtype) for nm, t in ax.items()} for ax in axes),
        names=tuple(names),
        explained_variance=evals[:k] / (n - 1),
        explained_variance_ratio=evals[:k] / evals.sum(),
        singular_values=sing[:k],
        coordinates=coords,
        origin_kind=kind,
    )
