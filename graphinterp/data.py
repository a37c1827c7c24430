"""Datasets as preloaded, normalised tensors: digits (offline), MNIST, Fashion-MNIST, CIFAR-10.

Every split is read once into a :class:`LabeledTensors` ``(N, C, H, W)``, so epochs are plain
tensor slicing. Pixels are scaled to ``[0, 1]`` and, with ``normalize=True``, standardised per
channel with :data:`NORMALIZATION`, the training sets' statistics: digits (pixels / 16, our
train split) 0.3054 / 0.3761; MNIST 0.1307 / 0.3081; Fashion-MNIST 0.2860 / 0.3530; CIFAR-10
mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616).

Files are looked for in ``data_dir`` (default: ``$GRAPHINTERP_DATA_DIR`` or
``~/.cache/graphinterp/datasets``) and downloaded only with ``download=True``.
"""
from __future__ import annotations

import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from .errors import DataError

__all__ = [
    "DATASETS",
    "CIFAR10_CLASSES",
    "NORMALIZATION",
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
_TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_CIFAR_PY = "cifar-10-batches-py"
_DIGITS_SEED = 0


@dataclass
class LabeledTensors:
    """A whole dataset split held in memory.

    Attributes
    ----------
    x : torch.Tensor of shape (N, C, H, W), float32
        Normalised images (in ``[0, 1]`` if loaded with ``normalize=False``).
    y : torch.Tensor of shape (N,), int64
        Labels in ``0..len(classes)-1``.
    classes : list of str
        Class names in label order.
    name : str
        Dataset name, e.g. ``"mnist"``.

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

    def __post_init__(self) -> None:
        if self.x.dim() != 4 or self.y.dim() != 1 or len(self.x) != len(self.y):
            shapes = f"{tuple(self.x.shape)} and {tuple(self.y.shape)}"
            raise DataError(f"dataset {self.name!r} needs x of shape (N, C, H, W) and y of shape (N,), got {shapes}")

    def __len__(self) -> int:
        return len(self.y)

    def as_dataset(self) -> torch.utils.data.TensorDataset:
        """Wrap as a :class:`torch.utils.data.TensorDataset` of ``(x, y)`` pairs (no copy)."""
        return torch.utils.data.TensorDataset(self.x, self.y)

    def subset(self, n: int, seed: int = 0) -> "LabeledTensors":
        """``n`` samples drawn without replacement, kept in order; all if ``n >= len`` (DataError if ``n < 1``)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DataError(f"subset size must be a positive integer, got {n!r}")
        if n >= len(self):
            return self
        gen = torch.Generator().manual_seed(int(seed))
        idx = torch.randperm(len(self), generator=gen)[:n].sort().values
        return LabeledTensors(self.x[idx], self.y[idx], list(self.classes), self.name)


def _line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _failed(key: str, where: Path, exc: BaseException, download: bool) -> str:
    if download:
        return f"could not download {key} into {where} ({_line(exc)}); check the network, or put the files there by hand"
    return f"could not read {key} in {where} ({_line(exc)}); the files are damaged, re-download them with --download"


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


def _load_mnist_like(key: str, root: Path, train: bool, download: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    import torchvision

    folder = _TORCHVISION_FOLDER[key]
    if not download and root.name == folder and (root / "raw").is_dir():
        root = root.parent  # the user pointed at MNIST/ itself
    cls = torchvision.datasets.MNIST if key == "mnist" else torchvision.datasets.FashionMNIST
    expected = root / folder / "raw" / f"{'train' if train else 't10k'}-images-idx3-ubyte"
    if not download and not expected.is_file():
        raise DataError(
            f"{key} not found: expected {expected}; pass --download to fetch it, "
            f"or --data-dir pointing at the folder that holds {folder}/"
        )
    try:
        ds = cls(root=str(root), train=train, download=download)
    except Exception as exc:  # torchvision raises RuntimeError/URLError/AssertionError
        raise DataError(_failed(key, root / folder, exc, download)) from exc
    return ds.data.unsqueeze(1).float().div_(255.0), ds.targets.long()


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10 python batches, allowing only numpy array reconstruction."""

    _ALLOWED = {
        (m, n)
        for m in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric")
        for n in ("_reconstruct", "_frombuffer", "ndarray", "dtype", "scalar")
    } | {("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 batch")


def _read_cifar_batches(folder: Path, train: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    data, labels = [], []
    for fname in names:
        path = folder / fname
        try:
            with open(path, "rb") as handle:
                entry = _BatchUnpickler(handle, encoding="latin1").load()
            data.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(int(v) for v in entry["labels"])
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as exc:
            detail = _line(exc)
            raise DataError(f"cannot read CIFAR-10 batch {path} ({detail}); re-download it with --download") from exc
    return torch.from_numpy(np.concatenate(data)), torch.tensor(labels, dtype=torch.int64)


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


def _read_rgb(path: str) -> torch.Tensor:
    """One 32x32 image as uint8 (3, 32, 32): torchvision's decoder (2x faster than PIL), else PIL."""
    try:
        from torchvision import io

        img = io.decode_image(io.read_file(path), mode=io.ImageReadMode.RGB)
    except (ImportError, AttributeError, RuntimeError):  # decoder removed, or a format it lacks
        from PIL import Image

        try:
            with Image.open(path) as pil:
                img = torch.from_numpy(np.array(pil.convert("RGB"))).permute(2, 0, 1)
        except OSError as exc:  # PIL.UnidentifiedImageError is an OSError
            raise DataError(f"cannot read image {path} ({_line(exc)}); remove or replace the broken file") from exc
    if tuple(img.shape) != (3, 32, 32):
        raise DataError(f"{path} is {tuple(img.shape[1:])} pixels; CIFAR-10 images must all be 32x32")
    return img


def _load_image_folder(folder: Path) -> Tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import ImageFolder

    try:
        ds = ImageFolder(str(folder))
    except FileNotFoundError as exc:
        raise DataError(f"no CIFAR-10 images in {folder} ({_line(exc)}); expected {folder}/<class>/*.jpg") from exc
    if tuple(ds.classes) != CIFAR10_CLASSES:
        raise DataError(f"{folder} has class folders {ds.classes}; CIFAR-10 needs exactly {list(CIFAR10_CLASSES)}")
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders; PIL is the fallback
        warnings.filterwarnings("ignore", message=".*decoding.*deprecated", category=DeprecationWarning)
        images = [_read_rgb(path) for path, _ in ds.samples]
    return torch.stack(images), torch.tensor(ds.targets, dtype=torch.int64)


def _load_cifar10(root: Path, train: bool, download: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    split = "train" if train else "test"
    candidates = [root, root / "cifar10", root / "CIFAR10-jpeg"]
    folder = next((c / split for c in candidates if (c / split).is_dir()), None)
    if folder is not None and not (root / _CIFAR_PY).is_dir():
        x, y = _load_image_folder(folder)
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
    return LabeledTensors(x=x.contiguous(), y=y, classes=list(classes), name=key)
