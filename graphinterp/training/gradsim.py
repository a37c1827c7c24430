"""Gradient-based similarity for BSGC (the paper's "gradient-based BSGC", Section 1.1).

The paper sets the similarity matrix to "the average cosine similarity of the gradients of each
parameter". graphinterp implements this as follows. Let :math:`g_t` be the gradient of a clustered
layer's whole weight tensor at training step ``t`` (after ``backward()``; all-reduced under
``DistributedDataParallel``), :math:`\\hat g_t = g_t / \\lVert g_t \\rVert_2` its direction, and
:math:`B_{ij}` the parameters behind edge ``(i, j)`` of the layered graph (one weight for a Linear
edge, the kernel :math:`K_{ji}` for a Conv2d edge, channel ``i``'s features for a Linear after a
Flatten). Over the :math:`T` steps with a non-zero gradient,

.. math::

    S_{ij} = \\Bigl\\lVert \\frac{1}{T} \\sum_{t=1}^{T} \\hat g_t[B_{ij}] \\Bigr\\rVert_2 ,
    \\qquad\\text{for a Linear edge}\\quad
    S_{ij} = \\Bigl| \\frac{1}{T} \\sum_t \\cos(g_t, e_{ij}) \\Bigr| ,

where :math:`e_{ij}` is the unit vector of parameter ``W[j, i]``: the edge's similarity is the
average cosine between the layer's gradient and the edge's own parameter direction (for a block of
parameters, with the best fixed direction inside the block), in absolute value. ``S`` has the
``(n_in, n_out)`` layout :class:`~graphinterp.clustering.cluster.BSGC` expects.

Why this formula:

* **It is a cosine.** Each step enters through its direction only, so batches with large gradients
  (early training, hard batches) do not dominate and the result does not depend on the loss scale
  or learning rate.
* **It is the learned part of the weights.** :math:`-\\frac{1}{T}\\sum_t \\hat g_t` is the
  displacement of normalised gradient descent; weight-based BSGC clusters :math:`|W_0 + \\Delta W|`,
  whose random initialisation :math:`W_0` is pure noise, while ``S`` sees only the updates: weights
  "that update together" (consistently, on the same neurons) get large similarity.
* **Noise cancels.** Gradient components that flip sign from batch to batch average out; the
  absolute value of the mean (not the mean of absolute values) keeps only consistent updates.
* **Properties** (tested): :math:`0 \\le S_{ij} \\le 1`, :math:`\\sum_{ij} S_{ij}^2 \\le 1` (the norm of
  an average of unit vectors), invariant to rescaling any step's gradient by a positive factor, and
  equal to a dense reference computed from stored gradients.

Memory is one running sum per clustered weight (O(parameters)), unlike the paper's notebook,
which stores every gradient of training.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from graphinterp.common.errors import TrainingError
from graphinterp.graph.layered import Layer, LayeredGraph
from graphinterp.training.masks import (bound_rows, default_cluster_layers, layer_parameter, trace_graph,
                                         unwrap_model)

__all__ = ["GradientSimilarity", "gradient_similarity", "orphans_note"]


class GradientSimilarity:
    """Accumulate normalised gradients of some layers and turn them into BSGC similarities.

    Call :meth:`update` after every ``loss.backward()`` of the warm-up (it only reads ``.grad``),
    then :meth:`similarity` to get one ``(n_in, n_out)`` matrix per layer for
    :func:`graphinterp.clustering.cluster.cluster_network` / :func:`~graphinterp.clustering.cluster.cluster_layers`.

    Parameters
    ----------
    model : torch.nn.Module
        A ``DistributedDataParallel`` wrapper is unwrapped.
    layers : sequence of str, optional
        Layers to track; default :func:`graphinterp.training.masks.default_cluster_layers`.
    graph : LayeredGraph, optional
        The model's graph; traced when omitted.

    Raises
    ------
    TrainingError
        A name in ``layers`` that is not a layer of the graph.

    Attributes
    ----------
    layers : list of str
    steps : dict of str to int
        Number of steps with a non-zero gradient, per layer.

    Examples
    --------
    >>> import torch
    >>> from graphinterp.sources.models import mlp
    >>> model = mlp(16, [8, 8], 3)
    >>> sim = GradientSimilarity(model)
    >>> for _ in range(3):
    ...     model.zero_grad()
    ...     model(torch.randn(5, 16)).square().sum().backward()
    ...     sim.update()
    >>> S = sim.similarity()["fc2"]
    >>> S.shape, bool((S >= 0).all() and (S <= 1).all())
    (torch.Size([8, 8]), True)
    """

    def __init__(self, model: nn.Module, layers: Optional[Sequence[str]] = None, *,
                 graph: Optional[LayeredGraph] = None) -> None:
        model = unwrap_model(model)
        graph = graph if graph is not None else trace_graph(model)
        names = list(layers) if layers is not None else default_cluster_layers(graph)
        unknown = [n for n in names if n not in graph.layer_names]
        if unknown:
            raise TrainingError(f"unknown layer(s) {unknown} for gradient similarity; layers are {graph.layer_names}")
        self.layers = names
        self._layers: Dict[str, Layer] = {n: graph[n] for n in names}
        self._params = {n: layer_parameter(model, graph[n]) for n in names}
        self._rows = {n: graph[n].rows for n in names}  # the rows a layer holds of its parameter (or None)
        low = (torch.float16, torch.bfloat16)  # accumulate half-precision gradients in float32
        self._sums = {n: torch.zeros_like(bound_rows(p, self._rows[n]),
                                          dtype=torch.float32 if p.dtype in low else p.dtype)
                      for n, p in self._params.items()}
        self._counts = {n: torch.zeros((), dtype=torch.int64, device=p.device) for n, p in self._params.items()}

    @torch.no_grad()
    def update(self) -> None:
        """Add the current gradients' directions (call after ``backward()``, before ``zero_grad``).

        Raises
        ------
        TrainingError
            If a tracked weight has no gradient (``backward()`` not called, or the layer is frozen).
        """
        for name, p in self._params.items():
            if p.grad is None:
                raise TrainingError(f"layer {name!r} has no gradient; call update() after loss.backward()")
            g = bound_rows(p.grad, self._rows[name]).to(self._sums[name].dtype)
            norm = torch.linalg.vector_norm(g)
            live = norm > 0
            self._sums[name].add_(g / torch.where(live, norm, torch.ones_like(norm)))  # zero gradient adds nothing
            self._counts[name].add_(live.to(torch.int64))

    @property
    def steps(self) -> Dict[str, int]:
        return {n: int(c) for n, c in self._counts.items()}

    @torch.no_grad()
    def similarity(self) -> Dict[str, torch.Tensor]:
        """``S`` of every tracked layer, shape ``(n_in, n_out)`` (grouped view), on the CPU.

        Raises
        ------
        TrainingError
            If no step with a non-zero gradient was recorded.
        """
        out = {}
        for name, layer in self._layers.items():
            count = int(self._counts[name])
            if count == 0:
                raise TrainingError(f"no gradient was accumulated for layer {name!r}; train at least one warm-up step")
            mean = (self._sums[name] / count).cpu()
            if getattr(layer, "transposed", False):  # stored (in, out) (GPT-2 Conv1D): back to (out, in)
                mean = mean.T
            # a Layer over the mean direction: its magnitude() is exactly the per-edge block norm
            out[name] = Layer(name, layer.kind, mean, in_groups=layer.in_groups, groups=layer.groups).magnitude()
        return out

    def state_dict(self) -> Dict[str, Any]:
        """Plain dict of tensors (CPU) for checkpoints."""
        return {"layers": list(self.layers),
                "sums": {n: s.detach().cpu().clone() for n, s in self._sums.items()},
                "counts": {n: int(c) for n, c in self._counts.items()}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (same layers).

        Parameters
        ----------
        state : dict
            From :meth:`state_dict` of a tracker of the same layers: ``layers``, ``sums`` and ``counts``.

        Raises
        ------
        TrainingError
            ``state`` is for other layers.
        """
        if list(state.get("layers", [])) != self.layers:
            raise TrainingError(f"gradient-similarity state is for layers {state.get('layers')}, not {self.layers}")
        for n in self.layers:
            self._sums[n].copy_(state["sums"][n])
            self._counts[n].fill_(int(state["counts"][n]))


def gradient_similarity(gradients: Sequence[torch.Tensor], layer: Layer) -> torch.Tensor:
    """Dense reference: ``S`` of one layer from a list of stored gradients (torch layout).

    Same formula as :class:`GradientSimilarity` (module docstring), in O(steps x parameters)
    memory; use it for small checks and tests.

    Examples
    --------
    >>> import torch
    >>> layer = Layer("fc", "linear", torch.zeros(2, 3))
    >>> g = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    >>> gradient_similarity([g, -g, g], layer)[:, 0]   # +1, -1, +1 -> |1/3|
    tensor([0.3333, 0.0000, 0.0000])
    """
    units = [g / g.norm() for g in gradients if g.norm() > 0]
    if not units:
        raise TrainingError("all gradients are zero; nothing to compare")
    mean = torch.stack(units).mean(0)
    return Layer(layer.name, layer.kind, mean, in_groups=layer.in_groups, groups=layer.groups).magnitude()


def orphans_note(graph: LayeredGraph, clustering) -> Optional[str]:
    """Which units carry weight but are in no cluster of a gradient clustering (None when none do).

    A unit dead all through the warm-up gets no gradient, so the gradient similarity isolates it (label
    -1) although its weights are not zero: E counts those weights as between clusters, and the enmeshment
    loss pushes them to zero.
    """
    parts = []
    for name in clustering.layer_names:
        M = graph[name].magnitude().double()
        rows, cols = (torch.as_tensor(x) for x in clustering.labels(name))
        dead_r, dead_c = (rows < 0) & (M.sum(1) > 0), (cols < 0) & (M.sum(0) > 0)
        if not (bool(dead_r.any()) or bool(dead_c.any())):
            continue
        sq = M.square()
        share = float(sq[dead_r].sum() + sq[:, dead_c].sum() - sq[dead_r][:, dead_c].sum()) / max(float(sq.sum()), 1e-300)
        sides = [f"{side} {', '.join(map(str, idx.nonzero()[:, 0].tolist()[:6]))}{', ...' if int(idx.sum()) > 6 else ''}"
                 for side, idx in (("inputs", dead_r), ("outputs", dead_c)) if bool(idx.any())]
        parts.append(f"{name} {'; '.join(sides)} ({share:.1%} of its squared weight)")
    if not parts:
        return None
    return ("gradient clustering: units with weight but no gradient during the warm-up (dead units) are in no "
            f"cluster: {'; '.join(parts)}; E counts their weight as between clusters and the enmeshment loss "
            "pushes it to zero")
