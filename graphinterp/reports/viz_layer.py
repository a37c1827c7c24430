"""Figure 7 of the paper: one clustered layer drawn as a bipartite graph and as a reordered matrix."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Tuple

import numpy as np

from graphinterp.reports.viz_common import _GREY, _NEG, _PALETTE, _POS, PathLike, _array, _figure, _finish

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_clustered_layer"]


def _labels(labels, n: int, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the weight matrix, got {arr.shape}")
    if arr.dtype.kind not in "iu" or arr.min() < -1:
        raise ValueError(f"{name} must be integer cluster labels >= 0, or -1 for isolated nodes")
    return arr.astype(np.int64)


def _sorted_blocks(labels: np.ndarray) -> Tuple[np.ndarray, list]:
    """Node order by cluster (stable, isolated -1 last) and ``(label, start, stop)`` of each block in it."""
    order = np.argsort(np.where(labels < 0, np.iinfo(np.int64).max, labels), kind="stable")
    ordered = labels[order]
    cuts = np.flatnonzero(np.diff(ordered)) + 1
    return order, [(int(ordered[s]), int(s), int(e)) for s, e in zip(np.r_[0, cuts], np.r_[cuts, labels.size])]


def _draw_graph(ax: "Axes", w: np.ndarray, sides: Tuple[np.ndarray, np.ndarray], names: Tuple[str, str],
                max_edges: int) -> int:
    """Draw the bipartite graph on ``ax``; return the number of non-zero edges before the cut."""
    from matplotlib.collections import LineCollection
    from matplotlib.colors import to_rgba_array
    from matplotlib.patches import Rectangle

    ids = np.unique(np.r_[sides[0], sides[1]])  # Okabe-Ito cycled over cluster ids, grey for isolated
    colours = {**{int(c): _PALETTE[i % len(_PALETTE)] for i, c in enumerate(ids[ids >= 0])}, -1: _GREY}
    ends = []
    for side, labels in enumerate(sides):
        (order, blocks), n = _sorted_blocks(labels), labels.size
        y = np.empty(n)
        y[order] = 1.0 - (np.arange(n) + 0.5) / n
        # edge ends get a fixed jitter, within the node's dot, that breaks the moire of regular crossings
        ends.append(y + (np.random.default_rng(side).uniform(-0.3, 0.3, n) / n if n > 40 else 0.0))
        for lab, start, stop in blocks:
            top, bottom = 1.0 - start / n, 1.0 - stop / n
            ax.add_patch(Rectangle((side - (0.015 if side else 0.055), bottom), 0.07, top - bottom,
                                   color=colours[lab], alpha=0.25, lw=0, zorder=0))
            if top - bottom >= 0.03:
                ax.text(side + (0.06 if side else -0.06), (top + bottom) / 2, "isolated" if lab < 0 else f"c{lab}",
                        ha="left" if side else "right", va="center", fontsize=9)
        ax.scatter(np.full(n, side), y, s=float(np.clip(2500 / n, 3, 40)), c=[colours[v] for v in labels],
                   lw=0, zorder=2)
        ax.text(side, 1.015, f"{names[side]}\n({n} nodes)", ha="center", va="bottom", fontsize=10)
    ii, jj = np.nonzero(w)
    mag, total = np.abs(w[ii, jj]), ii.size
    keep = np.argpartition(mag, total - max_edges)[total - max_edges:] if total > max_edges else slice(None)
    ii, jj, mag = ii[keep], jj[keep], mag[keep]
    order = np.argsort(mag, kind="stable")  # strongest edges drawn last, on top
    ii, jj, mag = ii[order], jj[order], mag[order]
    segments = np.stack([np.column_stack([np.zeros(mag.size), ends[0][ii]]),
                         np.column_stack([np.ones(mag.size), ends[1][jj]])], axis=1)
    rgba = np.where((w[ii, jj] < 0)[:, None], to_rgba_array(_NEG), to_rgba_array(_POS))
    # alpha = |w| / max|w|, scaled down for dense drawings so that blocks stay distinguishable
    rgba[:, 3] = mag / max(mag.max(initial=0.0), 1e-300) * min(1.0, max(0.25, np.sqrt(600 / max(mag.size, 1))))
    ax.add_collection(LineCollection(segments, colors=rgba, linewidths=0.9 if mag.size < 2000 else 0.5, zorder=1))
    ax.set(xlim=(-0.3, 1.3), ylim=(-0.01, 1.1))
    ax.axis("off")
    return total


def _draw_matrix(ax: "Axes", w: np.ndarray, sides: Tuple[np.ndarray, np.ndarray], names: Tuple[str, str]):
    from matplotlib.patches import Rectangle

    (ro, row_blocks), (co, col_blocks) = _sorted_blocks(sides[0]), _sorted_blocks(sides[1])
    vmax = max(float(np.abs(w).max()), 1e-12)
    image = ax.imshow(w[np.ix_(ro, co)], cmap="RdBu", vmin=-vmax, vmax=vmax, aspect="auto")
    for blocks, line in ((row_blocks, ax.axhline), (col_blocks, ax.axvline)):
        for _, _, stop in blocks[:-1]:
            line(stop - 0.5, color="black", lw=0.7)
    col_span = {lab: (s, e) for lab, s, e in col_blocks if lab >= 0}
    for lab, start, stop in (b for b in row_blocks if b[0] in col_span):  # outline each diagonal block
        s, e = col_span[lab]
        ax.add_patch(Rectangle((s - 0.5, start - 0.5), e - s, stop - start, fill=False, ec="black", lw=2))
    for blocks, axis in ((row_blocks, ax.yaxis), (col_blocks, ax.xaxis)):
        if len(blocks) <= 20:
            axis.set_ticks([(s + e - 1) / 2 for _, s, e in blocks],
                           ["iso" if b < 0 else f"c{b}" for b, _, _ in blocks])
    ax.set(ylabel=f"{names[0]} nodes (by cluster)", xlabel=f"{names[1]} nodes (by cluster)")
    return image


def plot_clustered_layer(weight: np.ndarray, row_labels: np.ndarray, col_labels: np.ndarray, *,
                         in_name: str = "in", out_name: str = "out", kind: str = "both", max_edges: int = 20000,
                         title: Optional[str] = None, out: Optional[PathLike] = None) -> "Figure":
    """One layer as a bipartite graph ordered and coloured by cluster and/or as its reordered matrix (Fig. 7).

    Graph: input nodes left, output nodes right, clusters in the same order on both sides over shaded
    bands (isolated nodes, label -1, last and grey); straight edges, red negative and blue positive, with
    alpha proportional to ``|w| / max|w|``; only the ``max_edges`` largest ``|w|`` are drawn (the title
    says so). Matrix: ``weight`` with rows and columns sorted by cluster, RdBu centred at 0, cluster
    boundaries as lines and each cluster's diagonal block outlined.

    Parameters
    ----------
    weight : ndarray of shape (n_in, n_out)
    row_labels : ndarray of int of shape (n_in,)
        Cluster of each input node; -1 marks an isolated node.
    col_labels : ndarray of int of shape (n_out,)
    in_name, out_name : str
        Names of the two sides (e.g. layer names).
    kind : {"both", "graph", "matrix"}
    max_edges : int
    title : str, optional
    out : str or os.PathLike, optional

    Returns
    -------
    matplotlib.figure.Figure
        The bipartite graph and/or the weight matrix reordered by cluster.

    Raises
    ------
    ValueError
        If label shapes do not match ``weight``, labels are not integers >= -1, weights are not finite,
        ``kind`` is unknown or ``max_edges < 1``.

    Examples
    --------
    >>> w = np.kron(np.eye(2), np.ones((3, 2)))
    >>> fig = plot_clustered_layer(w, np.repeat([0, 1], 3), np.repeat([0, 1], 2), kind="graph")
    >>> len(fig.axes)
    1
    """
    w = _array(weight, "weight", 2)
    sides = (_labels(row_labels, w.shape[0], "row_labels"), _labels(col_labels, w.shape[1], "col_labels"))
    if kind not in ("both", "graph", "matrix"):
        raise ValueError(f"kind must be 'both', 'graph' or 'matrix', got {kind!r}")
    if isinstance(max_edges, bool) or not isinstance(max_edges, (int, np.integer)) or max_edges < 1:
        raise ValueError(f"max_edges must be a positive integer, got {max_edges!r}")
    names = (str(in_name), str(out_name))
    k = int((np.unique(np.r_[sides[0], sides[1]]) >= 0).sum())
    heading = title or f"{names[0]} \u2192 {names[1]}: {w.shape[0]} \u00d7 {w.shape[1]} weights, {k} clusters"
    fig = _figure(*{"both": (14.0, 8.0), "graph": (8.0, 8.0), "matrix": (7.0, 6.5)}[kind])
    axes = fig.subplots(1, 2, gridspec_kw={"width_ratios": (1.35, 1)}) if kind == "both" else [fig.add_subplot()]
    if kind != "matrix":
        from matplotlib.lines import Line2D

        total = _draw_graph(axes[0], w, sides, names, int(max_edges))
        if total > max_edges:
            heading += f"\n(showing the {max_edges:,} largest |w| of {total:,} edges)"
        axes[0].legend([Line2D([], [], color=_NEG, lw=2), Line2D([], [], color=_POS, lw=2)],
                       ["negative weight", "positive weight"], loc="upper center", bbox_to_anchor=(0.5, 0.0),
                       ncol=2, frameon=False, fontsize=9)
    if kind != "graph":
        fig.colorbar(_draw_matrix(axes[-1], w, sides, names), ax=axes[-1], label="weight", shrink=0.8)
    fig.suptitle(heading)
    return _finish(fig, out)
