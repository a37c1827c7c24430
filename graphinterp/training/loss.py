"""The enmeshment loss :math:`L_E = 1 - E`: a differentiable modularity regulariser.

Section 2 of the paper trains with :math:`L = L_{CE} + \\lambda L_E`. With the within-cluster masks
:math:`M_l` of the clustered layers (:func:`graphinterp.training.masks.parameter_masks`) and their weights
:math:`W_l` as the graph holds them (the parameters, times the normalisation scales the graph folded into
them, recomputed every call from the live BatchNorm statistics and gains, so that no rescaling that a
norm absorbs can lower the loss without changing the function; :mod:`graphinterp.training.folded_scales`),

.. math::

    L_E = 1 - E, \\qquad
    E = \\frac{\\sum_l \\sum W_l^2 \\odot M_l}{\\sum_l \\sum W_l^2} \\quad (\\text{reduction="mass"}),
    \\qquad
    E = \\frac{1}{L} \\sum_l \\frac{\\sum W_l^2 \\odot M_l}{\\sum W_l^2} \\quad (\\text{reduction="mean"}).

**The per-layer mean is the default**: every clustered layer gets the same say whatever its size, so
each one is driven towards E = 1. With ``"mass"`` the loss is the share of *all* squared weight of
the clustered layers that crosses clusters (exactly the model-wide E of
:func:`graphinterp.clustering.metrics.clusterability_report` on the same graph) and a layer counts in
proportion to its weight
mass; when the clustered layers differ greatly in size a big layer dominates and the small ones stay
less modular (paper's CIFAR-10 CNN, ``fc1`` 4096 x 64 and ``fc2`` 64 x 64 clustered, 1 + 10
epochs: E of ``fc2`` 0.904 with ``"mass"`` against 0.9997 with ``"mean"``). For a single clustered
layer (the paper's MLP setting) the two coincide.

The loss returns a term to add to the objective; it never writes into ``.grad``, so it composes
with any optimiser, gradient scaler or ``DistributedDataParallel`` (whose reducer sees the term's
gradient like any other). It is computed directly as the between-cluster share, which is
:math:`1 - E` and more accurate than subtracting E from 1 when E is close to 1: with the
between-cluster masks :math:`\\bar M_l = 1 - M_l`, per clustered layer one masked product and two
dot products,

.. math::

    B_l = \\langle W_l, W_l \\odot \\bar M_l \\rangle, \\qquad T_l = \\langle W_l, W_l \\rangle, \\qquad
    L_E = \\frac{\\sum_l B_l + \\epsilon}{\\sum_l T_l + \\epsilon} \\ (\\text{mass}) \\quad \\text{or} \\quad
    \\frac{1}{L} \\sum_l \\frac{B_l + \\epsilon}{T_l + \\epsilon} \\ (\\text{mean}),

with :math:`\\epsilon` the smallest normal float, so all-zero weights give E = 0, ``L_E = 1`` and a
zero gradient instead of NaN. Masks are built once (flattened, in the weights' dtype), no graph is
rebuilt and nothing loops over edges; autograd differentiates these few operations (the tests check
the gradient against a dense reference and with ``torch.autograd.gradcheck``). The cost per step is
measured in ``benchmarks/bench_train.py`` beside the floor, a bare masked sum of squares: on a small
model a step costs as many operations as it dispatches, so the loss uses as few as the formula
allows (a hand-written ``autograd.Function`` with one node was measured slower, because of its
Python overhead).
"""
from __future__ import annotations

import weakref
from typing import Dict, List, Optional

import torch
from torch import nn

from graphinterp.clustering.cluster import Clustering
from graphinterp.clustering.labels import require_clustering
from graphinterp.common.errors import ClusteringError
from graphinterp.graph.layered import LayeredGraph
from graphinterp.training.masks import parameter_masks, unwrap_model
from graphinterp.clustering.metrics import within_share

__all__ = ["REDUCTIONS", "EnmeshmentLoss", "enmeshment_loss"]

#: Accepted values of ``reduction``.
REDUCTIONS = ("mean", "mass")


class EnmeshmentLoss:
    """``L_E = 1 - E`` of a model's clustered layers; call it to get a differentiable scalar.

    Parameters
    ----------
    model : torch.nn.Module
        The model being trained (a ``DistributedDataParallel`` wrapper is unwrapped; the loss
        reads the live parameters, so it follows optimiser updates).
    clustering : Clustering
        Cluster labels (only this type: a dict is refused with :class:`ClusteringError`) of the layers to make modular (e.g. from
        :func:`graphinterp.clustering.cluster.cluster_network`).
    graph : LayeredGraph, optional
        The model's layered graph; traced from ``model`` when omitted.
    reduction : {"mean", "mass"}, default "mean"
        The mean of per-layer values, or mass-weighted over layers (see the module docstring).

    Attributes
    ----------
    layers : list of str
        Clustered layer names.
    masks : dict of str to ParameterMask

    Raises
    ------
    ClusteringError
        If the clustering does not fit the model; ``ValueError`` for an unknown reduction.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(2, 2, bias=False))
    >>> with torch.no_grad():
    ...     _ = model[0].weight.copy_(torch.tensor([[3.0, 1.0], [1.0, 3.0]]))
    >>> c = Clustering(2, {"0": np.array([0, 1])}, {"0": np.array([0, 1])})
    >>> loss = EnmeshmentLoss(model, c)
    >>> value = loss()          # 1 - 18 / 20
    >>> round(value.item(), 4), value.requires_grad
    (0.1, True)
    """

    def __init__(
        self,
        model: nn.Module,
        clustering: Clustering,
        *,
        graph: Optional[LayeredGraph] = None,
        reduction: str = "mean",
    ) -> None:
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        self.masks = parameter_masks(model, graph, require_clustering(clustering, "EnmeshmentLoss"))
        if not self.masks:
            raise ClusteringError("the clustering has no layers; cluster at least one layer first")
        self.layers: List[str] = list(self.masks)
        self._params = [m.param for m in self.masks.values()]
        aliases: Dict[int, List[str]] = {}
        for n, p in unwrap_model(model).named_parameters(remove_duplicate=False):
            aliases.setdefault(id(p), []).append(n)
        self._model = weakref.ref(unwrap_model(model))
        # each layer's own name for its weight (a tied tensor has several), to notice it replaced after building
        self._names = [next((n for n in aliases.get(id(p), []) if n.rpartition(".")[0] == layer),
                            (aliases.get(id(p)) or [None])[0]) for layer, p in zip(self.layers, self._params)]
        self._mask_tensors = [m.mask for m in self.masks.values()]
        self._between = [(1 - m).reshape(-1) for m in self._mask_tensors]  # flat between-cluster masks

    def _current_masks(self) -> List[torch.Tensor]:
        first = self._params[0]
        if self._mask_tensors[0].device != first.device or self._mask_tensors[0].dtype != first.dtype:
            self._mask_tensors = [m.to(p) for m, p in zip(self._mask_tensors, self._params)]  # model was moved
            self._between = [(1 - m).reshape(-1) for m in self._mask_tensors]
        return self._mask_tensors

    def is_live(self, model: Optional[nn.Module] = None) -> bool:
        """True while every clustered weight is still the model's parameter of that name (not replaced by
        assignment, ``load_state_dict(assign=True)`` or a re-tie since the loss was built)."""
        model = unwrap_model(model) if model is not None else self._model()
        if model is None:
            return False
        for name, p in zip(self._names, self._params):
            try:
                if name is None or model.get_parameter(name) is not p:
                    return False
            except AttributeError:
                return False
        return True

    def __call__(self) -> torch.Tensor:
        """``1 - E`` as a 0-d tensor attached to the autograd graph of the clustered weights.

        Sums in float32 at least (a float16 model's squared weights underflow and its ``tiny`` is 6e-5).

        Raises
        ------
        ClusteringError
            When a clustered weight was replaced after the loss was built (build the loss again).
        """
        if not self.is_live():
            stale = [layer for layer, name, p in zip(self.layers, self._names, self._params)
                     if self._model() is None or name is None or _get(self._model(), name) is not p]
            raise ClusteringError(f"the weight of layer(s) {', '.join(stale) or '?'} was replaced after this "
                                  "EnmeshmentLoss was built (e.g. model.fc2.weight = nn.Parameter(...)); the loss "
                                  "would score the old tensor: build the loss again for the model as it is now")
        self._current_masks()  # follows the model to another device or dtype
        acc = _wide_dtype(self._params[0].dtype)
        tiny = torch.finfo(acc).tiny
        between, total = [], []
        for pm, m in zip(self.masks.values(), self._between):
            w = pm.effective().reshape(-1).to(acc)  # its rows of the parameter, times the folded scales
            between.append(torch.dot(w, w * m.to(acc)))
            total.append(torch.dot(w, w))
        if len(between) == 1:
            return (between[0] + tiny) / (total[0] + tiny)
        if self.reduction == "mass":
            return (torch.stack(between).sum() + tiny) / (torch.stack(total).sum() + tiny)
        return ((torch.stack(between) + tiny) / (torch.stack(total) + tiny)).mean()

    @torch.no_grad()
    def clusterability(self) -> float:
        """Mass-weighted E of the clustered layers now (a float, no autograd), whatever ``reduction``."""
        masks = self._current_masks()
        return float(within_share([_wide(m.effective()).square() for m in self.masks.values()], masks))

    @torch.no_grad()
    def per_layer(self) -> Dict[str, float]:
        """E of each clustered layer now."""
        return {name: float(within_share([_wide(pm.effective()).square()], [m]))
                for (name, pm), m in zip(self.masks.items(), self._current_masks())}

    def __repr__(self) -> str:
        return f"EnmeshmentLoss(layers={self.layers}, reduction={self.reduction!r})"


def _wide_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 at least: a float16 layer's squared weights underflow (the loss and E are summed in it)."""
    return torch.promote_types(dtype, torch.float32)


def _wide(w: torch.Tensor) -> torch.Tensor:
    return w.to(_wide_dtype(w.dtype))


def _get(model: nn.Module, name: str) -> Optional[torch.Tensor]:
    try:
        return model.get_parameter(name)
    except AttributeError:
        return None


class _Entry:
    """Cache record: the loss object plus what it was built from."""

    def __init__(self, loss: EnmeshmentLoss, clustering, reduction: str, graph=None) -> None:
        self.loss = loss
        self.reduction = reduction
        self._graph = weakref.ref(graph) if graph is not None else (lambda: None)
        try:  # weak, so caching never keeps a clustering alive
            self._clustering = weakref.ref(clustering)
        except TypeError:  # a plain dict cannot be weakly referenced
            self._clustering = lambda c=clustering: c

    def matches(self, model: nn.Module, clustering, reduction: str, graph=None) -> bool:
        if self._clustering() is not clustering or self.reduction != reduction or self._graph() is not graph:
            return False
        return self.loss.is_live(model)  # parameters replaced since (e.g. model.fc2.weight = ...)?


_CACHE: "weakref.WeakKeyDictionary[nn.Module, _Entry]" = weakref.WeakKeyDictionary()


def enmeshment_loss(
    model: nn.Module,
    clustering: Clustering,
    graph: Optional[LayeredGraph] = None,
    *,
    reduction: str = "mean",
) -> torch.Tensor:
    """Functional form of :class:`EnmeshmentLoss`: ``L_E = 1 - E`` as a differentiable scalar.

    The masks are cached per ``(model, clustering object, reduction)``, so calling this every
    step builds them only once; a different clustering object (or replaced weight parameters)
    rebuilds them. Add the result to any loss: ``loss = ce + lam * enmeshment_loss(model, c)``.

    Parameters
    ----------
    model, clustering, graph, reduction
        As in :class:`EnmeshmentLoss`.

    Returns
    -------
    torch.Tensor
        0-d tensor in ``[0, 1]``.

    Examples
    --------
    >>> from graphinterp.sources.models import mlp
    >>> from graphinterp.clustering.cluster import cluster_network
    >>> model = mlp(16, [8, 8], 3)
    >>> c = cluster_network(LayeredGraph.from_module(model), 2, layers=["fc2"], random_state=0)
    >>> loss = enmeshment_loss(model, c)
    >>> loss.backward()
    >>> bool(0 <= loss <= 1), model.fc2.weight.grad.shape
    (True, torch.Size([8, 8]))
    """
    model = unwrap_model(model)
    entry = _CACHE.get(model)
    if entry is None or not entry.matches(model, clustering, reduction, graph):
        entry = _Entry(EnmeshmentLoss(model, clustering, graph=graph, reduction=reduction), clustering, reduction,
                       graph)
        _CACHE[model] = entry
    return entry.loss()
