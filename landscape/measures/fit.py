"""``fit``: how well a member fits and generalises, the quantity flatness is meant to predict."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from landscape.core import definitions
from landscape.geometry.evaluate import evaluate
from landscape.measures.base import Field, Measure, MeasureContext, Target
from landscape.measures.common import bn_label


class Fit(Measure):
    """Loss and accuracy on the whole un-augmented train split and the test split in eval mode,
    the generalisation gaps, and the weight norm (a scale for the other measures)."""

    name = "fit"
    definition = definitions.definition("fit")
    fields = (
        Field("train_acc", compare=True, invariant=True, contrast=False),
        Field("full_train_loss", compare=True, invariant=True, contrast=False),
        Field("test_loss"),
        Field("gap_loss", compare=True, invariant=True),
        Field("gap_accuracy", compare=True, invariant=True, strip=True),
        Field("weight_norm", compare=True, contrast=False),
    )

    def compute(
        self, ctx: MeasureContext, target: Target, settings: Any, workdir: Path | None
    ) -> dict[str, Any]:
        member = target.key.member
        model = ctx.model(target.epoch, member)
        out: dict[str, Any] = {"definition": self.definition}
        for split in ("train", "test"):
            result = evaluate(model, None, ctx.full_split(split), device=ctx.device)
            out[split] = {"loss": result.loss, "accuracy": result.accuracy, "n": result.n_samples}
        out["gap_loss"] = out["test"]["loss"] - out["train"]["loss"]
        out["gap_accuracy"] = out["train"]["accuracy"] - out["test"]["accuracy"]
        params = [p.detach().double() for p in model.parameters()]
        out["weight_norm"] = float(torch.sqrt(sum((p**2).sum() for p in params)))
        out["bn"] = bn_label(ctx, member, model)
        return out

    def summarise(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "train_acc": record["train"]["accuracy"],
            "full_train_loss": record["train"]["loss"],
            "test_loss": record["test"]["loss"],
            "gap_loss": record["gap_loss"],
            "gap_accuracy": record["gap_accuracy"],
            "weight_norm": record["weight_norm"],
        }
