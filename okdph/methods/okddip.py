"""OKDDip: online knowledge distillation with diverse peers (Chen et al., AAAI 2020).

``num_students`` = M networks in total: M - 1 auxiliary peers (``peer_0`` ...) and one group leader
(``leader``, the model to deploy). Per batch, with z_a the logits and h_a the pooled penultimate
features of peer a:

* attention: alpha_ab = softmax_b( (Q h_a) . (K h_b) ) over all peers b, a itself included (the
  leader is not attended), with bias-free projections Q, K: d -> d // factor shared by the peers;
* peer a's target is t_a = sum_b alpha_ab z_b, and kd_a = T^2 KL(softmax(t_a / T) + eps ||
  softmax(z_a / T)), where eps = 1e-7 is added to the teacher probabilities as in the official
  ``KL_Loss``;
* the leader's target is the mean peer logit, kd_L = T^2 KL(softmax(mean_a z_a / T) + eps || ...);
* loss = sum over all M networks of CE(z, y) + lambda(e) (sum_a kd_a + kd_L), with the ramp-up
  lambda(e) = alpha exp(-5 (1 - e / R)^2) for epochs e < R and alpha afterwards.

Choices, each a config switch:

* ``branches`` (default true, the paper's main setting): members share the trunk of the
  architecture (for CIFAR ResNets: stem, layer1, layer2) and see one input view; with false they
  are independent networks fed the same batch, as the official ``--MulStu`` variant does
  (``own_views=true`` gives each of them its own view instead).
* Peer targets t_a are not detached, as in the official code: kd_a trains the other peers and
  Q/K too (this is how the attention is learned).
* ``leader_target_grad`` (default true, as the official code): the leader's target, the peer
  mean, is left attached, so the leader's distillation loss also trains the peers. False detaches
  it, the paper's reading of the second level (peers -> leader only: the leader never feeds back
  into the peers or the attention). In the branch layout the leader's losses reach the shared
  trunk either way, which it shares with the peers by construction.
* ``rampup_epochs``: the official R = 80 of 300 epochs. Unset, R = 80/300 of the run's epochs, so
  a 30-epoch run ramps over 8 epochs; 0 disables the ramp.
* Query/key initialisation follows the official models. Its branch VGG
  (``models/model_cifar/vgg_GL.py``) builds ``query_weight``/``key_weight`` inside the model and
  its init loop draws every ``nn.Linear`` weight, Q and K included, from N(0, 0.01^2) (no bias:
  the projections have none); so with ``branches=true`` on a VGG (``CifarVGG``) Q and K are drawn
  from N(0, 0.01^2). Its branch ResNets (``resnet_GL.py``) and DenseNets (``densenet_GL.py``) only
  re-initialise convolutions and BatchNorm (DenseNet: Linear biases), and its ``--MulStu`` wrapper
  (``models/model_cifar/MultiNet.py``, every architecture, VGG included) creates Q and K after the
  students without an init loop: there, and so here for every other case, Q and K keep PyTorch's
  default ``nn.Linear`` init, U(-1/sqrt(d), 1/sqrt(d)).
* ``num_students = 2`` gives one peer and a leader (the setting OKDPH's ``04_OKDDip.py`` ran),
  where the attention is a 1x1 softmax and the method is two-network mutual distillation.

The official optimiser uses Nesterov momentum: the presets set ``optim.nesterov=true``.
Evaluation reports every member; the ``ensemble`` is the mean of the peers' logits (the official
"ensemble of peers"), the leader is the deployed model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from okdph.config import ConfigError
from okdph.methods.base import Method, StepContext, make_students, register_method
from okdph.models.branches import (
    cached_trunk_forwards,
    member_outputs,
    supports_branches,
    tie_trunks,
)
from okdph.models.cifar_vgg import CifarVGG

REFERENCE_RAMPUP = 80 / 300  # the official 80-epoch ramp of a 300-epoch run
VGG_QK_STD = 0.01  # official vgg_GL.py: nn.init.normal_(weight, 0, 0.01) on every nn.Linear


def official_qk_std(model: nn.Module, branches: bool) -> float | None:
    """Standard deviation of the official normal init of Q and K for members like ``model`` in
    this layout, or ``None`` where the official code keeps PyTorch's default ``nn.Linear`` init:
    N(0, 0.01^2) for the branch VGG (``models/model_cifar/vgg_GL.py``), default otherwise
    (``resnet_GL.py``, ``densenet_GL.py`` and the ``--MulStu`` ``MultiNet.py``)."""
    return VGG_QK_STD if branches and isinstance(model, CifarVGG) else None


def attention_weights(queries: Tensor, keys: Tensor) -> Tensor:
    """alpha[n, a, b] = softmax over b of queries[n, a] . keys[n, b]; inputs (batch, peers, dim)."""
    return torch.softmax(queries @ keys.transpose(1, 2), dim=-1)


def aggregate(attention: Tensor, logits: Tensor) -> Tensor:
    """Targets t[n, a] = sum_b attention[n, a, b] * logits[n, b]; logits (batch, peers, classes)."""
    return attention @ logits


def ramp_weight(epoch: int, rampup: float, alpha: float) -> float:
    """lambda(e) = alpha * exp(-5 (1 - e / rampup)^2) for e < rampup, else alpha."""
    if rampup <= 0 or epoch >= rampup:
        return alpha
    phase = 1.0 - epoch / rampup
    return alpha * math.exp(-5.0 * phase * phase)


def soft_kl(student: Tensor, teacher: Tensor, temperature: float, eps: float) -> Tensor:
    """T^2 * sum_c p_c (log p_c - log q_c) / batch, p = softmax(teacher / T) + eps,
    q = softmax(student / T): the official OKDDip ``KL_Loss`` (KL with a smoothed target)."""
    t = temperature
    p = F.softmax(teacher / t, dim=1) + eps
    log_q = F.log_softmax(student / t, dim=1)
    return (p * (p.log() - log_q)).sum() / student.shape[0] * (t * t)


@register_method
class OKDDip(Method):
    name = "okddip"
    default_init = "independent"
    loss_terms = {
        "peer_i/ce": "CE(z_i, y)",
        "peer_i/kd": "T^2 KL(softmax(t_i/T) + eps || softmax(z_i/T)), "
        "t_i = sum_j alpha_ij z_j, alpha_ij = softmax_j((Q h_i).(K h_j)), not detached",
        "peer_i/loss": "ce_i + kd_weight kd_i",
        "leader/ce": "CE(z_L, y)",
        "leader/kd": "T^2 KL(softmax(mean_i z_i/T) + eps || softmax(z_L/T)), "
        "target detached unless leader_target_grad",
        "leader/loss": "ce_L + kd_weight kd_L",
        "kd_weight": "alpha exp(-5 (1 - epoch/rampup)^2) for epoch < rampup, else alpha",
        "attention/self": "mean_i alpha_ii (diagnostic)",
        "loss": "sum_i ce_i + ce_L + kd_weight (sum_i kd_i + kd_L)",
    }

    @dataclass
    class Config:
        branches: bool = True
        temperature: float = 3.0
        alpha: float = 1.0
        rampup_epochs: float | None = None  # None: 80/300 of the run's epochs
        factor: int = 8  # Q and K project feature_dim -> feature_dim // factor
        eps: float = 1e-7
        leader_target_grad: bool = True
        own_views: bool = False  # branches=false only: a view per network, not one for all

        def validate(self) -> None:
            if self.temperature <= 0:
                raise ConfigError(f"method.temperature must be positive, got {self.temperature}")
            if self.factor < 1:
                raise ConfigError(f"method.factor must be at least 1, got {self.factor}")
            if self.rampup_epochs is not None and self.rampup_epochs < 0:
                raise ConfigError(
                    f"method.rampup_epochs must not be negative, got {self.rampup_epochs}"
                )
            if self.eps < 0:
                raise ConfigError(f"method.eps must not be negative, got {self.eps}")

    def __init__(self, config, make_model, num_students, init):
        super().__init__(config, make_model, num_students, init)
        dim = self.peers[0].feature_dim
        # Names as in the official models, so their attention weights load unchanged.
        self.query_weight = nn.Linear(dim, max(1, dim // config.factor), bias=False)
        self.key_weight = nn.Linear(dim, max(1, dim // config.factor), bias=False)
        std = official_qk_std(self.peers[0], config.branches)
        if std is not None:
            for projection in (self.query_weight, self.key_weight):
                nn.init.normal_(projection.weight, 0.0, std)

    def build_members(self, make_model, num_students, init) -> dict[str, nn.Module]:
        if num_students < 2:
            raise ConfigError(
                f"okddip needs num_students >= 2 (peers plus the leader), got {num_students}"
            )
        nets = make_students(make_model, num_students, init)
        if self.config.branches:
            if not supports_branches(nets[0]):
                raise ConfigError(
                    f"model {type(nets[0]).__name__} has no shared-trunk layout; "
                    "use method.branches=false"
                )
            tie_trunks(nets)
        names = [f"peer_{i}" for i in range(num_students - 1)] + ["leader"]
        return dict(zip(names, nets))

    @property
    def peers(self) -> list[nn.Module]:
        return [self.nets[f"peer_{i}"] for i in range(self.num_students - 1)]

    @property
    def num_views(self) -> int:
        return self.num_students if self._own_views else 1

    @property
    def _own_views(self) -> bool:
        return not self.config.branches and self.config.own_views

    def view_names(self) -> list[str]:
        return list(self.nets) if self._own_views else ["all members"]

    def rampup(self, epochs: int) -> float:
        """The ramp length R in epochs for a run of ``epochs`` epochs."""
        if self.config.rampup_epochs is not None:
            return float(self.config.rampup_epochs)
        return REFERENCE_RAMPUP * epochs

    def attention(self, features: Tensor) -> Tensor:
        """Attention of every peer over the peers; features (batch, peers, dim)."""
        return attention_weights(self.query_weight(features), self.key_weight(features))

    def compute_loss(
        self, views: list[Tensor], y: Tensor, ctx: StepContext
    ) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.config
        nets = list(self.nets.values())
        if not self._own_views:
            views = [views[0]] * len(nets)  # one batch for all (branches share the trunk too)
        features, logits = member_outputs(nets, views, cfg.branches)
        peers = len(nets) - 1
        peer_logits = torch.stack(logits[:peers], 1)  # (batch, peers, classes)
        alpha = self.attention(torch.stack(features[:peers], 1))
        targets = aggregate(alpha, peer_logits)
        weight = ramp_weight(ctx.epoch, self.rampup(ctx.epochs), cfg.alpha)
        terms: dict[str, Tensor] = {}
        ce_sum: Tensor | float = 0.0  # a float only when there are no peers
        kd_sum: Tensor | float = 0.0
        for a in range(peers):
            ce = F.cross_entropy(logits[a], y)
            kd = soft_kl(logits[a], targets[:, a], cfg.temperature, cfg.eps)
            terms.update(
                {f"peer_{a}/ce": ce, f"peer_{a}/kd": kd, f"peer_{a}/loss": ce + weight * kd}
            )
            ce_sum, kd_sum = ce_sum + ce, kd_sum + kd
        leader_target = peer_logits.mean(1)
        if not cfg.leader_target_grad:
            leader_target = leader_target.detach()
        ce = F.cross_entropy(logits[-1], y)
        kd = soft_kl(logits[-1], leader_target, cfg.temperature, cfg.eps)
        terms.update({"leader/ce": ce, "leader/kd": kd, "leader/loss": ce + weight * kd})
        total = ce_sum + ce + weight * (kd_sum + kd)
        terms["kd_weight"] = torch.tensor(weight, device=y.device)
        terms["attention/self"] = alpha.diagonal(dim1=1, dim2=2).mean().detach()
        terms["loss"] = total
        return total, terms

    def eval_forwards(self) -> dict[str, Callable[[Tensor], Tensor]]:
        if self.config.branches:
            return cached_trunk_forwards(self.nets)
        return super().eval_forwards()

    def ensemble_members(self) -> list[str]:
        return [f"peer_{i}" for i in range(self.num_students - 1)]
