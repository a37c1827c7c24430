"""Matplotlib figures for graphinterp results (the paper's Figures 1-7), headless.

Inputs are plain numpy arrays and dicts, so nothing else from graphinterp is needed. Figures are
:class:`matplotlib.figure.Figure` objects made without pyplot, so no GUI backend is touched. Each function returns its figure and, given ``out`` (a .png, .svg or
.pdf path), saves it atomically with :func:`save_figure`; ``title`` replaces the default title.
Colours: Okabe-Ito for categories, viridis for accuracies, RdBu for signed weights (red < 0 < blue).

This module holds the clusterability figures (Fig. 1/4, significance); the
evaluation figures (Fig. 2/3/5/6) live in :mod:`graphinterp.reports.viz_eval` and Figure 7 in
:mod:`graphinterp.reports.viz_layer`, both reachable from here through thin wrappers; the shared helpers
(``save_figure``, figure creation, input checks, colours) in :mod:`graphinterp.reports.viz_common`, which all three
import, so the figure modules form no import cycle.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Mapping, Optional, Tuple

import numpy as np

from graphinterp.clustering.shuffle_results import NullComparison
from graphinterp.reports.viz_common import (_DPI, _GREY, _NEG, _PALETTE, _POS, PathLike, _array, _figure, _finish,  # noqa: F401
                         _names, _xticklabels, save_figure)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["plot_clusterability_vs_k", "plot_ablation", "plot_ecs_comparison", "plot_clustered_layer",
           "plot_significance", "save_figure"]

_MARKERS = "osD^vPX"


def _curve(curve: Mapping[int, float], name: str) -> Tuple[np.ndarray, np.ndarray]:
    if not curve or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in curve):
        raise ValueError(f"{name} must map positive integers k to E, got keys {list(curve)}")
    ks = sorted(curve)
    return np.asarray(ks), _array([curve[k] for k in ks], name, 1, unit=True)


def plot_clusterability_vs_k(curves: Mapping[str, Mapping[int, float]], *,
                             baselines: Optional[Mapping[str, Mapping[int, float]]] = None,
                             title: Optional[str] = None, out: Optional[PathLike] = None) -> "Figure":
    """Clusterability E against the number of clusters k, one line per model (paper Fig. 1/4).

    Parameters
    ----------
    curves : mapping of str to mapping of int to float
        ``{model name: {k: E}}`` with E in [0, 1].
    baselines : mapping of str to mapping of int to float, optional
        Random-partition expectation per model (a subset of ``curves``' keys), dashed in its colour with
        hollow markers (so that a baseline at a single k shows).
    title : str, optional
    out : str or os.PathLike, optional

    Returns
    -------
    matplotlib.figure.Figure
        One axes: E against k, a line per model (and its dashed baseline).

    Raises
    ------
    ValueError
        On empty curves, k that are not positive integers, E outside [0, 1], baselines of unknown models.

    Examples
    --------
    >>> fig = plot_clusterability_vs_k({"modular": {2: 0.99, 4: 0.98}}, baselines={"modular": {2: 0.5, 4: 0.25}})
    >>> fig.axes[0].get_xlabel()
    'number of clusters k'
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    baselines = baselines or {}
    if not curves:
        raise ValueError("curves is empty: pass {model name: {k: E}}")
    if set(baselines) - set(curves):
        raise ValueError(f"baselines has models not in curves: {sorted(set(baselines) - set(curves))}")
    fig = _figure(8.0, 4.5)
    ax = fig.add_subplot()
    ks_seen: set = set()
    for i, (name, curve) in enumerate(curves.items()):
        colour = _PALETTE[i % len(_PALETTE)]
        ks, es = _curve(curve, f"curves[{name!r}]")
        ax.plot(ks, es, marker=_MARKERS[i % len(_MARKERS)], color=colour, lw=2, ms=7, label=str(name))
        ks_seen.update(ks.tolist())
        if name in baselines:
            bk, be = _curve(baselines[name], f"baselines[{name!r}]")
            # hollow markers on the dashed line: a baseline at a single k is still drawn
            ax.plot(bk, be, ls="--", color=colour, lw=1.5, marker=_MARKERS[i % len(_MARKERS)], ms=6, mfc="white")
            ks_seen.update(bk.tolist())
    handles, labels = ax.get_legend_handles_labels()
    if baselines:
        handles = handles + [Line2D([], [], ls="--", color="0.3", marker="o", ms=6, mfc="white")]
        labels = labels + ["random partition (dashed, hollow)"]
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    if len(ks_seen) <= 16:
        ax.set_xticks(sorted(ks_seen))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(ylim=(0, 1.03), xlabel="number of clusters k", ylabel="clusterability E")
    # over the whole figure, not the axes: a title wider than the axes (which the legend beside them narrows)
    # ran off the figure's left edge
    fig.suptitle(title or "Clusterability against the number of clusters")
    ax.grid(alpha=0.3)
    return _finish(fig, out)


def plot_ablation(on: np.ndarray, off: np.ndarray, **kwargs) -> "Figure":
    """Figure 2/5: class-wise accuracy with each cluster ON and OFF, as two annotated heatmaps.

    See :func:`graphinterp.reports.viz_eval.plot_ablation` for the parameters.

    Parameters
    ----------
    on, off : ndarray of shape (n_clusters, n_classes)
        Accuracy in [0, 1] with only cluster i active (``on[i]``) or with cluster i ablated (``off[i]``).
    **kwargs
        ``full``, ``class_names``, ``title`` and ``out`` of :func:`graphinterp.reports.viz_eval.plot_ablation`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from graphinterp.reports.viz_eval import plot_ablation as _plot

    return _plot(on, off, **kwargs)


def plot_ecs_comparison(ecs_a: np.ndarray, ecs_b: np.ndarray, **kwargs) -> "Figure":
    """Figure 3/6: per-label effective circuit size of two models, with an arrow from a to b.

    See :func:`graphinterp.reports.viz_eval.plot_ecs_comparison` for the parameters.

    Parameters
    ----------
    ecs_a, ecs_b : ndarray of shape (n_labels,)
        ECS of each label, as a fraction in [0, 1], for model a and model b.
    **kwargs
        ``labels``, ``names``, ``title``, ``weights`` and ``out`` of
        :func:`graphinterp.reports.viz_eval.plot_ecs_comparison`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from graphinterp.reports.viz_eval import plot_ecs_comparison as _plot

    return _plot(ecs_a, ecs_b, **kwargs)


def plot_clustered_layer(weight: np.ndarray, row_labels: np.ndarray, col_labels: np.ndarray, **kwargs) -> "Figure":
    """Figure 7: a clustered layer as a bipartite graph and/or a reordered weight matrix.

    See :func:`graphinterp.reports.viz_layer.plot_clustered_layer` for the parameters.

    Parameters
    ----------
    weight : ndarray of shape (n_in, n_out)
        The layer's edge weights.
    row_labels, col_labels : ndarray of int of shape (n_in,) and (n_out,)
        Cluster of each input and output node; -1 marks an isolated node.
    **kwargs
        ``in_name``, ``out_name``, ``kind``, ``max_edges``, ``title`` and ``out`` of
        :func:`graphinterp.reports.viz_layer.plot_clustered_layer`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from graphinterp.reports.viz_layer import plot_clustered_layer as _plot

    return _plot(weight, row_labels, col_labels, **kwargs)


def plot_significance(observed: Mapping[str, float], null_samples: Mapping[str, np.ndarray], *,
                      out: Optional[PathLike] = None, title: Optional[str] = None,
                      xlabel: str = "clusterability E") -> "Figure":
    """Observed clusterability of each layer against its shuffled-weight null distribution.

    One row per layer: the null samples as a jittered strip, the observed E as a diamond, and beside
    the row the z-score ``(E - mean) / std`` (``ddof=1``) and the one-sided p-value ``(r + 1) / (n + 1)``,
    where ``r`` counts the null samples >= E.

    Parameters
    ----------
    observed : mapping of str to float
        ``{layer name: E}``.
    null_samples : mapping of str to ndarray of shape (n_shuffles,)
        E of the shuffled networks, with the same keys as ``observed``.
    out : str or os.PathLike, optional
    title : str, optional
    xlabel : str, default "clusterability E"
        What the values are (e.g. the normalised score).

    Returns
    -------
    matplotlib.figure.Figure
        One axes: a row per layer, its null as a strip and its observed value as a diamond.

    Raises
    ------
    ValueError
        If the layer names differ, a null sample is empty or a value is not finite.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> fig = plot_significance({"fc1": 0.9}, {"fc1": rng.normal(0.5, 0.02, 100)})
    >>> fig.axes[0].get_xlabel()
    'clusterability E'
    """
    from matplotlib.transforms import blended_transform_factory

    if not observed or set(observed) != set(null_samples):
        raise ValueError(f"observed and null_samples must name the same, non-empty set of layers; only in "
                         f"observed: {sorted(set(observed) - set(null_samples))}, only in null_samples: "
                         f"{sorted(set(null_samples) - set(observed))}")
    layers = list(observed)
    fig = _figure(8.0, max(2.8, 1.3 + 0.75 * len(layers)))
    ax = fig.add_subplot()
    jitter = np.random.default_rng(0)  # fixed, so that figures are reproducible
    beside = blended_transform_factory(ax.transAxes, ax.transData)
    for row, name in enumerate(layers):
        null = _array(null_samples[name], f"null_samples[{name!r}]", 1)
        obs = float(_array([observed[name]], f"observed[{name!r}]", 1)[0])
        ax.scatter(null, row + jitter.uniform(-0.22, 0.22, null.size), s=12, color=_GREY, alpha=0.6, lw=0,
                   label="shuffled null" if row == 0 else None)
        ax.scatter([obs], [row], marker="D", s=80, color=_PALETTE[5], edgecolor="black", zorder=3,
                   label="observed" if row == 0 else None)
        test = NullComparison.from_samples(obs, null)  # z and p by the table's rule (ties within rounding count)
        z = f"z = {test.z:+.1f}" if not math.isnan(test.z) else "z = n/a"
        ax.text(1.02, row, f"{z}\np = {test.p_value:.2g} (n = {null.size})", transform=beside, va="center",
                fontsize=9)
    ax.set_yticks(range(len(layers)), layers)
    ax.set(ylim=(len(layers) - 0.5, -0.5), xlabel=xlabel)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False, fontsize=9)
    fig.suptitle(title or "Clusterability against a shuffled-weight null")
    return _finish(fig, out)
