"""Datasets as device tensors: scikit-learn's digits (embedded), mnist1d (generated), CIFAR-10/100,
Fashion-MNIST (Debian's ``dataset-fashion-mnist`` or idx files under a root).

Small datasets live on the training device as whole tensors, so an epoch is a loop over index
slices with no DataLoader. Inputs are stored raw (CIFAR as uint8 to save memory) and turned into
floats on the fly: ``to_unit`` gives the natural range augmentations work in ([0, 1] for images),
``normalize`` the standardised tensor the network sees.

The analysis half loads the same data through ``load_dataset`` (a public, registry-style entry
point, like ``okdph.models.create``). Besides the built-in datasets it loads the entry points of
the ``okdph.datasets`` group and import paths ``package.module:callable``
(:func:`as_tensor_dataset` describes what such a callable may return).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
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

from okdph.config import coerce_arguments
from okdph.idx import IMAGES_UINT8, LABELS_UINT8, IdxError, read_idx
from okdph.plugins import EntryPointGroup, import_object, is_import_path
from okdph.run import atomic_write_bytes


class DataError(ValueError):
    """A user-facing data problem: unknown dataset, missing root, unreadable files."""


@dataclass
class TensorDataset:
    """A train/test split held as tensors on one device.

    Attributes:
        name: the name it was loaded by (``digits``, ``mnist1d``, ``cifar10``, ``cifar100``,
            ``fashion_mnist``, an entry point's name or an import path).
        kind: ``"image"`` (N, C, H, W) or ``"signal"`` (N, L): decides which augmentations apply.
        train_x, train_y, test_x, test_y: raw inputs and int64 labels.
        num_classes: number of classes.
        scale: raw value that maps to 1.0 in ``to_unit`` (16 for digits, 255 for CIFAR and
            Fashion-MNIST).
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


def _not_a_loader(name: str, obj: Any) -> str | None:
    return None if callable(obj) else f"it is a {type(obj).__name__}, not a dataset loader"


PLUGINS = EntryPointGroup("okdph.datasets", "dataset", check=_not_a_loader, error=DataError)


def register_dataset(name: str) -> Callable:
    def decorate(fn: Callable[..., TensorDataset]) -> Callable[..., TensorDataset]:
        _LOADERS[name] = fn
        return fn

    return decorate


def list_datasets(plugins: bool = True) -> list[str]:
    """Dataset names, sorted: the built-in ones and (``plugins``) those of the ``okdph.datasets``
    entry points (not imported until used)."""
    return sorted(set(_LOADERS) | (set(PLUGINS.names()) if plugins else set()))


def load_dataset(name: str, device: torch.device | str = "cpu", **kwargs: Any) -> TensorDataset:
    """Load a dataset onto ``device``; keyword arguments are the dataset's own options.

    ``name`` is a built-in dataset (``digits``, ``mnist1d``, ``cifar10``, ``cifar100``,
    ``fashion_mnist``), an entry point of the ``okdph.datasets`` group, or an import path ``package.module:callable``.
    A plug-in or imported callable returns a :class:`TensorDataset`, or the two splits as tensors
    ``((train_x, train_y), (test_x, test_y))``, converted by :func:`as_tensor_dataset`.
    """
    source: dict[str, Any]
    loader: Callable[..., Any] | None
    if name in _LOADERS:
        loader, source = _LOADERS[name], {}
    elif is_import_path(name):
        loader, source = import_object(name, "dataset", DataError), {"import_path": name}
    else:
        loader = PLUGINS.load(name)
        if loader is None:
            raise DataError(
                f"unknown dataset {name!r}; available datasets: {', '.join(list_datasets())}, "
                "or an import path package.module:callable"
            )
        (entry,) = [e for e in PLUGINS.entries() if e.name == name]
        source = {"entry_point": f"{entry.group}:{name}", "distribution": entry.distribution}
    try:
        inspect.signature(loader).bind(**kwargs)
    except TypeError as err:
        raise DataError(f"dataset {name!r} does not accept the options {kwargs}: {err}") from None
    except ValueError:  # no signature to check
        pass
    kwargs = coerce_arguments(loader, kwargs, "data.")
    try:
        result = loader(**kwargs)
    except TypeError as err:
        raise DataError(f"dataset {name!r} does not accept the options {kwargs}: {err}") from None
    return as_tensor_dataset(result, name, source).to(device)


def as_tensor_dataset(
    result: Any, name: str, source: dict[str, Any] | None = None
) -> TensorDataset:
    """A dataset loader's result as a :class:`TensorDataset`.

    A :class:`TensorDataset` is kept (``source`` is added to its ``meta``). Two splits
    ``((train_x, train_y), (test_x, test_y))`` of tensors (or arrays) become one with

    * ``name`` the name it was loaded by (the import path, the entry point's name);
    * ``kind`` ``"image"`` when the inputs have 4 dimensions (N, C, H, W), else ``"signal"``;
    * ``scale`` 1, ``mean`` 0 and ``std`` 1: the inputs are used as given, so return them
      normalised;
    * labels as int64 and ``num_classes`` the largest label of both splits plus one;
    * ``meta`` with ``source``, the import path or entry point, ``n_train`` and ``n_test``.

    Raises :class:`DataError` (one sentence) for anything else, labels that are not one
    non-negative integer per sample, or splits whose input shapes differ.
    """
    source = dict(source or {})
    if isinstance(result, TensorDataset):
        return dataclasses.replace(result, meta={**result.meta, **source})
    try:
        (train_x, train_y), (test_x, test_y) = result
    except (TypeError, ValueError):
        raise DataError(
            f"dataset {name!r} returned a {type(result).__name__}, not a TensorDataset or "
            "((train_x, train_y), (test_x, test_y))"
        ) from None
    splits = {}
    for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if x.dim() < 2 or len(x) != len(y) or y.dim() != 1:
            raise DataError(
                f"dataset {name!r}'s {split} split has inputs of shape {tuple(x.shape)} and labels "
                f"of shape {tuple(y.shape)}; it needs (N, ...) inputs and N labels"
            )
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or (y < 0).any():
            raise DataError(
                f"dataset {name!r}'s {split} labels must be non-negative integers, not {y.dtype} "
                "values"
            )
        splits[split] = (x, y.long())
    (train_x, train_y), (test_x, test_y) = splits["train"], splits["test"]
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(
            f"dataset {name!r}'s splits have inputs of shapes {tuple(train_x.shape[1:])} (train) "
            f"and {tuple(test_x.shape[1:])} (test)"
        )
    labels = torch.cat([train_y, test_y])
    return TensorDataset(
        name=name,
        kind="image" if train_x.dim() == 4 else "signal",
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=int(labels.max()) + 1 if len(labels) else 0,
        meta={
            "source": "a loader's (train, test) tensors, used as given",
            **source,
            "n_train": len(train_y),
            "n_test": len(test_y),
        },
    )


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
    if n < 1:
        raise DataError(f"data.train_subset must be at least 1, not {n}")
    idx = np.sort(np.random.default_rng(seed).choice(len(y), size=n, replace=False))
    return x[idx], y[idx]


def balanced_order(y: np.ndarray, seed: int) -> np.ndarray:
    """Every index of ``y`` in the order class-balanced nested subsets take them.

    Each class's samples are shuffled (by ``seed`` alone); round ``r`` takes the ``r``-th sample of
    every class that still has one, the classes in an order drawn afresh for each round. So the
    first ``N`` indices hold ``N // C`` samples of each of the ``C`` classes, the remaining
    ``N % C`` from classes the seed chose (as far as class sizes allow), and the first ``N`` are
    among the first ``M`` for every ``M > N``.
    """
    y = np.asarray(y)
    if len(y) == 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    _, inverse = np.unique(y, return_inverse=True)
    inverse = inverse.reshape(-1)
    num_classes = int(inverse.max()) + 1
    rounds = np.empty(len(y), dtype=np.int64)  # the round in which each sample is taken
    for k in range(num_classes):
        members = np.flatnonzero(inverse == k)
        rounds[rng.permutation(members)] = np.arange(len(members))
    # place_in_round[r, k]: where class k comes in round r (a fresh permutation per round)
    place_in_round = rng.permuted(
        np.tile(np.arange(num_classes), (int(rounds.max()) + 1, 1)), axis=1
    )
    return np.lexsort((place_in_round[rounds, inverse], rounds))


def balanced_subset(y: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """Sorted indices of the class-balanced subset of ``n`` samples chosen by ``seed`` (all
    indices when ``n`` is ``None`` or at least ``len(y)``): the first ``n`` of
    :func:`balanced_order`, so subsets are nested as ``n`` grows."""
    if n is None or n >= len(y):
        return np.arange(len(y))
    if n < 1:
        raise DataError(f"data.train_subset must be at least 1, not {n}")
    return np.sort(balanced_order(y, seed)[:n])


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
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stubs match **kwds to allow_pickle
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


# ---- Fashion-MNIST ---------------------------------------------------------------------------------
#: Where Debian's package ``dataset-fashion-mnist`` installs the four gzipped idx files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FASHION_HINT = (
    "install it with `apt-get install dataset-fashion-mnist`, or pass data.root=DIR holding its "
    "four idx files (gzipped or not, in DIR or torchvision's DIR/FashionMNIST/raw) or "
    "data.download=true"
)


def fashion_mnist_files(root: str | os.PathLike | None = None) -> dict[str, Path]:
    """The four Fashion-MNIST idx files (keys of :data:`FASHION_MNIST_FILES`).

    Looked for in ``root`` and ``root/FashionMNIST/raw`` (torchvision's layout), or without a
    root in :data:`FASHION_MNIST_DIR` (Debian's package) and ``data_home()/FashionMNIST/raw``
    (where ``download=true`` puts them); each file plain or gzipped (``.gz``). A missing dataset
    is a :class:`DataError` naming both ways to get it.
    """
    if root is not None:
        base = Path(root).expanduser()
        folders = [base, base / "FashionMNIST" / "raw"]
    else:
        folders = [FASHION_MNIST_DIR, data_home() / "FashionMNIST" / "raw"]
    partial: tuple[Path, list[str]] | None = None
    for folder in folders:
        found = {}
        for key, stem in FASHION_MNIST_FILES.items():
            path = next((folder / n for n in (stem, f"{stem}.gz") if (folder / n).is_file()), None)
            if path is not None:
                found[key] = path
        if len(found) == len(FASHION_MNIST_FILES):
            return found
        if found and partial is None:
            partial = (folder, [s for k, s in FASHION_MNIST_FILES.items() if k not in found])
    if partial is not None:
        folder, missing = partial
        raise DataError(
            f"Fashion-MNIST in {folder} lacks {', '.join(missing)} (plain or .gz); {_FASHION_HINT}"
        )
    where = " or ".join(str(f) for f in folders)
    raise DataError(f"Fashion-MNIST was not found in {where}; {_FASHION_HINT}")


def _download_fashion_mnist(base: Path) -> None:
    """torchvision's download of Fashion-MNIST into ``base/FashionMNIST/raw`` (needs a network)."""
    import torchvision

    try:
        for train in (True, False):
            torchvision.datasets.FashionMNIST(str(base), train=train, download=True)
    except Exception as err:  # no network, a proxy, a mirror down: one sentence, not a traceback
        reason = " ".join(str(err).split())  # torchvision's message spans lines
        raise DataError(
            f"could not download Fashion-MNIST into {base} ({type(err).__name__}: {reason}); without "
            "a network, install it with `apt-get install dataset-fashion-mnist` or pass "
            "data.root=DIR holding its four idx files"
        ) from None


def _unit_stats(images: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of uint8 pixels divided by 255, exactly, from a histogram."""
    counts = np.bincount(images.reshape(-1), minlength=256).astype(np.float64)
    values = np.arange(len(counts)) / 255.0
    total = counts.sum()
    mean = float((counts * values).sum() / total)
    return mean, float(np.sqrt((counts * (values - mean) ** 2).sum() / total))


@register_dataset("fashion_mnist")
def load_fashion_mnist(
    root: str | None = None,
    download: bool = False,
    train_subset: int | None = None,
    subset_seed: int = 0,
) -> TensorDataset:
    """Fashion-MNIST (Xiao et al. 2017): 28x28 greyscale images of 10 kinds of clothing, 60,000
    for training and 10,000 for testing, kept as uint8 (N, 1, 28, 28).

    Read from ``root`` (see :func:`fashion_mnist_files`), by default from Debian's package;
    ``download=true`` fetches the files with torchvision first (into ``root``, else
    ``data_home()``). Inputs are normalised with the mean and std of the full training split.
    ``train_subset=N`` keeps the class-balanced nested subset of ``N`` training images chosen by
    ``subset_seed`` (:func:`balanced_subset`), independent of the run's seed; the test split is
    always whole.
    """
    if download:
        base = data_home(root)
        _download_fashion_mnist(base)
        root = str(base)
    files = fashion_mnist_files(root)
    arrays: dict[str, np.ndarray] = {}
    for key, path in files.items():
        try:
            arrays[key] = read_idx(path, IMAGES_UINT8 if key.endswith("images") else LABELS_UINT8)
        except IdxError as err:
            raise DataError(str(err)) from None
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(x) != len(y):
            raise DataError(
                f"Fashion-MNIST's {split} split has {len(x)} images in {files[f'{split}_images']} "
                f"but {len(y)} labels in {files[f'{split}_labels']}"
            )
        if len(y) and int(y.max()) >= len(FASHION_MNIST_CLASSES):
            raise DataError(
                f"Fashion-MNIST's {split} labels in {files[f'{split}_labels']} go up to "
                f"{int(y.max())}; there are {len(FASHION_MNIST_CLASSES)} classes (0-9)"
            )
    x_tr, y_tr = arrays["train_images"], arrays["train_labels"].astype(np.int64)
    x_te, y_te = arrays["test_images"], arrays["test_labels"].astype(np.int64)
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DataError(
            f"Fashion-MNIST's images are {x_tr.shape[1]}x{x_tr.shape[2]} in the train split and "
            f"{x_te.shape[1]}x{x_te.shape[2]} in the test split"
        )
    mean, std = _unit_stats(x_tr)
    n_full = len(y_tr)
    keep = balanced_subset(y_tr, train_subset, subset_seed)
    x_tr, y_tr = x_tr[keep], y_tr[keep]
    subset: dict[str, Any] | None = None
    if len(keep) < n_full:
        subset = {
            "size": len(keep),
            "subset_seed": subset_seed,
            "rule": (
                "class-balanced and nested: each class shuffled by subset_seed, one sample per "
                "class per round in a per-round class order drawn by subset_seed, the first N "
                "taken (okdph.data.balanced_order)"
            ),
            "class_counts": np.bincount(y_tr, minlength=len(FASHION_MNIST_CLASSES)).tolist(),
        }
    return TensorDataset(
        name="fashion_mnist",
        kind="image",
        train_x=torch.from_numpy(np.ascontiguousarray(x_tr[:, None])),
        train_y=torch.from_numpy(y_tr),
        test_x=torch.from_numpy(np.ascontiguousarray(x_te[:, None])),
        test_y=torch.from_numpy(y_te),
        num_classes=len(FASHION_MNIST_CLASSES),
        scale=255.0,
        mean=(mean,),
        std=(std,),
        meta={
            "source": "Fashion-MNIST idx files",
            "files": {key: str(path) for key, path in files.items()},
            "classes": list(FASHION_MNIST_CLASSES),
            "n_train_full": n_full,
            "n_train": len(y_tr),
            "n_test": len(y_te),
            "train_subset": subset,
            "normalization_from": f"pixels / 255 of the full {n_full}-image train split",
        },
    )
