"""Hessian-vector products of the dataset loss, as a matrix-free operator on flat vectors.

The dataset loss is the sample-weighted mean of the per-batch mean losses,
``L(theta) = sum_b (n_b / N) * loss_fn(model(x_b; theta), y_b)``, so its Hessian is
``H = sum_b (n_b / N) * H_b`` and batches of any size (a ragged last one included) give the same
operator as one batch holding all the data. Vectors are flat: the selected parameters, in
``named_parameters`` order, each flattened and concatenated.

Two ways to differentiate twice are offered, and ``"reverse"`` is the default because it measured
fastest on the CPU for both reference networks (``analyses/benchmarks/bench_hessian.py`` prints the
comparison):

* ``"reverse"`` (reverse-over-reverse): one forward pass and a gradient with ``create_graph=True``
  per batch, then one double-backward per vector on that graph. When the graphs are kept
  (``reuse_graph``) every later product is just the double backward (measured 1.45x faster for an
  eigen-solve on mnist1d's CNN with two batches); otherwise each data pass builds the graph once
  and serves all vectors of a block. By default the graphs are kept while they fit a memory budget,
  measured on the first product (:data:`GRAPH_MEMORY_SHARE` of the memory available). Both ways
  compute every batch's product with the same operations in the same order, so the choice never
  changes a result, only its time.
* ``"forward"`` (forward-over-reverse): ``torch.func.jvp`` of ``torch.func.grad``, ``vmap``-ped over
  the vectors of a block; models whose operations do not ``vmap`` fall back to one vector at a time.

Eval-mode BatchNorm is folded into the layer before it (``landscape.core.fold``) inside the
differentiated function: the folded weights ``W * gamma / sqrt(var + eps)`` are computed from the
selected parameters, so the loss is the same function of them and its Hessian the same matrix,
while every product skips BatchNorm's passes over the activations (on mnist1d's CNN, timed one
operator at a time, an eigen-solve ran 1.7x and a trace 1.4x faster). Only rounding differs.

On the CPU, batches above :data:`CPU_CHUNK` samples are cut into chunks of that size, each a
sample-weighted term of the same sum; batches are split, never merged, and kept as given under
``batchnorm="batch"``, whose statistics depend on them.

When ``torch.distributed`` is initialised each rank passes its own shard of the data; sample counts
and products are summed over ranks, so every rank holds the product of the full-dataset Hessian.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from landscape.core.batches import Batch, materialize, num_samples
from landscape.core.device import resolve_device
from landscape.core.errors import LandscapeError
from landscape.core.fold import FoldPlan, checked_fold_plan, fold_state
from landscape.core.records import ResultMixin
from landscape.core.selection import select_parameters

LossFn = Callable[[Tensor, Tensor], Tensor]
METHODS = ("auto", "reverse", "forward")
BATCHNORM = ("running", "batch")
#: Share of the memory available (free GPU memory, or the host's MemAvailable) that the kept
#: autograd graphs may take before the operator goes back to rebuilding them at every product.
GRAPH_MEMORY_SHARE = 0.25
#: Most samples per differentiated pass on the CPU. Whole eigen-solves and traces, one operator at
#: a time: on the digits CNN one batch of 1024 took 1.3x longer than chunks of 256 (chunks of 128
#: 1.1x longer), while on the mnist1d CNN batches of 256 beat chunks of 128 by 1.2x and of 64 by
#: 1.5-1.8x. GPUs take the batches as given.
CPU_CHUNK = 256


@dataclass(frozen=True)
class ProblemInfo(ResultMixin):
    """What Hessian was analysed: recorded in every curvature result.

    Attributes:
        n_params: dimension of the Hessian (number of selected scalar parameters).
        n_samples: samples in the dataset loss (summed over ranks when distributed).
        n_batches: chunks on this rank (the batches as given, split into ``chunk_size``).
        parameters: names of the selected parameters, in vector order.
        include: the include filter as given (``None``: every trainable parameter).
        exclude: the exclude filter as given.
        dtype: floating-point type of the products.
        device: device of the products.
        method: ``"reverse"`` or ``"forward"`` differentiation.
        reuse_graph: whether the products after the first reused kept autograd graphs.
        world_size: number of ranks whose data shards make up the dataset.
        batchnorm: ``"running"`` (eval mode) or ``"batch"`` (BatchNorm with batch statistics).
        fold_bn: whether eval-mode BatchNorm was folded into the layers before it (a speed-up:
            the same loss function, up to rounding).
        chunk_size: most samples per differentiated pass (0: the batches as given).
    """

    n_params: int
    n_samples: int
    n_batches: int
    parameters: tuple[str, ...]
    include: str | tuple[str, ...] | None
    exclude: str | tuple[str, ...] | None
    dtype: str
    device: str
    method: str
    reuse_graph: bool
    world_size: int
    batchnorm: str = "running"
    fold_bn: bool = False
    chunk_size: int = 0


def _frozen_filter(patterns: str | Sequence[str] | None) -> str | tuple[str, ...] | None:
    return patterns if patterns is None or isinstance(patterns, str) else tuple(patterns)


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode for the block and restore every submodule's own mode after."""
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes.items():
            m.training = training


@contextmanager
def loss_mode(module: nn.Module, batchnorm: str = "running") -> Iterator[nn.Module]:
    """The mode a loss is differentiated in: eval mode (dropout off); with ``batchnorm="batch"``
    BatchNorm layers normalise with each batch's own statistics, as in training, without
    touching their running buffers (they are not tracked for the block)."""
    with eval_mode(module):
        if batchnorm != "batch":
            yield module
            return
        layers = [m for m in module.modules() if isinstance(m, _BatchNorm)]
        tracked = [m.track_running_stats for m in layers]
        for m in layers:
            m.train()
            m.track_running_stats = False
        try:
            yield module
        finally:
            for m, track in zip(layers, tracked, strict=True):
                m.track_running_stats = track


def check_reproducible(module: nn.Module, inputs: Tensor, batchnorm: str = "running") -> None:
    """Refuse models whose eval-mode loss is random or depends on how the data is batched.

    ``module`` must already be in eval mode. Layers are inspected first (BatchNorm that still uses
    batch statistics, dropout left in training mode); then two forward passes on the same inputs
    must agree, which catches functional dropout and other random operations.

    Raises:
        LandscapeError: naming the offending layer or the symptom.
    """
    for name, layer in module.named_modules():
        if (
            isinstance(layer, _BatchNorm)
            and batchnorm != "batch"
            and (layer.training or layer.running_mean is None)
        ):
            raise LandscapeError(
                f"BatchNorm layer {name!r} normalises with batch statistics even in eval mode, so "
                "the loss would depend on how the data is batched; give it running statistics"
            )
        if isinstance(layer, _DropoutNd) and layer.training and layer.p > 0:
            raise LandscapeError(
                f"dropout layer {name!r} stays active in eval mode, so Hessian-vector products "
                "would be random"
            )
    with torch.no_grad():
        first, second = module(inputs), module(inputs)
    if not isinstance(first, Tensor):
        raise LandscapeError("the model must return a tensor of outputs for loss_fn")
    scale = float(first.detach().abs().max()) if first.numel() else 0.0
    if not torch.allclose(first, second, rtol=1e-5, atol=1e-6 * scale + 1e-12):
        raise LandscapeError(
            "two identical forward passes in eval mode gave different outputs (dropout or another "
            "random operation is active), so Hessian-vector products would not be reproducible"
        )


def _distributed_world(distributed: bool | None) -> int:
    available = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed is None:
        return torch.distributed.get_world_size() if available else 1
    if distributed and not available:
        raise LandscapeError("distributed=True but torch.distributed is not initialised")
    return torch.distributed.get_world_size() if distributed else 1


class HessianOperator:
    """The Hessian of the dataset loss w.r.t. selected parameters, applied to flat vectors.

    Products use the values the selected parameters had when the operator was built (they are
    copied); other parameters and buffers are read from the model. The model is evaluated in eval
    mode, and its own modes are restored after every product.

    Args:
        model: the network; cast and moved as a copy when ``dtype`` or ``device`` differ from it.
        loss_fn: ``loss_fn(outputs, targets)`` returning the batch-mean loss.
        data: iterable of ``(inputs, targets)`` batches, read once onto the device.
        include: glob patterns of parameter names to keep (``None``: all trainable parameters).
        exclude: glob patterns of parameter names to drop afterwards.
        device: compute device (default CUDA if available, else CPU).
        dtype: floating-point type of weights, inputs and products (default: the model's).
        method: ``"reverse"``, ``"forward"`` or ``"auto"`` (``"reverse"``; see the module notes).
        reuse_graph: keep every batch's autograd graph so products cost one double backward and no
            forward pass (memory: one gradient graph per batch); ``None`` (default) keeps them
            while their measured size fits :func:`graph_memory_budget`. Only for
            ``method="reverse"``; the products are identical either way.
        vectors_per_pass: cap on vectors pushed through one vmapped pass (``"forward"``), which
            bounds activation memory; default 8.
        distributed: sum over ``torch.distributed`` ranks; ``None`` does so when it is initialised.
        check: run the reproducibility checks (:func:`check_reproducible`).
        batchnorm: ``"running"`` (eval mode) or ``"batch"``: BatchNorm normalises with each
            batch's statistics, the training objective on these fixed batches (its value then
            depends on the batching, which is held fixed); ``method="reverse"`` only.
        fold_bn: fold eval-mode BatchNorm into the preceding convolution or linear layer inside
            the differentiated loss (module notes) where a plan is found and reproduces the
            model; never with ``batchnorm="batch"``.
        chunk_size: most samples per differentiated pass; batches larger than that are split
            (default: :data:`CPU_CHUNK` on the CPU, 0 on a GPU; 0 keeps the batches as given,
            as ``batchnorm="batch"`` always does).

    Attributes:
        n_hvp: Hessian-vector products computed so far (one per vector, whatever the batching).
        n_passes: passes over the data made so far (graph building included).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Iterable[Batch],
        *,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        method: str = "auto",
        reuse_graph: bool | None = None,
        vectors_per_pass: int = 8,
        distributed: bool | None = None,
        check: bool = True,
        batchnorm: str = "running",
        fold_bn: bool = True,
        chunk_size: int | None = None,
    ) -> None:
        if method not in METHODS:
            raise LandscapeError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
        if batchnorm not in BATCHNORM:
            raise LandscapeError(f"batchnorm must be one of {', '.join(BATCHNORM)}")
        if batchnorm == "batch" and method == "forward":
            raise LandscapeError(
                "batchnorm='batch' needs method='reverse' (no vmap of its updates)"
            )
        self.batchnorm = batchnorm
        self.device = resolve_device(device)
        first = next(iter(model.parameters()), None)
        if first is None:
            raise LandscapeError("the model has no parameter")
        self.dtype = dtype or first.dtype
        if not self.dtype.is_floating_point:
            raise LandscapeError(f"dtype must be a floating-point type, not {self.dtype}")
        if first.device != self.device or first.dtype != self.dtype:
            model = copy.deepcopy(model).to(device=self.device, dtype=self.dtype)
        self.module = model
        self.loss_fn = loss_fn
        selected = select_parameters(model, include, exclude)
        self.names = tuple(selected)
        self.shapes = tuple(p.shape for p in selected.values())
        self._numels = [p.numel() for p in selected.values()]
        self.n = sum(self._numels)
        # The operator is the Hessian at these values, whatever happens to the model later.
        self._point = tuple(p.detach().clone() for p in selected.values())
        self._frozen = {
            name: p.detach() for name, p in model.named_parameters() if name not in selected
        }
        batches = [
            (x, y.to(self.dtype) if y.is_floating_point() else y)
            for x, y in materialize(data, self.device, self.dtype)
        ]
        x0 = batches[0][0]
        if check:
            with loss_mode(self.module, batchnorm):
                check_reproducible(self.module, x0[: min(len(x0), 64)], batchnorm)
        if chunk_size is None:
            chunk_size = CPU_CHUNK if self.device.type == "cpu" else 0
        self.chunk_size = 0 if batchnorm == "batch" else max(0, int(chunk_size))
        self.batches = _split(batches, self.chunk_size)
        self.world_size = _distributed_world(distributed)
        n_local = num_samples(self.batches)
        self.n_samples = int(
            self._all_reduce(torch.tensor(float(n_local), dtype=torch.float64, device=self.device))
        )
        self._weights = [x.shape[0] / self.n_samples for x, _ in self.batches]
        self.method = "reverse" if method == "auto" else method
        if reuse_graph and self.method != "reverse":
            raise LandscapeError("reuse_graph needs method='reverse'")
        # None: decided by the first product, from the size of the graphs it builds.
        self._decide_reuse = reuse_graph is None and self.method == "reverse"
        self.reuse_graph = bool(reuse_graph)
        self.graph_bytes = 0
        self.vectors_per_pass = max(1, int(vectors_per_pass))
        self._include, self._exclude = _frozen_filter(include), _frozen_filter(exclude)
        self._graphs: list[tuple[tuple[Tensor, ...], tuple[Tensor, ...]]] = []
        self._vmap_ok = True
        self.n_hvp = 0
        self.n_passes = 0
        self._buffers = {name: b.detach() for name, b in model.named_buffers()}
        self._plan = self._fold(x0[:8]) if fold_bn and batchnorm == "running" else None

    # -- vectors -----------------------------------------------------------------------------
    def split(self, v: Tensor) -> list[Tensor]:
        """Views of a flat vector ``(n,)`` (or a block ``(k, n)``) shaped like the parameters."""
        lead = v.shape[:-1]
        return [
            chunk.reshape(*lead, *shape)
            for chunk, shape in zip(v.split(self._numels, dim=-1), self.shapes, strict=True)
        ]

    def flatten(self, tensors: Sequence[Tensor]) -> Tensor:
        """The inverse of :meth:`split` for one vector: concatenate parameter-shaped tensors."""
        return torch.cat([t.flatten() for t in tensors])

    def vector_dict(self, v: Tensor) -> dict[str, Tensor]:
        """A flat vector as a ``name -> tensor`` dict (e.g. to use an eigenvector as a direction)."""
        return dict(zip(self.names, self.split(v), strict=True))

    @property
    def info(self) -> ProblemInfo:
        """The recorded description of this Hessian."""
        return ProblemInfo(
            n_params=self.n,
            n_samples=self.n_samples,
            n_batches=len(self.batches),
            parameters=self.names,
            include=self._include,
            exclude=self._exclude,
            dtype=str(self.dtype).replace("torch.", ""),
            device=str(self.device),
            method=self.method,
            reuse_graph=self.reuse_graph,
            world_size=self.world_size,
            batchnorm=self.batchnorm,
            fold_bn=self._plan is not None,
            chunk_size=self.chunk_size,
        )

    def _fold(self, x: Tensor) -> FoldPlan | None:
        """The BatchNorm fold of the model, if it has one that reproduces it on ``x``."""
        with eval_mode(self.module):
            state = {**dict(self.module.named_parameters()), **self._buffers}
            return checked_fold_plan(self.module, state, x)

    # -- products ----------------------------------------------------------------------------
    def matvec(self, v: Tensor) -> Tensor:
        """``H @ v`` for a flat vector ``v`` of shape ``(n,)``; the result has ``v``'s shape."""
        return self.matmat(v.unsqueeze(0)).squeeze(0)

    def matmat(self, vectors: Tensor) -> Tensor:
        """``H @ v`` for each row ``v`` of ``vectors`` ``(k, n)``, in one pass over the data.

        Returns:
            A ``(k, n)`` tensor of products in the operator's dtype and device, in units of loss
            per squared parameter unit.
        """
        if vectors.dim() != 2 or vectors.shape[1] != self.n:
            raise ValueError(f"expected a (k, {self.n}) block, got {tuple(vectors.shape)}")
        vectors = vectors.to(device=self.device, dtype=self.dtype)
        with loss_mode(self.module, self.batchnorm), torch.enable_grad():
            if self.reuse_graph or self._decide_reuse:
                out = self._reverse_on_graph(vectors)
            elif self.method == "reverse":
                out = self._reverse_pass(vectors)
            else:
                out = self._forward_pass(vectors)
        self.n_hvp += vectors.shape[0]
        return self._all_reduce(out)

    def _loss(self, params: Sequence[Tensor], x: Tensor, y: Tensor) -> Tensor:
        state = {**self._frozen, **dict(zip(self.names, params, strict=True))}
        if self._plan is None:
            return self.loss_fn(functional_call(self.module, state, (x,)), y)
        # The fold is part of the differentiated function, so products stay w.r.t. the model's
        # own parameters.
        folded = fold_state(self._plan, {**self._buffers, **state})
        return self.loss_fn(functional_call(self._plan.module, folded, (x,)), y)

    def _new_leaves(self) -> tuple[Tensor, ...]:
        return tuple(p.detach().requires_grad_(True) for p in self._point)

    def _double_backward(
        self, grads: Sequence[Tensor], leaves: Sequence[Tensor], vectors: Tensor, keep: bool
    ) -> Tensor:
        rows = []
        for i, v in enumerate(vectors):
            hv = torch.autograd.grad(
                grads, leaves, self.split(v), retain_graph=keep or i < len(vectors) - 1
            )
            rows.append(self.flatten(hv))
        return torch.stack(rows)

    def _batch_graph(
        self, w: float, x: Tensor, y: Tensor
    ) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        """Leaves and the gradient of batch ``(x, y)``'s weighted loss, with its graph."""
        leaves = self._new_leaves()
        g = torch.autograd.grad(self._loss(leaves, x, y) * w, leaves, create_graph=True)
        return leaves, g

    def _reverse_on_graph(self, vectors: Tensor) -> Tensor:
        if not self._graphs:
            return self._first_pass_keeping_graphs(vectors)
        out = torch.zeros_like(vectors)
        for leaves, g in self._graphs:
            out.add_(self._double_backward(g, leaves, vectors, keep=True))
        return out.detach()

    def _first_pass_keeping_graphs(self, vectors: Tensor) -> Tensor:
        """One pass that keeps each batch's graph; with ``reuse_graph=None`` it measures them
        and lets go of them all (later products rebuild) once they outgrow the budget."""
        budget = graph_memory_budget(self.device) if self._decide_reuse else None
        out = torch.zeros_like(vectors)
        keep = True
        for w, (x, y) in zip(self._weights, self.batches, strict=True):
            if keep and budget is not None:
                with _SavedBytes() as saved:
                    leaves, g = self._batch_graph(w, x, y)
                self.graph_bytes += saved.bytes
                keep = self.graph_bytes <= budget
            else:
                leaves, g = self._batch_graph(w, x, y)
            out.add_(self._double_backward(g, leaves, vectors, keep=keep))
            if keep:
                self._graphs.append((leaves, g))
            else:
                self._graphs.clear()
        self.n_passes += 1
        self.reuse_graph, self._decide_reuse = keep, False
        return out.detach()

    def _reverse_pass(self, vectors: Tensor) -> Tensor:
        out = torch.zeros_like(vectors)
        for w, (x, y) in zip(self._weights, self.batches, strict=True):
            leaves, g = self._batch_graph(w, x, y)
            out.add_(self._double_backward(g, leaves, vectors, keep=False))
        self.n_passes += 1
        return out.detach()

    def _forward_pass(self, vectors: Tensor) -> Tensor:
        out = torch.zeros_like(vectors)
        argnums = tuple(range(len(self._point)))
        for w, (x, y) in zip(self._weights, self.batches, strict=True):

            def loss(*params: Tensor, x: Tensor = x, y: Tensor = y) -> Tensor:
                return self._loss(params, x, y)

            gradient = grad(loss, argnums=argnums)

            def hvp(v: Tensor, gradient: Callable = gradient) -> Tensor:
                return self.flatten(jvp(gradient, self._point, tuple(self.split(v)))[1])

            for start in range(0, len(vectors), self.vectors_per_pass):
                block = vectors[start : start + self.vectors_per_pass]
                out[start : start + len(block)].add_(self._forward_block(hvp, block), alpha=w)
        self.n_passes += 1
        return out

    def _forward_block(self, hvp: Callable[[Tensor], Tensor], block: Tensor) -> Tensor:
        with torch.no_grad(), warnings.catch_warnings():
            # torch's first jvp registers decompositions with torch.jit.script, which warns.
            warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
            if self._vmap_ok and len(block) > 1:
                try:
                    return vmap(hvp, randomness="same")(block)
                except (RuntimeError, NotImplementedError):
                    # Some operations have no batching rule; products stay exact one at a time.
                    self._vmap_ok = False
            return torch.stack([hvp(v) for v in block])

    def _all_reduce(self, t: Tensor) -> Tensor:
        if self.world_size > 1:
            torch.distributed.all_reduce(t)
        return t


def _split(batches: list[Batch], size: int) -> list[Batch]:
    """Each batch cut into consecutive chunks of at most ``size`` samples (0: as given)."""
    if size <= 0:
        return batches
    return [(x[i : i + size], y[i : i + size]) for x, y in batches for i in range(0, len(x), size)]


def rademacher(
    shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """Independent +-1 entries drawn on the CPU from ``generator`` (identical on every device)."""
    bits = torch.randint(0, 2, shape, generator=generator, dtype=torch.int8)
    return (bits.to(dtype) * 2 - 1).to(device)


def gaussian(
    shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """Standard normal entries drawn on the CPU from ``generator`` (identical on every device)."""
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype).to(device)


def as_operator(
    model: nn.Module | HessianOperator,
    loss_fn: LossFn | None,
    data: Iterable[Batch] | None,
    **kwargs: Any,
) -> HessianOperator:
    """``model`` itself when it is a :class:`HessianOperator`, else one built from
    ``(model, loss_fn, data)`` with ``kwargs``; mixing the two forms is an error."""
    if isinstance(model, HessianOperator):
        if loss_fn is not None or data is not None:
            raise LandscapeError(
                "pass either a HessianOperator or (model, loss_fn, data), not both"
            )
        return model
    if loss_fn is None or data is None:
        raise LandscapeError("loss_fn and data are required when model is a network")
    return HessianOperator(model, loss_fn, data, **kwargs)


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``: probes are drawn on the CPU so that a seed gives the
    same vectors on every device."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


class _SavedBytes:
    """Counts the bytes of the distinct storages autograd saves for backward inside the block
    (the memory a kept graph holds on to, inputs and parameters included: an upper bound)."""

    def __init__(self) -> None:
        self.bytes = 0
        self._seen: set[int] = set()

    def _pack(self, t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in self._seen:
            self._seen.add(storage.data_ptr())
            self.bytes += storage.nbytes()
        return t

    def __enter__(self) -> _SavedBytes:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


def graph_memory_budget(device: torch.device) -> int:
    """Bytes the kept autograd graphs of a :class:`HessianOperator` may take:
    :data:`GRAPH_MEMORY_SHARE` of the free memory of a CUDA device, or of the host's available
    memory (``MemAvailable`` of ``/proc/meminfo``; 0, never keep, where it cannot be read)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * GRAPH_MEMORY_SHARE)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(int(line.split()[1]) * 1024 * GRAPH_MEMORY_SHARE)
    except OSError:
        pass
    pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else 0
    return int(pages * os.sysconf("SC_PAGE_SIZE") * GRAPH_MEMORY_SHARE) if pages > 0 else 0
