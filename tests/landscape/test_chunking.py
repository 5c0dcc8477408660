"""The chunk-size rule both engines share."""

from __future__ import annotations

import torch
from torch import nn

from landscape.core.chunking import (
    CHUNK_BUDGET,
    CPU_CONV_CHUNK,
    default_chunk_size,
    has_convolution,
    probe_activations,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_the_chunk_fits_the_activation_budget():
    # 64 KiB per sample: 4 MiB / 64 KiB = 64 samples on the CPU, 8192 on a GPU
    assert default_chunk_size(CPU, 64 << 10, convolutional=False) == 64
    assert default_chunk_size(CUDA, 64 << 10, convolutional=False) == CHUNK_BUDGET["cuda"] >> 16
    # a power of two at or below the budget, never under 8
    assert default_chunk_size(CPU, 100 << 10, convolutional=False) == 32
    assert default_chunk_size(CPU, 1 << 30, convolutional=False) == 8


def test_conv_nets_on_the_cpu_take_at_most_128_samples():
    assert default_chunk_size(CPU, 256, convolutional=True) == CPU_CONV_CHUNK
    assert default_chunk_size(CPU, 256, convolutional=False) == 16384
    assert default_chunk_size(CUDA, 256, convolutional=True) > CPU_CONV_CHUNK


def test_the_probe_finds_the_largest_activation_per_sample():
    net = nn.Sequential(nn.Conv1d(2, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 3))
    out, largest = probe_activations(net, torch.randn(2, 2, 6))
    assert out.shape == (2, 3)
    assert largest == 8 * 6 * 4  # the conv's output, float32
    assert has_convolution(net) and not has_convolution(nn.Linear(2, 2))
