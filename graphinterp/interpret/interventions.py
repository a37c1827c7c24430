"""The one way to intervene on a model: :func:`interventions`, a context manager over one registry.

Every change to a model made by graphinterp's interpretation code goes through an
:class:`Interventions` handle, which records it and undoes it in ``finally``:

* **edge masks**: a layer's weight is written in place with its pruned edges zeroed (the original is
  saved on the first write and copied back at the end);
* **neuron replacement**: a forward (pre-)hook replaces some nodes of a level by zero or a fill value
  (:func:`graphinterp.interpret.hooks.ablate`);
* **recording**: a hook hands a level's activation to a callback (:func:`graphinterp.interpret.hooks.level_means`);
* **output override**: a module's ``forward`` returns a precomputed tensor instead of running
  (the incremental evaluation of :class:`graphinterp.interpret.circuit_eval.TaskEvaluator`).

Layers and levels are found through the graph's binding (:func:`module_of`): a graph layer's name
is the model's submodule name. A *level* is ``"input"`` or a layer's name (that layer's outputs); it is
hooked where the next layer reads it (a forward pre-hook), the last level at the last layer's output.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from graphinterp.common.errors import ClusteringError, DataError, UnsupportedModelError
from graphinterp.graph.layered import LayeredGraph

__all__ = ["Interventions", "interventions", "module_of", "tied_edges_message"]


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
    owner = "" if isinstance(mod, (nn.Linear, nn.Conv2d)) else _owner_type(model, getattr(layer, "param_name", "") or "")
    if owner:  # a weight of this model, held by another kind of module (MultiheadAttention's in_proj)
        raise UnsupportedModelError(
            f"layer {name!r} is a weight of a {owner}, not a Linear/Conv2d module: interventions (ablation, "
            "circuits) mask the weights of Linear and Conv2d layers only"
        )
    if not isinstance(mod, (nn.Linear, nn.Conv2d)) or tuple(mod.weight.shape) != tuple(layer.weight.shape):
        raise UnsupportedModelError(
            f"layer {name!r} of the graph is not a matching Linear/Conv2d of the model; "
            "build the graph with LayeredGraph.from_module(model)"
        )
    return mod, prefix


def tied_edges_message(first: str, second: str) -> str:
    """The one-line refusal for edge masks on two layers that apply one weight tensor (tied weights)."""
    return (f"layers {first!r} and {second!r} apply one weight tensor (tied weights): an edge cannot be kept in one "
            "and pruned in the other; untie them to mask their edges (e.g. module.weight = "
            "nn.Parameter(module.weight.detach().clone()) for the second)")


def _owner_type(model: nn.Module, param_name: str) -> str:
    """The type of the module owning parameter ``param_name`` (``"MultiheadAttention"``), or ``""``."""
    try:
        return type(model.get_submodule(param_name.rpartition(".")[0])).__name__ if param_name else ""
    except AttributeError:
        return ""


def level_index(graph: LayeredGraph, name: str) -> int:
    names = graph.level_names()
    if name not in names:
        raise ClusteringError(f"unknown level {name!r}; levels are {names} (a layer name means its outputs)")
    return names.index(name)


def node_mask(graph: LayeredGraph, name: str, nodes: Any) -> torch.Tensor:
    """Boolean mask over the nodes of level ``name`` from indices or a boolean mask."""
    level = level_index(graph, name)
    n = graph.level_sizes()[level]
    t = torch.as_tensor(np.asarray(nodes) if not isinstance(nodes, torch.Tensor) else nodes)
    if t.dtype == torch.bool:
        if t.shape != (n,):
            raise ClusteringError(f"the boolean mask for level {name!r} must have {n} entries, got {tuple(t.shape)}")
        return t.clone()
    t = t.reshape(-1)
    if t.numel() and torch.is_floating_point(t):
        raise ClusteringError(f"neuron indices of level {name!r} must be integers in 0..{n - 1}, got {t.tolist()[:8]}")
    bad = t[(t < 0) | (t >= n)] if t.numel() else t
    if bad.numel():  # the offending indices, not the first valid ones
        raise ClusteringError(f"neuron indices of level {name!r} must be integers in 0..{n - 1}; out of range: "
                              f"{bad.tolist()[:8]}{' ...' if bad.numel() > 8 else ''}")
    mask = torch.zeros(n, dtype=torch.bool)
    mask[t.long()] = True
    return mask


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


class Interventions:
    """The registry of one :func:`interventions` block: what was changed, so that all of it can be undone.

    Attributes
    ----------
    model : nn.Module
    graph : LayeredGraph or None
        Needed for layer and level names; methods given a module directly work without it.
    active : bool
        False once :meth:`remove` ran.
    """

    def __init__(self, model: nn.Module, graph: Optional[LayeredGraph] = None) -> None:
        self.model, self.graph = model, graph
        self.active = True
        self._hooks: list = []
        self._saved: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
        self._patched: List[Tuple[nn.Module, Optional[Callable]]] = []
        self._sites: Optional[List[nn.Module]] = None
        self._masked_by: Dict[int, str] = {}  # weight tensor id -> the layer whose edge mask it holds

    # ------------------------------------------------------------------ binding
    def module(self, layer: Union[str, nn.Module]) -> nn.Module:
        """The weight module of a graph layer (a module is returned as is)."""
        if isinstance(layer, nn.Module):
            return layer
        if self.graph is None:
            raise UnsupportedModelError(f"layer {layer!r} given by name but the interventions have no graph")
        return module_of(self.model, self.graph, layer)[0]

    def sites(self) -> List[nn.Module]:
        """The weight module of each graph layer, checked against the graph (levels are hooked there)."""
        if self.graph is None or not self.graph.chained:
            raise UnsupportedModelError("neuron interventions need a chained layered graph; this one is layer by layer")
        if self._sites is None:
            self._sites = [module_of(self.model, self.graph, layer.name)[0] for layer in self.graph.layers]
        return self._sites

    def site(self, level: str) -> Tuple[nn.Module, bool, bool, int]:
        """``(module, is_pre_hook, node_dim_is_channel, features_per_node)`` where level ``level`` is read."""
        mods, graph = self.sites(), self.graph
        i = level_index(graph, level)
        if i < len(graph):
            layer = graph.layers[i]
            per = layer.weight.shape[1] // layer.in_groups if (layer.kind == "linear" and layer.in_groups) else 1
            return mods[i], True, layer.kind == "conv2d", per
        return mods[-1], False, graph.layers[-1].kind == "conv2d", 1

    # ------------------------------------------------------------------ weights
    def original(self, module: nn.Module) -> torch.Tensor:
        """The module's weight as it was before this block (saved on first use)."""
        p = module.weight
        if id(p) not in self._saved:
            self._saved[id(p)] = (p, p.detach().clone())
        return self._saved[id(p)][1]

    def set_weight(self, module: nn.Module, weight: torch.Tensor) -> None:
        """Write ``weight`` into the module's weight in place (restored at the end of the block)."""
        self.original(module)
        with torch.no_grad():
            module.weight.copy_(weight)

    def mask_edges(self, layer: Union[str, nn.Module], mask: torch.Tensor) -> None:
        """Zero the pruned edges (``mask`` of shape ``(out, in)``, False = pruned) of the layer's original weight."""
        mod = self.module(layer)
        w = self.original(mod)
        m = torch.as_tensor(mask)
        name = layer if isinstance(layer, str) else type(layer).__name__
        first = self._masked_by.setdefault(id(mod.weight), name)
        if first != name:
            raise UnsupportedModelError(tied_edges_message(first, name))
        if m.dtype != torch.bool:  # 0/1 only: any other value would rescale weights, not prune them
            if not bool(((m == 0) | (m == 1)).all()):
                raise DataError(f"the edge mask of layer {name!r} must hold 0/1 or True/False only (False = pruned); "
                                "it holds other values, which would rescale weights instead of pruning them")
            m = m != 0
        if tuple(m.shape) != tuple(w.shape[:2]):
            raise DataError(f"the edge mask of layer {name!r} has shape {tuple(m.shape)}; it must be the weight's "
                            f"(out, in) = {tuple(w.shape[:2])}, not the graph's (in, out)")
        m = m.to(w.device)
        self.set_weight(mod, w * (m[..., None, None] if w.dim() == 4 else m).to(w.dtype))

    # ------------------------------------------------------------------ activations
    def hook(self, target: Union[str, nn.Module], fn: Callable[[torch.Tensor], Optional[torch.Tensor]], *,
             output: bool = False) -> None:
        """Call ``fn(x)`` on a level's activation, or on a module's input (its output with ``output=True``);
        a tensor it returns replaces ``x``, None leaves it."""
        if isinstance(target, nn.Module):
            mod, pre = target, not output
        else:
            mod, pre, _, _ = self.site(target)
        if pre:
            def hook(_mod, args):
                out = fn(args[0])
                return None if out is None else (out,) + tuple(args[1:])
            self._hooks.append(mod.register_forward_pre_hook(hook))
        else:
            self._hooks.append(mod.register_forward_hook(lambda _mod, _args, out: fn(out)))

    def replace(self, level: str, nodes: Any, fill: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Replace the given nodes of ``level`` by 0 (``fill=None``) or by ``fill``; returns the node mask."""
        self.sites()
        mask = node_mask(self.graph, level, nodes)
        if bool(mask.any()):
            _, _, channel, per = self.site(level)
            self.hook(level, lambda x: _replace(x, mask, fill, channel, per, level))
        return mask

    def record(self, level: Union[str, nn.Module], fn: Callable[[torch.Tensor], Any]) -> None:
        """Call ``fn(activation)`` each time ``level`` is read, or a module's input when given a module
        (the activation is not changed)."""
        def call(x):
            fn(x)
        self.hook(level, call)

    def override(self, module: nn.Module, fn: Callable[[], Optional[torch.Tensor]]) -> None:
        """Run ``fn()`` instead of ``module.forward``; when it returns None the module runs as usual."""
        previous = module.__dict__.get("forward")  # a forward installed on the instance, restored by remove()

        def forward(*args, **kwargs):
            out = fn()
            if out is not None:
                return out
            return previous(*args, **kwargs) if previous is not None else type(module).forward(module, *args, **kwargs)
        module.forward = forward
        self._patched.append((module, previous))

    # ------------------------------------------------------------------ undo
    def remove(self) -> None:
        """Remove every hook and override and restore every weight (idempotent)."""
        try:
            while self._hooks:
                self._hooks.pop().remove()
            while self._patched:
                mod, previous = self._patched.pop()
                if previous is not None:
                    mod.forward = previous
                elif "forward" in mod.__dict__:
                    del mod.forward
        finally:
            with torch.no_grad():
                for param, original in self._saved.values():
                    param.copy_(original)
            self._saved.clear()
            self.active = False


@contextlib.contextmanager
def interventions(model: nn.Module, graph: Optional[LayeredGraph] = None, *,
                  edge_masks: Optional[Mapping[str, torch.Tensor]] = None,
                  neurons: Optional[Mapping[str, Any]] = None,
                  fills: Optional[Mapping[str, torch.Tensor]] = None) -> Iterator[Interventions]:
    """Intervene on ``model`` for a ``with`` block; every hook, override and weight is undone in ``finally``.

    Parameters
    ----------
    model : nn.Module
    graph : LayeredGraph, optional
        The model's graph (layer and level names are its names); traced from ``model`` when needed and omitted.
    edge_masks : mapping of layer name to BoolTensor of shape (out, in), optional
        Kept edges (False = pruned: the weight, or a conv kernel, is zeroed in place).
    neurons : mapping of level name to indices or boolean mask, optional
        Nodes replaced by 0, or by ``fills[level]`` (broadcast over the batch) when given.
    fills : mapping of level name to Tensor, optional

    Yields
    ------
    Interventions
        The registry; more interventions can be added to it inside the block.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(2, 1, bias=False))
    >>> with torch.no_grad():
    ...     _ = net[0].weight.fill_(2.0)
    >>> with interventions(net, edge_masks={"0": torch.tensor([[False, True]])}) as iv:
    ...     net(torch.ones(1, 2)).item(), net[0].weight.tolist()
    (2.0, [[0.0, 2.0]])
    >>> iv.active, net[0].weight.tolist()
    (False, [[2.0, 2.0]])
    """
    if graph is None and (edge_masks or neurons):
        graph = LayeredGraph.from_module(model)
    iv = Interventions(model, graph)
    try:
        for name, mask in (edge_masks or {}).items():
            iv.mask_edges(name, mask)
        for name, nodes in (neurons or {}).items():
            iv.replace(name, nodes, None if fills is None else fills.get(name))
        yield iv
    finally:
        iv.remove()
