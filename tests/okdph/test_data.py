import pickle

import numpy as np
import pytest
import torch

from okdph.data import DataError, load_dataset


def test_digits_split_is_stratified_fixed_and_normalised():
    a = load_dataset("digits")
    b = load_dataset("digits")
    assert a.kind == "image" and a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert len(a.train_y) + len(a.test_y) == 1797
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.train_y, b.train_y)
    # Every class is represented in the test split in proportion (+-1 sample of 20%).
    counts = torch.bincount(a.test_y, minlength=10)
    totals = counts + torch.bincount(a.train_y, minlength=10)
    assert torch.all((counts - 0.2 * totals).abs() <= 1)
    x = a.inputs("train")
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3


def test_mnist1d_is_generated_and_cached(tmp_path):
    ds = load_dataset("mnist1d", root=str(tmp_path))
    assert ds.kind == "signal" and ds.input_shape == (40,)
    assert (len(ds.train_y), len(ds.test_y)) == (4000, 1000)
    cached = list((tmp_path / "mnist1d").glob("*.npz"))
    assert len(cached) == 1
    again = load_dataset("mnist1d", root=str(tmp_path))
    assert torch.equal(again.train_x, ds.train_x)


def _write_cifar(root, name, n_train=20, n_test=10, seed=0, bytes_keys=False):
    """Small files in CIFAR's own pickle format (what torchvision downloads); ``bytes_keys``:
    as written by Python 3 code that kept the original bytes keys (b"data", b"labels")."""
    rng = np.random.default_rng(seed)
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)
    key = "labels" if name == "cifar10" else "fine_labels"
    classes = 10 if name == "cifar10" else 100
    files = [f"data_batch_{i}" for i in range(1, 6)] if name == "cifar10" else ["train"]
    written = {}
    for fname in files + (["test_batch"] if name == "cifar10" else ["test"]):
        n = n_test if "test" in fname else n_train
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, classes, size=n).tolist()
        entry = {"data": data, key: labels, "batch_label": fname}
        if bytes_keys:
            entry = {k.encode(): v for k, v in entry.items()}
        with open(folder / fname, "wb") as f:
            pickle.dump(entry, f)
        written[fname] = (data, labels)
    return written


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_loader_reads_files_in_cifar_format(tmp_path, name):
    written = _write_cifar(tmp_path, name)
    ds = load_dataset(name, root=str(tmp_path))
    train_files = [f for f in written if "test" not in f]
    assert ds.train_x.dtype == torch.uint8 and ds.input_shape == (3, 32, 32)
    assert len(ds.train_y) == 20 * len(train_files) and len(ds.test_y) == 10
    first_data, first_labels = written[train_files[0]]
    # Row-major 3072 bytes = 3 planes of 32x32 (R, G, B), as CIFAR documents.
    assert torch.equal(ds.train_x[0], torch.from_numpy(first_data[0].reshape(3, 32, 32)))
    assert ds.train_y[:20].tolist() == first_labels
    assert ds.num_classes == (10 if name == "cifar10" else 100)
    unit = ds.to_unit(ds.train_x[:2])
    assert 0.0 <= unit.min() and unit.max() <= 1.0


def test_cifar_pickles_with_bytes_keys_load_and_bad_entries_are_one_sentence(tmp_path):
    written = _write_cifar(tmp_path, "cifar10", bytes_keys=True)
    ds = load_dataset("cifar10", root=str(tmp_path))
    assert ds.train_y[:20].tolist() == written["data_batch_1"][1]
    folder = tmp_path / "other" / "cifar-100-python"
    folder.mkdir(parents=True)
    for fname in ("train", "test"):
        with open(folder / fname, "wb") as f:
            pickle.dump({b"pixels": np.zeros((2, 3072), np.uint8)}, f)
    with pytest.raises(DataError, match="has no 'data' and 'labels'"):
        load_dataset("cifar100", root=str(tmp_path / "other"))


def test_cifar_errors_are_plain_sentences(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("cifar10", root=str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="missing; pass data.download=true"):
        load_dataset("cifar10", root=str(tmp_path))
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(b"not a pickle")
    (folder / "test").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="not a readable CIFAR batch file"):
        load_dataset("cifar100", root=str(tmp_path))


def test_unknown_dataset_and_option():
    with pytest.raises(DataError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(DataError, match="does not accept"):
        load_dataset("digits", colour=True)
