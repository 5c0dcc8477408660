"""Which parameters an analysis sees: ``named_parameters`` names filtered by glob patterns."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from torch import Tensor, nn

from landscape.core.errors import LandscapeError


def _as_patterns(patterns: str | Sequence[str] | None) -> list[str] | None:
    if patterns is None:
        return None
    if isinstance(patterns, str):
        return [p for p in patterns.split(",") if p]
    return list(patterns)


def select_parameters(
    model: nn.Module,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> dict[str, Tensor]:
    """Trainable parameters of ``model`` by name, filtered with shell-style glob patterns.

    Args:
        model: the network.
        include: keep names matching any of these patterns (a comma-separated string or a list);
            ``None`` keeps every trainable parameter.
        exclude: then drop names matching any of these patterns.

    Returns:
        An ordered ``name -> parameter`` dict (the parameters themselves, not copies).

    Raises:
        LandscapeError: when the filter leaves no parameter.
    """
    inc, exc = _as_patterns(include), _as_patterns(exclude)
    selected: dict[str, Tensor] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if inc is not None and not any(fnmatch.fnmatch(name, pat) for pat in inc):
            continue
        if exc is not None and any(fnmatch.fnmatch(name, pat) for pat in exc):
            continue
        selected[name] = p
    if not selected:
        raise LandscapeError(
            f"no trainable parameter matches include={include!r} exclude={exclude!r}"
        )
    return selected
