"""Curvature during training: the tracker ``okdph train --set track.every=N`` calls.

okdph finds :class:`CurvatureTracker` through its ``okdph.trackers`` entry point and hands it, at
every tracking point, each member rebuilt as a plain network. For every member the tracker
measures, on the run's fixed training subset in batches of the training batch size:

* the top eigenvalue of the Hessian of the mean cross-entropy (``bn="train"``: BatchNorm with each
  batch's statistics, the training objective's; ``"eval"``: running statistics; dropout off
  either way), by Lanczos to relative accuracy ``tol``, with its certified error bound
  (Krylov-Weinstein: an eigenvalue lies within the bound of the returned value) and whether it
  converged within ``max_iter`` products;
* the start vector is the member's previous eigenvector plus ``mix`` times a fresh random unit
  vector, normalised: a pure warm start could stay on a direction that is no longer the top one,
  the random part keeps every direction in the Krylov space;
* optionally (``trace``) the Hutch++ trace to relative standard error ``trace_rtol``.

Everything is seeded from the run seed, the point and the member; the global generators are
never drawn from (okdph forks them around the call anyway).
"""

from __future__ import annotations

import zlib
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from landscape.curvature.eigenvalues import top_eigenvalues
from landscape.curvature.products import HessianOperator, gaussian, seeded_generator
from landscape.curvature.trace import hessian_trace

DEFINITION = (
    "track/1: top eigenvalue of the Hessian of the mean cross-entropy on a fixed seeded training "
    "subset (batches of the training batch size), Lanczos warm-started from the previous "
    "eigenvector plus a random component, certified Krylov-Weinstein bound; optional Hutch++ trace"
)


class CurvatureTracker:
    """Top Hessian eigenvalue (and trace) of each member at each tracking point.

    Args:
        batches: the fixed training subset as ``(inputs, targets)`` batches (normalised,
            un-augmented; the training batch size, for BatchNorm's statistics). Under
            torch.distributed each rank passes its shard of every batch and products are summed.
        config: okdph's ``TrackConfig`` (``bn``, ``tol``, ``max_iter``, ``mix``, ``trace``,
            ``trace_rtol``).
        seed: the run seed.
    """

    def __init__(self, batches: list[tuple[Tensor, Tensor]], config: Any, seed: int) -> None:
        self.batches = list(batches)
        self.config = config
        self.seed = seed
        self.vectors: dict[str, Tensor] = {}

    def _seed(self, point: int, member: str) -> int:
        return zlib.crc32(f"{self.seed}/{point}/{member}".encode())

    def start_vector(self, member: str, op: HessianOperator, seed: int) -> Tensor | None:
        """The warm start of ``member``: previous eigenvector + ``mix`` x a random unit vector
        (``None``, a fresh start, at the first point)."""
        previous = self.vectors.get(member)
        if previous is None or previous.numel() != op.n:
            return None
        noise = gaussian((op.n,), seeded_generator(seed + 1), op.dtype, op.device)
        previous = previous.to(device=op.device, dtype=op.dtype)
        v = previous / previous.norm() + self.config.mix * noise / noise.norm()
        return v / v.norm()

    def measure(self, members: dict[str, nn.Module], point: int) -> dict[str, dict[str, float]]:
        """``{member: {lambda_max, lambda_max_bound, converged, hvp[, trace, trace_stderr]}}``."""
        cfg = self.config
        out: dict[str, dict[str, float]] = {}
        for name, net in members.items():
            seed = self._seed(point, name)
            op = HessianOperator(
                net,
                F.cross_entropy,
                self.batches,
                batchnorm="batch" if cfg.bn == "train" else "running",
                method="reverse",
            )
            spectrum = top_eigenvalues(
                op,
                k=1,
                tol=cfg.tol,
                max_iter=cfg.max_iter,
                seed=seed,
                start=self.start_vector(name, op, seed),
                return_vectors=True,
                show_progress=False,
            )
            assert spectrum.vectors is not None
            self.vectors[name] = spectrum.vectors[0].clone()
            values = {
                "lambda_max": float(spectrum.values[0]),
                "lambda_max_bound": float(spectrum.error_bounds[0]),
                "converged": float(bool(spectrum.converged[0])),
                "hvp": float(spectrum.n_hvp),
            }
            if cfg.trace:
                trace = hessian_trace(op, rtol=cfg.trace_rtol, seed=seed + 2, show_progress=False)
                values.update(trace=float(trace.value), trace_stderr=float(trace.stderr))
                values["hvp"] += float(trace.n_hvp)
            out[name] = values
        return out

    def state_dict(self) -> dict[str, Tensor]:
        """The members' last eigenvectors (the warm starts), for a resumed run."""
        return dict(self.vectors)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.vectors = {k: v.clone() for k, v in state.items()}

    def describe(self) -> dict[str, Any]:
        """Settings and definition, for run.json."""
        cfg = self.config
        return {
            "definition": DEFINITION,
            "samples": sum(len(y) for _, y in self.batches),
            "batch_size": len(self.batches[0][1]),  # this rank's part under torch.distributed
            "loss": "mean cross-entropy, "
            + ("BatchNorm batch statistics (train mode)" if cfg.bn == "train" else "eval mode")
            + ", dropout off",
            "tol": cfg.tol,
            "max_iter": cfg.max_iter,
            "mix": cfg.mix,
            "trace": bool(cfg.trace),
        }


__all__ = ["CurvatureTracker", "DEFINITION"]
