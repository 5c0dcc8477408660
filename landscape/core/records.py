"""Results as plain data: frozen dataclasses whose ``to_dict()`` is ready for ``json.dumps``."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor


def to_plain(value: Any) -> Any:
    """Convert numpy arrays, tensors, dataclasses and containers into plain Python values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Tensor):
        return to_plain(value.detach().cpu().numpy())
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, torch.dtype | torch.device):
        return str(value)
    return value


def json_safe(value: Any) -> Any:
    """``to_plain`` with non-finite floats replaced by ``None`` (strict JSON has no NaN or inf)."""
    plain = to_plain(value)
    if isinstance(plain, float) and not math.isfinite(plain):
        return None
    if isinstance(plain, dict):
        return {k: json_safe(v) for k, v in plain.items()}
    if isinstance(plain, list):
        return [json_safe(v) for v in plain]
    return plain


class ResultMixin:
    """``to_dict()`` for frozen result dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain Python values (lists, floats, str), ready for ``json.dumps``."""
        return to_plain(self)
