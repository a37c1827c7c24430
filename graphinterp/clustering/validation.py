"""The one rule for the number of clusters k, and the count it is checked against.

A layer's *non-isolated* nodes are its input (row) and output (column) nodes with at least one
non-zero incident weight, in the ``"grouped"`` view (one node per channel); isolated nodes get the
label ``-1`` and belong to no cluster. BSGC pairs every row cluster with a column cluster, so each
of the ``k`` clusters needs an input *and* an output node of every clustered layer:

    ``2 <= k <= min(non-isolated inputs, non-isolated outputs)`` of each clustered layer.

The same rule applies to per-layer clustering (:func:`~graphinterp.clustering.cluster.cluster_layers`,
``analyze``, ``benchmark``, ``export``) and to network-wide clustering of a chained graph
(:func:`~graphinterp.clustering.cluster.cluster_network`, ``train``): a hidden level shared by two
layers is counted on each side separately, so a neuron with no incoming weight does not count as an
output of its own layer even if it feeds the next one. (A DAG clustered by
:func:`~graphinterp.clustering.dag_cluster.cluster_dag` has one label per shared node; there the limit
is its number of connected nodes.) :class:`~graphinterp.clustering.bsgc.BSGC` keeps its own guard for
direct users of the estimator.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from graphinterp.common.errors import ClusteringError, KTooLargeError

__all__ = ["check_k", "clusterable_layers", "live_sizes", "nothing_clusterable", "nothing_clusterable_error",
           "refuse_block_diagonal", "require_clusterable"]


def live_sizes(layer) -> Tuple[int, int]:
    """``(non-isolated inputs, non-isolated outputs)`` of a layer (grouped view), or of an ``(n_in, n_out)`` matrix.

    Parameters
    ----------
    layer : Layer or torch.Tensor
        A layer (its :meth:`~graphinterp.graph.layer.Layer.squared` weights are used) or an
        ``(n_in, n_out)`` tensor of weights or similarities.

    Returns
    -------
    tuple of int
        Rows and columns with at least one non-zero entry.

    Examples
    --------
    >>> import torch
    >>> live_sizes(torch.tensor([[1.0, 0.0], [0.0, 0.0], [2.0, 0.0]]))
    (2, 1)
    """
    sq = layer.squared() if hasattr(layer, "squared") else layer.abs()
    return int((sq.sum(1) > 0).sum()), int((sq.sum(0) > 0).sum())


def check_k(k, graph=None, layers: Optional[Sequence[str]] = None, *, leave_out: Optional[str] = "--layers") -> int:
    """Return ``k`` as an int, or raise :class:`ClusteringError` unless it fits the rule of this module.

    Parameters
    ----------
    k : int
        Number of clusters: an integer (not a bool, float or string) >= 2.
    graph : LayeredGraph or ModelGraph, optional
        When given, ``k`` must also be at most the non-isolated inputs and outputs of each of ``layers``.
    layers : sequence of str, optional
        The clustered layers; all of ``graph``'s by default.
    leave_out : str or None, default "--layers"
        The option that leaves a layer out, named in the advice; None for none (``plot layer``).

    Returns
    -------
    int
        ``k`` as a Python int.

    Raises
    ------
    KTooLargeError
        ``k`` above a layer's non-isolated inputs or outputs: one line naming the layer, its counts and the
        largest k allowed.
    ClusteringError
        ``k`` not an integer >= 2, or a layer with fewer than 2 non-isolated nodes on a side.

    Examples
    --------
    >>> from torch import nn
    >>> from graphinterp.graph.layered import LayeredGraph
    >>> g = LayeredGraph.from_module(nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 6)))
    >>> check_k(3, g)
    3
    >>> check_k(4, g)
    Traceback (most recent call last):
    ...
    graphinterp.common.errors.KTooLargeError: k=4 is out of range for layer '0': it has 3 non-isolated inputs and 8 non-isolated outputs; use 2 <= k <= 3, or leave layer '0' out (--layers)
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ClusteringError(f"k must be an integer >= 2, got {k!r}")
    if k < 2:
        raise ClusteringError(f"k must be at least 2, got {k}")
    k = int(k)
    if graph is None:
        return k
    names = list(layers) if layers is not None else list(graph.layer_names)
    for name in names:
        n_in, n_out = live_sizes(graph[name])
        if min(n_in, n_out) < 2:
            raise ClusteringError(
                f"layer {name!r} cannot be clustered: it has {n_in} non-isolated inputs and {n_out} non-isolated "
                f"outputs (at least 2 of each needed)" + (f"; leave layer {name!r} out ({leave_out})" if leave_out else "")
            )
        if k > min(n_in, n_out):
            raise KTooLargeError(
                f"k={k} is out of range for layer {name!r}: it has {n_in} non-isolated inputs and {n_out} "
                f"non-isolated outputs; use 2 <= k <= {min(n_in, n_out)}"
                + (f", or leave layer {name!r} out ({leave_out})" if leave_out else "")
            )
    return k


def clusterable_layers(graph, k: int, layers: Optional[Sequence[str]] = None) -> Tuple[List[str], Dict[str, str]]:
    """``(chosen, left_out)``: which of ``layers`` (all by default) can be clustered at ``k``, and why the others cannot.

    The one rule for which layers a clusterability figure covers. A layer is left out when it is
    block-diagonal by construction (a depthwise or grouped convolution: any clustering that follows
    its groups scores E = 1, which measures the architecture, not learned modularity), when all its
    weights are zero, or when it has fewer than ``k`` non-isolated inputs or outputs (:func:`check_k`).

    Parameters
    ----------
    graph : LayeredGraph or ModelGraph
        The graph whose layers are checked.
    k : int
        Number of clusters.
    layers : sequence of str, optional
        Layers to check, in order; all of ``graph``'s by default.

    Returns
    -------
    chosen : list of str
        The layers that can be clustered at ``k``, in the order given.
    left_out : dict of str to str
        Each other layer with the reason it is left out.

    Examples
    --------
    >>> from torch import nn
    >>> from graphinterp.graph.layered import LayeredGraph
    >>> g = LayeredGraph.from_module(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8),
    ...                                            nn.ReLU(), nn.Conv2d(8, 6, 1)), input_shape=(3, 8, 8))
    >>> chosen, left_out = clusterable_layers(g, 4)
    >>> chosen, sorted(left_out)
    (['4'], ['0', '2'])
    """
    chosen, left_out = [], {}
    for name in (list(layers) if layers is not None else list(graph.layer_names)):
        layer = graph[name]
        reason = getattr(layer, "block_diagonal_reason", None)
        if reason is None:
            live = live_sizes(layer)
            if max(live) == 0:
                shape = layer.shape()
                reason = (f"it has no weights (an empty {shape[0]}x{shape[1]} layer)" if 0 in shape
                          else "all its weights are zero")
            elif min(live) < k:
                reason = f"fewer than k={k} non-isolated nodes ({live[0]}x{live[1]})"
        if reason is None:
            chosen.append(name)
        else:
            left_out[name] = reason
    return chosen, left_out


def nothing_clusterable(k: int, left_out: Dict[str, str], *, flag: str = "k", also: str = "") -> str:
    """The message when :func:`clusterable_layers` chose no layer: the reasons, and a smaller ``k`` only where
    one would help (not for all-zero or block-diagonal layers, nor below k = 2). ``also`` follows the reasons.

    Examples
    --------
    >>> nothing_clusterable(4, {"0": "all its weights are zero"})
    'no layer can be clustered at k=4 (0: all its weights are zero)'
    >>> nothing_clusterable(4, {"0": "fewer than k=4 non-isolated nodes (3x3)"})
    'no layer can be clustered at k=4 (0: fewer than k=4 non-isolated nodes (3x3)); use a smaller k'
    """
    why = "; ".join(f"{n}: {r}" for n, r in list(left_out.items())[:3])
    more = f" and {len(left_out) - 3} more" if len(left_out) > 3 else ""
    smaller = _smaller_k_helps(k, left_out)
    return f"no layer can be clustered at k={k} ({why}{more}){also}" + (f"; use a smaller {flag}" if smaller else "")


def _smaller_k_helps(k: int, left_out: Dict[str, str]) -> bool:
    return k > 2 and any(r.startswith("fewer than k") for r in left_out.values())


def nothing_clusterable_error(k: int, left_out: Dict[str, str], *, flag: str = "k", also: str = "") -> ClusteringError:
    """The error for :func:`nothing_clusterable`'s case: :class:`~graphinterp.common.errors.KTooLargeError` where a
    smaller ``k`` would help (the command line then reports a bad ``--k``), else :class:`ClusteringError`.

    Examples
    --------
    >>> type(nothing_clusterable_error(4, {"0": "fewer than k=4 non-isolated nodes (3x3)"})).__name__
    'KTooLargeError'
    >>> type(nothing_clusterable_error(4, {"0": "all its weights are zero"})).__name__
    'ClusteringError'
    """
    cls = KTooLargeError if _smaller_k_helps(k, left_out) else ClusteringError
    return cls(nothing_clusterable(k, left_out, flag=flag, also=also))


def refuse_block_diagonal(graph, layers: Sequence[str]) -> None:
    """Raise :class:`ClusteringError` (one line) if one of ``layers`` is block-diagonal by construction
    (a depthwise or grouped convolution; see :func:`clusterable_layers`)."""
    for name in layers:
        reason = getattr(graph[name], "block_diagonal_reason", None)
        if reason is not None:
            raise ClusteringError(f"layer {name!r}: {reason}; leave layer {name!r} out (--layers)")


def require_clusterable(graph, k: int, layers: Sequence[str]) -> None:
    """Raise :class:`ClusteringError` (one line, naming the layer) unless every one of ``layers`` can be
    clustered at ``k`` (the rule of :func:`clusterable_layers`; layers named explicitly are never skipped).

    Parameters
    ----------
    graph : LayeredGraph or ModelGraph
        The graph whose layers are checked.
    k : int
        Number of clusters (:func:`check_k`).
    layers : sequence of str
        The layers named for clustering.

    Raises
    ------
    ClusteringError
        A layer is block-diagonal by construction or too small for ``k``, or ``k`` is not an integer >= 2.
    """
    refuse_block_diagonal(graph, layers)
    check_k(k, graph, layers)
