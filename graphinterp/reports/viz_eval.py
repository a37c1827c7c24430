"""Figures of the cluster evaluations: ablation heatmaps (paper Fig. 2/5) and circuit sizes (Fig. 3/6).

Conventions as in :mod:`graphinterp.reports.viz` (plain numpy inputs, no pyplot, ``out`` saves atomically,
``title`` replaces the default one), whose helpers these functions share; :mod:`graphinterp.reports.viz`
also exposes both functions.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence, Tuple

import numpy as np

from graphinterp.reports.viz_common import _PALETTE, PathLike, _array, _figure, _finish, _names, _xticklabels

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["plot_ablation", "plot_ecs_comparison", "plot_ecs_per_label"]


def plot_ablation(on: np.ndarray, off: np.ndarray, *, full: Optional[np.ndarray] = None,
                  class_names: Optional[Sequence[str]] = None, title: Optional[str] = None,
                  out: Optional[PathLike] = None) -> "Figure":
    """Class-wise accuracy with each cluster ON (top) and OFF (bottom) as annotated heatmaps (Fig. 2/5).

    Parameters
    ----------
    on, off : ndarray of shape (n_clusters, n_classes)
        Accuracy in [0, 1] with only cluster i active (``on[i]``) or with cluster i ablated (``off[i]``).
    full : ndarray of shape (n_classes,), optional
        Accuracy of the intact model, shown as a first row "all clusters" in both panels.
    class_names : sequence of str, optional
    title : str, optional
    out : str or os.PathLike, optional

    Returns
    -------
    matplotlib.figure.Figure
        Two heatmaps, ON above OFF (cells annotated with the accuracy where they are large enough).

    Raises
    ------
    ValueError
        If shapes disagree or accuracies lie outside [0, 1].

    Examples
    --------
    >>> fig = plot_ablation([[0.9, 0.1], [0.2, 0.8]], [[0.3, 0.9], [0.9, 0.2]], full=[0.95, 0.9])
    >>> len(fig.axes)  # two heatmaps and a colour bar
    3
    """
    on, off = _array(on, "on", 2, unit=True), _array(off, "off", 2, unit=True)
    if on.shape != off.shape:
        raise ValueError(f"on and off must have the same shape (clusters, classes), got {on.shape} and "
                         f"{off.shape}")
    c = on.shape[1]
    rows = [f"cluster {i}" for i in range(on.shape[0])]
    if full is not None:
        full = _array(full, "full", 1, unit=True)
        if full.shape != (c,):
            raise ValueError(f"full must have shape ({c},) (one accuracy per class), got {full.shape}")
        on, off, rows = np.vstack([full, on]), np.vstack([full, off]), ["all clusters"] + rows
    names = _names(class_names, c, "class_names")
    width, height = min(max(6.0, 0.62 * c + 2.8), 20.0), min(max(4.5, 0.72 * len(rows) + 2.0), 16.0)
    fig = _figure(width, height)
    axes = fig.subplots(2, 1, sharex=True)
    annotate = (width - 2.8) / c >= 0.4 and height / (2 * len(rows) + 4) >= 0.18  # cells big enough for "0.00"
    for ax, data, name in zip(axes, (on, off), ("ON: only this cluster active (others ablated)",
                                                "OFF: this cluster ablated")):
        image = ax.imshow(data, cmap="viridis", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        ax.set_yticks(range(len(rows)), rows)
        ax.set_title(name, fontsize=11)
        if full is not None:
            ax.axhline(0.5, color="white", lw=3)
        for (i, j), v in np.ndenumerate(data) if annotate else ():
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="black" if v >= 0.5 else "white")
    _xticklabels(axes[1], names)
    axes[1].set_xlabel("class")
    fig.colorbar(image, ax=list(axes), label="accuracy", shrink=0.85)
    fig.suptitle(title or "Class-wise accuracy with each cluster ON / OFF")
    return _finish(fig, out)


def plot_ecs_comparison(ecs_a: np.ndarray, ecs_b: np.ndarray, *, labels: Optional[Sequence[str]] = None,
                        names: Tuple[str, str] = ("unclustered", "modular"), title: Optional[str] = None,
                        weights: str = "the model's non-zero weights", out: Optional[PathLike] = None) -> "Figure":
    """Per-label effective circuit size (ECS) of two models, with an arrow from a to b (Fig. 3/6).

    Each label is annotated with the relative change ``(b - a) / a`` in % ("n/a" where a = 0); the
    title gives its mean over labels. Arrows get wider and darker with ``|b - a|``.

    Parameters
    ----------
    ecs_a, ecs_b : ndarray of shape (n_labels,)
        ECS of each label as a fraction of the model's weights, for models ``names[0]`` and ``names[1]``.
    labels : sequence of str, optional
    names : tuple of two str
    title : str, optional
    weights : str, default "the model's non-zero weights"
        What the ECS is a fraction of, for the y axis (e.g. "the MLP blocks' non-zero weights" for a
        transformer, whose attention and embeddings are kept whole).
    out : str or os.PathLike, optional

    Returns
    -------
    matplotlib.figure.Figure
        One axes: a column per label, an arrow from model a's ECS to model b's.

    Raises
    ------
    ValueError
        If shapes disagree, values lie outside [0, 1] or ``names`` does not hold two names.

    Examples
    --------
    >>> fig = plot_ecs_comparison([0.4, 0.5], [0.2, 0.3], labels=["cat", "dog"])
    >>> "-45.0%" in fig.axes[0].get_title()
    True
    """
    from matplotlib import colormaps

    a, b = _array(ecs_a, "ecs_a", 1, unit=True), _array(ecs_b, "ecs_b", 1, unit=True)
    if a.shape != b.shape:
        raise ValueError(f"ecs_a and ecs_b must have the same shape, got {a.shape} and {b.shape}")
    if isinstance(names, str) or len(names) != 2:
        raise ValueError(f"names must hold two model names, got {names!r}")
    n, labels = a.size, _names(labels, a.size, "labels")
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(a > 0, (b - a) / a * 100.0, np.nan)
    mean = f"{np.nanmean(rel):+.1f}%" if np.isfinite(rel).any() else "n/a"
    fig = _figure(min(max(6.5, 0.8 * n + 2.5), 20.0), 5.0)
    ax = fig.add_subplot()
    size = np.abs(b - a) / max(np.abs(b - a).max(), 1e-12)
    for i in range(n):
        ax.annotate("", xy=(i, b[i]), xytext=(i, a[i]), arrowprops=dict(
            arrowstyle="-|>", color=colormaps["Greys"](0.4 + 0.55 * size[i]), lw=1 + 3 * size[i],
            mutation_scale=10 + 12 * size[i], shrinkA=5, shrinkB=5))
        ax.annotate("n/a" if np.isnan(rel[i]) else f"{rel[i]:+.1f}%", (i, max(a[i], b[i])), xytext=(0, 9),
                    textcoords="offset points", ha="center", fontsize=8)
    for values, marker, colour, name in ((a, "o", _PALETTE[1], names[0]), (b, "s", _PALETTE[0], names[1])):
        ax.scatter(np.arange(n), values, marker=marker, s=55, color=colour, edgecolor="black", lw=0.6, zorder=3,
                   clip_on=False, label=str(name))
    _xticklabels(ax, labels)
    ax.set(xlim=(-0.6, n - 0.4), ylim=(0, max(a.max(), b.max()) * 1.2 + 1e-3), xlabel="label",
           ylabel=f"ECS (fraction of {weights})",
           title=f"{title or 'Effective circuit size per label'}\n"
                 f"mean relative change {names[0]} \u2192 {names[1]}: {mean}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    return _finish(fig, out)


def plot_ecs_per_label(ecs: np.ndarray, *, per_layer: Optional[dict] = None, labels: Optional[Sequence[str]] = None,
                       title: Optional[str] = None, weights: str = "the model's non-zero weights",
                       out: Optional[PathLike] = None) -> "Figure":
    """Effective circuit size of each label of one model, overall and per pruned layer (grouped bars).

    Parameters
    ----------
    ecs : ndarray of shape (n_labels,)
        Each label's ECS over all pruned weights, a fraction in [0, 1].
    per_layer : dict of str to array of shape (n_labels,), optional
        Each layer's ECS per label, drawn beside the overall bar.
    labels, title, weights, out
        As in :func:`plot_ecs_comparison`.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = plot_ecs_per_label([0.2, 0.4], per_layer={"fc1": [0.1, 0.3]}, labels=["0", "1"])
    >>> len(fig.axes[0].patches)
    4
    """
    values = _array(ecs, "ecs", 1, unit=True)
    layers = {str(k): _array(v, f"per_layer[{k!r}]", 1, unit=True) for k, v in (per_layer or {}).items()}
    n, labels = values.size, _names(labels, values.size, "labels")
    fig = _figure(max(6.0, 0.7 * n + 3), 4.5)
    ax = fig.add_subplot()
    x, width = np.arange(n), 0.8 / (len(layers) + 1)
    ax.bar(x - 0.4 + width / 2, values, width, color="black", label="all weights")
    for i, (name, v) in enumerate(layers.items(), start=1):
        ax.bar(x - 0.4 + width * (i + 0.5), v, width, label=name, alpha=0.8)
    _xticklabels(ax, labels)
    ax.set(xlabel="label", ylabel=f"ECS (fraction of {weights} kept)",
           title=title if title is not None else "Effective circuit size per label")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    return _finish(fig, out)
