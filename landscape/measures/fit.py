"""``fit``: how well a member fits and generalises, the quantity flatness is meant to predict."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape.core import definitions
from landscape.geometry.evaluate import evaluate
from landscape.measures.base import Batches, Field, Measure, MeasureContext, Target
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
        Field("test_accuracy"),
        Field("gap_loss", compare=True, invariant=True),
        Field("gap_accuracy", compare=True, invariant=True, strip=True),
        Field("weight_norm", compare=True, contrast=False),
        Field("margin_p10"),
        Field("inverse_margin", compare=True, log=True, invariant=False, contrast=False),
        Field("mean_confidence", compare=True, invariant=True, contrast=False),
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
        squares = torch.zeros((), dtype=torch.float64)
        for p in model.parameters():
            squares = squares + (p.detach().double() ** 2).sum()
        out["weight_norm"] = float(torch.sqrt(squares))
        out.update(margins(model, ctx.full_split("train")))
        out["bn"] = bn_label(ctx, member, model)
        return out

    def summarise(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "train_acc": record["train"]["accuracy"],
            "full_train_loss": record["train"]["loss"],
            "test_loss": record["test"]["loss"],
            "test_accuracy": record["test"]["accuracy"],
            "gap_loss": record["gap_loss"],
            "gap_accuracy": record["gap_accuracy"],
            "weight_norm": record["weight_norm"],
            # fit/1 records (stored before margins were measured) lack these.
            **{
                k: record[k]
                for k in ("margin_p10", "inverse_margin", "mean_confidence")
                if k in record
            },
        }


def margins(model: nn.Module, batches: Batches) -> dict[str, Any]:
    """On ``batches``: the 10th percentile of the margin (the correct class's logit minus the
    largest other logit), ``1 / margin^2`` (Jiang et al. 2020's inverse-margin baseline; ``None``
    when the percentile is not positive) and the mean largest softmax probability."""
    gaps, confidence = [], []
    with torch.no_grad():
        for x, y in batches:
            logits = model(x).double()
            correct = logits.gather(1, y[:, None]).squeeze(1)
            others = logits.scatter(1, y[:, None], float("-inf")).max(dim=1).values
            gaps.append((correct - others).cpu())
            confidence.append(torch.softmax(logits, dim=1).max(dim=1).values.cpu())
    margin = float(torch.quantile(torch.cat(gaps), 0.1))
    return {
        "margin_p10": margin,
        "inverse_margin": 1 / margin**2 if margin > 0 else None,
        "mean_confidence": float(torch.cat(confidence).mean()),
    }
