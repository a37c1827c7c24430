r"""The random-partition baseline of the E that training reports.

Every E a trainer reports (per epoch or step, per clustered layer or MLP block, the final one) is
given with ``E_random``, the expected E of a random partition with the same cluster sizes, and the
normalised score ``(E - E_random) / (1 - E_random)``
(:func:`graphinterp.clustering.metrics.random_partition_expectation`,
:func:`graphinterp.clustering.metrics.normalized_score`).

For one layer, ``E_random`` is :math:`\sum_c (r_c / m)(s_c / n)` with ``r_c`` of the ``m`` clustered rows
and ``s_c`` of the ``n`` clustered columns in cluster ``c`` (isolated nodes, label -1, left out), which
:class:`~graphinterp.training.masks.ParameterMask` carries. It depends only on the cluster sizes. Over several
layers it is mass-weighted like E (the expected within-cluster share of all their squared weight),
so it follows the layers' weight masses from one epoch to the next.
"""
from __future__ import annotations

from typing import Dict, Iterable, Mapping, Optional, Sequence

import torch

from graphinterp.clustering.metrics import normalized_score

__all__ = ["layer_random", "random_expectation", "block_clusterability", "block_random", "with_baseline", "loss_scores"]


def layer_random(masks: Mapping) -> Dict[str, float]:
    """``E_random`` of each clustered layer: the share of its weight entries within a cluster (module docstring).

    ``masks``: :class:`~graphinterp.training.masks.ParameterMask` per layer (``EnmeshmentLoss.masks``).

    Parameters
    ----------
    masks : mapping of str to ParameterMask
        Within-cluster masks per layer name.

    Returns
    -------
    dict of str to float
        Per layer, :func:`~graphinterp.clustering.metrics.random_partition_expectation` of its labels (isolated
        nodes left out), as the mask carries it; the mean of the mask for a mask built without labels.
    """
    return {name: m.E_random if getattr(m, "E_random", None) is not None else float(m.mask.double().mean())
            for name, m in masks.items()}


def random_expectation(masks: Mapping, names: Optional[Iterable[str]] = None) -> float:
    """Mass-weighted ``E_random`` of the layers ``names`` (default all of ``masks``) at their weights now."""
    names = list(masks) if names is None else list(names)
    per = layer_random({n: masks[n] for n in names})
    mass = {n: float(masks[n].effective().detach().double().square().sum()) for n in names}
    total = sum(mass.values())
    return sum(per[n] * mass[n] for n in names) / total if total > 0 else 0.0


@torch.no_grad()
def block_clusterability(masks: Mapping, blocks: Sequence) -> Dict[str, float]:
    """E of each block: within-cluster squared weight / all squared weight (weights as the graph holds them).

    ``masks`` are :class:`~graphinterp.training.masks.ParameterMask` per layer (e.g. ``EnmeshmentLoss.masks``).
    """
    out = {}
    for block in blocks:
        within = sum(float((masks[n].effective().double().square() * masks[n].mask.double()).sum())
                     for n in block.layers)
        total = sum(float(masks[n].effective().double().square().sum()) for n in block.layers)
        out[block.name] = within / total if total > 0 else 0.0
    return out


def block_random(masks: Mapping, blocks) -> Dict[str, float]:
    """``E_random`` of each MLP block (mass-weighted over its layers), beside
    :func:`block_clusterability`."""
    return {b.name: random_expectation(masks, b.layers) for b in blocks}


def with_baseline(E: Optional[float], E_random: Optional[float]) -> Dict[str, Optional[float]]:
    """``{"E", "E_random", "score"}``; all None when there is no E.

    Parameters
    ----------
    E : float or None
        Clusterability.
    E_random : float or None
        Its random-partition baseline.

    Returns
    -------
    dict of str to float or None
        ``E``, ``E_random`` and the normalised score ``(E - E_random) / (1 - E_random)`` (0 when
        ``E_random >= 1``); all None when either is None.

    Examples
    --------
    >>> with_baseline(0.9, 0.5)
    {'E': 0.9, 'E_random': 0.5, 'score': 0.8}
    """
    if E is None or E_random is None:
        return {"E": None, "E_random": None, "score": None}
    return {"E": E, "E_random": E_random, "score": normalized_score(E, E_random)}


def loss_scores(loss_fn) -> Dict[str, Optional[float]]:
    """:func:`scored` for the clustered layers of an :class:`~graphinterp.training.loss.EnmeshmentLoss` now
    (mass-weighted E, as ``loss_fn.clusterability()``); all None when ``loss_fn`` is None."""
    if loss_fn is None:
        return with_baseline(None, None)
    return with_baseline(loss_fn.clusterability(), random_expectation(loss_fn.masks))
