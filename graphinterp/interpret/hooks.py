"""Forward hooks that replace neuron activations, attached inside a context manager.

See :mod:`graphinterp.interpret.ablate` for where a level is hooked and how clusters map to neurons.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from graphinterp.common.errors import ClusteringError, DataError, UnsupportedModelError
from graphinterp.interpret.evaluation import as_tensors, eval_mode
from graphinterp.graph.layered import LayeredGraph

__all__ = ["AblationHandle", "NeuronSpec", "MODES", "ablate", "run_with_ablation", "level_means", "module_of"]

NeuronSpec = Mapping[str, Union[Sequence[int], np.ndarray, torch.Tensor]]
MODES = ("zero", "mean")


def module_of(model: nn.Module, graph: LayeredGraph, name: str) -> Tuple[nn.Module, str]:
    """The Linear/Conv2d of ``model`` behind graph layer ``name`` and its parameter prefix (``"fc1."``).

    Raises
    ------
    UnsupportedModelError
        If the model has no matching Linear/Conv2d (the graph was built from another model).
    """
    layer = graph[name]
    try:
        mod, prefix = model.get_submodule(name), f"{name}."
    except AttributeError:
        mod, prefix = (model, "") if (len(graph) == 1 and isinstance(model, (nn.Linear, nn.Conv2d))) else (None, "")
    if not isinstance(mod, (nn.Linear, nn.Conv2d)) or tuple(mod.weight.shape) != tuple(layer.weight.shape):
        raise UnsupportedModelError(
            f"layer {name!r} of the graph is not a matching Linear/Conv2d of the model; "
            "build the graph with LayeredGraph.from_module(model)"
        )
    return mod, prefix


def _sites(model: nn.Module, graph: LayeredGraph) -> List[nn.Module]:
    """The weight module of each graph layer, checked against the graph."""
    if not graph.chained:
        raise UnsupportedModelError("ablation needs a chained layered graph; this one is layer by layer")
    return [module_of(model, graph, layer.name)[0] for layer in graph.layers]


def _level_index(graph: LayeredGraph, name: str) -> int:
    names = graph.level_names()
    if name not in names:
        raise ClusteringError(f"unknown level {name!r}; levels are {names} (a layer name means its outputs)")
    return names.index(name)


def _node_mask(graph: LayeredGraph, level: int, nodes: Any) -> torch.Tensor:
    """Boolean mask over the level's nodes from indices or a boolean mask."""
    n = graph.level_sizes()[level]
    name = graph.level_names()[level]
    t = torch.as_tensor(np.asarray(nodes) if not isinstance(nodes, torch.Tensor) else nodes)
    if t.dtype == torch.bool:
        if t.shape != (n,):
            raise ClusteringError(f"the boolean mask for level {name!r} must have {n} entries, got {tuple(t.shape)}")
        return t.clone()
    t = t.reshape(-1)
    if t.numel() and (torch.is_floating_point(t) or int(t.min()) < 0 or int(t.max()) >= n):
        raise ClusteringError(f"neuron indices of level {name!r} must be integers in 0..{n - 1}, got {t.tolist()[:8]}")
    mask = torch.zeros(n, dtype=torch.bool)
    mask[t.long()] = True
    return mask


class AblationHandle:
    """The hooks of one :func:`ablate` block.

    Attributes
    ----------
    masks : dict of str to BoolTensor
        Per level name, the ablated nodes.
    mode : {"zero", "mean"}
    active : bool
        False once the hooks are removed.
    """

    def __init__(self, masks: Dict[str, torch.Tensor], mode: str) -> None:
        self.masks = masks
        self.mode = mode
        self.active = True
        self._handles: list = []

    def remove(self) -> None:
        """Remove every hook (idempotent)."""
        while self._handles:
            self._handles.pop().remove()
        self.active = False

    def __repr__(self) -> str:
        n = {k: int(v.sum()) for k, v in self.masks.items()}
        return f"AblationHandle(mode={self.mode!r}, ablated={n}, active={self.active})"


def _site_of(graph: LayeredGraph, mods: List[nn.Module], level: int):
    """``(module, is_pre_hook, node_dim_is_channel, features_per_node)`` where level ``level`` is read."""
    L = len(graph)
    if level < L:
        layer = graph.layers[level]
        per = layer.weight.shape[1] // layer.in_groups if (layer.kind == "linear" and layer.in_groups) else 1
        return mods[level], True, layer.kind == "conv2d", per
    return mods[-1], False, graph.layers[-1].kind == "conv2d", 1


def _replace(x: torch.Tensor, ablated: torch.Tensor, fill: Optional[torch.Tensor], channel: bool, per: int, name: str):
    mask = ablated.to(x.device).repeat_interleave(per) if per > 1 else ablated.to(x.device)
    dim = 1 if channel else x.dim() - 1
    if x.dim() <= dim or x.shape[dim] != mask.numel():
        raise UnsupportedModelError(
            f"level {name!r} has {ablated.numel()} nodes but the activation reaching it has shape "
            f"{tuple(x.shape)}; the graph does not describe this model"
        )
    mask = mask.view(-1, *([1] * (x.dim() - dim - 1)))
    value = x.new_zeros(()) if fill is None else fill.to(device=x.device, dtype=x.dtype)
    return torch.where(mask, value, x)


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
            ref = reference if isinstance(reference, torch.Tensor) else as_tensors(reference)[0]
            shape = tuple(ref.shape[1:])
        graph = LayeredGraph.from_module(model, input_shape=shape)
    mods = _sites(model, graph)
    masks = {name: _node_mask(graph, _level_index(graph, name), nodes) for name, nodes in spec.items()}
    if mode == "mean" and means is None:
        if reference is None:
            raise DataError("mean ablation needs reference data (reference=...) or precomputed means")
        means = level_means(model, graph, reference, levels=list(masks), batch_size=batch_size)
    handle = AblationHandle(masks, mode)
    try:
        for name, ablated in masks.items():
            if not bool(ablated.any()):
                continue
            level = _level_index(graph, name)
            mod, pre, channel, per = _site_of(graph, mods, level)
            fill = None if mode == "zero" else means[name]
            if pre:
                def hook(_mod, args, _a=ablated, _f=fill, _c=channel, _p=per, _n=name):
                    return (_replace(args[0], _a, _f, _c, _p, _n),) + tuple(args[1:])
                handle._handles.append(mod.register_forward_pre_hook(hook))
            else:
                def hook(_mod, _args, out, _a=ablated, _f=fill, _c=channel, _n=name):
                    return _replace(out, _a, _f, _c, 1, _n)
                handle._handles.append(mod.register_forward_hook(hook))
        yield handle
    finally:
        handle.remove()


def run_with_ablation(model: nn.Module, graph: Optional[LayeredGraph], spec: NeuronSpec, x: torch.Tensor,
                      **kwargs: Any) -> torch.Tensor:
    """``model(x)`` with the neurons in ``spec`` ablated (keyword arguments as in :func:`ablate`).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
    >>> with torch.no_grad():
    ...     _ = model[0].weight.copy_(torch.eye(2)); _ = model[2].weight.fill_(1.0)
    >>> run_with_ablation(model, None, {"0": [0]}, torch.tensor([[1.0, 2.0]])).item()
    2.0
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
    >>> model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
    >>> with torch.no_grad():
    ...     _ = model[0].weight.copy_(torch.eye(2))
    >>> level_means(model, None, torch.tensor([[1.0, -1.0], [3.0, 1.0]]), levels=["0"])["0"].tolist()
    [2.0, 0.5]
    """
    x = reference if isinstance(reference, torch.Tensor) else as_tensors(reference)[0]
    if len(x) == 0:
        raise DataError("the reference data for mean ablation is empty")
    graph = graph if graph is not None else LayeredGraph.from_module(model, input_shape=tuple(x.shape[1:]))
    mods = _sites(model, graph)
    names = list(levels) if levels is not None else graph.level_names()
    sums: Dict[str, torch.Tensor] = {}
    handles = []

    def recorder(name):
        def record(value):
            v = value.detach().sum(0)
            sums[name] = sums[name] + v if name in sums else v
        return record

    try:
        for name in names:
            mod, pre, _, _ = _site_of(graph, mods, _level_index(graph, name))
            rec = recorder(name)
            if pre:
                handles.append(mod.register_forward_pre_hook(lambda _m, args, _r=rec: _r(args[0])))
            else:
                handles.append(mod.register_forward_hook(lambda _m, _a, out, _r=rec: _r(out)))
        device = next(model.parameters()).device
        with eval_mode(model), torch.no_grad():
            for start in range(0, len(x), batch_size):
                model(x[start:start + batch_size].to(device))
    finally:
        for h in handles:
            h.remove()
    return {name: sums[name] / len(x) for name in names}


