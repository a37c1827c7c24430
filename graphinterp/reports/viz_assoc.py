"""The association matrices of hidden levels as heatmaps, units ordered by cluster (``graphinterp associate --plot``).

One panel per (level, kind): the level's association matrix with its units ordered by the weight
clusters when there are any (else by the kind's own clusters), cluster boundaries drawn; a block-diagonal
picture means units that share a cluster are associated on data. See
:mod:`graphinterp.interpret.functional_modules`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Optional, Union

import numpy as np

from graphinterp.reports.viz_common import PathLike, _array, _figure, _finish
from graphinterp.reports.viz_layer import _sorted_blocks

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["plot_association"]

#: What each kind's colour bar measures (graphinterp.interpret.association); only |correlation| is bounded by 1.
_QUANTITY = {"correlation": "|correlation| (0..1)", "covariance": "|covariance| (activation units squared)",
             "upstream": "|E<grad_x a_i, grad_x a_j>| (unbounded)", "downstream": "|E<dy/da_i, dy/da_j>| (unbounded)"}


def plot_association(matrices: Mapping[str, Mapping[str, np.ndarray]], order: Mapping[str, np.ndarray], *,
                     ordered_by: Union[str, Mapping[str, str]] = "weight clusters", title: Optional[str] = None,
                     out: Optional[PathLike] = None) -> "Figure":
    """Heatmaps of association matrices, rows = levels, columns = kinds, units ordered by cluster.

    Parameters
    ----------
    matrices : mapping of str to mapping of str to ndarray
        ``{level: {kind: (n, n) non-negative matrix}}``; every level has the same kinds.
    order : mapping of str to ndarray
        ``{level: cluster label per unit}`` (-1: left out, drawn last) that orders the units.
    ordered_by : str or mapping of str to str, default "weight clusters"
        What ``order`` is, for the axis labels (one for all levels, or per level).
    title : str, optional
    out : str or os.PathLike, optional

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> A = np.kron(np.eye(2), np.ones((3, 3)))
    >>> fig = plot_association({"fc1": {"upstream": A}}, {"fc1": np.array([0, 0, 0, 1, 1, 1])})
    >>> len(fig.axes), fig.axes[1].get_ylabel()  # one panel and its colour bar, which says what it measures
    (2, '|E<grad_x a_i, grad_x a_j>| (unbounded)')
    """
    levels = list(matrices)
    if not levels:
        raise ValueError("no association matrix to plot")
    kinds = list(matrices[levels[0]])
    if not kinds or any(list(matrices[lv]) != kinds for lv in levels):
        raise ValueError("every level must have the same association kinds")
    fig = _figure(3.2 * len(kinds) + 0.8, 3.0 * len(levels) + 0.4)
    axes = fig.subplots(len(levels), len(kinds), squeeze=False)
    for r, level in enumerate(levels):
        labels = np.asarray(order[level])
        for c, kind in enumerate(kinds):
            A = _array(matrices[level][kind], f"the {kind} matrix of {level}", 2)
            if A.shape != (labels.size, labels.size):
                raise ValueError(f"the {kind} matrix of {level} has shape {A.shape}; its level has {labels.size} units")
            idx, blocks = _sorted_blocks(labels)
            ax = axes[r, c]
            image = ax.imshow(A[np.ix_(idx, idx)], cmap="viridis", vmin=0, vmax=max(float(A.max()), 1e-12))
            for _, _, stop in blocks[:-1]:
                ax.axhline(stop - 0.5, color="white", lw=0.8)
                ax.axvline(stop - 0.5, color="white", lw=0.8)
            ax.set_title(f"{level}: {kind}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                by = ordered_by if isinstance(ordered_by, str) else ordered_by[level]
                ax.set_ylabel(f"units by {by}", fontsize=8)
            bar = fig.colorbar(image, ax=ax, shrink=0.8)  # each kind on its own scale, which its label names
            bar.set_label(_QUANTITY.get(kind, kind), fontsize=7)
    fig.suptitle(title or "Association between units, ordered by cluster")
    return _finish(fig, out)
