"""Versioned definitions of the stored measures.

Every result records the definition its numbers follow (its ``definition`` attribute), and
``landscape analyze`` hashes the definition into each piece's fingerprint, so a result computed
under an older definition is recomputed instead of being compared with newer ones. Bump the
version whenever a change alters what a number means (not merely how fast it is computed).
"""

from __future__ import annotations

DEFINITIONS: dict[str, str] = {
    "eigen": (
        "eigen/5: Ritz values of thick-restart Lanczos on the dataset-loss Hessian; converged "
        "when the residual is below tol * s + the measured product error (Krylov-Weinstein), "
        "s = |value| (tol_scale value) or the largest Ritz magnitude (tol_scale spectrum); with "
        "certify_top, searches orthogonal to the returned vectors merge what they find, and for "
        "k = 1 the solve's own unrestarted Krylov space from a random start is the search "
        "(Kuczynski-Wozniakowski, delta spread geometrically over the steps it may stop at, from the "
        "first step whose bound matches a search_steps search)"
    ),
    "trace": (
        "trace/2: adaptive Hutch++ (Rademacher probes); the final stage's pilot plans the probe "
        "count, fresh probes give the estimate and a Student-t interval"
    ),
    "density": "density/1: stochastic Lanczos quadrature, Gaussian broadening",
    "sharpness": (
        "sharpness/2: loss increase in a (|w|-scaled) ball, BatchNorm statistics fixed at the "
        "centre; worst case by Auto-PGD (m-sharpness: mean over groups of m samples), average "
        "case over antithetic Gaussian pairs to a relative standard error"
    ),
    "interp": (
        "barrier/2: chord barrier max over alpha in [0, 1] of "
        "f(alpha) - ((1 - alpha) f(0) + alpha f(1)), for the loss and the error (1 - accuracy)"
    ),
    "fit": (
        "fit/2: loss and accuracy on the whole un-augmented train split and the test split, "
        "eval mode; gaps test - train loss and train - test accuracy; L2 norm of the parameters; "
        "on the train split the 10th percentile of the margin (correct logit minus the largest "
        "other), its inverse square 1/margin^2 (Jiang et al. 2020; null when not positive), and "
        "the mean confidence (largest softmax probability)"
    ),
    "layers": (
        "layers/1: per parameter group (module path to a depth), the top Ritz value and the "
        "Hutch++ trace of the Hessian's diagonal block"
    ),
    "surface": "surface/1: loss and accuracy at centre + sum_k x_k d_k",
}
# Planes through members and PCA trajectories are surfaces.
DEFINITIONS["plane"] = DEFINITIONS["trajectory"] = DEFINITIONS["surface"]


def definition(measure: str) -> str:
    """The current definition of ``measure`` (an analysis name of ``landscape analyze``)."""
    return DEFINITIONS[measure]
