"""Test-set evaluation of every member and of the logit ensemble, and the precision/layout context
the loop shares with it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from okdph.methods import Method


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bfloat16 autocast on ``device`` when ``enabled`` (a no-op context otherwise)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def to_memory_format(x: Tensor, channels_last: bool) -> Tensor:
    """``x`` in channels-last layout when asked and it is an image batch, else unchanged."""
    if channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


@torch.no_grad()
def evaluate(
    method: Method,
    x: Tensor,
    y: Tensor,
    batch_size: int = 1024,
    amp: bool = False,
    channels_last: bool = False,
) -> dict[str, float]:
    """Test accuracy (fraction) and mean cross-entropy of every member and the logit ensemble."""
    was_training = method.training
    method.eval()
    forwards = method.eval_forwards()
    ensemble = method.ensemble_members()
    weights = method.ensemble_weights()
    # A weighted ensemble is the method's own; the plain mean is then reported beside it.
    extra = ["ensemble"] if weights is None else ["ensemble", "ensemble_mean"]
    loss = {name: 0.0 for name in [*forwards, *extra]}
    correct: dict[str, float] = dict.fromkeys(loss, 0)
    for start in range(0, len(y), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        xb = to_memory_format(xb, channels_last)
        with autocast(xb.device, amp):
            logits = {name: fn(xb) for name, fn in forwards.items()}
        stacked = torch.stack([logits[n] for n in ensemble])
        if weights is None:
            logits["ensemble"] = stacked.mean(0)
        else:
            w = weights.to(stacked).view(-1, *([1] * (stacked.dim() - 1)))
            logits["ensemble"] = (w * stacked).sum(0)
            logits["ensemble_mean"] = stacked.mean(0)
        for name, z in logits.items():
            loss[name] += F.cross_entropy(z.float(), yb, reduction="sum").item()
            correct[name] += (z.argmax(1) == yb).sum().item()
    method.train(was_training)
    n = len(y)
    out = {}
    for name in loss:
        out[f"{name}/test_acc"] = correct[name] / n
        out[f"{name}/test_loss"] = loss[name] / n
    return out


__all__ = ["autocast", "evaluate", "to_memory_format"]
