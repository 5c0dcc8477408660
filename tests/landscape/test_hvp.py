"""HessianOperator against dense float64 Hessians: formulations, batching, filters, refusals."""

from __future__ import annotations

import socket

import pytest
import torch
from curvature_cases import DTYPE, dense_hessian, tiny_problem
from torch import nn

import landscape.curvature.products as hvp_module
from landscape.core.errors import LandscapeError
from landscape.curvature.eigenvalues import top_eigenvalues
from landscape.curvature.products import HessianOperator

SETTINGS = [
    {"method": "reverse"},  # graph kept: a single batch
    {"method": "reverse", "reuse_graph": False},
    {"method": "forward", "vectors_per_pass": 3},
]


def _ragged(x, y, sizes=(13, 13, 4)):
    out, start = [], 0
    for size in sizes:
        out.append((x[start : start + size], y[start : start + size]))
        start += size
    return out


@pytest.mark.parametrize("settings", SETTINGS)
def test_products_match_dense_hessian(settings):
    model, loss_fn, x, y = tiny_problem()
    h = dense_hessian(model, loss_fn, [(x, y)])
    op = HessianOperator(model, loss_fn, [(x, y)], **settings)
    vectors = torch.randn(5, op.n, dtype=DTYPE, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(op.matmat(vectors), vectors @ h, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.matvec(vectors[0]), h @ vectors[0], rtol=1e-10, atol=1e-12)
    assert op.n_hvp == 6


@pytest.mark.parametrize("settings", SETTINGS + [{"method": "reverse", "reuse_graph": True}])
def test_ragged_batches_weight_samples(settings):
    """Batches of 13, 13 and 4 samples give the Hessian of the mean over all 30."""
    model, loss_fn, x, y = tiny_problem()
    h = dense_hessian(model, loss_fn, [(x, y)])
    op = HessianOperator(model, loss_fn, _ragged(x, y), **settings)
    assert op.n_samples == 30 and op.info.n_batches == 3
    vectors = torch.randn(4, op.n, dtype=DTYPE, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(op.matmat(vectors), vectors @ h, rtol=1e-10, atol=1e-12)


def test_parameter_filter_gives_the_sub_block():
    model, loss_fn, x, y = tiny_problem()
    op = HessianOperator(model, loss_fn, [(x, y)], include="2.*", exclude="*.bias")
    assert op.names == ("2.weight",)
    h = dense_hessian(model, loss_fn, [(x, y)], names=["2.weight"])
    v = torch.randn(op.n, dtype=DTYPE, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(op.matvec(v), h @ v, rtol=1e-10, atol=1e-12)
    assert op.info.parameters == ("2.weight",) and op.info.include == "2.*"


def test_vector_dict_round_trip():
    model, loss_fn, x, y = tiny_problem()
    op = HessianOperator(model, loss_fn, [(x, y)])
    v = torch.arange(op.n, dtype=DTYPE)
    parts = op.vector_dict(v)
    assert [t.shape for t in parts.values()] == [p.shape for p in model.parameters()]
    torch.testing.assert_close(op.flatten(list(parts.values())), v)


def test_forward_falls_back_when_vmap_fails(monkeypatch):
    def broken_vmap(*args, **kwargs):
        raise RuntimeError("no batching rule")

    monkeypatch.setattr(hvp_module, "vmap", broken_vmap)
    model, loss_fn, x, y = tiny_problem()
    h = dense_hessian(model, loss_fn, [(x, y)])
    op = HessianOperator(model, loss_fn, [(x, y)], method="forward")
    vectors = torch.randn(3, op.n, dtype=DTYPE, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(op.matmat(vectors), vectors @ h, rtol=1e-10, atol=1e-12)
    assert not op._vmap_ok


def test_dtype_casts_a_copy_and_leaves_the_model_alone():
    model, loss_fn, x, y = tiny_problem()
    model32 = model.float()
    before = [p.detach().clone() for p in model32.parameters()]
    op = HessianOperator(model32, loss_fn, [(x.float(), y)], dtype=torch.float64)
    assert op.dtype == torch.float64
    assert all(p.dtype == torch.float32 for p in model32.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model32.parameters(), strict=True))
    h = dense_hessian(model32.double(), loss_fn, [(x.float().double(), y)])
    v = torch.randn(op.n, dtype=DTYPE, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(op.matvec(v), h @ v, rtol=1e-10, atol=1e-12)


class _AlwaysDropout(nn.Module):
    def forward(self, x):
        return nn.functional.dropout(x, 0.5, training=True)


class _StubbornDropout(nn.Dropout):
    def train(self, mode: bool = True):
        return super().train(True)


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (_AlwaysDropout(), "different outputs"),
        (_StubbornDropout(0.3), "dropout layer"),
        (nn.BatchNorm1d(5, track_running_stats=False), "batch statistics"),
    ],
)
def test_random_or_batch_dependent_models_are_refused(layer, message):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), layer, nn.Tanh(), nn.Linear(5, 3)).to(DTYPE)
    _, loss_fn, x, y = tiny_problem()
    with pytest.raises(LandscapeError, match=message):
        HessianOperator(model, loss_fn, [(x, y)])


def test_train_mode_model_is_analysed_in_eval_mode_and_restored():
    """Dropout and BatchNorm in a training-mode model: products use eval mode; modes come back."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Dropout(0.5), nn.Tanh(), nn.Linear(5, 3)
    ).to(DTYPE)
    _, loss_fn, x, y = tiny_problem()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        model(x)
    model.train()
    stats = [b.clone() for b in model[1].buffers()]
    eig = top_eigenvalues(model, loss_fn, [(x, y)], k=2, tol=1e-10, show_progress=False)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(a, b) for a, b in zip(stats, model[1].buffers(), strict=True))
    model.eval()
    h = dense_hessian(model, loss_fn, [(x, y)])
    exact = torch.linalg.eigvalsh(h).flip(0)[:2].numpy()
    assert abs(eig.values - exact).max() < 1e-8


def test_bad_arguments_are_user_errors():
    model, loss_fn, x, y = tiny_problem()
    with pytest.raises(LandscapeError, match="method"):
        HessianOperator(model, loss_fn, [(x, y)], method="sideways")
    with pytest.raises(LandscapeError, match="no trainable parameter"):
        HessianOperator(model, loss_fn, [(x, y)], include="nothing*")
    with pytest.raises(LandscapeError, match="reuse_graph"):
        HessianOperator(model, loss_fn, [(x, y)], method="forward", reuse_graph=True)
    with pytest.raises(LandscapeError, match="not initialised"):
        HessianOperator(model, loss_fn, [(x, y)], distributed=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_give_the_full_dataset_product(tmp_path):
    """Each of 2 ranks holds a shard (17 and 13 samples): every rank gets the whole-data product."""
    from curvature_cases import distributed_worker

    port = _free_port()
    torch.multiprocessing.spawn(distributed_worker, args=(2, port, str(tmp_path)), nprocs=2)
    model, loss_fn, x, y = tiny_problem()
    h = dense_hessian(model, loss_fn, [(x, y)])
    vectors = torch.randn(3, h.shape[0], dtype=DTYPE, generator=torch.Generator().manual_seed(6))
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["n_samples"] == 30
        torch.testing.assert_close(got["products"], vectors @ h, rtol=1e-10, atol=1e-12)
        exact = torch.linalg.eigvalsh(h).flip(0)[:2].numpy()
        assert abs(got["top"].numpy() - exact).max() < 1e-8


def test_kept_graphs_give_the_same_products_bit_for_bit():
    """Keeping the graphs is only a matter of time: the products are computed by the same
    operations in the same order either way."""
    model, loss_fn, x, y = tiny_problem()
    ops = [
        HessianOperator(model, loss_fn, _ragged(x, y), reuse_graph=r) for r in (None, True, False)
    ]
    vectors = torch.randn(3, ops[0].n, dtype=DTYPE, generator=torch.Generator().manual_seed(4))
    for _ in range(2):  # the first product builds (and measures) the graphs, the second reuses
        first, *others = [op.matmat(vectors) for op in ops]
        for other in others:
            assert torch.equal(first, other)
    assert ops[0].reuse_graph and ops[0].graph_bytes > 0 and ops[0].n_passes == 1
    assert ops[2].n_passes == 2


def test_graphs_outgrowing_the_budget_are_let_go(monkeypatch):
    model, loss_fn, x, y = tiny_problem()
    monkeypatch.setattr(hvp_module, "graph_memory_budget", lambda device: 1)
    op = HessianOperator(model, loss_fn, _ragged(x, y))
    h = dense_hessian(model, loss_fn, [(x, y)])
    v = torch.randn(op.n, dtype=DTYPE, generator=torch.Generator().manual_seed(5))
    for _ in range(2):
        torch.testing.assert_close(op.matvec(v), h @ v, rtol=1e-10, atol=1e-12)
    assert not op.reuse_graph and not op._graphs and op.n_passes == 2


def test_the_memory_budget_is_a_share_of_what_is_available():
    budget = hvp_module.graph_memory_budget(torch.device("cpu"))
    with open("/proc/meminfo") as f:
        available = next(
            int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable")
        )
    assert 0 < budget <= available * hvp_module.GRAPH_MEMORY_SHARE * 1.5


def _conv_bn_problem():
    """A conv -> BatchNorm -> tanh -> linear network with non-trivial running statistics and
    affine parameters, in eval mode (float64)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(2, 3, 3, bias=False),
        nn.BatchNorm1d(3),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(12, 3),
    ).to(DTYPE)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(20, 2, 6, generator=gen, dtype=DTYPE)
    y = torch.randint(0, 3, (20,), generator=gen)
    with torch.no_grad():
        model(x * 3 + 1)  # running statistics far from the defaults
        model[1].weight.uniform_(0.5, 2.0)
        model[1].bias.uniform_(-1.0, 1.0)
    return model.eval(), nn.CrossEntropyLoss(), x, y


@pytest.mark.parametrize(
    ("include", "settings"),
    [
        (None, {}),
        (None, {"reuse_graph": False}),
        (None, {"method": "forward"}),
        ("1.*", {}),  # the BatchNorm's own gamma and beta, differentiated through the fold
    ],
)
def test_folded_batchnorm_gives_the_plain_models_hessian(include, settings):
    model, loss_fn, x, y = _conv_bn_problem()
    names = [n for n, _ in model.named_parameters() if include is None or n.startswith("1.")]
    h = dense_hessian(model, loss_fn, _ragged(x, y, (12, 8)), names=names)
    op = HessianOperator(model, loss_fn, _ragged(x, y, (12, 8)), include=include, **settings)
    plain = HessianOperator(model, loss_fn, [(x, y)], include=include, fold_bn=False)
    assert op.info.fold_bn and not plain.info.fold_bn
    assert op.names == tuple(names)
    vectors = torch.randn(3, op.n, dtype=DTYPE, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(op.matmat(vectors), vectors @ h, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(plain.matmat(vectors), vectors @ h, rtol=1e-10, atol=1e-12)


def test_batch_statistics_are_never_folded_nor_rechunked():
    model, loss_fn, x, y = _conv_bn_problem()
    op = HessianOperator(model, loss_fn, _ragged(x, y, (12, 8)), batchnorm="batch", chunk_size=5)
    assert not op.info.fold_bn
    assert op.info.chunk_size == 0 and op.info.n_batches == 2  # the batches are the statistics


@pytest.mark.parametrize("chunk_size", [1, 7, 100])
def test_batches_split_into_chunks_give_the_same_hessian(chunk_size):
    """Chunks are sample-weighted terms of the same sum: 13, 13 and 4 samples cut into chunks of
    7 are 2 + 2 + 1 chunks, and the products are still the dense Hessian's."""
    model, loss_fn, x, y = tiny_problem()
    h = dense_hessian(model, loss_fn, [(x, y)])
    op = HessianOperator(model, loss_fn, _ragged(x, y), chunk_size=chunk_size)
    expected = {1: 30, 7: 5, 100: 3}[chunk_size]
    assert op.info.n_batches == expected and op.info.chunk_size == chunk_size
    vectors = torch.randn(3, op.n, dtype=DTYPE, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(op.matmat(vectors), vectors @ h, rtol=1e-10, atol=1e-12)


def test_large_batches_are_split_on_the_cpu():
    """Batches above CPU_CHUNK samples are cut into chunks of that size on the CPU."""
    model, loss_fn, x, y = tiny_problem(n_samples=400)
    op = HessianOperator(model, loss_fn, [(x, y)], device="cpu")
    assert op.info.chunk_size == hvp_module.CPU_CHUNK == 256 and op.info.n_batches == 2
