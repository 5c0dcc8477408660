"""Helpers shared by several measures: the Hessian's inputs and the BatchNorm label."""

from __future__ import annotations

from typing import Any

from torch import nn

from landscape.measures.base import Batches, MeasureContext, Target


def bn_label(ctx: MeasureContext, member: str, model: nn.Module) -> str:
    """Which BatchNorm statistics a member's result used: its own or recalibrated ones."""
    return "recalibrated" if ctx.needs_recalibration(member, model) else "own"


def hessian_inputs(
    ctx: MeasureContext, target: Target
) -> tuple[nn.Module, Batches, dict[str, Any]]:
    """The member's network, this rank's share of the training subset, and the keyword
    arguments every curvature engine takes (seed, device, progress)."""
    model = ctx.model(target.epoch, target.key.member)
    common = {"seed": ctx.settings.seed, "device": ctx.device, "show_progress": ctx.show}
    return model, ctx.data("train", shard=True), common
