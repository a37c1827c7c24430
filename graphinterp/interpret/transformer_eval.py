"""Cluster ON/OFF ablations of transformers per output class (Figure 2 style), and how specialised clusters are.

For every cluster ``c`` of the MLP blocks (:func:`graphinterp.clustering.mlp_blocks.cluster_mlp_blocks`),
:func:`onoff_matrix` measures the accuracy per output class (modular addition: the answer
``0..p-1``; a language model: the target character) with ``c`` OFF (its hidden units zeroed in every
block) and ON (every other hidden unit zeroed), beside the intact model.

:func:`specialisation` summarises how class-specific the clusters are. For cluster ``c`` the OFF
*damage* per class is :math:`d_c = \\max(0, a_{full} - a_{off,c})`; its Gini coefficient over
classes is 0 when every class loses the same, and approaches 1 when the damage falls on few classes.
The index is the damage-weighted mean Gini over clusters (a cluster whose removal changes nothing
has no say); with no damage at all it is NaN. The same Gini over classes of the ON accuracies tells
whether what one cluster alone can do is confined to some classes.

Examples
--------
>>> import numpy as np
>>> round(_gini(np.array([0.0, 0.0, 0.0, 1.0])), 3), round(_gini(np.ones(4)), 3)
(0.75, 0.0)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from graphinterp.common.devices import resolve_device
from graphinterp.common.inference import on_device, predictions
from graphinterp.interpret.block_ablation import ablate_clusters
from graphinterp.clustering.cluster import Clustering

__all__ = ["OnOffResult", "class_accuracy_tokens", "onoff_matrix", "specialisation"]


@torch.no_grad()
def class_accuracy_tokens(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n_classes: int, *,
                          batch_size: int = 4096) -> np.ndarray:
    """Accuracy per target class (NaN for a class with no example); ``y`` of shape (N,) or (N, T)."""
    pred, t = predictions(model, x, batch_size).reshape(-1), y.reshape(-1)  # one per position of a language model
    correct = torch.zeros(n_classes, dtype=torch.float64).index_add_(0, t, (pred == t).double())
    count = torch.zeros(n_classes, dtype=torch.float64).index_add_(0, t, torch.ones_like(t, dtype=torch.float64))
    acc = correct / count
    acc[count == 0] = float("nan")
    return acc.numpy()


@dataclass
class OnOffResult:
    """Per-class accuracy of the intact model (``full``) and with each cluster ON / OFF ``(k, n_classes)``."""

    full: np.ndarray
    on: np.ndarray
    off: np.ndarray
    classes: List[str]
    counts: np.ndarray

    def overall(self) -> Dict[str, Any]:
        """Example-weighted accuracy over all classes."""
        w = np.where(np.isfinite(self.full), self.counts, 0) / max(self.counts.sum(), 1)
        dot = lambda a: float(np.nansum(a * w))  # noqa: E731
        return {"full": dot(self.full), "on": [dot(r) for r in self.on], "off": [dot(r) for r in self.off]}

    def to_dict(self) -> Dict[str, Any]:
        plain = lambda a: [None if not np.isfinite(v) else float(v) for v in np.ravel(a)]  # noqa: E731
        return {"classes": list(self.classes), "counts": [int(c) for c in self.counts], "full": plain(self.full),
                "on": [plain(r) for r in self.on], "off": [plain(r) for r in self.off],
                "overall": self.overall(),
                "specialisation": {k: (v if np.isfinite(v) else None) for k, v in specialisation(self).items()}}


def onoff_matrix(model: nn.Module, clustering: Clustering, x: torch.Tensor, y: torch.Tensor,
                 classes: List[str], *, stream: bool = False, batch_size: int = 4096, device=None) -> OnOffResult:
    """Accuracy per class with each cluster ON and OFF (see the module docstring).

    The model runs on ``device`` (``None`` or ``"auto"``: CUDA when available) and is moved back to
    its own device afterwards.

    Parameters
    ----------
    model : nn.Module
        A transformer.
    clustering : Clustering
        From :func:`graphinterp.clustering.mlp_blocks.cluster_mlp_blocks`.
    x : torch.Tensor
        Input token ids.
    y : torch.Tensor of int64, shape (N,) or (N, T)
        Target classes (one per example, or one per position of a language model).
    classes : list of str
        Class names; their number sets the number of classes.
    stream : bool, default False
        Also cut each block's reads and writes of the removed stream dimensions
        (:func:`graphinterp.interpret.block_ablation.ablate_clusters`).
    batch_size : int, default 4096
        Examples per forward pass.
    device : str or torch.device, optional
        Where the model runs.

    Returns
    -------
    OnOffResult
        Per-class accuracies of the intact model and with each cluster ON and OFF, and the class counts.
    """
    n = len(classes)
    on, off = np.zeros((clustering.k, n)), np.zeros((clustering.k, n))
    with on_device(model, resolve_device(device)):
        full = class_accuracy_tokens(model, x, y, n, batch_size=batch_size)
        for c in range(clustering.k):
            for state, out in (("on", on), ("off", off)):
                with ablate_clusters(model, clustering, c, state, stream=stream):
                    out[c] = class_accuracy_tokens(model, x, y, n, batch_size=batch_size)
    counts = np.bincount(y.reshape(-1).numpy(), minlength=n).astype(np.float64)
    return OnOffResult(full, on, off, list(classes), counts)


def _gini(v: np.ndarray) -> float:
    v = np.sort(np.asarray(v, dtype=np.float64))
    if v.size == 0 or v.sum() <= 0:
        return float("nan")
    i = np.arange(1, v.size + 1)
    return float((2 * i - v.size - 1) @ v / (v.size * v.sum()))


def specialisation(result: OnOffResult) -> Dict[str, Optional[float]]:
    """``{"off_gini", "on_gini", "mean_off_damage", "mean_on_acc"}`` (see the module docstring).

    Parameters
    ----------
    result : OnOffResult
        From :func:`onoff_matrix`; classes with no example (NaN ``full``) are left out.

    Returns
    -------
    dict of str to float
        ``off_gini`` (damage-weighted mean Gini of the OFF damage; NaN without damage), ``on_gini`` (mean Gini
        of the ON accuracies), ``mean_off_damage`` and ``mean_on_acc``.
    """
    live = np.isfinite(result.full)
    damage = np.clip(result.full[None, live] - result.off[:, live], 0, None)
    weights = damage.sum(1)
    ginis = np.array([_gini(d) for d in damage])
    ok = np.isfinite(ginis) & (weights > 0)
    off_gini = float((ginis[ok] * weights[ok]).sum() / weights[ok].sum()) if ok.any() else float("nan")
    on_ginis = np.array([_gini(r[live]) for r in result.on])
    return {"off_gini": off_gini, "on_gini": float(np.nanmean(on_ginis)) if np.isfinite(on_ginis).any() else float("nan"),
            "mean_off_damage": float(damage.mean()), "mean_on_acc": float(result.on[:, live].mean())}
