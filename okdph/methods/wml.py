"""WML: weighted mutual learning with diversity-driven model compression (Zhang et al., NeurIPS 2022).

``num_students`` = M peers (``peer_0`` ... ``peer_{M-1}``) that share a trunk and branch into heads
pruned to different widths (structured channel pruning), so the peers differ in size. Peer i
minimises

    L_i = (1 - a) CE(z_i, y) + a sum_{j != i} w_j T^2 KL(softmax(z_j / T) || softmax(z_i / T)),

with importance weights w on the simplex. The weights are learned bi-level: the outer objective is
the cross-entropy of the weighted ensemble, L_ens = CE(sum_i w_i z_i, y), the inner one the peers'
losses L_in = sum_i L_i. Unrolling one SGD step theta' = theta - eta grad_theta L_in(theta, w) gives
the closed-form hypergradient

    g_j = dL_ens/dw_j (theta') - eta < grad_theta L_ens (theta') , grad_theta D_j (theta) >,
    D_j = dL_in/dw_j = a sum_{i != j} T^2 KL(p_j || p_i)

(L_in is linear in w, so theta' depends on w_j only through -eta grad D_j and the formula is the
exact derivative of L_ens(theta'(w), w)), and w is updated by mirror descent (exponentiated
gradient) on the simplex: w_j <- w_j exp(-lr_w g_j) / sum_k w_k exp(-lr_w g_k).

The step theta -> theta' is the trainer's real optimiser step on this batch: grad D_j is taken in
``compute_loss`` (before the step), L_ens and its gradients in ``after_step`` from a second forward
pass on the same batch (train-mode BatchNorm, running statistics restored). For plain SGD or
heavy-ball momentum and weight decay, d theta'/d w_j is exactly -lr grad D_j, so g is exact for the
update the networks really make (with Nesterov momentum it is off by the factor 1 + momentum).

The paper's full text and code were not available (methods.md section 3); what it leaves open is
chosen as follows, each a config switch (defaults in brackets):

* Tree: a single level, one shared trunk and one head per peer [``branches=true``]; with false
  every peer is a whole network (with its pruned head) and sees its own view. Deeper trees are not
  implemented.
* Head widths [``head_widths=()``: evenly spaced keep fractions from 1.0 down to ``min_width``
  = 0.5, e.g. 1.0, 0.75, 0.5 for three peers]. The widest peer is the dense architecture.
* Pruning: heads are *built* at their widths rather than pruned from a trained dense head (no
  pre-trained model exists in online distillation, and the L1 norms of freshly initialised filters
  carry no information). With the trainer's ``init=shared`` every peer starts as the leading-channel
  slice of one dense initialisation; with ``init=independent`` [default] each head is drawn afresh.
* Loss: a = ``alpha`` [0.5], T = ``temperature`` [3], peer targets detached
  [``detach_targets=true``], weights not renormalised over j != i (the formula above).
* Weights: start uniform; updated on the training batch itself (no held-out split) every
  ``weight_every`` [1] batches, with step ``weight_lr`` [0.01]; eta = the optimiser's current
  learning rate unless ``inner_lr`` is set; ``hypergrad="exact"`` costs M + 1 extra backward
  passes and one extra forward pass per update, ``"first_order"`` keeps dL_ens/dw at theta only
  (no extra pass).
* grad_theta covers every network parameter (shared trunk and heads).
* Logged ``weight/peer_i`` are the weights this batch's loss used; ``hypergrad/peer_i`` is the
  latest hypergradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from okdph.config import ConfigError
from okdph.methods.base import Method, StepContext, kd_loss, register_method
from okdph.models.branches import (
    cached_trunk_forwards,
    copy_leading_channels,
    member_outputs,
    supports_branches,
    supports_pruning,
    tie_trunks,
)


def mirror_descent_step(weights: Tensor, grad: Tensor, lr: float) -> Tensor:
    """Exponentiated-gradient step on the simplex: w * exp(-lr g), normalised (in log space)."""
    return torch.softmax(weights.log() - lr * grad, dim=0)


def pairwise_kd(logits: Sequence[Tensor], temperature: float, detach: bool) -> list[list[Tensor]]:
    """kd[i][j] = T^2 KL(softmax(z_j/T) || softmax(z_i/T)) for i != j (diagonal: zero)."""
    zero = logits[0].new_zeros(())
    return [
        [
            zero
            if i == j
            else kd_loss(z_i, logits[j].detach() if detach else logits[j], temperature)
            for j in range(len(logits))
        ]
        for i, z_i in enumerate(logits)
    ]


def ensemble_gradients(
    weights: Tensor, logits: Sequence[Tensor], y: Tensor, params: Sequence[Tensor] = ()
) -> tuple[Tensor, tuple[Tensor | None, ...]]:
    """Gradients of L_ens = CE(sum_i w_i z_i, y) w.r.t. the weights and (optionally) ``params``;
    the graph is kept for later backward passes."""
    w = weights.detach().clone().requires_grad_(True)
    # sum() of the members' logits is a tensor, never its int start
    ensemble = cast(Tensor, sum(w[i] * z for i, z in enumerate(logits)))
    outer = F.cross_entropy(ensemble, y)
    grads = torch.autograd.grad(outer, [w, *params], retain_graph=True, allow_unused=True)
    return grads[0], tuple(grads[1:])


def derivative_gradients(
    derivatives: Sequence[Tensor], params: Sequence[Tensor]
) -> list[tuple[Tensor | None, ...]]:
    """grad_theta D_j for every j (one backward pass each; the graph is kept)."""
    return [
        torch.autograd.grad(d, params, retain_graph=True, allow_unused=True) for d in derivatives
    ]


def hypergradient(
    d_weights: Tensor,
    outer_grads: Sequence[Tensor | None],
    derivative_grads: Sequence[Sequence[Tensor | None]],
    inner_lr: float,
) -> Tensor:
    """g_j = dL_ens/dw_j - inner_lr * <grad_theta L_ens, grad_theta D_j>.

    With ``d_weights`` and ``outer_grads`` taken after the step theta' = theta - inner_lr *
    grad L_in(theta, w) and ``derivative_grads`` before it, this is the exact derivative of
    L_ens(theta'(w), w) (theta' depends on w_j only through -inner_lr grad D_j, L_in being linear
    in w).
    """
    products = [
        sum((a * b).sum() for a, b in zip(outer_grads, g_j) if a is not None and b is not None)
        + d_weights.new_zeros(())
        for g_j in derivative_grads
    ]
    return d_weights - inner_lr * torch.stack(products).to(d_weights.dtype)


def _global(grads: Sequence[Tensor | None], ctx: StepContext) -> tuple[Tensor | None, ...]:
    """Shard batch-mean gradients as the global batch's (the identity in one process)."""
    return tuple(None if g is None else ctx.global_mean(g) for g in grads)


def keep_fractions(num: int, head_widths: Sequence[float], min_width: float) -> list[float]:
    """Per-peer keep fractions: ``head_widths`` if given, else evenly from 1.0 to ``min_width``."""
    if head_widths:
        if len(head_widths) != num:
            raise ConfigError(f"method.head_widths lists {len(head_widths)} widths for {num} peers")
        return [float(k) for k in head_widths]
    return [float(k) for k in np.linspace(1.0, min_width, num)] if num > 1 else [1.0]


@register_method
class WML(Method):
    name = "wml"
    default_init = "independent"
    # Buffers registered in __init__ (declared for the type checker).
    peer_weights: Tensor
    last_hypergrad: Tensor
    loss_terms = {
        "peer_i/ce": "CE(z_i, y)",
        "peer_i/kd": "sum_{j != i} w_j T^2 KL(softmax(z_j/T) || softmax(z_i/T)), z_j detached "
        "when detach_targets",
        "peer_i/loss": "(1 - alpha) ce_i + alpha kd_i",
        "ensemble/ce": "CE(sum_i w_i z_i, y) (the outer objective; no gradient to the networks)",
        "weight/peer_i": "w_i used in this batch's losses",
        "hypergrad/peer_i": "g_i = dL_ens/dw_i - eta <grad L_ens, grad dL_in/dw_i> (latest update)",
        "loss": "sum_i peer_i/loss",
    }

    @dataclass
    class Config:
        branches: bool = True
        head_widths: tuple[float, ...] = ()
        min_width: float = 0.5
        alpha: float = 0.5
        temperature: float = 3.0
        detach_targets: bool = True
        weight_lr: float = 0.01
        hypergrad: str = field(default="exact", metadata={"choices": ("exact", "first_order")})
        inner_lr: float | None = None  # None: the optimiser's current learning rate
        weight_every: int = 1

        def validate(self) -> None:
            if not 0.0 <= self.alpha <= 1.0:
                raise ConfigError(f"method.alpha must lie in [0, 1], got {self.alpha}")
            if self.temperature <= 0:
                raise ConfigError(f"method.temperature must be positive, got {self.temperature}")
            for keep in (*self.head_widths, self.min_width):
                if not 0.0 < keep <= 1.0:
                    raise ConfigError(f"head widths must lie in (0, 1], got {keep}")
            if self.weight_every < 1:
                raise ConfigError(
                    f"method.weight_every must be at least 1, got {self.weight_every}"
                )
            if self.weight_lr < 0:
                raise ConfigError(f"method.weight_lr must not be negative, got {self.weight_lr}")

    def __init__(self, config, make_model, num_students, init):
        if num_students < 2:
            raise ConfigError(
                f"wml needs num_students >= 2 (peers weighted against each other), got "
                f"{num_students}"
            )
        super().__init__(config, make_model, num_students, init)
        self.register_buffer("peer_weights", torch.full((num_students,), 1.0 / num_students))
        # Saved with the weights so a resumed run logs what an uninterrupted one would.
        self.register_buffer("last_hypergrad", torch.zeros(num_students))
        self._pending: tuple | None = None

    def build_members(self, make_model, num_students, init) -> dict[str, nn.Module]:
        if init not in ("shared", "independent"):
            raise ConfigError(f"unknown init {init!r}; use 'shared', 'independent' or 'auto'")
        self.member_kwargs: dict[str, dict[str, Any]] = {}
        keeps = keep_fractions(num_students, self.config.head_widths, self.config.min_width)
        dense = make_model()
        if not supports_pruning(dense) or (self.config.branches and not supports_branches(dense)):
            raise ConfigError(
                f"wml needs a model with a prunable head, such as resnet32 or cnn_digits; "
                f"{type(dense).__name__} has none"
            )
        nets = {}
        for i, keep in enumerate(keeps):
            kwargs = dense.head_width_kwargs(keep) if keep != 1.0 else {}
            net = dense if i == 0 and keep == 1.0 else make_model(**kwargs)
            if init == "shared" and net is not dense:
                copy_leading_channels(net, dense.state_dict())
            nets[f"peer_{i}"] = net
            self.member_kwargs[f"peer_{i}"] = kwargs
        if self.config.branches:
            tie_trunks(list(nets.values()))
        return nets

    def member_arch(self, name: str, base_arch: dict[str, Any]) -> dict[str, Any]:
        return {**base_arch, "kwargs": {**base_arch["kwargs"], **self.member_kwargs.get(name, {})}}

    @property
    def num_views(self) -> int:
        return 1 if self.config.branches else self.num_students

    def view_names(self) -> list[str]:
        return ["all members"] if self.config.branches else list(self.nets)

    def compute_loss(
        self, views: list[Tensor], y: Tensor, ctx: StepContext
    ) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.config
        nets = list(self.nets.values())
        _, logits = member_outputs(nets, views, cfg.branches)
        w = self.peer_weights.clone()
        kd = pairwise_kd(logits, cfg.temperature, cfg.detach_targets)
        terms: dict[str, Tensor] = {}
        total: Tensor = 0.0  # type: ignore[assignment]  # a tensor once a member's loss is added
        for i, z in enumerate(logits):
            ce = F.cross_entropy(z, y)
            kd_i = sum(w[j] * kd[i][j] for j in range(len(logits)) if j != i)
            loss = (1 - cfg.alpha) * ce + cfg.alpha * kd_i
            # kd_i is 0 (an int) when there is a single member
            terms.update({f"peer_{i}/ce": ce, f"peer_{i}/kd": kd_i, f"peer_{i}/loss": loss})  # type: ignore[dict-item]
            total = total + loss
        self._pending = None
        if self.training and torch.is_grad_enabled() and ctx.step % cfg.weight_every == 0:
            self._prepare_update(views, y, logits, kd, ctx)
        with torch.no_grad():
            # sum() of the members' logits is a tensor, never its int start
            ensemble = cast(Tensor, sum(w[i] * z for i, z in enumerate(logits)))
            terms["ensemble/ce"] = F.cross_entropy(ensemble, y)
        for i in range(len(logits)):
            terms[f"weight/peer_{i}"] = w[i]
            terms[f"hypergrad/peer_{i}"] = self.last_hypergrad[i]
        terms["loss"] = total
        return total, terms

    def _params(self) -> list[Tensor]:
        return [p for p in self.parameters() if p.requires_grad]

    def _prepare_update(self, views, y, logits, kd, ctx: StepContext) -> None:
        cfg = self.config
        if cfg.hypergrad == "first_order":
            d_w, _ = ensemble_gradients(self.peer_weights, logits, y)
            self._step_weights(ctx.global_mean(d_w))
            return
        m = len(logits)
        derivatives = [cfg.alpha * sum(kd[i][j] for i in range(m) if i != j) for j in range(m)]
        grads = [_global(g_j, ctx) for g_j in derivative_gradients(derivatives, self._params())]
        eta = ctx.lr if cfg.inner_lr is None else cfg.inner_lr
        self._pending = (views, y, grads, eta)

    def after_step(self, ctx: StepContext) -> None:
        if self._pending is None:
            return
        views, y, derivative_grads, eta = self._pending
        self._pending = None
        # L_ens after the step, on the same batch; the extra forward must not count in BatchNorm's
        # running statistics.
        saved = [b.clone() for b in self.buffers()]
        with torch.enable_grad():
            _, logits = member_outputs(list(self.nets.values()), views, self.config.branches)
            d_w, outer = ensemble_gradients(self.peer_weights, logits, y, self._params())
        d_w, outer = ctx.global_mean(d_w), _global(outer, ctx)
        with torch.no_grad():
            for buffer, value in zip(self.buffers(), saved):
                buffer.copy_(value)
        self._step_weights(hypergradient(d_w, outer, derivative_grads, eta))

    def _step_weights(self, grad: Tensor) -> None:
        grad = grad.detach().to(self.peer_weights.dtype)
        with torch.no_grad():
            self.peer_weights.copy_(
                mirror_descent_step(self.peer_weights, grad, self.config.weight_lr)
            )
            self.last_hypergrad.copy_(grad)

    def eval_forwards(self) -> dict[str, Callable[[Tensor], Tensor]]:
        if self.config.branches:
            return cached_trunk_forwards(self.nets)
        return super().eval_forwards()

    def ensemble_weights(self) -> Tensor:
        # WML's ensemble is the weighted one its outer objective trains: sum_i w_i z_i.
        return self.peer_weights.detach()
