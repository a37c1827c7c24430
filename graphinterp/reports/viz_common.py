"""Shared helpers of the graphinterp figures: atomic saving, figure creation, input checks, colours.

:mod:`graphinterp.reports.viz` (clusterability figures and the facade), :mod:`graphinterp.reports.viz_eval` and
:mod:`graphinterp.reports.viz_layer` all import from here, so the figure modules form no import cycle.
matplotlib is imported inside functions only.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np

from graphinterp.common.files import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["save_figure", "PathLike"]

PathLike = Union[str, "os.PathLike[str]"]
_DPI = {".png": 150, ".svg": None, ".pdf": None}
_PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")  # Okabe-Ito
_NEG, _POS, _GREY = "#B2182B", "#2166AC", "#A0A0A0"  # RdBu ends: red negative, blue positive


def save_figure(fig: "Figure", path: PathLike) -> Path:
    """Save ``fig`` atomically to ``path``, in the format of its suffix (.png at 150 dpi, .svg, .pdf).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    path : str or os.PathLike

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    ValueError
        If the suffix is not .png, .svg or .pdf; checked before anything is written.

    Examples
    --------
    >>> import os, tempfile
    >>> from graphinterp.reports.viz import plot_clusterability_vs_k
    >>> fig = plot_clusterability_vs_k({"model": {2: 0.6, 3: 0.5}})
    >>> save_figure(fig, os.path.join(tempfile.mkdtemp(), "e.svg")).suffix
    '.svg'
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _DPI:
        raise ValueError(f"cannot save a figure as {path.name!r}: use a .png, .svg or .pdf suffix")
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format=suffix[1:], **({"dpi": _DPI[suffix]} if _DPI[suffix] else {}))
    return path


def _figure(width: float, height: float) -> "Figure":
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _finish(fig: "Figure", out: Optional[PathLike]) -> "Figure":
    if out is not None:
        save_figure(fig, out)
    return fig


def _array(x, name: str, ndim: int, *, unit: bool = False) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != ndim or a.size == 0:
        raise ValueError(f"{name} must be a non-empty {ndim}-D array, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if unit and (a.min() < 0 or a.max() > 1):
        raise ValueError(f"{name} must be fractions in [0, 1], got values in [{a.min():.3g}, {a.max():.3g}]")
    return a


def _names(names: Optional[Sequence[str]], n: int, what: str) -> list:
    names = [str(i) for i in range(n)] if names is None else [str(s) for s in names]
    if len(names) != n:
        raise ValueError(f"{what} has {len(names)} entries but the data has {n}")
    return names


def _xticklabels(ax: "Axes", labels: Sequence[str]) -> None:
    tilt = max(map(len, labels)) * len(labels) > 60
    ax.set_xticks(range(len(labels)), labels, rotation=35 if tilt else 0, ha="right" if tilt else "center")
