"""Reading the three run layouts and refusing bad input with one clear sentence."""

import pytest
import torch

from landscape.core.errors import LandscapeError
from landscape.pipeline.runs import open_run

ARCH = {"name": "cnn_digits", "kwargs": {"num_classes": 10, "width": 4}}


def _reference_layout(run_path, dst):
    """Write our run's checkpoints as the OKDPH reference code does: net{i}_{epoch}ep.pkl."""
    dst.mkdir()
    for epoch in (1, 2):
        models = torch.load(run_path / "checkpoints" / f"epoch_{epoch:04d}.pt", weights_only=True)[
            "models"
        ]
        for i, member in enumerate(["student_0", "student_1", "hybrid"]):
            torch.save(models[member], dst / f"net{i}_{epoch}ep.pkl")
    return dst


def test_our_layout(tiny_run):
    run = open_run(tiny_run)
    assert run.layout == "okdph" and run.method == "okdph"
    assert run.members == ["student_0", "student_1", "hybrid"] and run.hybrid == "hybrid"
    assert [c.epoch for c in run.checkpoints] == [0, 1, 2]
    assert run.data == {"name": "digits", "kwargs": {"train_subset": 128}}
    model = run.load_model(run.checkpoints[-1], "hybrid")
    assert not model.training
    saved = torch.load(tiny_run / "checkpoints" / "epoch_0002.pt", weights_only=True)["models"][
        "hybrid"
    ]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    assert 0 < run.checkpoints[-1].metrics["hybrid/test_acc"] <= 1


def test_reference_layout(tiny_run, tmp_path):
    ref = _reference_layout(tiny_run, tmp_path / "ref")
    run = open_run(ref, arch=ARCH, data="digits")
    assert run.layout == "reference"
    assert run.members == ["student_0", "student_1", "hybrid"]  # the last index is the HWM
    assert [c.epoch for c in run.checkpoints] == [1, 2]
    run.load_model(run.checkpoint(2), "student_1")
    with pytest.raises(LandscapeError, match="pass --data to say"):
        open_run(ref, arch=ARCH)
    with pytest.raises(LandscapeError, match="pass --arch and --data to say"):
        open_run(ref)  # both missing: one sentence names both


def test_state_dict_folder(tiny_run, tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    models = torch.load(tiny_run / "checkpoints" / "epoch_0002.pt", weights_only=True)["models"]
    torch.save({"state_dict": models["student_0"]}, folder / "alice.pt")
    torch.save({f"module.{k}": v for k, v in models["student_1"].items()}, folder / "bob.pth")
    run = open_run(folder, arch=ARCH, data="digits")
    assert run.layout == "state_dicts" and sorted(run.members) == ["alice", "bob"]
    for m in run.members:
        run.load_model(run.checkpoints[0], m)


def test_bad_input_names_the_file(tiny_run, tmp_path):
    with pytest.raises(LandscapeError, match="does not exist"):
        open_run(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LandscapeError, match="holds no checkpoint"):
        open_run(empty)
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "truncated.pt").write_bytes(
        (tiny_run / "checkpoints" / "epoch_0001.pt").read_bytes()[:500]
    )
    run = open_run(folder, arch=ARCH, data="digits")
    with pytest.raises(LandscapeError, match=r"truncated\.pt is not a readable PyTorch checkpoint"):
        run.load_model(run.checkpoints[0], "truncated")
    (folder / "truncated.pt").unlink()
    torch.save([1, 2, 3], folder / "list.pt")
    run = open_run(folder, arch=ARCH, data="digits")
    with pytest.raises(LandscapeError, match=r"list\.pt does not hold a state dict"):
        run.load_model(run.checkpoints[0], "list")
    wrong = open_run(
        _reference_layout(tiny_run, tmp_path / "ref"), arch="cnn_digits", data="digits"
    )
    with pytest.raises(
        LandscapeError,
        match=r"net0_2ep\.pkl: the weights of student_0 do not fit "
        r"architecture 'cnn_digits' \(size mismatch",
    ):
        wrong.load_model(wrong.checkpoint(2), "student_0")
