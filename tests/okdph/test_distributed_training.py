"""Training under torch.distributed (gloo, 2 CPU processes): a 2-rank run with global batch B
equals a 1-process run with batch B, and a killed 2-rank run resumes to the same result."""

import json
import socket

import pytest
import torch
import torch.multiprocessing as mp

from okdph import trainer
from okdph.config import TrainConfig, apply_overrides
from okdph.presets import preset_config
from okdph.run import RunDir, load_checkpoint

# BN-free students (per-rank BatchNorm statistics would differ from one process by design); a
# ragged last batch (203 = 3 x 64 + 11, shards of 6 and 5) checks the shard weighting.
BASE = [
    "epochs=2",
    "data.train_subset=203",
    "batch_size=64",
    "model.width=6",
    "model.bn=false",
    "augment=shift,shift+scale,shift+noise",
]
METHODS = {
    "okdph-paper": ["method=okdph"],
    "okdph-code": ["method=okdph", "method.mode=code", "method.fusion_every=1_batch"],
    "dml": ["method=dml"],
    "wml": ["method=wml", "num_students=3", "method.weight_lr=2.0"],
    "sam": ["method=sam"],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, jobs):
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        for kind, cfg, out, stop_at in jobs:
            cfg = TrainConfig.from_dict(cfg)
            if kind == "train":
                trainer.train(cfg, out, progress=False)
            elif kind == "partial":
                from okdph.distributed import current_world
                from okdph.run import ReadOnlyRunDir
                from okdph.session import build_session, describe_run

                w = current_world()
                run = RunDir(out) if w.is_main else ReadOnlyRunDir(out)
                session = build_session(cfg)
                if w.is_main:
                    run.path.mkdir(parents=True)
                    run.write_info(describe_run(session))
                w.barrier()
                trainer.Trainer(session, run, progress=False).fit(stop_at=stop_at)
                w.barrier()
            else:
                trainer.resume(out, progress=False)
    finally:
        torch.distributed.destroy_process_group()


def _models(path, epoch=2):
    ckpt = load_checkpoint(path / "checkpoints" / f"epoch_{epoch:04d}.pt")
    return {**ckpt["models"], "method": ckpt["method_state"]}


def _assert_close(a, b, what):
    for member in a:
        for key, value in a[member].items():
            if value.is_floating_point():
                torch.testing.assert_close(
                    value, b[member][key], rtol=1e-4, atol=1e-5, msg=f"{what} {member} {key}"
                )


@pytest.mark.slow
def test_two_ranks_train_like_one_process_and_resume(tmp_path):
    jobs, configs = [], {}
    for name, extra in METHODS.items():
        cfg = apply_overrides(preset_config("demo"), [*BASE, *extra])
        configs[name] = cfg
        trainer.train(cfg, tmp_path / f"{name}-single", progress=False)
        jobs.append(("train", cfg.to_dict(), str(tmp_path / f"{name}-two"), None))
    # Killed after epoch 1, resumed by two ranks, and by one process from the same checkpoint.
    resumable = configs["okdph-paper"].to_dict()
    jobs.append(("partial", resumable, str(tmp_path / "killed"), 1))
    jobs.append(("resume", resumable, str(tmp_path / "killed"), None))
    mp.spawn(_worker, args=(2, _free_port(), jobs), nprocs=2, join=True)
    for name in METHODS:
        single, two = tmp_path / f"{name}-single", tmp_path / f"{name}-two"
        _assert_close(_models(single), _models(two), name)
        info = json.loads((two / "run.json").read_text())
        assert info["distributed"]["world_size"] == 2 and info["status"] == "complete"
        m1, m2 = RunDir(single).read_metrics()[-1], RunDir(two).read_metrics()[-1]
        assert m2["train/loss"] == pytest.approx(m1["train/loss"], rel=1e-4)
        assert m2["student_0/test_acc" if name != "wml" else "peer_0/test_acc"] == pytest.approx(
            m1["student_0/test_acc" if name != "wml" else "peer_0/test_acc"], abs=0.02
        )
    _assert_close(_models(tmp_path / "okdph-paper-single"), _models(tmp_path / "killed"), "resumed")
    assert json.loads((tmp_path / "killed" / "run.json").read_text())["resumed_with"] == [2]
