"""Locate the read-only shared datasets that sit beside the checkout (benchmarks and tests only).

``../shared/datasets`` holds MNIST, Fashion-MNIST (torchvision layout) and CIFAR-10 as a zip of
JPEGs; it is not part of the product. :func:`cifar10_jpeg_dir` extracts the zip once into a cache.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Optional, Union

__all__ = ["shared_datasets_dir", "cifar10_jpeg_dir"]

_REPO_ROOT = Path(__file__).resolve().parents[1]
_DEFAULT_CACHE = Path(tempfile.gettempdir()) / "graphinterp-cifar10-jpeg"


def shared_datasets_dir() -> Optional[Path]:
    """``../shared/datasets`` relative to the repository root, or ``None`` if it is absent.

    Examples
    --------
    >>> d = shared_datasets_dir()
    >>> d is None or (d / "README.md").is_file()
    True
    """
    path = _REPO_ROOT.parent / "shared" / "datasets"
    return path if path.is_dir() else None


def _find_split_root(folder: Path) -> Optional[Path]:
    for cand in (folder, *sorted(p for p in folder.iterdir() if p.is_dir())):
        if (cand / "train").is_dir() and (cand / "test").is_dir():
            return cand
    return None


def cifar10_jpeg_dir(cache: Optional[Union[str, "os.PathLike[str]"]] = None) -> Optional[Path]:
    """Extract ``CIFAR10-jpeg/cifar10-jpeg.zip`` once and return the folder holding ``train/`` and ``test/``.

    Parameters
    ----------
    cache : path, optional
        Where to extract (default ``/tmp/graphinterp-cifar10-jpeg``). A finished extraction is
        marked by a ``.complete`` file and reused; an interrupted one is redone.

    Returns
    -------
    pathlib.Path or None
        ``None`` if the shared zip is absent.

    Examples
    --------
    >>> d = cifar10_jpeg_dir()  # doctest: +SKIP
    >>> sorted(p.name for p in (d / "train").iterdir())[:2]  # doctest: +SKIP
    ['airplane', 'automobile']
    """
    shared = shared_datasets_dir()
    archive = shared / "CIFAR10-jpeg" / "cifar10-jpeg.zip" if shared else None
    if archive is None or not archive.is_file():
        return None
    cache = Path(cache).expanduser() if cache is not None else _DEFAULT_CACHE
    marker = cache / ".complete"
    if not marker.is_file():
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", dir=cache.parent))
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
            (tmp / ".complete").write_text(str(archive) + "\n")
            if cache.exists():
                shutil.rmtree(cache)
            try:
                os.replace(tmp, cache)
            except OSError:  # another process finished first
                if not marker.is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _find_split_root(cache)
