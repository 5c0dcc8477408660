"""Where to compute: CUDA when available, else the CPU, or what the caller forces."""

from __future__ import annotations

import torch

from landscape.core.errors import LandscapeError


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device to compute on: ``device`` if given, else CUDA when available, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LandscapeError(f"device {str(device)!r} was requested but CUDA is not available")
    return dev
