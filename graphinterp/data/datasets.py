"""Datasets as preloaded, normalised tensors: digits (offline), MNIST, Fashion-MNIST, CIFAR-10.

Every split is read once into a :class:`LabeledTensors` ``(N, C, H, W)``, so epochs are plain
tensor slicing. Pixels are scaled to ``[0, 1]`` and, with ``normalize=True``, standardised per
channel with :data:`NORMALIZATION`, the training sets' statistics: digits (pixels / 16, our
train split) 0.3054 / 0.3761; MNIST 0.1307 / 0.3081; Fashion-MNIST 0.2860 / 0.3530; CIFAR-10
mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616).

Files are looked for in ``data_dir`` (default: ``$GRAPHINTERP_DATA_DIR`` or
``~/.cache/graphinterp/datasets``) and downloaded only with ``download=True``. This module knows the
datasets and where their files are; :mod:`graphinterp.data.readers` reads each file layout.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from graphinterp.data.readers import _failed, _load_image_folder, _load_mnist_like, _read_cifar_batches
from graphinterp.common.errors import DataError
from graphinterp.common.fingerprint import fingerprint

__all__ = [
    "subset_indices",
    "DATASETS",
    "CIFAR10_CLASSES",
    "NORMALIZATION",
    "SPLIT_SIZES",
    "LabeledTensors",
    "dataset_info",
    "default_data_dir",
    "load_dataset",
]

#: Dataset names accepted by :func:`load_dataset` (also ``fashion_mnist``, ``cifar-10``, any case).
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
#: CIFAR-10's label order (alphabetical, so image folders sort into it).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
#: Per-channel ``(mean, std)`` of pixels in ``[0, 1]`` on each training set.
NORMALIZATION: Dict[str, Tuple[Tuple[float, ...], Tuple[float, ...]]] = {
    "digits": ((0.3054,), (0.3761,)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
_DIGITS = tuple(str(i) for i in range(10))
_FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_INFO = {"digits": ((1, 8, 8), _DIGITS), "mnist": ((1, 28, 28), _DIGITS),
         "fashion-mnist": ((1, 28, 28), _FASHION), "cifar10": ((3, 32, 32), CIFAR10_CLASSES)}
_ALIASES = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10"}
#: Examples in the complete train and test splits of the datasets read from files.
SPLIT_SIZES = {"mnist": (60000, 10000), "fashion-mnist": (60000, 10000), "cifar10": (50000, 10000)}
_CIFAR_PY = "cifar-10-batches-py"
_DIGITS_SEED = 0


@dataclass
class LabeledTensors:
    """A whole dataset split held in memory.

    Parameters
    ----------
    x : torch.Tensor of shape (N, C, H, W), float32
        Normalised images (in ``[0, 1]`` if loaded with ``normalize=False``).
    y : torch.Tensor of shape (N,), int64
        Labels in ``0..len(classes)-1``.
    classes : list of str
        Class names in label order.
    name : str
        Dataset name, e.g. ``"mnist"``.
    note : str, optional
        What is unusual about the split, e.g. fewer examples than the complete dataset has (set by
        :func:`load_dataset`; training and evaluation pass it on to the user).

    Examples
    --------
    >>> import torch
    >>> d = LabeledTensors(torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]), ["a", "b"], "toy")
    >>> len(d), len(d.subset(2, seed=0))
    (4, 2)
    """

    x: torch.Tensor
    y: torch.Tensor
    classes: List[str]
    name: str
    note: Optional[str] = None  # set by load_dataset when the split is not the complete dataset's

    def __post_init__(self) -> None:
        if self.x.dim() != 4 or self.y.dim() != 1 or len(self.x) != len(self.y):
            shapes = f"{tuple(self.x.shape)} and {tuple(self.y.shape)}"
            raise DataError(f"dataset {self.name!r} needs x of shape (N, C, H, W) and y of shape (N,), got {shapes}")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def fingerprint(self) -> str:
        """A short SHA-256 of the images, labels and their shapes: equal exactly when the examples are (what a
        resumed run must train on, whatever folder they were read from)."""
        return fingerprint(self.x, self.y, text=f"{tuple(self.x.shape)} {self.x.dtype} {tuple(self.y.shape)} {self.y.dtype}")

    def as_dataset(self) -> torch.utils.data.TensorDataset:
        """Wrap as a :class:`torch.utils.data.TensorDataset` of ``(x, y)`` pairs (no copy)."""
        return torch.utils.data.TensorDataset(self.x, self.y)

    def subset(self, n: int, seed: int = 0) -> "LabeledTensors":
        """``n`` samples drawn without replacement, kept in order; all if ``n >= len`` (DataError if ``n < 1``).

        Parameters
        ----------
        n : int
            Number of samples to keep (a positive integer).
        seed : int, default 0
            Seed of the draw (:func:`subset_indices`).

        Returns
        -------
        LabeledTensors
            The subset, with the same classes and name; ``self`` itself when ``n >= len(self)``.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DataError(f"subset size must be a positive integer, got {n!r}")
        if n >= len(self):
            return self
        idx = subset_indices(len(self), n, seed)
        return LabeledTensors(self.x[idx], self.y[idx], list(self.classes), self.name, self.note)


def subset_indices(total: int, n: int, seed: int = 0) -> torch.Tensor:
    """The indices of a seeded random subset of ``n`` of ``total`` items, in order (the one rule behind every
    ``--limit``, ``--max-train`` and windows subset).

    Parameters
    ----------
    total : int
        Number of items to draw from (indices ``0 .. total - 1``).
    n : int
        Number of indices to draw, without replacement; all ``total`` when ``n >= total``.
    seed : int, default 0
        Seed of the :class:`torch.Generator` behind the draw.

    Returns
    -------
    torch.Tensor of int64
        The drawn indices, sorted ascending.

    Examples
    --------
    >>> subset_indices(10, 3, seed=0).tolist() == sorted(subset_indices(10, 3, seed=0).tolist())
    True
    """
    return torch.randperm(total, generator=torch.Generator().manual_seed(int(seed)))[:int(n)].sort().values


def _canonical(name: str) -> str:
    key = str(name).lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in _INFO:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return key


def dataset_info(name: str) -> Dict[str, Any]:
    """Shape, classes and normalisation of a dataset, without loading it.

    Returns
    -------
    dict
        ``name``, ``input_shape`` ``(C, H, W)``, ``num_classes``, ``classes``, ``mean``, ``std``.

    Examples
    --------
    >>> info = dataset_info("cifar10")
    >>> info["input_shape"], info["num_classes"], info["classes"][0]
    ((3, 32, 32), 10, 'airplane')
    """
    key = _canonical(name)
    (shape, classes), (mean, std) = _INFO[key], NORMALIZATION[key]
    return {"name": key, "input_shape": shape, "num_classes": len(classes), "classes": list(classes),
            "mean": mean, "std": std}


def default_data_dir() -> Path:
    """``$GRAPHINTERP_DATA_DIR`` if set, else ``~/.cache/graphinterp/datasets``."""
    return Path(os.environ.get("GRAPHINTERP_DATA_DIR") or "~/.cache/graphinterp/datasets").expanduser()


def _load_digits(train: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    index = np.arange(len(bunch.target))
    idx = train_test_split(index, test_size=0.2, stratify=bunch.target, random_state=_DIGITS_SEED)[0 if train else 1]
    x = torch.from_numpy(bunch.images[idx].astype(np.float32) / 16.0).unsqueeze(1)
    return x, torch.from_numpy(bunch.target[idx].astype(np.int64))


def _load_cifar_python(root: Path, train: bool, download: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    # torchvision verifies the official md5s; files that differ (e.g. a generated subset) are read
    # with our own restricted unpickler instead of torchvision's unrestricted pickle.load.
    import torchvision

    try:
        ds = torchvision.datasets.CIFAR10(root=str(root), train=train, download=download)
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets, dtype=torch.int64)
    except RuntimeError:
        if not (root / _CIFAR_PY).is_dir():
            raise
    return _read_cifar_batches(root / _CIFAR_PY, train)


def _load_cifar10(root: Path, train: bool, download: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    split = "train" if train else "test"
    candidates = [root, root / "cifar10", root / "CIFAR10-jpeg"]
    folder = next((c / split for c in candidates if (c / split).is_dir()), None)
    if folder is not None and not (root / _CIFAR_PY).is_dir():
        x, y = _load_image_folder(folder, CIFAR10_CLASSES)
    elif (root / _CIFAR_PY).is_dir() or download:
        try:
            x, y = _load_cifar_python(root, train, download)
        except Exception as exc:  # torchvision: corrupt files, URLError, tarfile errors, ...
            if isinstance(exc, DataError):
                raise
            raise DataError(_failed("cifar10", root / _CIFAR_PY, exc, download)) from exc
    else:
        zips = [z for c in candidates if c.is_dir() for z in sorted(c.glob("*.zip"))]
        hint = f"; extract {zips[0]} there first" if zips else ""
        raise DataError(
            f"cifar10 not found: expected {root / _CIFAR_PY} or {root}/[cifar10/|CIFAR10-jpeg/]{split}/<class>/*.jpg"
            f"{hint}; pass --download to fetch it, or --data-dir pointing at the folder that holds them"
        )
    return x.float().div_(255.0), y


def load_dataset(
    name: str,
    *,
    split: str = "train",
    data_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
    download: bool = False,
    normalize: bool = True,
) -> LabeledTensors:
    """Load a whole dataset split into memory as normalised tensors.

    Parameters
    ----------
    name : {"digits", "mnist", "fashion-mnist", "cifar10"}
        ``digits`` is scikit-learn's 8x8 digits (always offline; a fixed stratified 80/20 split).
    split : {"train", "test"}
    data_dir : path, optional
        Folder holding ``MNIST/``, ``FashionMNIST/``, ``cifar-10-batches-py/`` (torchvision's
        layouts) or a CIFAR-10 image folder ``train/<class>/*.jpg`` + ``test/<class>/*.jpg``
        (directly, or under ``cifar10/`` or ``CIFAR10-jpeg/``). Default: :func:`default_data_dir`.
    download : bool, default False
        Download with torchvision if the files are missing (never done otherwise).
    normalize : bool, default True
        Standardise with :data:`NORMALIZATION`; if False, pixels stay in ``[0, 1]``.

    Returns
    -------
    LabeledTensors

    Raises
    ------
    DataError
        Unknown name or split, missing or unreadable files, or an empty dataset.

    Examples
    --------
    >>> d = load_dataset("digits", split="test")
    >>> d.x.shape, d.x.dtype, d.classes[:3]
    (torch.Size([360, 1, 8, 8]), torch.float32, ['0', '1', '2'])
    """
    key = _canonical(name)
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    train = split == "train"
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if key == "digits":
        x, y = _load_digits(train)
    elif key == "cifar10":
        x, y = _load_cifar10(root, train, download)
    else:
        x, y = _load_mnist_like(key, root, train, download)
    if len(y) == 0:
        raise DataError(f"the {split} split of {key} in {root} is empty; point --data-dir at a complete copy")
    shape, classes = _INFO[key]
    if tuple(x.shape[1:]) != shape or int(y.min()) < 0 or int(y.max()) >= len(classes):
        found = f"images of shape {tuple(x.shape[1:])}, labels {int(y.min())}..{int(y.max())}"
        wanted = f"{shape} and 0..{len(classes) - 1}"
        raise DataError(f"{key} in {root} has {found}; expected {wanted}: the files are not {key}")
    if normalize:
        mean, std = (torch.tensor(v, dtype=torch.float32).view(-1, 1, 1) for v in NORMALIZATION[key])
        x = x.sub_(mean).div_(std)
    return LabeledTensors(x=x.contiguous(), y=y, classes=list(classes), name=key, note=_size_note(key, split, root, y))


def _size_note(key: str, split: str, root: Path, y: torch.Tensor) -> Optional[str]:
    """A note when a split read from files does not hold the complete dataset's examples (an interrupted
    extraction, a damaged or cut-down copy), with the classes that fall short; None when it does."""
    if key not in SPLIT_SIZES:
        return None
    expected = SPLIT_SIZES[key][0 if split == "train" else 1]
    if len(y) == expected:
        return None
    counts = np.bincount(y.numpy(), minlength=len(_INFO[key][1]))
    short = [f"{_INFO[key][1][c]} {counts[c]:,}" for c in np.argsort(counts)[:3] if counts[c] < counts.max()]
    return (f"the {key} {split} split in {root} has {len(y):,} examples, not the {expected:,} of the complete dataset "
            f"(an interrupted download or extraction, or a cut-down copy?)"
            + (f"; fewest in {', '.join(short)}" if short else "")
            + f"; results are on these {len(y):,}")
