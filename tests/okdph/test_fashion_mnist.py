"""Fashion-MNIST: the idx reader (gzipped and plain, every malformed case), the folders it is
found in, the missing-dataset sentence, the class-balanced nested subset rule, the fmnist presets
with every method, and two batches on the real files when Debian's package is installed."""

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from okdph import data as okdata
from okdph import trainer
from okdph.cli import main
from okdph.config import apply_overrides
from okdph.data import DataError, balanced_order, balanced_subset, load_dataset
from okdph.idx import IMAGES_UINT8, LABELS_UINT8, IdxError, read_idx, write_idx
from okdph.methods import list_methods
from okdph.presets import list_presets, preset_config
from okdph.run import load_checkpoint
from okdph.session import build_session

FMNIST_PRESETS = [p.name for p in list_presets() if p.name.startswith("fmnist")]
SYSTEM = Path("/usr/share/datasets/fashion-mnist")


def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """An idx file written by hand (struct, not okdph.idx), so the reader is checked against the
    format rather than against its own writer."""
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_split(folder, prefix, images, labels, gz=True, raw=None):
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for stem, body in (
        (f"{prefix}-images-idx3-ubyte", _idx_bytes(images, IMAGES_UINT8)),
        (f"{prefix}-labels-idx1-ubyte", _idx_bytes(labels, LABELS_UINT8)),
    ):
        (folder / f"{stem}{suffix}").write_bytes(gzip.compress(body) if gz else body)


def write_fashion(folder, n_train=200, n_test=50, gz=True, seed=0):
    """Small Fashion-MNIST-format files: ``n_train`` training images in 10 equal classes."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train": (
            rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            np.arange(n_train, dtype=np.uint8) % 10,
        ),
        "t10k": (
            rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, n_test, dtype=np.uint8),
        ),
    }
    for prefix, (x, y) in arrays.items():
        _write_split(Path(folder), prefix, x, y, gz=gz)
    return arrays


@pytest.fixture
def no_system_copy(tmp_path, monkeypatch):
    """Neither Debian's folder nor a download cache: as on a machine without the dataset."""
    monkeypatch.setattr(okdata, "FASHION_MNIST_DIR", tmp_path / "no-debian")
    monkeypatch.setenv("OKDPH_DATA", str(tmp_path / "empty-cache"))


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmnist")
    write_fashion(root)
    return root


# ---- the idx reader -------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [True, False])
def test_reader_reads_gzipped_and_plain_files_written_by_hand(tmp_path, gz):
    written = write_fashion(tmp_path, gz=gz)
    suffix = ".gz" if gz else ""
    x = read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", IMAGES_UINT8)
    y = read_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", LABELS_UINT8)
    assert x.dtype == np.uint8 and x.shape == (200, 28, 28) and y.shape == (200,)
    assert np.array_equal(x, written["train"][0]) and np.array_equal(y, written["train"][1])
    # A gzipped file is recognised by its bytes, not its name; the writer round-trips.
    renamed = tmp_path / "no-suffix"
    renamed.write_bytes(gzip.compress(_idx_bytes(written["t10k"][0], IMAGES_UINT8)))
    assert np.array_equal(read_idx(renamed), written["t10k"][0])
    assert np.array_equal(read_idx(write_idx(tmp_path / "w.gz", x[:3])), x[:3])


def _malformed(tmp_path, case):
    images = np.zeros((3, 28, 28), np.uint8)
    good = _idx_bytes(images, IMAGES_UINT8)
    path = tmp_path / "bad"
    body = {
        "wrong magic": _idx_bytes(np.zeros(3, np.uint8), LABELS_UINT8),
        "not idx": b"\x12\x34\x56\x78" + good[4:],
        "truncated": good[:-5],
        "truncated header": good[:9],
        "trailing bytes": good + b"\x00",
        "empty": b"",
    }[case]
    path.write_bytes(body)
    return path


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("wrong magic", "has magic number 0x00000801, not 0x00000803 (idx images of uint8)"),
        ("not idx", "not 0x00000803"),
        ("truncated", "is truncated: 2363 bytes where its header [3, 28, 28] implies 2368"),
        ("truncated header", "shorter than its 3-dimension header"),
        ("trailing bytes", "has trailing bytes"),
        ("empty", "is truncated: 0 bytes"),
    ],
)
def test_malformed_files_are_one_sentence(tmp_path, case, fragment):
    path = _malformed(tmp_path, case)
    with pytest.raises(IdxError) as err:
        read_idx(path, IMAGES_UINT8)
    message = str(err.value)
    assert fragment in message and str(path) in message and "\n" not in message


def test_truncated_and_broken_gzip_streams(tmp_path):
    body = gzip.compress(_idx_bytes(np.ones((2, 28, 28), np.uint8), IMAGES_UINT8))
    (tmp_path / "cut.gz").write_bytes(body[: len(body) // 2])
    with pytest.raises(IdxError, match="is truncated \\(its gzip stream ends early\\)"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "broken.gz").write_bytes(body[:10] + b"\xff" * 40)
    with pytest.raises(IdxError, match="is not a readable gzip file"):
        read_idx(tmp_path / "broken.gz")
    with pytest.raises(IdxError, match="has magic number 0x12345678, which is not an idx header"):
        (tmp_path / "nonsense").write_bytes(b"\x12\x34\x56\x78")
        read_idx(tmp_path / "nonsense")


# ---- the dataset ----------------------------------------------------------------------------------
def test_dataset_from_a_root_of_gzipped_files(fake_root):
    ds = load_dataset("fashion_mnist", root=str(fake_root))
    x = read_idx(fake_root / "train-images-idx3-ubyte.gz")
    assert ds.kind == "image" and ds.num_classes == 10 and ds.scale == 255.0
    assert ds.train_x.dtype == torch.uint8 and tuple(ds.train_x.shape) == (200, 1, 28, 28)
    assert tuple(ds.test_x.shape) == (50, 1, 28, 28) and ds.test_y.dtype == torch.int64
    assert torch.equal(ds.train_x[:, 0], torch.from_numpy(x))
    unit = x / 255.0
    assert ds.mean[0] == pytest.approx(unit.mean(), abs=1e-12)
    assert ds.std[0] == pytest.approx(unit.std(), abs=1e-12)
    meta = ds.meta
    assert meta["files"]["train_images"] == str(fake_root / "train-images-idx3-ubyte.gz")
    assert (meta["n_train"], meta["n_test"], meta["n_train_full"]) == (200, 50, 200)
    assert (
        meta["train_subset"] is None and "full 200-image train split" in meta["normalization_from"]
    )


def test_torchvision_raw_layout_with_plain_files(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    written = write_fashion(raw, n_train=30, n_test=20, gz=False)
    ds = load_dataset("fashion_mnist", root=str(tmp_path))
    assert ds.meta["files"]["test_labels"] == str(raw / "t10k-labels-idx1-ubyte")
    assert ds.test_y.tolist() == written["t10k"][1].tolist()


def test_mismatched_counts_and_bad_labels_are_one_sentence(tmp_path):
    write_fashion(tmp_path, n_train=20)
    x = np.zeros((7, 28, 28), np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(x, IMAGES_UINT8)))
    with pytest.raises(DataError) as err:
        load_dataset("fashion_mnist", root=str(tmp_path))
    assert "test split has 7 images in" in str(err.value) and "but 50 labels in" in str(err.value)
    _write_split(tmp_path, "t10k", x, np.full(7, 12, np.uint8))
    with pytest.raises(DataError, match="labels in .* go up to 12; there are 10 classes"):
        load_dataset("fashion_mnist", root=str(tmp_path))
    # A reader error reaches the user as a DataError (the CLI's one-sentence path).
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(_idx_bytes(np.zeros((20, 28, 28), np.uint8), IMAGES_UINT8))
    )
    with pytest.raises(DataError, match="magic number 0x00000803, not 0x00000801"):
        load_dataset("fashion_mnist", root=str(tmp_path))


def test_missing_dataset_is_one_sentence_naming_both_ways(tmp_path, no_system_copy, capsys):
    with pytest.raises(DataError) as err:
        load_dataset("fashion_mnist")
    message = str(err.value)
    assert message.startswith(f"Fashion-MNIST was not found in {tmp_path / 'no-debian'} or ")
    for way in ("apt-get install dataset-fashion-mnist", "data.root=DIR", "data.download=true"):
        assert way in message
    assert ". " not in message and "\n" not in message
    with pytest.raises(DataError, match=f"not found in {tmp_path / 'nowhere'} or"):
        load_dataset("fashion_mnist", root=str(tmp_path / "nowhere"))
    # Half a dataset names what is missing.
    write_fashion(tmp_path / "half")
    (tmp_path / "half" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="lacks t10k-labels-idx1-ubyte \\(plain or .gz\\); install"):
        load_dataset("fashion_mnist", root=str(tmp_path / "half"))
    # From the command line: exit 2, one line, nothing written.
    out = tmp_path / "run"
    assert main(["train", "--preset", "fmnist", "--out", str(out), "--no-progress"]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and "apt-get install dataset-fashion-mnist" in err_lines[0]
    assert not out.exists()


def test_without_a_root_the_debian_folder_is_read(tmp_path, monkeypatch, no_system_copy):
    write_fashion(tmp_path / "debian", n_train=20, n_test=10)
    monkeypatch.setattr(okdata, "FASHION_MNIST_DIR", tmp_path / "debian")
    ds = load_dataset("fashion_mnist")
    assert ds.meta["files"]["train_images"] == str(
        tmp_path / "debian" / "train-images-idx3-ubyte.gz"
    )


def test_download_goes_through_torchvision_into_its_raw_layout(tmp_path, monkeypatch):
    """No network here: a stand-in for torchvision's FashionMNIST writes what it would download."""
    import torchvision

    calls = []

    class FakeFashionMNIST:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            if not (Path(root) / "FashionMNIST" / "raw").exists():
                write_fashion(Path(root) / "FashionMNIST" / "raw", n_train=20, n_test=10, gz=False)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    ds = load_dataset("fashion_mnist", root=str(tmp_path), download=True)
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]
    assert ds.meta["files"]["train_images"].startswith(str(tmp_path / "FashionMNIST" / "raw"))

    class Offline:
        def __init__(self, root, train, download):
            raise RuntimeError(
                "Error downloading train-images-idx3-ubyte.gz:\nTried http://x, got:\n<urlopen error>"
            )

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", Offline)
    with pytest.raises(DataError) as err:
        load_dataset("fashion_mnist", root=str(tmp_path / "new"), download=True)
    message = str(err.value)
    assert message.startswith(f"could not download Fashion-MNIST into {tmp_path / 'new'}")
    assert "\n" not in message and "apt-get install dataset-fashion-mnist" in message


# ---- the subset rule --------------------------------------------------------------------------
def _counts(y, idx, classes=10):
    return np.bincount(y[idx], minlength=classes)


def test_subsets_are_class_balanced_and_nested_as_n_grows():
    y = np.repeat(np.arange(10), 30)[np.random.default_rng(3).permutation(300)]
    previous = set()
    for n in range(1, 301):
        idx = balanced_subset(y, n, seed=7)
        assert len(idx) == n == len(set(idx.tolist())) and np.all(np.diff(idx) > 0)
        counts = _counts(y, idx)
        assert counts.max() - counts.min() <= 1, n
        assert previous <= set(idx.tolist()), n  # subset(n - 1) is inside subset(n)
        previous = set(idx.tolist())
    assert np.array_equal(balanced_subset(y, None, 7), np.arange(300))
    assert np.array_equal(balanced_subset(y, 1000, 7), np.arange(300))
    with pytest.raises(DataError, match="data.train_subset must be at least 1, not 0"):
        balanced_subset(y, 0, 7)


def test_the_remainder_goes_to_classes_chosen_by_the_seed():
    y = np.repeat(np.arange(10), 30)
    extras = {}
    for seed in range(12):
        counts = _counts(y, balanced_subset(y, 43, seed))  # 4 each, 3 classes get a fifth
        assert sorted(counts.tolist()) == [4] * 7 + [5] * 3
        extras[seed] = tuple(np.flatnonzero(counts == 5))
        assert np.array_equal(balanced_subset(y, 43, seed), balanced_subset(y, 43, seed))
    assert len(set(extras.values())) > 6  # the seed, not the class index, picks them
    assert not np.array_equal(balanced_subset(y, 43, 0), balanced_subset(y, 43, 1))


def test_small_classes_run_out_and_the_rest_stay_balanced():
    y = np.array([0] * 2 + [1] * 10 + [2] * 10)
    order = balanced_order(y, 0)
    assert sorted(order.tolist()) == list(range(22))
    assert _counts(y, order[:6], 3).tolist() == [2, 2, 2]
    assert _counts(y, order[:14], 3).tolist() == [2, 6, 6]


def test_subset_is_chosen_by_subset_seed_alone_not_the_run_seed(fake_root):
    base = preset_config("fmnist-quick")
    common = [f"data.root={fake_root}", "data.train_subset=45", "device=cpu"]
    a = build_session(apply_overrides(base, [*common, "seed=0"])).data
    b = build_session(apply_overrides(base, [*common, "seed=5"])).data
    c = build_session(apply_overrides(base, [*common, "seed=0", "data.subset_seed=1"])).data
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
    assert not torch.equal(a.train_x, c.train_x)
    for ds in (a, c):
        counts = torch.bincount(ds.train_y, minlength=10)
        assert counts.max() - counts.min() <= 1 and int(counts.sum()) == 45
        assert ds.meta["train_subset"]["class_counts"] == counts.tolist()
    assert a.meta["train_subset"]["subset_seed"] == 0 and c.meta["train_subset"]["subset_seed"] == 1
    # The same images as the loader's own subset, for any run seed.
    full = load_dataset("fashion_mnist", root=str(fake_root))
    idx = torch.from_numpy(balanced_subset(full.train_y.numpy(), 45, 0))
    assert torch.equal(a.train_x, full.train_x[idx])


def test_the_older_datasets_keep_their_random_subsets():
    """digits, mnist1d and CIFAR subsets are unchanged (stored runs rebuild the same data)."""
    full = load_dataset("digits")
    sub = load_dataset("digits", train_subset=100)
    idx = np.sort(np.random.default_rng(0).choice(len(full.train_y), size=100, replace=False))
    assert torch.equal(sub.train_y, full.train_y[idx])


# ---- presets ----------------------------------------------------------------------------------
def test_fmnist_presets_exist_and_use_the_cheaper_test_schedule():
    assert {"fmnist", "fmnist-quick", "fmnist-grid"} <= set(FMNIST_PRESETS)
    for name in FMNIST_PRESETS:
        cfg = preset_config(name)
        assert cfg.data == "fashion_mnist" and cfg.model.startswith("resnet")
        assert cfg.eval_test_from == 0.9 and cfg.augment == ("flip",)
        # The validation grid trains one network per run; the study presets a group of two.
        assert cfg.num_students == (1 if name == "fmnist-grid" else 2)
    assert preset_config("fmnist").method == "okdph"
    # Existing presets keep today's schedule: the test split every epoch.
    assert preset_config("mnist1d").eval_test_from == 0 and preset_config("demo").evaluates_test(1)


@pytest.mark.parametrize("preset", FMNIST_PRESETS)
def test_every_fmnist_preset_trains_every_method_for_two_batches(tmp_path, fake_root, preset):
    fast = ["epochs=1", "data.train_subset=64", "batch_size=32", f"data.root={fake_root}"]
    for method in list_methods():
        # A group method on the one-network grid preset gets the group it needs.
        group = ["num_students=2"] if method != "independent" else []
        cfg = apply_overrides(preset_config(preset), [f"method={method}", *fast, *group])
        run, metrics = trainer.train(cfg, tmp_path / method, progress=False, max_batches=2)
        info = run.read_info()
        assert info["method"]["name"] == method and info["status"] == "complete", method
        assert len(info["augment"]) == build_session(cfg).method.num_views
        assert info["arch"]["kwargs"]["in_channels"] == 1
        assert all(0 <= v <= 1 for k, v in metrics.items() if k.endswith("/test_acc"))
        assert any(k.endswith("/test_acc") for k in run.last_checkpoint().sidecar["metrics"])


def test_shared_init_students_diverge_through_their_own_flips(tmp_path, fake_root):
    """One pipeline for every view, but a random stream per view: OKDPH's students start equal
    and see differently flipped batches, so they differ after one step."""
    cfg = apply_overrides(
        preset_config("fmnist"), ["epochs=1", "batch_size=16", f"data.root={fake_root}"]
    )
    run, _ = trainer.train(cfg, tmp_path / "run", progress=False, max_batches=1)
    start = load_checkpoint(run.path / "checkpoints" / "epoch_0000.pt")["models"]
    after = load_checkpoint(run.path / "checkpoints" / "epoch_0001.pt")["models"]
    assert all(torch.equal(v, start["student_1"][k]) for k, v in start["student_0"].items())
    assert not all(torch.equal(v, after["student_1"][k]) for k, v in after["student_0"].items())


@pytest.mark.slow
@pytest.mark.skipif(
    not SYSTEM.is_dir(), reason=f"{SYSTEM} is absent (apt-get install dataset-fashion-mnist)"
)
def test_two_batches_on_the_real_files(tmp_path):
    out = tmp_path / "run"
    assert (
        main(["train", "--preset", "fmnist", "--dry-run", "--out", str(out), "--no-progress"]) == 0
    )
    info = json.loads((out / "run.json").read_text())
    data = info["data"]
    assert data["name"] == "fashion_mnist" and data["kwargs"]["train_subset"] == 1000
    assert data["n_train"] == 1000 and data["n_test"] == 10_000 and data["n_train_full"] == 60_000
    assert data["train_subset"]["class_counts"] == [100] * 10
    assert data["files"]["train_images"] == str(SYSTEM / "train-images-idx3-ubyte.gz")
    assert data["normalization"]["mean"][0] == pytest.approx(0.2860, abs=1e-4)
    assert data["normalization"]["std"][0] == pytest.approx(0.3530, abs=1e-4)
    sidecar = json.loads((out / "checkpoints" / "epoch_0001.json").read_text())
    assert 0 <= sidecar["metrics"]["student_0/test_acc"] <= 1
