"""Default architecture specs: the paper's MLP and CNN for each dataset (Table 1, scaled down for digits).

A spec is the plain dict that :func:`graphinterp.sources.models.build_model` turns into a model; this
module only writes them, so it imports no builder (``models`` re-exports :func:`default_spec`).
"""
from __future__ import annotations

from typing import Any, Dict

from graphinterp.common.errors import DataError, UnsupportedModelError

__all__ = ["default_spec"]

# (channels, height, width) of each dataset's images; mirrors graphinterp.data.datasets.dataset_info
# (kept here: sources does not import data, a sibling layer).
_INPUT_SHAPES = {
    "digits": (1, 8, 8),
    "mnist": (1, 28, 28),
    "fashion-mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
}
_ALIASES = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10"}


def default_spec(dataset_name: str, model_name: str) -> Dict[str, Any]:
    """The default architecture spec for a dataset (paper, Table 1, scaled down for digits).

    ========== =================================== ===========================================
    dataset    ``"mlp"``                           ``"cnn"``
    ========== =================================== ===========================================
    digits     64 -> 32 -> 32 -> 10                conv 1->16, pool, 256 -> 32 -> 32 -> 10
    mnist      784 -> 64 -> 64 -> 10               conv 1->16, pool, 3136 -> 64 -> 64 -> 10
    fashion-   784 -> 64 -> 64 -> 10               conv 1->16, pool, 3136 -> 64 -> 64 -> 10
    mnist
    cifar10    3072 -> 64 -> 64 -> 10              conv 3->16, pool, 4096 -> 64 -> 64 -> 10
    ========== =================================== ===========================================

    Parameters
    ----------
    dataset_name : {"digits", "mnist", "fashion-mnist", "cifar10"}
    model_name : {"mlp", "cnn"}

    Returns
    -------
    dict
        A spec for :func:`build_model`.

    Raises
    ------
    DataError
        If the dataset is unknown.
    UnsupportedModelError
        If the model name is unknown.

    Examples
    --------
    >>> default_spec("digits", "mlp")
    {'name': 'mlp', 'kwargs': {'in_features': 64, 'hidden': [32, 32], 'num_classes': 10, 'bias': False}}
    """
    key = str(dataset_name).lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in _INPUT_SHAPES:
        raise DataError(f"unknown dataset {dataset_name!r}; choose one of {', '.join(_INPUT_SHAPES)}")
    if model_name not in ("mlp", "cnn"):
        raise UnsupportedModelError(f"unknown model name {model_name!r}; choose 'mlp' or 'cnn'")
    c, h, w = _INPUT_SHAPES[key]
    hidden = [32, 32] if key == "digits" else [64, 64]
    if model_name == "mlp":
        kwargs: Dict[str, Any] = {"in_features": c * h * w, "hidden": hidden, "num_classes": 10, "bias": False}
    else:
        kwargs = {"in_channels": c, "channels": 16, "image_size": h, "hidden": hidden, "num_classes": 10, "bias": False}
    return {"name": model_name, "kwargs": kwargs}
