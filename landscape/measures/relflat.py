"""``relflat``: relative flatness of the classifier layer (Petzka et al., NeurIPS 2021).

For the layer whose output is the logits, weights ``W`` with rows ``w_s`` (one per class, bias
excluded) and input ``phi(x)``, and the Hessian ``H`` of the mean cross-entropy with respect to
``W``, relative flatness is

    kappa = sum_{s, s'} <w_s, w_s'> Tr(H_{s s'}),

the Hessian blocks' traces weighted by the rows' inner products. For softmax cross-entropy,
``H_{s s'} = mean_x (p_s delta_{s s'} - p_s p_{s'}) phi phi^T``, so

    kappa = mean_x ||phi(x)||^2 (sum_s p_s ||w_s||^2 - ||sum_s p_s w_s||^2)

(``p`` the softmax): one forward pass, exact. Scaling the layer's input by ``c`` and ``W`` by
``1/c`` leaves it unchanged (the reparametrisation that moves ``lambda_max`` and the trace).
Reference code: kampmichael/RelativeFlatnessAndGeneralization.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from landscape.core.errors import LandscapeError
from landscape.measures.base import Field, Measure, MeasureContext, Target
from landscape.measures.common import bn_label
from landscape.measures.eigen import CURVATURE

DEFINITION = (
    "relflat/1: relative flatness (Petzka et al. 2021) of the output layer, bias excluded: "
    "sum_{s,s'} <w_s, w_s'> Tr(H_ss') of the mean cross-entropy on the training subset, by its "
    "closed form mean_x ||phi||^2 (sum_s p_s ||w_s||^2 - ||sum_s p_s w_s||^2)"
)


@dataclass(frozen=True)
class RelativeFlatnessSettings:
    relflat_layer: str = field(
        default="",
        metadata={"help": "module name of the output layer (empty: the last nn.Linear)"},
    )

    def validate(self) -> None:
        return None


def output_layer(model: nn.Module, x: Tensor, name: str = "") -> tuple[str, nn.Linear]:
    """The ``nn.Linear`` of ``model`` whose output is the model's output on ``x`` (or the layer
    called ``name``, checked to be that one)."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if name:
        linears = [(n, m) for n, m in linears if n == name]
        if not linears:
            raise LandscapeError(f"--relflat-layer {name!r} is not an nn.Linear of the model")
    outputs: dict[str, Tensor] = {}
    handles = [
        m.register_forward_hook(lambda _m, _i, out, n=n: outputs.__setitem__(n, out))
        for n, m in linears
    ]
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
    for n, m in reversed(linears):
        if n in outputs and outputs[n].shape == logits.shape and torch.equal(outputs[n], logits):
            return n, m
    which = f"layer {name!r}" if name else "no nn.Linear of the model"
    raise LandscapeError(
        f"{which} does not produce the model's output; relative flatness is defined for the "
        "output layer (--relflat-layer names it)"
    )


def relative_flatness(
    model: nn.Module, data: list[tuple[Tensor, Tensor]], layer: str = ""
) -> tuple[float, str]:
    """Relative flatness of ``model``'s output layer on ``data`` (sample-weighted mean over the
    batches), in float64; returns ``(kappa, layer name)``.

    Raises:
        LandscapeError: no ``nn.Linear`` (or not the one named by ``layer``) produces the
            model's output, which the closed form needs.
    """
    name, linear = output_layer(model, data[0][0], layer)
    seen: dict[str, Tensor] = {}

    def keep(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        seen["phi"] = inputs[0]

    w = linear.weight.detach().double()
    row_norms = (w * w).sum(dim=1)
    total, n = torch.zeros((), dtype=torch.float64), 0
    handle = linear.register_forward_hook(keep)
    try:
        with torch.no_grad():
            for x, _ in data:
                logits = model(x)
                phi = seen["phi"].detach().double().reshape(len(x), -1)
                p = torch.softmax(logits.double(), dim=1)
                spread = p @ row_norms - ((p @ w) ** 2).sum(dim=1)
                total += ((phi * phi).sum(dim=1) * spread).sum().cpu()
                n += len(x)
    finally:
        handle.remove()
    return float(total / n), name


class RelativeFlatness(Measure):
    """Relative flatness of the output layer, exact by its closed form."""

    name = "relflat"
    settings = RelativeFlatnessSettings
    definition = DEFINITION
    fields = (
        Field(
            "relative_flatness",
            "relative flatness",
            compare=True,
            log=True,
            invariant=True,
            correlate=True,
            strip=True,
        ),
    )
    section = CURVATURE

    def compute(
        self, ctx: MeasureContext, target: Target, settings: Any, workdir: Path | None
    ) -> dict[str, Any]:
        member = target.key.member
        model = ctx.model(target.epoch, member)
        kappa, layer = relative_flatness(model, ctx.data("train"), settings.relflat_layer)
        n = sum(len(y) for _, y in ctx.data("train"))
        return {
            "definition": self.definition,
            "value": kappa,
            "layer": layer,
            "n_samples": n,
            "bn": bn_label(ctx, member, model),
        }

    def summarise(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return {"relative_flatness": record["value"]}
