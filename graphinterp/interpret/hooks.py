"""Neuron ablation and level means, as interventions (:func:`graphinterp.interpret.interventions.interventions`).

See :mod:`graphinterp.interpret.ablate` for where a level is hooked and how clusters map to neurons.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from graphinterp.common.errors import ClusteringError, DataError
from graphinterp.graph.layered import LayeredGraph
from graphinterp.interpret.evaluation import as_inputs, eval_mode
from graphinterp.interpret.interventions import Interventions, interventions, module_of, node_mask

__all__ = ["AblationHandle", "NeuronSpec", "MODES", "ablate", "run_with_ablation", "level_means", "module_of"]

NeuronSpec = Mapping[str, Union[Sequence[int], np.ndarray, torch.Tensor]]
MODES = ("zero", "mean")


class AblationHandle:
    """The interventions of one :func:`ablate` block.

    Attributes
    ----------
    masks : dict of str to BoolTensor
        Per level name, the ablated nodes.
    mode : {"zero", "mean"}
    active : bool
        False once the hooks are removed.
    """

    def __init__(self, masks: Dict[str, torch.Tensor], mode: str, registry: Interventions) -> None:
        self.masks = masks
        self.mode = mode
        self._registry = registry

    @property
    def active(self) -> bool:
        return self._registry.active

    def remove(self) -> None:
        """Remove every hook (idempotent)."""
        self._registry.remove()

    def __repr__(self) -> str:
        n = {k: int(v.sum()) for k, v in self.masks.items()}
        return f"AblationHandle(mode={self.mode!r}, ablated={n}, active={self.active})"


@contextlib.contextmanager
def ablate(
    model: nn.Module,
    graph: Optional[LayeredGraph],
    spec: NeuronSpec,
    *,
    mode: str = "zero",
    means: Optional[Mapping[str, torch.Tensor]] = None,
    reference: Any = None,
    batch_size: int = 1024,
) -> Iterator[AblationHandle]:
    """Ablate neurons of ``model`` inside a ``with`` block; hooks are removed in ``finally``.

    Parameters
    ----------
    model : nn.Module
    graph : LayeredGraph or None
        The model's layered graph (traced from ``model`` when None).
    spec : mapping of level name to indices or boolean mask
        Neurons (channels for Conv2d levels) to ablate, e.g. ``{"fc1": [1, 2, 3]}``; level names
        are ``"input"`` and layer names (a layer's outputs). See :func:`cluster_neurons`.
    mode : {"zero", "mean"}
        Replace with 0, or with the neuron's mean activation over ``reference`` (per position for
        channels), or over the given ``means``.
    means : mapping of level name to Tensor, optional
        Precomputed :func:`level_means`.
    reference : data, optional
        Data for the means in mean mode (anything :func:`as_tensors` accepts, or an input tensor).
    batch_size : int

    Yields
    ------
    AblationHandle

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
    >>> with torch.no_grad():
    ...     _ = model[0].weight.copy_(torch.eye(2)); _ = model[2].weight.fill_(1.0)
    >>> with ablate(model, None, {"0": [1]}) as handle:
    ...     model(torch.tensor([[1.0, 2.0]])).item()
    1.0
    >>> handle.active, model(torch.tensor([[1.0, 2.0]])).item()
    (False, 3.0)
    """
    if mode not in MODES:
        raise ClusteringError(f"mode must be one of {MODES}, got {mode!r}")
    if graph is None:
        shape = None
        if reference is not None:
            ref = as_inputs(reference)
            shape = tuple(ref.shape[1:])
        graph = LayeredGraph.from_module(model, input_shape=shape)
    with interventions(model, graph) as iv:
        iv.sites()
        masks = {name: node_mask(graph, name, nodes) for name, nodes in spec.items()}
        if mode == "mean" and means is None:
            if reference is None:
                raise DataError("mean ablation needs reference data (reference=...) or precomputed means")
            means = level_means(model, graph, reference, levels=list(masks), batch_size=batch_size)
        for name, ablated in masks.items():
            iv.replace(name, ablated, None if mode == "zero" else means[name])
        yield AblationHandle(masks, mode, iv)


def run_with_ablation(model: nn.Module, graph: Optional[LayeredGraph], spec: NeuronSpec, x: torch.Tensor,
                      **kwargs: Any) -> torch.Tensor:
    """``model(x)`` with the neurons in ``spec`` ablated (keyword arguments as in :func:`ablate`).

    Parameters
    ----------
    model : nn.Module
    graph : LayeredGraph or None
        The model's layered graph (traced from ``model`` when None).
    spec : mapping of level name to indices or boolean mask
        Neurons (channels for conv levels) to ablate, e.g. ``{"fc1": [1, 2, 3]}``.
    x : torch.Tensor
        The input batch, passed to ``model`` as is (on the model's device).
    **kwargs
        ``mode``, ``means``, ``reference`` and ``batch_size`` of :func:`ablate`.

    Returns
    -------
    torch.Tensor
        The model's output; the hooks are removed before this returns.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(3, 1, bias=False))
    >>> _ = nn.init.ones_(model[0].weight)
    >>> run_with_ablation(model, None, {"input": [0]}, torch.tensor([[1.0, 2.0, 4.0]])).item()
    6.0
    """
    with ablate(model, graph, spec, **kwargs):
        return model(x)


def level_means(model: nn.Module, graph: Optional[LayeredGraph], reference: Any, *,
                levels: Optional[Sequence[str]] = None, batch_size: int = 1024) -> Dict[str, torch.Tensor]:
    """Mean activation of each level over ``reference``, as seen where :func:`ablate` hooks it.

    Returns one tensor per level with the shape of one example's activation where it is read
    (e.g. ``(64,)`` for a Linear level, ``(C, H, W)`` for channels a Conv2d reads, ``(C * H * W,)``
    after a Flatten), on the model's device. The graph is traced with the reference's shape when
    not given.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> relu_net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
    >>> _ = nn.init.eye_(relu_net[0].weight)
    >>> level_means(relu_net, None, torch.tensor([[1.0, -1.0], [3.0, 1.0]]), levels=["0"])["0"].tolist()
    [2.0, 0.5]
    """
    x = as_inputs(reference, model)
    if len(x) == 0:
        raise DataError("the reference data for mean ablation is empty")
    graph = graph if graph is not None else LayeredGraph.from_module(model, input_shape=tuple(x.shape[1:]))
    names = list(levels) if levels is not None else graph.level_names()
    sums: Dict[str, torch.Tensor] = {}

    def recorder(name):
        def record(value):
            v = value.detach().sum(0)
            sums[name] = sums[name] + v if name in sums else v
        return record

    device = next(model.parameters()).device
    with interventions(model, graph) as iv, eval_mode(model), torch.no_grad():
        for name in names:
            iv.record(name, recorder(name))
        for start in range(0, len(x), batch_size):
            model(x[start:start + batch_size].to(device))
    return {name: sums[name] / len(x) for name in names}
