"""How many samples one pass of a network should take: the chunk size both engines use.

Small chunks keep a pass's activations in cache. On two CPU cores, forward passes of ResNet-32
ran 1.3-5x faster in chunks of 64 images than in one batch of 512 (``bench_surface.py``), and
chunks of 512 ran 1.3-1.4x slower than 128 for the small digits and mnist1d CNNs. Hessian-vector
products behave alike: on the mnist1d CNN chunks of 128 took 1.3x less time per product than
256, on the digits CNN 128 took 1.2x less than one batch of 1024, and on ResNet-32 chunks of 32 to
128 were within noise of each other. Splitting the data changes a dataset loss and its
derivatives only by rounding, since they are sample-weighted sums over chunks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

# Largest activation of one chunk, in bytes: on the CPU 4 MiB (64 ResNet-32 images) was never far
# from the best chunk, while 16 and 512 images were slower; plenty on a GPU.
CHUNK_BUDGET = {"cpu": 4 << 20, "cuda": 512 << 20}
# A convolution's working set is its unfolded input, a kernel's size times the activation, so the
# activation budget overshoots for narrow networks (module notes): at most 128 samples.
CPU_CONV_CHUNK = 128


def probe_activations(module: nn.Module, x: Tensor) -> tuple[Any, int]:
    """The output of ``module`` on ``x`` (no gradients) and the largest activation of one sample,
    in bytes: the input and every module's tensor output."""
    largest = [x[0].numel() * x.element_size()]

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        if isinstance(out, Tensor) and out.dim() > 0:
            largest.append(out[0].numel() * out.element_size())

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    try:
        with torch.no_grad():
            out = module(x)
    finally:
        for h in handles:
            h.remove()
    return out, max(largest)


def has_convolution(module: nn.Module) -> bool:
    """Whether ``module`` holds a 1D or 2D convolution."""
    return any(isinstance(m, nn.Conv1d | nn.Conv2d) for m in module.modules())


def default_chunk_size(device: torch.device, activation_bytes: int, convolutional: bool) -> int:
    """Samples per pass: the power of two whose largest activation fits :data:`CHUNK_BUDGET`
    (at least 8), and at most :data:`CPU_CONV_CHUNK` for a convolutional network on the CPU."""
    cpu = device.type == "cpu"
    budget = CHUNK_BUDGET["cpu" if cpu else "cuda"]
    size = 1 << max(3, int(np.log2(max(budget // max(activation_bytes, 1), 1))))
    return min(size, CPU_CONV_CHUNK) if cpu and convolutional else size
