"""Extreme eigenvalues of the Hessian of the dataset loss, by block Lanczos.

The curvature functions (:func:`top_eigenvalues` here, ``hessian_trace`` in
:mod:`landscape.curvature.trace`, ``spectral_density`` in :mod:`landscape.curvature.density`) share
one interface: each takes ``(model, loss_fn, data)`` (or a ready :class:`HessianOperator` as ``model``,
to share its data and autograd graph between analyses), analyses the Hessian of the sample-weighted
mean loss over all batches with respect to the trainable parameters (or those a glob filter keeps),
and returns a frozen dataclass recording the settings, the products used and the accuracy reached.
Eigenvalues are in loss units per squared parameter unit; traces in loss units (a sum over
parameter directions); densities in inverse eigenvalue units.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from landscape.core.batches import Batch
from landscape.core.definitions import definition
from landscape.core.distributed import is_rank0
from landscape.core.errors import LandscapeError
from landscape.core.progress import progress
from landscape.core.records import ResultMixin
from landscape.curvature.certify import (
    ComplementSearch,
    certified_solve,
    kw_epsilon,
    solve_as_search,
    spread_for,
)
from landscape.curvature.lanczos import WHICH, extreme_eigenpairs
from landscape.curvature.products import (
    HessianOperator,
    LossFn,
    ProblemInfo,
    as_operator,
    gaussian,
    seeded_generator,
)

CERTIFICATE = (
    "(i) each converged value is within its error bound of an eigenvalue of H (Krylov-Weinstein, "
    "widened by the measured product error); Ritz values of the top end are lower bounds of the "
    "top eigenvalues; that no eigenvalue beyond the returned ones was missed is not proved"
)


def _certificate(search: ComplementSearch | None, added: int, tol_scale: str = "value") -> str:
    base = CERTIFICATE
    if tol_scale == "spectrum":
        base = base.replace(
            "(Krylov-Weinstein, widened by the measured product error)",
            "(Krylov-Weinstein, widened by the measured product error), the bound being at most "
            "tol times the largest Ritz magnitude (the spectrum's scale), not tol times the value",
        )
    if search is None:
        return base
    if search.source == "solve":
        return (
            f"{base.split('; that no')[0]}; (ii) for k = 1 the solve is its own search: its "
            f"Krylov space, {search.steps} Lanczos steps from a uniformly random start with no "
            f"restart, was not followed by a separate one; (iii) with probability >= "
            f"{1 - search.delta:g} over that start (delta spread over the steps the solve could "
            f"stop at: delta (1 - r) r^(s - {search.spread_from}) at step s >= "
            f"{search.spread_from}, r = {search.spread_ratio:.3g}), "
            f"H has no eigenvalue above {search.top:.6g} + {search.eps:.3g} x (its spectral "
            f"width), and likewise below {search.bottom:.6g} (Kuczynski-Wozniakowski 1992)"
        )
    return (
        f"{base.split('; that no')[0]}; (ii) a {search.steps}-step Lanczos search "
        f"orthogonal to the returned vectors found nothing beyond them ({added} eigenvalue(s) "
        f"it found were added); (iii) with probability >= {1 - search.delta:g} over its random "
        f"start, H has no eigenvalue orthogonal to them above {search.top:.6g} + {search.eps:.3g}"
        f" x (the complement's spectral width), and likewise below {search.bottom:.6g} "
        "(Kuczynski-Wozniakowski 1992)"
    )


@dataclass(frozen=True)
class Spectrum(ResultMixin):
    """Extreme eigenvalues of the Hessian from :func:`top_eigenvalues`.

    Attributes:
        values: eigenvalues in decreasing order (``k``, or ``2 k`` for ``which="both"``).
        residuals: ``||H y - value * y||`` of each unit Ritz vector ``y``.
        error_bounds: certified: ``value +- error_bound`` holds an eigenvalue of the Hessian
            (Krylov-Weinstein: the residual, plus the measured ``product_error``).
        estimated_bounds: the sharper residual**2 / gap bound with the gap taken from the other
            Ritz values (plus ``product_error``); an estimate, false when an eigenvalue near the
            value has not entered the Krylov space. Never used to stop.
        converged: ``residual <= tol * |value| + product_error`` for each value (certified
            bounds only; the product error lets a zero eigenvalue converge).
        product_error: measured error of one Hessian-vector product of a unit vector (repeated
            product and symmetry defect; see :class:`landscape.curvature.lanczos.RitzPairs`).
        certificate: what the result guarantees, in words: (i) each converged value is within
            its bound of *an* eigenvalue, top-end Ritz values being lower bounds of the top
            eigenvalues; with ``certify_top``, also (ii) a search orthogonal to the returned
            vectors found nothing beyond them and (iii) the probabilistic bound of ``search``.
        search: with ``certify_top``: the last search orthogonal to the returned vectors
            (:class:`landscape.curvature.certify.ComplementSearch`: steps, extreme Ritz values,
            ``eps`` and ``delta`` of the Kuczynski-Wozniakowski bound); ``added``: eigenvalues
            the searches found and merged in (missed by the main solve).
        n_hvp: Hessian-vector products used.
        n_restarts: thick restarts of the Lanczos basis.
        k, which, tol, tol_scale, max_iter, basis_size, seed: the settings used.
        problem: the Hessian analysed (parameters, samples, dtype, device, ...).
        vectors: ``(len(values), n_params)`` unit eigenvectors on the CPU when requested (not in
            ``to_dict``; :meth:`HessianOperator.vector_dict` reshapes one into parameters).
        definition: the measure's versioned definition (``landscape.core.definitions``).
    """

    values: np.ndarray
    residuals: np.ndarray
    error_bounds: np.ndarray
    estimated_bounds: np.ndarray
    converged: np.ndarray
    product_error: float
    certificate: str
    n_hvp: int
    n_restarts: int
    k: int
    which: str
    tol: float
    max_iter: int
    basis_size: int | None
    seed: int
    problem: ProblemInfo
    search: ComplementSearch | None = None
    added: int = 0
    vectors: Tensor | None = None
    tol_scale: str = "value"
    definition: str = definition("eigen")

    def to_dict(self, include_vectors: bool = False) -> dict[str, Any]:
        """Plain values; eigenvectors only on request (they are ``n_params`` numbers each)."""
        out = super().to_dict()
        if not include_vectors:
            out.pop("vectors")
        return out


def top_eigenvalues(
    model: nn.Module | HessianOperator,
    loss_fn: LossFn | None = None,
    data: Iterable[Batch] | None = None,
    k: int = 5,
    which: str = "largest",
    tol: float = 1e-3,
    *,
    max_iter: int = 500,
    basis_size: int | None = None,
    basis_device: str | torch.device | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    seed: int = 0,
    return_vectors: bool = False,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    distributed: bool | None = None,
    certify_top: float | None = None,
    search_steps: int = 20,
    start: Tensor | None = None,
    show_progress: bool = True,
    tol_scale: str = "value",
) -> Spectrum:
    """Extreme eigenvalues of the Hessian of the dataset loss, to a certified relative accuracy.

    Thick-restart Lanczos with full reorthogonalisation (:func:`landscape.curvature.lanczos.extreme_eigenpairs`)
    from a seeded Gaussian start vector. It stops once every returned value has an error bound of
    at most ``tol * |value|`` (the certified residual bound, never the gap-based estimate), not
    after a fixed number of steps; ``converged`` says which values reached it if the budget ran
    out first. See :attr:`Spectrum.certificate` for what is and is not guaranteed.

    Args:
        model: the network, or a :class:`HessianOperator` (then ``loss_fn`` and ``data`` are
            omitted and the filter, device, dtype and distributed arguments are ignored).
        loss_fn: ``loss_fn(outputs, targets)`` returning the batch mean.
        data: iterable of ``(inputs, targets)`` batches.
        k: eigenvalues wanted (at each end for ``which="both"``).
        which: ``"largest"`` or ``"smallest"`` algebraic (not magnitude), or ``"both"``.
        tol: relative accuracy to certify.
        tol_scale: ``"value"``: each value to ``tol`` of its own magnitude; ``"spectrum"``: to
            ``tol`` of the largest magnitude in the spectrum (a value near 0 at the small end is
            then certified to the spectrum's scale, not to its own vanishing digits).
        max_iter: Hessian-vector product budget.
        basis_size: Lanczos vectors kept before a thick restart (default
            ``max(2 * wanted + 20, 60)``); memory is ``basis_size * n_params`` numbers.
        basis_device: where those numbers live (default: the compute device); ``"cpu"`` moves
            them to host memory for a large model on a small accelerator (two transfers of one
            vector per product). The check of ``certify_top`` keeps its ``search_steps + 1``
            vectors on the compute device.
        include: glob patterns of parameter names to analyse (default: all trainable ones).
        exclude: glob patterns of parameter names to leave out.
        seed: seed of the start vector.
        return_vectors: also return the eigenvectors.
        device: compute device (default CUDA if available).
        dtype: compute dtype; a different one casts a copy of the model, never the model itself.
        distributed: sum the data shards of all ``torch.distributed`` ranks (default: when
            initialised).
        certify_top: failure probability ``delta`` of a check that nothing beyond the returned
            values was missed (:mod:`landscape.curvature.certify`): Lanczos searches of
            ``search_steps`` steps orthogonal to the returned vectors, whatever they find merged
            in, and the Kuczynski-Wozniakowski bound of the last one. ``None``: no check.
        search_steps: steps of each search (about as many extra products).
        start: start vector (flat, in the operator's parameter order), e.g. a warm start from an
            earlier solve; default a Gaussian from ``seed``. Only its direction matters.
        show_progress: show a progress bar on stderr (rank 0 only when distributed).

    Returns:
        A :class:`Spectrum`.
    """
    if which not in WHICH:
        raise LandscapeError(f"which must be one of {', '.join(WHICH)}, not {which!r}")
    if k < 1 or tol <= 0:
        raise LandscapeError("k must be at least 1 and tol positive")
    if certify_top is not None and not 0 < certify_top < 1:
        raise LandscapeError(f"certify_top is a probability in (0, 1), not {certify_top}")
    op = as_operator(
        model,
        loss_fn,
        data,
        include=include,
        exclude=exclude,
        device=device,
        dtype=dtype,
        distributed=distributed,
    )
    wanted = 2 * k if which == "both" else k
    if wanted > op.n:
        raise LandscapeError(f"asked for {wanted} eigenvalues of a {op.n}-parameter Hessian")
    gen = seeded_generator(seed)
    random_start = start is None  # uniform on the sphere: what the Lanczos bound assumes
    if start is None:
        start = gaussian((op.n,), gen, op.dtype, op.device)
    elif start.shape != (op.n,) or not bool(torch.isfinite(start).all()) or not start.any():
        raise LandscapeError(f"start must be a finite, nonzero vector of {op.n} numbers")
    start, used = start.to(device=op.device, dtype=op.dtype), op.n_hvp
    with progress(total=max_iter, desc="lanczos", enable=show_progress and is_rank0()) as bar:

        def on_step(n_matvec: int, n_converged: int) -> None:
            bar.update(max(0, n_matvec - bar.n))  # a later solve restarts its count
            bar.set_postfix(converged=f"{n_converged}/{wanted}", refresh=False)

        def draw() -> Tensor:
            return gaussian((op.n,), gen, op.dtype, op.device)

        def solve(matvec: Any, v0: Tensor, min_matvec: int = 0, size: int | None = None) -> Any:
            return extreme_eigenpairs(
                matvec,
                v0,
                k=k,
                which=which,
                tol=tol,
                max_matvec=max_iter,
                basis_size=size or basis_size,
                basis_device=basis_device,
                return_vectors=return_vectors or certify_top is not None,
                new_direction=draw,
                on_step=on_step,
                tol_scale=tol_scale,
                min_matvec=min_matvec,
            )

        search, added = None, 0
        if certify_top is None:
            pairs = solve(op.matvec, start)
        elif k == 1 and random_start:
            # Grow the solve's own Krylov space until its bound is as tight as a separate
            # search_steps search would give, and use it instead (no second run).
            target = kw_epsilon(op.n, search_steps, certify_top)
            spread = spread_for(op.n, target, certify_top, max_iter - 1)
            size = max(basis_size or 60, spread.first + 2)  # no thick restart before the bound
            pairs = solve(op.matvec, start, min_matvec=spread.first + 1, size=size)
            search = solve_as_search(pairs, op.n, certify_top, spread)
        if certify_top is not None and search is None:
            unused = [start]  # the main solve starts where it would without the check

            def first_then_draw() -> Tensor:
                return unused.pop() if unused else draw()

            pairs, search, added = certified_solve(
                solve,
                op.matvec,
                first_then_draw,
                k=k,
                which=which,
                steps=search_steps,
                delta=certify_top,
            )
    return Spectrum(
        values=pairs.values,
        residuals=pairs.residuals,
        error_bounds=pairs.bounds,
        estimated_bounds=pairs.estimated,
        converged=pairs.converged,
        product_error=pairs.product_error,
        certificate=_certificate(search, added, tol_scale),
        tol_scale=tol_scale,
        n_hvp=op.n_hvp - used,
        n_restarts=pairs.n_restarts,
        k=k,
        which=which,
        tol=tol,
        max_iter=max_iter,
        basis_size=basis_size,
        seed=seed,
        problem=op.info,
        search=search,
        added=added,
        vectors=None if pairs.vectors is None or not return_vectors else pairs.vectors.cpu(),
    )


__all__ = ["HessianOperator", "ProblemInfo", "Spectrum", "top_eigenvalues"]
