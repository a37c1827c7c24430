"""Model builders: the paper's MLP and CNN, architecture specs, torchvision models by name.

An *architecture spec* is a plain dict ``{"name": "mlp", "kwargs": {...}}`` whose values are
only ``str``/``int``/``float``/``bool``/``list`` (and ``None``), so it can be stored in a
checkpoint and read back with ``torch.load(weights_only=True)``; :func:`build_model` turns it
into a fresh, randomly initialised :class:`torch.nn.Module`.

Layer names are stable and used by the rest of graphinterp (e.g. the paper clusters ``fc2``):

* :func:`mlp`: ``flatten, fc1, relu1, fc2, relu2, ..., fcN`` with ``N = len(hidden) + 1``.
* :func:`cnn`: ``conv1, relu0, pool, flatten, fc1, relu1, ..., fcN``.
"""
from __future__ import annotations

import difflib
import inspect
from collections import OrderedDict
from typing import Any, Callable, Dict, Optional, Sequence

from torch import nn

from graphinterp.common.errors import UnsupportedModelError
from graphinterp.sources.specs import default_spec  # noqa: F401 - re-exported, its home before the split
from graphinterp.sources.transformer import transformer

__all__ = ["MODELS", "mlp", "cnn", "torchvision_model", "build_model", "default_spec"]

#: Names accepted by :func:`build_model` as ``spec["name"]``.
MODELS = ("mlp", "cnn", "torchvision", "transformer")


def _check_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UnsupportedModelError(f"{name} must be an integer >= {minimum}, got {value!r}; fix the model arguments")
    return value


def _check_hidden(hidden: Any) -> list:
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise UnsupportedModelError(f"hidden must be a list of layer widths such as [64, 64], got {hidden!r}")
    return [_check_int("each hidden width", h) for h in hidden]


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise UnsupportedModelError(f"{name} must be True or False, got {value!r}")
    return value


def _head(layers: "OrderedDict[str, nn.Module]", in_features: int, hidden: list, num_classes: int, bias: bool) -> None:
    widths = [in_features, *hidden, num_classes]
    for i in range(1, len(widths)):
        layers[f"fc{i}"] = nn.Linear(widths[i - 1], widths[i], bias=bias)
        if i < len(widths) - 1:
            layers[f"relu{i}"] = nn.ReLU()


def mlp(
    in_features: int = 784, hidden: Sequence[int] = (64, 64), num_classes: int = 10, bias: bool = False
) -> nn.Sequential:
    """Fully connected ReLU network ``in_features -> hidden... -> num_classes`` (paper, Table 1).

    Parameters
    ----------
    in_features : int, default 784
        Number of input features; inputs of any shape ``(N, ...)`` are flattened first.
    hidden : sequence of int, default (64, 64)
        Widths of the hidden layers (may be empty for a linear model).
    num_classes : int, default 10
        Number of outputs (logits).
    bias : bool, default False
        Whether the Linear layers have biases; the paper uses none.

    Returns
    -------
    torch.nn.Sequential
        Modules named ``flatten, fc1, relu1, fc2, relu2, ..., fc{len(hidden)+1}``.

    Raises
    ------
    UnsupportedModelError
        If a size is not a positive integer.

    Examples
    --------
    >>> import torch
    >>> model = mlp()
    >>> [name for name, _ in model.named_children()]
    ['flatten', 'fc1', 'relu1', 'fc2', 'relu2', 'fc3']
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """
    in_features = _check_int("in_features", in_features)
    hidden = _check_hidden(hidden)
    num_classes = _check_int("num_classes", num_classes)
    layers: "OrderedDict[str, nn.Module]" = OrderedDict(flatten=nn.Flatten())
    _head(layers, in_features, hidden, num_classes, _check_bool("bias", bias))
    return nn.Sequential(layers)


def cnn(
    in_channels: int = 3,
    channels: int = 16,
    image_size: int = 32,
    hidden: Sequence[int] = (64, 64),
    num_classes: int = 10,
    bias: bool = False,
) -> nn.Sequential:
    """One 3x3 convolution, ReLU, 2x2 max-pool, then a ReLU MLP head (paper, Table 1).

    With the defaults: Conv2d(3, 16, 3, stride 1, padding 1) -> ReLU -> MaxPool2d(2) ->
    16 x 16 x 16 = 4096 features -> 64 -> 64 -> 10.

    Parameters
    ----------
    in_channels : int, default 3
        Input image channels.
    channels : int, default 16
        Output channels of ``conv1``.
    image_size : int, default 32
        Height and width of the (square) input images; ``fc1`` has
        ``channels * (image_size // 2) ** 2`` inputs.
    hidden : sequence of int, default (64, 64)
        Widths of the hidden Linear layers.
    num_classes : int, default 10
        Number of outputs (logits).
    bias : bool, default False
        Whether the convolution and Linear layers have biases.

    Returns
    -------
    torch.nn.Sequential
        Modules named ``conv1, relu0, pool, flatten, fc1, relu1, ..., fc{len(hidden)+1}``.

    Raises
    ------
    UnsupportedModelError
        If a size is not a positive integer or ``image_size < 2``.

    Examples
    --------
    >>> import torch
    >>> model = cnn(in_channels=1, image_size=28)
    >>> model.fc1.in_features
    3136
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """
    in_channels = _check_int("in_channels", in_channels)
    channels = _check_int("channels", channels)
    image_size = _check_int("image_size", image_size, minimum=2)
    hidden = _check_hidden(hidden)
    num_classes = _check_int("num_classes", num_classes)
    bias = _check_bool("bias", bias)
    layers: "OrderedDict[str, nn.Module]" = OrderedDict()
    layers["conv1"] = nn.Conv2d(in_channels, channels, kernel_size=3, stride=1, padding=1, bias=bias)
    layers["relu0"] = nn.ReLU()
    layers["pool"] = nn.MaxPool2d(2)
    layers["flatten"] = nn.Flatten()
    _head(layers, channels * (image_size // 2) ** 2, hidden, num_classes, bias)
    return nn.Sequential(layers)


def _classification_models() -> list:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def torchvision_model(arch: str, num_classes: Optional[int] = None) -> nn.Module:
    """A torchvision classification architecture by name, randomly initialised (never downloads).

    Parameters
    ----------
    arch : str
        Name as in ``torchvision.models.list_models(module=torchvision.models)``,
        e.g. ``"resnet18"``.
    num_classes : int, optional
        Number of outputs; ``None`` keeps torchvision's default (1000).

    Returns
    -------
    torch.nn.Module
        The architecture with fresh random weights, in training mode.

    Raises
    ------
    UnsupportedModelError
        If ``arch`` is not a torchvision classification model or the arguments do not fit it.

    Examples
    --------
    >>> model = torchvision_model("resnet18", num_classes=10)
    >>> model.fc.out_features
    10
    """
    import torchvision

    valid = _classification_models()
    if not isinstance(arch, str) or arch not in valid:
        close = difflib.get_close_matches(str(arch), valid, n=3) or valid[:5]
        raise UnsupportedModelError(
            f"unknown torchvision model {arch!r}; choose one such as {', '.join(close)} "
            f"(all: torchvision.models.list_models())"
        )
    kwargs: Dict[str, Any] = {} if num_classes is None else {"num_classes": _check_int("num_classes", num_classes)}
    try:
        return torchvision.models.get_model(arch, weights=None, **kwargs)
    except (TypeError, ValueError) as exc:
        raise UnsupportedModelError(f"cannot build torchvision model {arch!r} with {kwargs}: {exc}") from exc


_BUILDERS: Dict[str, Callable[..., nn.Module]] = {"mlp": mlp, "cnn": cnn, "torchvision": torchvision_model,
                                                 "transformer": transformer}


def build_model(spec: Dict[str, Any]) -> nn.Module:
    """Build a fresh, randomly initialised model from an architecture spec.

    Parameters
    ----------
    spec : dict
        ``{"name": "mlp" | "cnn" | "torchvision" | "transformer", "kwargs": {...}}``; ``kwargs`` are the
        builder's keyword arguments (:func:`mlp`, :func:`cnn`, :func:`torchvision_model`,
        :func:`graphinterp.sources.transformer.transformer`) and
        may be omitted.

    Returns
    -------
    torch.nn.Module
        What the spec's builder returns for its ``kwargs``.

    Raises
    ------
    UnsupportedModelError
        If the spec is malformed (not a dict of ``name`` and ``kwargs``), names no builder in
        :data:`MODELS`, or passes an argument the builder does not take or refuses.

    Examples
    --------
    >>> model = build_model({"name": "mlp", "kwargs": {"in_features": 64, "hidden": [32, 32]}})
    >>> model.fc1.weight.shape
    torch.Size([32, 64])
    """
    if not isinstance(spec, dict) or "name" not in spec:
        example = "{'name': 'mlp', 'kwargs': {}}"
        raise UnsupportedModelError(f"an architecture spec must be a dict like {example}, got {spec!r}")
    name, kwargs = spec["name"], spec.get("kwargs") or {}
    extra = sorted(set(spec) - {"name", "kwargs"})
    if extra:
        raise UnsupportedModelError(f"architecture spec has unknown keys {extra}; only 'name' and 'kwargs' are allowed")
    if name not in _BUILDERS:
        raise UnsupportedModelError(f"unknown model name {name!r}; choose one of {', '.join(MODELS)}")
    if not isinstance(kwargs, dict):
        raise UnsupportedModelError(f"spec['kwargs'] must be a dict of keyword arguments, got {type(kwargs).__name__}")
    builder = _BUILDERS[name]
    params = inspect.signature(builder).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        valid = ", ".join(params)
        raise UnsupportedModelError(f"unknown argument(s) {unknown} for model {name!r}; valid arguments: {valid}")
    missing = [p for p, v in params.items() if v.default is v.empty and p not in kwargs]
    if missing:
        raise UnsupportedModelError(f"model {name!r} needs argument(s) {missing} in spec['kwargs']")
    return builder(**kwargs)
