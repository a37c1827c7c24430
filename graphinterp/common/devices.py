"""The torch device a computation runs on: ``None`` / ``"auto"`` means CUDA when present, else the CPU."""
from __future__ import annotations

from typing import Optional, Union

import torch

from graphinterp.common.errors import GraphinterpError

__all__ = ["resolve_device"]

_DEVICE_TYPES = ("cpu", "cuda", "mps")


def resolve_device(device: Optional[Union[str, torch.device]] = None) -> torch.device:
    """Return ``device`` as a :class:`torch.device`; ``None`` or ``"auto"`` picks CUDA when present.

    Parameters
    ----------
    device : str or torch.device, optional
        A device name (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, ``"auto"``) or a :class:`torch.device`.
        Default None: CUDA when available, else the CPU.

    Returns
    -------
    torch.device
        The device, checked to be of a type graphinterp computes on and available on this machine.

    Raises
    ------
    GraphinterpError
        An unknown device name, a device type graphinterp cannot compute on (``meta``, ...), or a
        CUDA/MPS device that is not available.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("meta")
    Traceback (most recent call last):
    ...
    graphinterp.common.errors.GraphinterpError: device 'meta' cannot run models; use auto, cpu, cuda or cuda:N
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    hint = "use auto, cpu, cuda or cuda:N"
    if isinstance(device, str):
        text = device.strip()
        if not text or any(not (c.isalnum() or c in ":_") for c in text):
            raise GraphinterpError(f"unknown device {device!r}; {hint}")
        try:
            device = torch.device(text)
        except (RuntimeError, ValueError, TypeError):
            raise GraphinterpError(f"unknown device {device!r}; {hint}") from None
    elif not isinstance(device, torch.device):
        raise GraphinterpError(f"device must be a name such as 'cpu' or 'cuda:0', got {type(device).__name__}")
    if device.type not in _DEVICE_TYPES:
        raise GraphinterpError(f"device {str(device)!r} cannot run models; {hint}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise GraphinterpError("CUDA was requested but is not available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise GraphinterpError(f"no CUDA device {device.index}: this machine has {torch.cuda.device_count()}; "
                                   f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise GraphinterpError("MPS was requested but is not available; use --device cpu")
    return device
