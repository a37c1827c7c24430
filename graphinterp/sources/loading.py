"""Read any model file: graphinterp checkpoints, bare state_dicts, third-party containers, TorchScript.

Every file is read with ``torch.load(..., weights_only=True)``, which cannot run code, except what
needs code to load. TorchScript archives (recognised from their zip records, ``constants.pkl``) run
their scripted methods (``__setstate__``) while ``torch.jit.load`` reads them, and such a method can,
for one, write any file; a file holding a pickled ``nn.Module`` (``torch.save(model)``) runs arbitrary
code when unpickled. Both are refused unless ``trust_pickle=True``.
"""
from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
from torch import nn

from graphinterp.sources.checkpoint import is_checkpoint, validate_checkpoint
from graphinterp.sources.load_errors import explain_load_failure, is_torchscript
from graphinterp.common.errors import GraphinterpError, ModelFileError
from graphinterp.common.text import first_line
from graphinterp.sources.models import build_model

__all__ = ["CONTAINER_KEYS", "LoadedModel", "load_model_file"]

#: Keys under which third-party checkpoints keep their weights, tried in this order.
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net")
_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DistributedDataParallel, torch.compile
#: A tensor may claim more elements than its file stores (an expanded or overlapping view: a 2 KB file can declare
#: a 200000x200000 weight); up to this many bytes are accepted, beyond it the file is refused before any work.
_MAX_EXPANDED_BYTES = 1 << 28


@dataclass
class LoadedModel:
    """What :func:`load_model_file` found in a file.

    Parameters
    ----------
    kind : {"checkpoint", "state_dict", "torchscript", "module"}
        graphinterp checkpoint, bare or wrapped state_dict, TorchScript archive, pickled module.
    state_dict : dict of str to torch.Tensor
        CPU tensors; a ``module.`` (DataParallel) or ``_orig_mod.`` (torch.compile) prefix shared
        by all keys is removed.
    module : torch.nn.Module or None
        Rebuilt from ``arch`` for checkpoints with a spec, the loaded object for TorchScript and
        pickled modules, ``None`` otherwise.
    arch, clustering : dict or None, optional
        A checkpoint's architecture spec and stored clustering; None for other files.
    history : list of dict, optional
        A checkpoint's training history (one dict per epoch or evaluation); empty for other files.
    meta : dict, optional
        The checkpoint's meta, or a container's other top-level entries (e.g. ``best_prec1``).
    path : str, optional
        The file read (``""`` when not from a file).
    """

    kind: str
    state_dict: Dict[str, torch.Tensor]
    module: Optional[nn.Module] = None
    arch: Optional[Dict[str, Any]] = None
    clustering: Optional[Dict[str, Any]] = None
    history: List[Dict[str, Any]] = field(default_factory=list)
    meta: Dict[str, Any] = field(default_factory=dict)
    path: str = ""


def _strip_prefix(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _tensor_dict(obj: Any, path: Path, what: str) -> Dict[str, torch.Tensor]:
    """Validate a state_dict: string keys, tensor values, at least one entry."""
    if not obj:
        raise ModelFileError(f"{path} holds an empty {what}; it contains no weights")
    expanded = 0  # bytes declared by views beyond their storage (expand, overlapping strides)
    for key, value in obj.items():
        if not isinstance(key, str):
            raise ModelFileError(f"{path}: {what} has a key {key!r} of type {type(key).__name__}; a state_dict's keys are "
                                 "parameter names (strings)")
        if not isinstance(value, torch.Tensor):
            raise ModelFileError(
                f"{path}: {what} entry {key!r} is a {type(value).__name__}, not a tensor; expected a state_dict "
                f"(names -> tensors) or a dict holding one under {'/'.join(CONTAINER_KEYS)}"
            )
        if value.layout != torch.strided:
            raise ModelFileError(f"{path}: {what} entry {key!r} is a {value.layout} tensor; save dense weights "
                                 "(.to_dense()) to read it")
        if value.is_meta:
            raise ModelFileError(f"{path}: {what} entry {key!r} is a meta tensor, which holds no values (saved from a "
                                 "model on the 'meta' device); save the model after its weights were loaded")
        dense = value.numel() * value.element_size()
        stored = value.untyped_storage().nbytes()
        expanded += dense if dense > stored else 0  # over all entries: many views each under the bound add up
        if dense > stored and expanded > _MAX_EXPANDED_BYTES:
            shape = "x".join(map(str, value.shape))
            raise ModelFileError(f"{path}: {what} entry {key!r} declares a {shape} tensor ({dense:,} bytes) but the file "
                                 f"stores only {stored:,} bytes for it (an expanded or overlapping view; "
                                 f"{expanded:,} bytes so far in such views); the file is damaged or crafted: save "
                                 "dense weights (.contiguous()) to read it")
    return _strip_prefix({k: v.detach().cpu() for k, v in obj.items()})


def _load_error(exc: BaseException) -> str:
    """The telling line of a ``load_state_dict`` error (its first line is only "Error(s) in loading ...:")."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[1] if len(lines) > 1 and lines[0].endswith(":") else first_line(exc)


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _from_checkpoint(obj: Dict[str, Any], path: Path, map_location: Any) -> LoadedModel:
    validate_checkpoint(obj, path=path)
    state = _tensor_dict(obj["state_dict"], path, "checkpoint state_dict")
    module = None
    if obj["arch"] is not None:
        try:
            module = build_model(obj["arch"])
        except Exception as exc:  # GraphinterpError, or TypeError/ValueError from a stored argument of a wrong type
            raise ModelFileError(f"{path}: its stored architecture {obj['arch']} cannot be built ({first_line(exc)}); "
                                 "the file is damaged or from an incompatible version") from exc
        try:
            module.load_state_dict(state)
        except (GraphinterpError, RuntimeError) as exc:
            raise ModelFileError(f"{path}: weights do not fit architecture {obj['arch']} ({_load_error(exc)}); the file "
                                 "is damaged") from exc
        module = module.to(map_location).eval()
    return LoadedModel("checkpoint", state, module, obj["arch"], obj["clustering"], list(obj["history"]),
                       dict(obj["meta"]), str(path))


def _interpret(obj: Any, path: Path, map_location: Any) -> LoadedModel:
    if is_checkpoint(obj):
        return _from_checkpoint(obj, path, map_location)
    if isinstance(obj, nn.Module):
        state = _strip_prefix({k: v.detach().cpu() for k, v in obj.state_dict().items()})
        return LoadedModel("module", state, obj.eval(), path=str(path))
    if not isinstance(obj, dict):
        kind = type(obj).__name__
        raise ModelFileError(f"{path} holds a {kind}, not a state_dict or model; save model.state_dict() instead")
    if _is_tensor_dict(obj):
        return LoadedModel("state_dict", _tensor_dict(obj, path, "state_dict"), path=str(path))
    for key in CONTAINER_KEYS:
        inner = obj.get(key)
        meta = {k: v for k, v in obj.items() if k != key}
        if isinstance(inner, nn.Module):
            loaded = _interpret(inner, path, map_location)
            loaded.meta = meta
            return loaded
        if _is_tensor_dict(inner):
            return LoadedModel("state_dict", _tensor_dict(inner, path, f"{key!r}"), meta=meta, path=str(path))
    if not any(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = ", ".join(map(repr, list(obj)[:6])) or "none"
        raise ModelFileError(
            f"{path} holds a dict with no tensors (keys: {keys}); expected a state_dict or a dict holding one "
            f"under {'/'.join(CONTAINER_KEYS)}"
        )
    return LoadedModel("state_dict", _tensor_dict(obj, path, "state_dict"), path=str(path))


def _load_torchscript(path: Path, map_location: Any) -> LoadedModel:
    warnings.warn(f"loading {path}, a TorchScript archive: its code runs when the model does (and the trace runs it); "
                  "only do this for files you trust", UserWarning, stacklevel=3)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*deprecated", category=FutureWarning)
            module = torch.jit.load(str(path), map_location=map_location)
    except Exception as exc:  # RuntimeError from the TorchScript reader
        detail = first_line(exc)
        raise ModelFileError(f"{path} looks like TorchScript but cannot be loaded ({detail}); re-export it") from exc
    state = _strip_prefix({k: v.detach().cpu() for k, v in module.state_dict().items()})
    return LoadedModel("torchscript", state, module.eval(), path=str(path))


def _load_pickle(path: Path, map_location: Any) -> Any:
    warnings.warn(
        f"loading {path} with weights_only=False: a pickled model can run arbitrary code; "
        "only do this for files you trust",
        UserWarning,
        stacklevel=3,
    )
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except (ImportError, AttributeError) as exc:
        raise ModelFileError(
            f"{path} needs Python code that is not importable here ({first_line(exc)}); "
            "import the module that defines the model first, or re-save it as a state_dict"
        ) from exc
    except Exception as exc:
        raise ModelFileError(f"{path} cannot be unpickled ({first_line(exc)}); re-save it as a state_dict") from exc


def load_model_file(
    path: Union[str, "os.PathLike[str]"],
    *,
    trust_pickle: bool = False,
    map_location: Union[str, torch.device] = "cpu",
) -> LoadedModel:
    """Load a model file of any supported kind, safely.

    Parameters
    ----------
    path : str or os.PathLike
        A graphinterp checkpoint, a bare state_dict, a dict holding one under
        ``state_dict``/``model_state_dict``/``model``/``net`` (other entries go to ``meta``),
        or (with ``trust_pickle``) a TorchScript archive or a pickled ``nn.Module``.
    trust_pickle : bool, default False
        Allow files that run code when loaded: TorchScript (``torch.jit.load``) and pickled modules
        (``torch.load(weights_only=False)``, with a warning).
    map_location : str or torch.device, default "cpu"
        Where ``module`` lives; ``state_dict`` tensors are always on the CPU.

    Returns
    -------
    LoadedModel

    Raises
    ------
    ModelFileError
        Missing path, a folder, an empty, truncated or non-PyTorch file, TorchScript or pickled code
        without ``trust_pickle``, a dict without tensors or with non-tensor values.

    Examples
    --------
    >>> import os, tempfile, torch
    >>> path = os.path.join(tempfile.mkdtemp(), "w.pt")
    >>> torch.save({"model_state_dict": {"module.fc.weight": torch.ones(2, 3)}, "epoch": 7}, path)
    >>> loaded = load_model_file(path)
    >>> loaded.kind, list(loaded.state_dict), loaded.meta
    ('state_dict', ['fc.weight'], {'epoch': 7})
    """
    path = Path(path).expanduser()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ModelFileError(f"model file not found: {path}; check the path") from None
    except OSError as exc:  # a symbolic link loop, a folder without permission, ...
        raise ModelFileError(f"cannot read {path}: {(exc.strerror or type(exc).__name__).lower()}") from None
    if stat.S_ISDIR(mode):
        raise ModelFileError(f"{path} is a folder, not a model file; pass the .pt/.pth file inside it")
    if not stat.S_ISREG(mode):  # a FIFO, a device, a socket: "0 bytes" would be wrong, and reading may block forever
        raise ModelFileError(f"{path} is not a regular file (a FIFO, device or socket); pass a model file")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path} is empty (0 bytes); re-download or re-save it")
    if is_torchscript(path):
        if not trust_pickle:
            raise ModelFileError(
                f"{path} is a TorchScript archive: loading it runs the code it holds (scripted methods such as "
                "__setstate__, which can write files); pass --trust-pickle (trust_pickle=True) only if you trust its "
                "source, or save its weights as a state_dict (torch.save(model.state_dict(), ...)) and load that")
        return _load_torchscript(path, map_location)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (zip), EOFError, KeyError (text), ...
        error, is_pickle = explain_load_failure(path, exc)
        if not (trust_pickle and is_pickle):
            raise error from exc
        obj = _load_pickle(path, map_location)
    return _interpret(obj, path, map_location)
