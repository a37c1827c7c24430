"""Readers of dataset files in one on-disk layout each, returning pixels and int64 labels.

:mod:`graphinterp.data.datasets` decides which dataset is wanted and where its files are; these functions
read one layout: MNIST and Fashion-MNIST through torchvision, CIFAR-10 python batches through a
restricted unpickler (numpy arrays only, never arbitrary objects), and CIFAR-10 image folders
``<split>/<class>/*.jpg``. Failures are raised as :class:`~graphinterp.common.errors.DataError` with the
file and a way out.
"""
from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any, Sequence, Tuple

import numpy as np
import torch

from graphinterp.common.errors import DataError

__all__: list = []  # private helpers of graphinterp.data.datasets, no public API

_TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


def _line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name if empty)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _failed(key: str, where: Path, exc: BaseException, download: bool) -> str:
    """Message for a failed download or an unreadable copy of dataset ``key`` in ``where``."""
    if download:
        return f"could not download {key} into {where} ({_line(exc)}); check the network, or put the files there by hand"
    return f"could not read {key} in {where} ({_line(exc)}); the files are damaged, re-download them with --download"


def _load_mnist_like(key: str, root: Path, train: bool, download: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """MNIST or Fashion-MNIST from torchvision's ``<root>/<MNIST|FashionMNIST>/raw``, pixels in ``[0, 1]``.

    The split's two files are read with torchvision's idx readers one by one, so a missing or damaged file is
    named (torchvision's class reads a split only when all four files are there, and says neither which is
    missing nor which is damaged); with ``download`` and a file missing, its class fetches and reads them."""
    import torchvision
    from torchvision.datasets.mnist import read_image_file, read_label_file

    folder = _TORCHVISION_FOLDER[key]
    if root.name == folder and (root / "raw").is_dir():
        root = root.parent  # the user pointed at MNIST/ itself (with --download too: not a second copy inside it)
    prefix = "train" if train else "t10k"
    images, labels = (root / folder / "raw" / f"{prefix}-{what}" for what in ("images-idx3-ubyte", "labels-idx1-ubyte"))
    missing = next((path for path in (images, labels) if not path.is_file()), None)
    if missing is not None and not download:
        packed = missing.with_name(missing.name + ".gz")
        if packed.is_file():  # the download's archive, never extracted
            raise DataError(f"{key}: {packed} is there but not {missing.name}: extract it (gunzip -k {packed}), or pass "
                            "--download (which extracts an intact archive it finds and fetches what is missing)")
        raise DataError(
            f"{key} not found: expected {missing}; pass --download to fetch it, "
            f"or --data-dir pointing at the folder that holds {folder}/"
        )
    if missing is not None:  # torchvision fetches the files and reads them
        cls = torchvision.datasets.MNIST if key == "mnist" else torchvision.datasets.FashionMNIST
        try:
            ds = cls(root=str(root), train=train, download=True)
        except Exception as exc:  # torchvision raises RuntimeError/URLError/AssertionError
            raise DataError(_failed(key, root / folder, exc, True)) from exc
        return ds.data.unsqueeze(1).float().div_(255.0), ds.targets.long()
    x, y = (_read_idx(key, path, read) for path, read in ((images, read_image_file), (labels, read_label_file)))
    if len(x) != len(y):
        raise DataError(f"{key} in {images.parent} has {len(x):,} images in {images.name} but {len(y):,} labels in "
                        f"{labels.name}: they are not one split; replace both with a matching pair")
    return x.unsqueeze(1).float().div_(255.0), y.long()


def _read_idx(key: str, path: Path, read) -> torch.Tensor:
    """One idx file read by torchvision's ``read`` (images or labels); a failure names the file."""
    try:
        return read(str(path))
    except Exception as exc:  # AssertionError (magic number, dtype), RuntimeError (size), ValueError (empty file)
        raise DataError(f"could not read {key} in {path} ({_line(exc)}); the file is damaged: delete it and fetch it "
                        "again with --download, or replace it by hand") from exc


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
    """CIFAR-10 python batches in ``folder`` as uint8 ``(N, 3, 32, 32)``, via :class:`_BatchUnpickler`."""
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


def _load_image_folder(folder: Path, classes: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Every image under ``folder/<class>/``, as uint8 ``(N, 3, 32, 32)``; the class folders must be ``classes``."""
    from torchvision.datasets import ImageFolder

    try:
        ds = ImageFolder(str(folder))
    except FileNotFoundError as exc:
        raise DataError(f"no CIFAR-10 images in {folder} ({_line(exc)}); expected {folder}/<class>/*.jpg") from exc
    if tuple(ds.classes) != tuple(classes):
        raise DataError(f"{folder} has class folders {ds.classes}; CIFAR-10 needs exactly {list(classes)}")
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders; PIL is the fallback
        warnings.filterwarnings("ignore", message=".*decoding.*deprecated", category=DeprecationWarning)
        images = [_read_rgb(path) for path, _ in ds.samples]
    return torch.stack(images), torch.tensor(ds.targets, dtype=torch.int64)
