"""``interp``: loss and accuracy on the straight line between two members, and its barrier."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from landscape.core import definitions
from landscape.geometry.alignment import permutation_spec, weight_matching
from landscape.geometry.interpolate import interpolate
from landscape.measures.base import (
    Field,
    Figures,
    Measure,
    MeasureContext,
    PieceKey,
    Scope,
    Section,
    Target,
    is_number,
    require,
    tag,
)
from landscape.report import figures

ALIGN = ("none", "weights")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class AlignSettings:
    """Whether members are aligned by weight matching first (``interp`` and ``plane``)."""

    align: str = field(
        default="none",
        metadata={
            "help": "none, or weights: permute the end's hidden units to the start's first "
            "(Git Re-Basin weight matching); the unaligned barriers are kept beside",
            "added": True,
        },
    )

    def validate(self) -> None:
        require(
            self.align in ALIGN, f"--align must be one of {', '.join(ALIGN)}, not {self.align!r}"
        )


@dataclass(frozen=True)
class InterpolationSettings(AlignSettings):
    alphas: int = field(
        default=31, metadata={"help": "points on [-0.25, 1.25] of each interpolation curve"}
    )

    def validate(self) -> None:
        super().validate()
        require(self.alphas >= 3, f"--alphas must be at least 3, not {self.alphas}")


def aligned_states(
    ctx: MeasureContext, epoch: int, members: tuple[str, ...], seed: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The members' weights with every one after the first permuted to match the first
    (weight matching), and what the alignments did."""
    template = ctx.template(members[0])
    spec = permutation_spec(template, ctx.data("train")[0][0][:8])
    first = ctx.state(epoch, members[0])
    states, notes = [first], {}
    for m in members[1:]:
        result = weight_matching(spec, first, ctx.state(epoch, m), seed=seed)
        states.append(result.state)
        notes[m] = result.to_dict()
    return states, notes


class Interpolation(Measure):
    """Curves between every pair of students and from each student to the hybrid, on the
    training subset and a test subset, every point (ends included) under the BatchNorm policy;
    the chord barrier of the loss and of the error."""

    name = "interp"
    scope = Scope.PAIR
    settings = InterpolationSettings
    uses = ("test_samples",)
    definition = definitions.definition("interp")
    summary_group = "curves"
    fields = (
        Field("barrier_students", compare=True, invariant=True, correlate=True, strip=True),
        Field("barrier_hybrid", compare=True, invariant=True, contrast=False),
        # With --align weights, barrier_* are after weight matching; these are before it.
        Field("unaligned_barrier_students", compare=True, invariant=True, contrast=False),
    )
    section = Section(
        "interp",
        "Interpolation at epoch {epoch}",
        "Loss and accuracy on straight lines between members; the barrier is the "
        "largest rise of the loss above the chord between its two ends, "
        "max over alpha of L(alpha) - ((1 - alpha) L(0) + alpha L(1)).",
    )

    def compute(
        self, ctx: MeasureContext, target: Target, settings: Any, workdir: Path | None
    ) -> dict[str, Any]:
        epoch, (start, end) = target.epoch, target.members
        alphas = np.linspace(-0.25, 1.25, settings.alphas)
        record: dict[str, Any] = {
            "label": f"{start} \u2192 {end}",
            "start": start,
            "end": end,
            "alphas": None,
            "barrier": {},
            "error_barrier": {},
            "detail": {},
        }
        end_state = ctx.state(epoch, end)
        if settings.align == "weights":
            (_, end_state), notes = aligned_states(ctx, epoch, (start, end), ctx.settings.seed)
            record["alignment"] = notes[end]
            unaligned = [
                self._curve(ctx, epoch, start, ctx.state(epoch, end), s, alphas) for s in SPLITS
            ]
            record["unaligned"] = {
                "barrier": {s: c.barrier for s, c in zip(SPLITS, unaligned, strict=True)},
                "error_barrier": {
                    s: c.error_barrier for s, c in zip(SPLITS, unaligned, strict=True)
                },
            }
        for split in SPLITS:
            curve = self._curve(ctx, epoch, start, end_state, split, alphas)
            record["alphas"] = curve.alphas.tolist()
            record[split] = {"loss": curve.loss.tolist(), "accuracy": curve.accuracy.tolist()}
            record["barrier"][split] = curve.barrier
            record["error_barrier"][split] = curve.error_barrier
            detail = curve.to_dict()
            for big in ("alphas", "loss", "accuracy", "nonfinite"):
                detail.pop(big, None)
            record["detail"][split] = detail
        return record

    @staticmethod
    def _curve(
        ctx: MeasureContext, epoch: int, start: str, end_state: Any, split: str, alphas: np.ndarray
    ) -> Any:
        """The line from ``start`` to ``end_state`` on the ``split`` subset, every point (ends
        included) under the BatchNorm policy, calibrated on the training subset."""
        return interpolate(
            ctx.template(start),
            ctx.state(epoch, start),
            end_state,
            ctx.data(split),
            alphas=alphas,
            bn=ctx.settings.bn,
            bn_data=ctx.data("train"),
            bn_endpoints="policy",
            device=ctx.device,
            show_progress=ctx.show,
        )

    def summarise(self, record: Mapping[str, Any]) -> dict[str, Any]:
        out = {
            "start": record["start"],
            "end": record["end"],
            "barrier_train": record["barrier"]["train"],
            "barrier_test": record["barrier"]["test"],
            "error_barrier_train": record["error_barrier"]["train"],
            "error_barrier_test": record["error_barrier"]["test"],
            "definition": record["detail"]["train"]["definition"],
        }
        if "unaligned" in record:  # barrier_* are then those after weight matching
            out["aligned"] = True
            for kind in ("barrier", "error_barrier"):
                for split in ("train", "test"):
                    out[f"unaligned_{kind}_{split}"] = record["unaligned"][kind][split]
        return out

    def run_values(
        self, entries: Mapping[PieceKey, Mapping[str, Any]], kinds: Mapping[str, str]
    ) -> dict[str, dict[str, float]]:
        """Per trained member, the mean training-loss barrier of its curves to the other
        students (``barrier_students``) and to the hybrid (``barrier_hybrid``); curves between
        a student and its own average (SWA, EMA) count as neither."""
        found: dict[str, dict[str, list[float]]] = {}
        for key, entry in entries.items():
            pair_kinds = [kinds.get(m) for m in key.members]
            if "average" in pair_kinds:
                continue
            name = "barrier_hybrid" if "hybrid" in pair_kinds else "barrier_students"
            values = {name: entry.get("barrier_train")}
            if name == "barrier_students":
                values["unaligned_barrier_students"] = entry.get("unaligned_barrier_train")
            for field_name, value in values.items():
                if not is_number(value):  # null in summary.json: the curve diverged
                    continue
                for member in key.members:
                    if kinds.get(member) in ("students", "pruned"):
                        found.setdefault(member, {}).setdefault(field_name, []).append(value)
        return {
            m: {name: float(np.mean(v)) for name, v in by_name.items()}
            for m, by_name in found.items()
        }

    def figures(self, records: Mapping[PieceKey, Mapping[str, Any]], epoch: int | None) -> Figures:
        return [(f"interp_{tag(epoch)}", figures.curves_figure(list(records.values())))]
