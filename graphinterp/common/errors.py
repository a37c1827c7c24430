"""Exceptions raised by graphinterp.

Every error carries a one-line message that says what is wrong and how to fix it;
the command-line interface prints it as ``error: <message>`` and exits non-zero.
"""
from __future__ import annotations

__all__ = [
    "GraphinterpError",
    "ModelFileError",
    "UnsupportedModelError",
    "InputMismatchError",
    "InvalidWeightsError",
    "ClusteringError",
    "KTooLargeError",
    "UnknownLayerError",
    "DataError",
    "TrainingError",
]


class GraphinterpError(Exception):
    """Base class of all errors raised on bad input by graphinterp."""


class ModelFileError(GraphinterpError, OSError):
    """A model file is missing, unreadable, corrupt or of an unknown format."""


class UnsupportedModelError(GraphinterpError, ValueError):
    """The model's structure cannot be turned into a layered graph (e.g. residual blocks)."""


class InputMismatchError(UnsupportedModelError):
    """The model could not run on the input given (or guessed) for it: model and input do not belong together.

    ``detail`` is the model's own error (``"RuntimeError: mat1 and mat2 shapes cannot be multiplied ..."``).

    Parameters
    ----------
    message : str
        The one-line message of the error.
    detail : str, default ""
        The model's own error, kept as the ``detail`` attribute.
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class InvalidWeightsError(GraphinterpError, ValueError):
    """Weights contain NaN or infinite values, or have an unusable shape."""


class ClusteringError(GraphinterpError, ValueError):
    """A clustering request is invalid (k out of range, labels that do not fit the graph, ...)."""


class UnknownLayerError(ClusteringError):
    """A layer named to be clustered is not a layer of the model's graph (found once the graph is built); the
    command-line interface reports it as a bad ``--layers`` (exit code 2)."""


class KTooLargeError(ClusteringError):
    """The k asked for is larger than the layers to be clustered allow (too few non-isolated nodes), and a
    smaller k would fit: no layer fits it, or a layer that must be clustered (named, or trained) does not.

    The command-line interface reports it as a bad ``--k`` (exit code 2, as for any bad argument); a
    model whose layers cannot be clustered at any k (all weights zero, block-diagonal by construction)
    raises :class:`ClusteringError` instead (exit code 1).
    """


class DataError(GraphinterpError, ValueError):
    """A dataset is unknown, missing or empty."""


class TrainingError(GraphinterpError, ValueError):
    """A training configuration is invalid (negative lambda, incompatible checkpoint, ...)."""
