"""graphinterp's checkpoint format: a plain dict that ``torch.load(weights_only=True)`` can read.

.. code-block:: python

    {"format": "graphinterp-checkpoint", "version": 1,
     "arch": spec or None,          # graphinterp.sources.models.build_model spec
     "state_dict": {name: Tensor},  # CPU tensors
     "clustering": dict or None,    # opaque here (plain lists/ints/strs from graphinterp.clustering.cluster)
     "history": [dict, ...],        # e.g. one dict of metrics per epoch
     "train_state": dict or None,   # optimizer state, epoch, RNG states: what resuming needs
     "meta": dict}                  # free-form; "torch_version" is always added

Only tensors, ``str``/``int``/``float``/``bool``/``None``, lists, tuples and dicts may appear;
numpy arrays and numpy scalars are converted to tensors and Python scalars on save.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

from graphinterp.common.files import atomic_write
from graphinterp.common.errors import ModelFileError

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "save_checkpoint",
    "load_checkpoint",
    "is_checkpoint",
    "validate_checkpoint",
]

CHECKPOINT_FORMAT = "graphinterp-checkpoint"
CHECKPOINT_VERSION = 1
_KEYS = ("format", "version", "arch", "state_dict", "clustering", "history", "train_state", "meta")
PathLike = Union[str, "os.PathLike[str]"]


def _plain(obj: Any, where: str) -> Any:
    """Copy ``obj`` into weights_only-safe types, moving tensors to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.array(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None:
        return None
    for kind in (bool, int, float, str):  # exact types: subclasses (TorchVersion, IntEnum) pickle as code
        if isinstance(obj, kind):
            return kind(obj)
    if isinstance(obj, Mapping):
        return {_plain(k, f"{where} key"): _plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, torch.Size):
        return list(obj)
    raise ModelFileError(
        f"cannot store {where} of type {type(obj).__name__} in a checkpoint; "
        "convert it to a tensor, list, dict or plain number/string"
    )


def save_checkpoint(
    path: PathLike,
    model_or_state_dict: Union[nn.Module, Mapping[str, torch.Tensor]],
    *,
    arch: Optional[Dict[str, Any]] = None,
    clustering: Optional[Dict[str, Any]] = None,
    history: Optional[List[Dict[str, Any]]] = None,
    train_state: Optional[Dict[str, Any]] = None,
    meta: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Write a graphinterp checkpoint atomically (a crash never leaves a half-written file).

    Parameters
    ----------
    path : str or os.PathLike
        Destination; the parent folder is created if needed.
    model_or_state_dict : torch.nn.Module or dict of str to Tensor
        The weights (a ``DataParallel``/``DistributedDataParallel`` wrapper is unwrapped).
    arch : dict, optional
        Architecture spec (see :func:`graphinterp.sources.models.build_model`), so loaders can rebuild the model.
    clustering, train_state, meta : dict, optional
    history : list of dict, optional

    Returns
    -------
    dict
        The checkpoint as written.

    Raises
    ------
    ModelFileError
        If an argument has the wrong type or holds a value that cannot be stored safely.

    Examples
    --------
    >>> import os, tempfile
    >>> from graphinterp.sources.models import mlp
    >>> path = os.path.join(tempfile.mkdtemp(), "model.pt")
    >>> spec = {"name": "mlp", "kwargs": {"in_features": 4, "hidden": [3]}}
    >>> ckpt = save_checkpoint(path, mlp(4, [3]), arch=spec, history=[{"epoch": 0, "acc": 0.5}])
    >>> sorted(load_checkpoint(path)["state_dict"])
    ['fc1.weight', 'fc2.weight']
    """
    if isinstance(model_or_state_dict, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model_or_state_dict = model_or_state_dict.module
    state = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module) else model_or_state_dict
    if not isinstance(state, Mapping):
        raise ModelFileError(f"expected an nn.Module or a state_dict, got {type(model_or_state_dict).__name__}")
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "arch": _plain(arch, "arch"),
        "state_dict": _plain(dict(state), "state_dict"),
        "clustering": _plain(clustering, "clustering"),
        "history": _plain(list(history or []), "history"),
        "train_state": _plain(train_state, "train_state"),
        "meta": {"torch_version": str(torch.__version__), **_plain(dict(meta or {}), "meta")},
    }
    validate_checkpoint(ckpt)
    with atomic_write(path, "wb") as handle:
        torch.save(ckpt, handle)
    return ckpt


def is_checkpoint(obj: Any) -> bool:
    """Whether ``obj`` (a loaded object) claims to be a graphinterp checkpoint.

    Parameters
    ----------
    obj : object
        What ``torch.load`` returned.

    Returns
    -------
    bool
        True for a dict whose ``"format"`` is ``"graphinterp-checkpoint"`` (its other entries are not checked).

    Examples
    --------
    >>> is_checkpoint({"format": "graphinterp-checkpoint", "version": 1}), is_checkpoint({"fc1.weight": 0})
    (True, False)
    """
    return isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT


def validate_checkpoint(obj: Any, *, path: Optional[PathLike] = None) -> Dict[str, Any]:
    """Check the structure of a loaded graphinterp checkpoint and return it.

    Parameters
    ----------
    obj : object
        What ``torch.load`` returned.
    path : path, optional
        The file it was read from, named at the start of the error (a command may read several:
        ``circuits --compare``, ``benchmark``).

    Returns
    -------
    dict
        ``obj`` itself, unchanged.

    Raises
    ------
    ModelFileError
        If it is not a checkpoint, has another version, lacks a key or a value has the wrong type.

    Examples
    --------
    >>> ckpt = {"format": "graphinterp-checkpoint", "version": 1, "arch": None, "state_dict": {},
    ...         "clustering": None, "history": [], "train_state": None, "meta": {}}
    >>> validate_checkpoint(ckpt) is ckpt
    True
    """
    if path is None:
        return _check_checkpoint(obj)
    try:
        return _check_checkpoint(obj)
    except ModelFileError as exc:
        raise ModelFileError(f"{os.fspath(path)}: {exc}") from exc


def _check_checkpoint(obj: Any) -> Dict[str, Any]:
    if not is_checkpoint(obj):
        raise ModelFileError(
            "not a graphinterp checkpoint (no format='graphinterp-checkpoint' entry); save it with save_checkpoint"
        )
    version = obj.get("version")
    if version != CHECKPOINT_VERSION:
        hint = "upgrade graphinterp" if isinstance(version, int) and version > CHECKPOINT_VERSION else "re-save it"
        expected = CHECKPOINT_VERSION
        raise ModelFileError(f"graphinterp checkpoint version {version!r} is not supported (expected {expected}); {hint}")
    missing = [k for k in _KEYS if k not in obj]
    if missing:
        raise ModelFileError(
            f"graphinterp checkpoint lacks {missing}; the file is damaged or was not written by save_checkpoint"
        )
    types = {"arch": (dict, type(None)), "state_dict": dict, "clustering": (dict, type(None)), "history": list,
             "train_state": (dict, type(None)), "meta": dict}
    for key, expected in types.items():
        if not isinstance(obj[key], expected):
            kind = type(obj[key]).__name__
            raise ModelFileError(f"checkpoint entry {key!r} has type {kind}; the file is damaged, re-save it")
    bad = [k for k, v in obj["state_dict"].items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelFileError(
            f"checkpoint state_dict entry {bad[0]!r} is not a named tensor; the file is damaged, re-save it"
        )
    if obj["arch"] is not None and not isinstance(obj["arch"].get("name"), str):
        raise ModelFileError(
            "checkpoint 'arch' has no model name; save it with a spec such as {'name': 'mlp', 'kwargs': {...}}"
        )
    return obj


def load_checkpoint(path: PathLike, *, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Read and validate a graphinterp checkpoint with ``torch.load(weights_only=True)``.

    For any model file (third-party state_dicts, TorchScript, ...) use
    :func:`graphinterp.sources.loading.load_model_file` instead.

    Raises
    ------
    ModelFileError
        If the file cannot be read or is not a valid graphinterp checkpoint.
    """
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # missing file, corrupt zip, pickled code, ...
        if not os.path.isfile(path):
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]
            raise ModelFileError(f"cannot read checkpoint {os.fspath(path)} ({detail}); check the path") from exc
        from graphinterp.sources.load_errors import is_torchscript, load_failure

        kind, what, advice = load_failure(Path(path), exc)
        if is_torchscript(Path(path)):  # a checkpoint holds tensors and plain values only
            what = "is a TorchScript archive"
        elif kind == "corrupt":  # re-save it: the advice holds for a checkpoint too
            raise ModelFileError(f"{os.fspath(path)} {what}; {advice}") from exc
        elif kind == "pickle":
            what = "holds pickled code"
        raise ModelFileError(f"{os.fspath(path)} {what}: not a graphinterp checkpoint; pass one written by graphinterp "
                             "train") from exc
    return validate_checkpoint(obj, path=path)
