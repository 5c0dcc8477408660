"""Datasets as device tensors: scikit-learn's digits (embedded), mnist1d (generated), CIFAR-10/100.

Small datasets live on the training device as whole tensors, so an epoch is a loop over index
slices with no DataLoader. Inputs are stored raw (CIFAR as uint8 to save memory) and turned into
floats on the fly: ``to_unit`` gives the natural range augmentations work in ([0, 1] for images),
``normalize`` the standardised tensor the network sees.

The analysis half loads the same data through ``load_dataset`` (a public, registry-style entry
point, like ``okdph.models.create``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from okdph.run import atomic_write_bytes


class DataError(ValueError):
    """A user-facing data problem: unknown dataset, missing root, unreadable files."""


@dataclass
class TensorDataset:
    """A train/test split held as tensors on one device.

    Attributes:
        name: registry name (``digits``, ``mnist1d``, ``cifar10``, ``cifar100``).
        kind: ``"image"`` (N, C, H, W) or ``"signal"`` (N, L): decides which augmentations apply.
        train_x, train_y, test_x, test_y: raw inputs and int64 labels.
        num_classes: number of classes.
        scale: raw value that maps to 1.0 in ``to_unit`` (16 for digits, 255 for CIFAR).
        mean, std: per-channel normalisation applied after ``to_unit``.
        meta: what ``run.json`` records about the data (source, split, sizes, normalisation).
    """

    name: str
    kind: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def to_unit(self, x: Tensor) -> Tensor:
        """Raw inputs as float32 in their natural range (images in [0, 1])."""
        x = x.float()
        return x / self.scale if self.scale != 1.0 else x

    def normalize(self, x: Tensor) -> Tensor:
        """Standardise unit-range inputs with the dataset's per-channel mean and std."""
        shape = (1, -1) + (1,) * (x.dim() - 2) if self.kind == "image" else (1, -1)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(shape)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(shape)
        if len(self.mean) == 1:
            mean, std = mean.view(()), std.view(())
        return (x - mean) / std

    def inputs(self, split: str = "test", indices: Tensor | None = None) -> Tensor:
        """Normalised, un-augmented inputs of a split (optionally a subset of indices)."""
        x = self.train_x if split == "train" else self.test_x
        if indices is not None:
            x = x[indices]
        return self.normalize(self.to_unit(x))

    def targets(self, split: str = "test", indices: Tensor | None = None) -> Tensor:
        y = self.train_y if split == "train" else self.test_y
        return y if indices is None else y[indices]

    def to(self, device: torch.device | str) -> TensorDataset:
        """A copy of the dataset on ``device``."""
        moved = {k: getattr(self, k).to(device) for k in ("train_x", "train_y", "test_x", "test_y")}
        return TensorDataset(**{**self.__dict__, **moved})


_LOADERS: dict[str, Callable[..., TensorDataset]] = {}


def register_dataset(name: str) -> Callable:
    def decorate(fn: Callable[..., TensorDataset]) -> Callable[..., TensorDataset]:
        _LOADERS[name] = fn
        return fn

    return decorate


def list_datasets() -> list[str]:
    return sorted(_LOADERS)


def load_dataset(name: str, device: torch.device | str = "cpu", **kwargs: Any) -> TensorDataset:
    """Load a registered dataset onto ``device``; keyword arguments are the dataset's own options."""
    if name not in _LOADERS:
        raise DataError(
            f"unknown dataset {name!r}; available datasets: {', '.join(list_datasets())}"
        )
    try:
        ds = _LOADERS[name](**kwargs)
    except TypeError as err:
        raise DataError(f"dataset {name!r} does not accept the options {kwargs}: {err}") from None
    return ds.to(device)


def data_home(root: str | os.PathLike | None = None) -> Path:
    """Where generated or downloaded data is cached: ``root``, else $OKDPH_DATA, else ~/.cache/okdph."""
    if root is not None:
        return Path(root).expanduser()
    return Path(os.environ.get("OKDPH_DATA", Path.home() / ".cache" / "okdph"))


def _stratified_split(
    y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a per-class split; deterministic for a seed, independent of the run's seed."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(test_fraction * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _subset(
    x: np.ndarray, y: np.ndarray, n: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    if n is None or n >= len(y):
        return x, y
    idx = np.sort(np.random.default_rng(seed).choice(len(y), size=n, replace=False))
    return x[idx], y[idx]


@register_dataset("digits")
def load_digits(
    test_fraction: float = 0.2, split_seed: int = 0, train_subset: int | None = None
) -> TensorDataset:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes) as 1x8x8 images.

    The split is stratified and fixed by ``split_seed`` so runs with different training seeds share
    their test set.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = bunch.data.astype(np.float32).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    tr, te = _stratified_split(y, test_fraction, split_seed)
    x_tr, y_tr = _subset(x[tr], y[tr], train_subset, split_seed)
    unit = x_tr / 16.0
    mean, std = float(unit.mean()), float(unit.std())
    return TensorDataset(
        name="digits",
        kind="image",
        train_x=torch.from_numpy(x_tr),
        train_y=torch.from_numpy(y_tr),
        test_x=torch.from_numpy(x[te]),
        test_y=torch.from_numpy(y[te]),
        num_classes=10,
        scale=16.0,
        mean=(mean,),
        std=(std,),
        meta={
            "source": "sklearn.datasets.load_digits",
            "test_fraction": test_fraction,
            "split_seed": split_seed,
            "n_train": len(y_tr),
            "n_test": len(te),
        },
    )


def _mnist1d_arrays(num_samples: int, seed: int, root: str | None) -> dict[str, np.ndarray]:
    """mnist1d's ``make_dataset`` output, cached on disk because generation takes seconds."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    key = hashlib.sha1(json.dumps(sorted(vars(args).items()), default=str).encode()).hexdigest()[
        :12
    ]
    path = data_home(root) / "mnist1d" / f"mnist1d_{key}.npz"
    if path.exists():
        with np.load(path) as f:
            return dict(f)
    data = make_dataset(args)
    arrays = {k: np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test")}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
    return arrays


@register_dataset("mnist1d")
def load_mnist1d(
    num_samples: int = 5000,
    seed: int = 42,
    root: str | None = None,
    train_subset: int | None = None,
) -> TensorDataset:
    """mnist1d (Greydanus 2020): length-40 signals, 10 classes, generated locally (4000/1000 split)."""
    a = _mnist1d_arrays(num_samples, seed, root)
    x_tr, y_tr = _subset(a["x"].astype(np.float32), a["y"].astype(np.int64), train_subset, seed)
    return TensorDataset(
        name="mnist1d",
        kind="signal",
        train_x=torch.from_numpy(x_tr),
        train_y=torch.from_numpy(y_tr),
        test_x=torch.from_numpy(a["x_test"].astype(np.float32)),
        test_y=torch.from_numpy(a["y_test"].astype(np.int64)),
        num_classes=10,
        meta={
            "source": "mnist1d.data.make_dataset",
            "num_samples": num_samples,
            "seed": seed,
            "n_train": len(y_tr),
            "n_test": len(a["y_test"]),
        },
    )


CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), "cifar-10-batches-py", 10),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "cifar-100-python", 100),
}


def _read_cifar(name: str, root: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Read CIFAR's python pickles (the format torchvision downloads) into uint8 NCHW + labels."""
    folder = root / CIFAR_STATS[name][2]
    if name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    else:
        files = ["train"] if train else ["test"]
    xs, ys = [], []
    for fname in files:
        path = folder / fname
        if not path.exists():
            raise DataError(
                f"CIFAR file {path} is missing; pass data.download=true to fetch {name}"
            )
        try:
            with open(path, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
        except (pickle.UnpicklingError, EOFError, ValueError) as err:
            raise DataError(f"{path} is not a readable CIFAR batch file ({err})") from None
        # Pickles written by Python 3 with bytes keys (b"data", b"labels") load as well.
        entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
        labels = entry.get("labels", entry.get("fine_labels"))
        if "data" not in entry or labels is None:
            raise DataError(
                f"CIFAR file {path} has no 'data' and 'labels' (or 'fine_labels') entries"
            )
        xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(labels))
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64)


def _load_cifar(
    name: str, root: str | None, download: bool, train_subset: int | None, seed: int
) -> TensorDataset:
    base = data_home(root)
    if root is not None and not base.exists() and not download:
        raise DataError(
            f"dataset root {base} does not exist; pass data.download=true or a valid data.root"
        )
    if download:
        import torchvision

        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        for train in (True, False):
            cls(str(base), train=train, download=True)
    x_tr, y_tr = _read_cifar(name, base, train=True)
    x_te, y_te = _read_cifar(name, base, train=False)
    x_tr, y_tr = _subset(x_tr, y_tr, train_subset, seed)
    mean, std, _, num_classes = CIFAR_STATS[name]
    return TensorDataset(
        name=name,
        kind="image",
        train_x=torch.from_numpy(x_tr),
        train_y=torch.from_numpy(y_tr),
        test_x=torch.from_numpy(x_te),
        test_y=torch.from_numpy(y_te),
        num_classes=num_classes,
        scale=255.0,
        mean=mean,
        std=std,
        meta={
            "source": f"torchvision {name} files under {base}",
            "n_train": len(y_tr),
            "n_test": len(y_te),
        },
    )


@register_dataset("cifar10")
def load_cifar10(
    root: str | None = None, download: bool = False, train_subset: int | None = None, seed: int = 42
) -> TensorDataset:
    """CIFAR-10 read from ``root/cifar-10-batches-py`` (torchvision's layout), kept as uint8."""
    return _load_cifar("cifar10", root, download, train_subset, seed)


@register_dataset("cifar100")
def load_cifar100(
    root: str | None = None, download: bool = False, train_subset: int | None = None, seed: int = 42
) -> TensorDataset:
    """CIFAR-100 (fine labels) read from ``root/cifar-100-python``, kept as uint8."""
    return _load_cifar("cifar100", root, download, train_subset, seed)
