"""Dinh et al. 2017 through `landscape analyze`: a reparametrisation that leaves the function
unchanged moves lambda_max and the trace, and leaves the invariant measures where they were."""

import json

import pytest
import torch

from landscape.cli import main
from okdph.data import load_dataset
from okdph.models import create

INVARIANT = ("adaptive_lambda_max", "adaptive_trace", "relative_flatness", "sharpness_average")
SCALE_DEPENDENT = ("lambda_max", "trace")


def _train(arch: str, steps: int = 150, **kwargs) -> torch.nn.Module:
    """A network fitted a little to digits (a trained point, not a random one)."""
    torch.manual_seed(0)
    ds = load_dataset("digits")
    net = create(arch, **kwargs)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x, y = ds.inputs("train"), ds.targets("train")
    for step in range(steps):
        idx = torch.randint(0, len(y), (64,), generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()
    return net.eval()


def _analyse(folder, arch, capsys):
    argv = [
        "analyze", str(folder), "--arch", arch, "--data", "digits",
        "--analyses", "fit,eigen,trace,adaptive,relflat,sharpness",
        "--samples", "256", "--batch-size", "256", "--k", "1", "--tol", "1e-4",
        "--trace-rtol", "0.02", "--rho-average", "0.01", "--rho-worst", "0.05",
        "--certify-top", "0", "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    summary = json.loads((folder / "analysis" / "summary.json").read_text())
    return {r["member"]: r for r in summary["flatness"]["0"]}


def _check(rows, c):
    a, b = rows["original"], rows["rescaled"]
    # The same function (BatchNorm's eps, added to c^2 var, is all that differs).
    assert b["full_train_loss"] == pytest.approx(a["full_train_loss"], rel=1e-3)
    for name in INVARIANT:
        # The traces are estimates: within their intervals; the rest to their tolerances.
        rel = 0.08 if "trace" in name or "sharpness" in name else 2e-3
        assert b[name] == pytest.approx(a[name], rel=rel), name
    for name in SCALE_DEPENDENT:
        ratio = b[name] / a[name]
        assert not 1 / 1.3 < ratio < 1.3, f"{name} moved only by {ratio:.3f} under c = {c}"


@pytest.mark.slow
def test_rescaling_a_relu_layer(tmp_path, capsys):
    net = _train("mlp", hidden=(32, 32))
    c = 4.0
    scaled = {k: v.clone() for k, v in net.state_dict().items()}
    scaled["body.1.weight"] *= c  # first Linear
    scaled["body.1.bias"] *= c
    scaled["body.3.weight"] /= c  # the next one sees c times its input
    folder = tmp_path / "mlp"
    folder.mkdir()
    torch.save(net.state_dict(), folder / "original.pt")
    torch.save(scaled, folder / "rescaled.pt")
    _check(_analyse(folder, "mlp:hidden=(32,32)", capsys), c)


@pytest.mark.slow
def test_rescaling_a_convolution_before_batchnorm(tmp_path, capsys):
    net = _train("cnn_digits", width=4)
    c = 0.2  # the block of the shrunk convolution grows by 1/c^2 and dominates the Hessian
    state = {k: v.clone() for k, v in net.state_dict().items()}
    conv = next(k for k, v in state.items() if k.endswith("weight") and v.dim() == 4)
    prefix = conv.rsplit(".", 2)[0]
    bn = next(k.rsplit(".", 1)[0] for k in state if k.endswith("running_var"))
    assert bn.startswith(prefix), "the first convolution is followed by its BatchNorm"
    scaled = dict(state)
    scaled[conv] = state[conv] * c
    bias = conv.replace("weight", "bias")
    if bias in scaled:
        scaled[bias] = state[bias] * c
    scaled[f"{bn}.running_mean"] = state[f"{bn}.running_mean"] * c
    scaled[f"{bn}.running_var"] = state[f"{bn}.running_var"] * c**2
    folder = tmp_path / "cnn"
    folder.mkdir()
    torch.save(state, folder / "original.pt")
    torch.save(scaled, folder / "rescaled.pt")
    _check(_analyse(folder, "cnn_digits:width=4", capsys), c)
