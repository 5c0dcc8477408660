"""The evaluation engine every geometry routine shares: dataset loss and accuracy at given weights.

The data are read once onto the device and cut into fixed chunks; a point is evaluated by one
``torch.func.functional_call`` over all chunks (the module is never rebuilt or copied into), in
eval mode and without autograd. Speed-ups, each measured in
``analyses/benchmarks/bench_surface.py`` and recorded in :class:`EngineSettings`:

* chunk size: small chunks keep activations in cache (on two CPU cores ResNet-32 ran 1.3-5x
  faster in chunks of 64 images than in one batch of 512, depending on machine load); the
  default is derived from the largest activation per sample, and at most 128 samples for
  convolutional networks on the CPU;
* channels-last memory format for 4-D inputs, which oneDNN and cuDNN convolutions prefer (1.2x
  to 1.5x faster than contiguous on an idle CPU, more under load);
* BatchNorm folded into the preceding convolution (eval mode only; ``landscape.core.fold``;
  1.3-2x faster on the mnist1d 1D CNN, which torch.fx cannot trace and is folded through its
  ``nn.Sequential``);
* on the CPU, several points evaluated at once on worker threads with one intra-op thread each:
  the small convolutions of CIFAR networks parallelise poorly inside one forward;
* optionally several points stacked into one ``torch.func.vmap``-ed forward
  (``points_per_pass``). On the CPU it never paid in our measurements, so it is off there by
  default; it is on by default only for small (launch-bound) models on a GPU.

bf16 autocast is an opt-in (``bf16=True``) meant for CUDA. Losses are sums of per-sample losses
divided by the number of samples (``loss_fn`` returns batch means, so each chunk counts
``mean * size``), accumulated in float64; accuracy is the fraction of argmax hits (NaN when the
targets are not class indices).
"""

from __future__ import annotations

import copy
import dataclasses
import queue
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from landscape.core.batches import Batch, materialize
from landscape.core.device import resolve_device
from landscape.core.errors import LandscapeError
from landscape.core.fold import checked_fold_plan, fold_state
from landscape.core.records import ResultMixin
from landscape.geometry.batchnorm import recalibrate
from landscape.geometry.weights import State, as_state

LossFn = Callable[[Tensor, Tensor], Tensor]
# ``build(k)`` gives point k's state and whether the BatchNorm policy applies to it (it does not
# at trained checkpoints, which keep their own running statistics).
PointBuilder = Callable[[int], tuple[State, bool]]

# Largest activation of one chunk, in bytes: on the CPU 4 MiB (64 ResNet-32 images) was never
# far from the best chunk in bench_surface.py, while 16 and 512 images were slower; plenty on a
# GPU.
_CHUNK_BUDGET = {"cpu": 4 << 20, "cuda": 512 << 20}
# A convolution's working set is its unfolded input, a kernel's size times the activation, so the
# activation budget overshoots for narrow networks: on the CPU chunks of 512 ran 1.3-1.4x slower
# than 128 for cnn_digits and the mnist1d 1D CNN (ResNet-32's budget gives 64 anyway; 64 and 128
# were within 2% there).
_CPU_CONV_CHUNK = 128
# Models whose whole-dataset activations stay below this many bytes per point are small enough
# that on a GPU (launch-bound) stacking points with vmap beats evaluating them one by one.
_SMALL_MODEL_BYTES = 4 << 20
# Below this, a point's forward on the CPU is so short that worker threads gain nothing against
# the GIL (bench_surface.py: a 64-128-128-10 MLP on 1797 samples, 0.9 MB); above it they pay
# (the mnist1d 1D CNN on 512 samples, 2.6 MB: 3.1 against 3.4 ms a point).
_TINY_CPU_MODEL_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class EngineSettings(ResultMixin):
    """How points were evaluated; recorded in every result.

    Attributes:
        device: e.g. ``"cpu"`` or ``"cuda:0"``.
        dtype: floating-point type of weights and inputs.
        chunk_size: samples per forward call.
        memory_format: ``"channels_last"`` or ``"contiguous"``.
        fold_bn: whether BatchNorm was folded into the layers before it.
        points_per_pass: points stacked into one vmapped forward.
        workers: points evaluated concurrently (CPU threads with one intra-op thread each).
        bf16: whether bf16 autocast was on.
        n_samples: evaluation samples; ``n_bn_samples``: calibration samples (0 if none).
        loss: name of the loss function.
    """

    device: str
    dtype: str
    chunk_size: int
    memory_format: str
    fold_bn: bool
    points_per_pass: int
    workers: int
    bf16: bool
    n_samples: int
    n_bn_samples: int
    loss: str


class _Runner(nn.Module):
    """Loss sum and hit count of ``net`` over every chunk, as one module for ``functional_call``."""

    def __init__(self, net: nn.Module, loss_fn: LossFn, classify: bool, bf16: bool) -> None:
        super().__init__()
        self.net, self.loss_fn, self.classify, self.bf16 = net, loss_fn, classify, bf16

    def forward(self, chunks: Sequence[Batch]) -> Tensor:
        sums = []
        for x, y in chunks:
            if self.bf16:
                with torch.autocast(x.device.type, dtype=torch.bfloat16):
                    out = self.net(x)
                out = out.float()
            else:
                out = self.net(x)
            loss = self.loss_fn(out, y).double() * y.shape[0]
            hits = (out.argmax(-1) == y).sum().double() if self.classify else loss * float("nan")
            sums.append(torch.stack([loss, hits]))
        return torch.stack(sums).sum(0)


@dataclasses.dataclass
class _Replica:
    """One worker's private modules (recalibration switches modes, so workers never share)."""

    module: nn.Module
    runner: _Runner


def _loss_name(loss_fn: LossFn) -> str:
    return getattr(loss_fn, "__name__", type(loss_fn).__name__)


def _cat(batches: list[Batch]) -> tuple[Tensor, Tensor] | None:
    try:
        return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    except RuntimeError:
        return None


class Evaluator:
    """Dataset loss and accuracy of one architecture at many weight points.

    Args:
        model: the architecture; it is copied, never modified.
        data: iterable of ``(inputs, targets)`` batches, read once onto the device.
        loss_fn: ``loss_fn(outputs, targets)`` returning the batch mean (default cross-entropy).
        bn_data: calibration batches for ``recalibrated`` (kept as given: BatchNorm statistics
            depend on batch composition).
        device: default CUDA if available, else CPU.
        dtype: floating-point type for weights and inputs (default: the model's).
        chunk_size: samples per forward; default from the largest activation per sample.
        memory_format: ``"auto"`` (channels-last for 4-D inputs), ``"channels_last"`` or
            ``"contiguous"``.
        fold_bn: fold eval-mode BatchNorm into the preceding conv/linear layer when possible.
        points_per_pass: points per vmapped forward; default 1, except small models on a GPU.
        workers: points evaluated concurrently; default ``torch.get_num_threads()`` on the CPU
            when ``points_per_pass`` is 1, else 1.
        bf16: evaluate the network under bf16 autocast (intended for CUDA).
    """

    def __init__(
        self,
        model: nn.Module,
        data: Iterable[Batch],
        *,
        loss_fn: LossFn | None = None,
        bn_data: Iterable[Batch] | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        chunk_size: int | None = None,
        memory_format: str = "auto",
        fold_bn: bool = True,
        points_per_pass: int | None = None,
        workers: int | None = None,
        bf16: bool = False,
    ) -> None:
        if memory_format not in ("auto", "channels_last", "contiguous"):
            raise LandscapeError(
                f"memory_format must be auto, channels_last or contiguous, not {memory_format!r}"
            )
        self.device = resolve_device(device)
        ref = next((p for p in model.parameters()), None)
        self.dtype = dtype or (ref.dtype if ref is not None else torch.float32)
        self.module = copy.deepcopy(model).to(device=self.device, dtype=self.dtype).eval()
        self.loss_fn = loss_fn or nn.CrossEntropyLoss()
        self.bf16 = bool(bf16)
        batches = materialize(data, self.device, self.dtype)
        calib = materialize(bn_data, self.device, self.dtype) if bn_data is not None else []
        self.n_samples = sum(int(x.shape[0]) for x, _ in batches)
        x0, y0 = batches[0]
        self.classify, act_bytes = self._probe(x0[:2], y0[:2])
        cpu = self.device.type == "cpu"
        small = act_bytes * self.n_samples < _SMALL_MODEL_BYTES
        if points_per_pass is None:
            # Measured on the CPU: stacking never paid (bench_surface.py, small-model table). On
            # a GPU a small model is launch-bound, which stacking removes.
            points_per_pass = 8 if small and not cpu else 1
        self.points_per_pass = max(1, int(points_per_pass))
        if workers is None:
            # Threads pay once a point's forward outweighs the per-call Python work (the GIL).
            tiny = act_bytes * self.n_samples < _TINY_CPU_MODEL_BYTES
            use = cpu and not tiny and self.points_per_pass == 1
            workers = torch.get_num_threads() if use else 1
        self.workers = max(1, int(workers))
        has_conv2d = any(isinstance(m, nn.Conv2d) for m in self.module.modules())
        has_conv = has_conv2d or any(isinstance(m, nn.Conv1d) for m in self.module.modules())
        # vmap has no channels-last batching rule for pooling (a slow fallback), so stacked
        # points stay contiguous unless asked otherwise.
        self.channels_last = memory_format == "channels_last" or (
            memory_format == "auto" and x0.dim() == 4 and has_conv2d and self.points_per_pass == 1
        )
        if chunk_size is None:
            budget = _CHUNK_BUDGET["cpu" if cpu else "cuda"]
            chunk_size = 1 << max(3, int(np.log2(max(budget // max(act_bytes, 1), 1))))
            if cpu and has_conv:
                chunk_size = min(chunk_size, _CPU_CONV_CHUNK)
        self.chunk_size = int(chunk_size)
        joined = _cat(batches)
        if joined is None:  # ragged batches: evaluate them as given
            self.chunks = [(self._format(x), y) for x, y in batches]
        else:
            x, y = self._format(joined[0]), joined[1]
            self.chunks = [
                (x[i : i + self.chunk_size], y[i : i + self.chunk_size])
                for i in range(0, self.n_samples, self.chunk_size)
            ]
        self.bn_batches = [(self._format(x), y) for x, y in calib]
        self.plan = (
            checked_fold_plan(self.module, as_state(self.module), self._format(x0[:8]))
            if fold_bn
            else None
        )
        self._replicas = [self._replica(i) for i in range(self.workers)]

    # -- set-up helpers -------------------------------------------------------------------
    def _format(self, x: Tensor) -> Tensor:
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x.contiguous()

    def _probe(self, x: Tensor, y: Tensor) -> tuple[bool, int]:
        """Whether targets are class indices, and the largest activation in bytes per sample."""
        largest = [x[0].numel() * x.element_size()]

        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            if isinstance(out, Tensor) and out.dim() > 0:
                largest.append(out[0].numel() * out.element_size())

        handles = [m.register_forward_hook(hook) for m in self.module.modules()]
        try:
            with torch.no_grad():
                out = self.module(x)
        finally:
            for h in handles:
                h.remove()
        classify = (
            not y.is_floating_point()
            and out.dim() == y.dim() + 1
            and out.shape[: y.dim()] == y.shape
        )
        return classify, max(largest)

    def _replica(self, index: int) -> _Replica:
        module = self.module if index == 0 else copy.deepcopy(self.module)
        net = self.plan.module if self.plan is not None else module
        if index and self.plan is not None:
            net = copy.deepcopy(net)
        return _Replica(module, _Runner(net, self.loss_fn, self.classify, self.bf16))

    @property
    def settings(self) -> EngineSettings:
        """The resolved engine settings."""
        return EngineSettings(
            device=str(self.device),
            dtype=str(self.dtype).replace("torch.", ""),
            chunk_size=self.chunk_size,
            memory_format="channels_last" if self.channels_last else "contiguous",
            fold_bn=self.plan is not None,
            points_per_pass=self.points_per_pass,
            workers=self.workers,
            bf16=self.bf16,
            n_samples=self.n_samples,
            n_bn_samples=sum(int(x.shape[0]) for x, _ in self.bn_batches),
            loss=_loss_name(self.loss_fn),
        )

    # -- states -----------------------------------------------------------------------------
    def state(self, weights: nn.Module | Mapping[str, Tensor] | None = None) -> State:
        """Full state of the model with ``weights`` laid over it, on the engine's device/dtype."""
        return as_state(self.module, weights, device=self.device, dtype=self.dtype)

    def recalibrated(self, state: State, replica: int = 0) -> State:
        """``state`` with BatchNorm running statistics recomputed on the calibration batches."""
        return recalibrate(self._replicas[replica].module, state, self.bn_batches)

    def apply_bn(self, state: State, bn: str, replica: int = 0) -> State:
        """The state to evaluate at a non-checkpoint point under BatchNorm policy ``bn``.

        ``"recalibrate"`` recomputes the running statistics; ``"keep"`` and ``"interpolate"``
        return ``state`` as built (its buffers were kept or moved along the directions).
        """
        return self.recalibrated(state, replica) if bn == "recalibrate" else state

    def _prepare(self, state: State) -> State:
        out = fold_state(self.plan, state) if self.plan is not None else state
        if self.channels_last:
            out = {
                k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v
                for k, v in out.items()
            }
        return out

    # -- evaluation -------------------------------------------------------------------------
    def _run(self, states: Sequence[State], replica: int) -> Tensor:
        runner = self._replicas[replica].runner
        group = [{"net." + k: v for k, v in self._prepare(s).items()} for s in states]
        with torch.inference_mode():
            if len(group) == 1:
                return functional_call(runner, group[0], (self.chunks,))[None]
            stacked = {k: torch.stack([g[k] for g in group]) for k in group[0]}
            return vmap(lambda p: functional_call(runner, p, (self.chunks,)))(stacked)

    def evaluate(self, states: Sequence[State]) -> tuple[np.ndarray, np.ndarray]:
        """Dataset loss (per-sample mean) and accuracy (fraction) at each full state, in order."""
        return self.evaluate_points(range(len(states)), lambda k: (states[k], False), "keep")

    def evaluate_one(self, state: State) -> tuple[float, float]:
        """Loss and accuracy at one full state."""
        loss, acc = self.evaluate([state])
        return float(loss[0]), float(acc[0])

    def evaluate_points(
        self, indices: Sequence[int], build: PointBuilder, bn: str, bar: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Loss and accuracy at ``build(k)`` for every ``k`` in ``indices``, in order.

        Points are built, given the BatchNorm policy ``bn`` where ``build`` asks for it, and
        evaluated ``points_per_pass`` at a time on ``workers`` threads, so memory stays a few
        copies of the model however many points there are. ``bar`` (a tqdm bar) is advanced.
        """
        groups = [
            indices[i : i + self.points_per_pass]
            for i in range(0, len(indices), self.points_per_pass)
        ]

        # functional_call swaps a module's tensors for the call, so a replica must never serve
        # two threads at once: each task borrows a free one.
        free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(self.workers):
            free.put(i)

        def task(group: Sequence[int]) -> Tensor:
            replica = free.get()
            try:
                states = []
                for k in group:
                    state, policy = build(k)
                    states.append(self.apply_bn(state, bn, replica) if policy else state)
                return self._run(states, replica)
            finally:
                free.put(replica)

        results: list[Tensor] = []
        if self.workers == 1 or len(groups) == 1:
            for g in groups:
                results.append(task(g))
                if bar is not None:
                    bar.update(len(g))
        else:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # one intra-op thread per worker: no oversubscription
            try:
                with ThreadPoolExecutor(self.workers) as pool:
                    futures = [pool.submit(task, g) for g in groups]
                    for g, f in zip(groups, futures, strict=True):
                        results.append(f.result())
                        if bar is not None:
                            bar.update(len(g))
            finally:
                torch.set_num_threads(threads)
        if not results:
            return np.zeros(0), np.zeros(0)
        total = torch.cat(results).cpu().numpy()
        return total[:, 0] / self.n_samples, total[:, 1] / self.n_samples

    def sample_groups(self, m: int) -> list[list[Batch]]:
        """The evaluation set as ``n_samples // m`` consecutive groups of ``m`` samples, each cut
        into chunks of at most ``chunk_size`` (the remaining samples are left out)."""
        joined = _cat(self.chunks)
        if joined is None:
            raise LandscapeError("sample groups need batches of one shape; got ragged batches")
        x, y = joined
        groups = []
        for start in range(0, self.n_samples - m + 1, m):
            xs, ys = x[start : start + m], y[start : start + m]
            groups.append(
                [
                    (self._format(xs[i : i + self.chunk_size]), ys[i : i + self.chunk_size])
                    for i in range(0, m, self.chunk_size)
                ]
            )
        return groups

    def loss_and_grad(
        self, state: State, names: Sequence[str], chunks: Sequence[Batch] | None = None
    ) -> tuple[float, State]:
        """Dataset loss and its gradient with respect to ``names`` (eval mode).

        The loss is the same sample-weighted mean as in ``evaluate``, over ``chunks`` (default:
        the whole evaluation set); gradients are accumulated chunk by chunk, so memory stays
        that of one chunk. A BatchNorm fold is part of the differentiated function, so the
        gradient is w.r.t. the model's own parameters.
        """
        chunks = self.chunks if chunks is None else chunks
        n_samples = sum(int(y.shape[0]) for _, y in chunks)
        params = {n: state[n].detach().clone().requires_grad_(True) for n in names}
        full = {k: v.detach() for k, v in state.items() if k not in params}
        net = self._replicas[0].runner.net
        total = 0.0
        for x, y in chunks:
            # Prepared (folded, laid out) per chunk: each backward frees its graph, the fold's
            # included.
            out = functional_call(net, self._prepare({**full, **params}), (x,))
            loss = self.loss_fn(out, y) * (y.shape[0] / n_samples)
            loss.backward()
            total += float(loss.detach())
        # every p.grad was filled by the backward passes above
        return total, {n: cast(Tensor, p.grad).detach() for n, p in params.items()}


def evaluator_for_policy(
    model: nn.Module,
    data: Iterable[Batch],
    bn: str,
    bn_data: Iterable[Batch] | None = None,
    loss_fn: LossFn | None = None,
    **engine: Any,
) -> Evaluator:
    """An :class:`Evaluator` for the BatchNorm policy ``bn``: only ``"recalibrate"`` needs
    recalibration batches, ``bn_data`` or else ``data`` itself."""
    if bn != "recalibrate":
        bn_data = None
    elif bn_data is None:
        bn_data = data
    return Evaluator(model, data, loss_fn=loss_fn, bn_data=bn_data, **engine)


@dataclasses.dataclass(frozen=True)
class Evaluation(ResultMixin):
    """Loss and accuracy of one model on one dataset.

    Attributes:
        loss: mean per-sample loss (nats for cross-entropy).
        accuracy: fraction of correct argmax predictions (NaN without class targets).
        n_samples: number of samples evaluated.
        engine: the engine settings used.
    """

    loss: float
    accuracy: float
    n_samples: int
    engine: EngineSettings


def evaluate(
    model: nn.Module,
    weights: nn.Module | dict[str, Tensor] | None,
    data: Iterable[Batch],
    *,
    loss_fn: LossFn | None = None,
    **engine: Any,
) -> Evaluation:
    """Loss and accuracy of ``model`` at ``weights`` (its own when ``None``) over ``data``.

    The model is evaluated as a trained checkpoint: eval mode, with the running statistics in
    ``weights``. ``engine`` takes the keyword arguments of :class:`Evaluator`.
    """
    ev = Evaluator(model, data, loss_fn=loss_fn, **engine)
    loss, acc = ev.evaluate_one(ev.state(weights))
    return Evaluation(loss=loss, accuracy=acc, n_samples=ev.n_samples, engine=ev.settings)


__all__ = ["EngineSettings", "Evaluation", "Evaluator", "evaluate"]
