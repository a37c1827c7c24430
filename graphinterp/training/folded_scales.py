"""The normalisation scales a graph folded into a layer, recomputed live from the model while it trains.

A graph built with ``fold=True`` (the default) describes the function: a BatchNorm after a layer scales
its rows by ``gamma / sqrt(running_var + eps)``, a LayerNorm or RMSNorm before it scales its columns by
its gain, a layer_scale scales its rows. Its clusterability is that of these *effective* weights. A
loss on the raw parameters alone measures something else, and can be lowered without any change in
the function: shrink the rows that cross clusters and let the BatchNorm's statistics or gain grow
to compensate. :func:`live_scale` returns, for one clustered layer, a function that recomputes the
folded scales from the model's current modules (differentiable in their parameters), so that
:class:`~graphinterp.training.loss.EnmeshmentLoss` works on ``param * scale()``: the weights the
graph and :func:`~graphinterp.clustering.metrics.clusterability_report` score.

The trace records, for each fold, which entry of the module's per-channel vector scales each row
(output channel) or column (input feature) of the layer (``Layer.fold_maps``); the scales are
gathered by those indices, in the parameter's own layout. A fold that cannot be recomputed this way
(a module that is gone, a graph traced before this was recorded) is refused with the reason, so the
loss never scores other weights than the graph silently.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch
from torch import nn

from graphinterp.common.errors import ClusteringError
from graphinterp.graph.trace_numbers import NUMBER

__all__ = ["live_scale"]

def _provider(model: nn.Module, source: str) -> Optional[Callable[[], torch.Tensor]]:
    """A function returning the current per-channel scale of the module or parameter ``source``, or None."""
    try:
        module = model.get_submodule(source)
    except AttributeError:
        module = None
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_var is None:
        return None
    # an InstanceNorm's scale (not only its gain) is folded when it has running statistics
    if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)) and (
            module.running_var is not None):

        def bn_scale(bn=module) -> torch.Tensor:
            inv = torch.rsqrt(bn.running_var + bn.eps)
            return inv if bn.weight is None else bn.weight * inv
        return bn_scale
    if module is not None and isinstance(getattr(module, "weight", None), torch.Tensor):
        return lambda m=module: m.weight
    for name in (source, f"{source}.weight"):
        try:
            param = model.get_parameter(name)
        except AttributeError:
            continue
        return lambda p=param: p
    return None


def _number(tag: str) -> Optional[Callable[[], torch.Tensor]]:
    """The constant of a fold of a number written in the code (``"0.1 (number in the code)"``), else None."""
    source, _, kind = tag.rpartition(" (")
    if kind != NUMBER + ")":
        return None
    value = torch.tensor([float(source)])
    return lambda: value


def _source(tag: str) -> str:
    """``"bn1 (BatchNorm scale)"`` -> ``"bn1"``: the module or parameter a fold came from."""
    return tag.rpartition(" (")[0]


def live_scale(model: nn.Module, layer, param: torch.Tensor) -> Optional[Callable[[], torch.Tensor]]:
    """A function returning the scales folded into graph layer ``layer``, broadcastable to ``param`` (its
    live weight, in its own layout; for a layer holding rows of it, ``layer.rows``, to those rows), or None
    when nothing was folded into it.

    ``param * live_scale(...)()`` is the layer's weight as the graph holds it, with the scales of now:
    each fold's row or column indices into its module's per-channel vector were recorded by the trace
    (``Layer.fold_maps``), so a permuted or flattened channel order is followed exactly.

    Raises
    ------
    ClusteringError
        When a folded scale cannot be recomputed from the model (naming the layer and the fold).
    """
    folded = list(getattr(layer, "folded", ()) or ())
    if not folded:
        return None
    maps = {tag: (side, index) for tag, side, index in getattr(layer, "fold_maps", ()) or ()}
    transposed = bool(getattr(layer, "transposed", False))
    torch_shape = tuple(param.shape[::-1]) if transposed else tuple(param.shape)
    rows = getattr(layer, "rows", None)
    if rows is not None:  # the layer holds these rows of the parameter (a fused in_proj's slice)
        torch_shape = (rows[1] - rows[0],) + torch_shape[1:]
    parts: List[Tuple[str, Callable[[], torch.Tensor], torch.Tensor]] = []
    for tag in folded:
        source = _source(tag)
        get = _number(tag) or _provider(model, source)
        side, index = maps.get(tag, (None, None))  # "out": rows, "in": columns (input features or channels)
        if get is None or index is None or len(index) != torch_shape[0 if side == "out" else 1] or (
                side == "in" and getattr(layer, "groups", 1) != 1):
            raise ClusteringError(f"layer {layer.name!r}: the graph folded {tag} into it, which cannot be recomputed "
                                  "from the model while it trains; build the graph with fold=False to train the raw "
                                  "weights")
        idx = torch.as_tensor(index, dtype=torch.long, device=param.device)
        if int(idx.max()) >= get().numel():
            raise ClusteringError(f"layer {layer.name!r}: {source} no longer has the channels the graph folded "
                                  "into it; trace the graph of this model again")
        parts.append((side, get, idx))
    extra = (1,) * (len(torch_shape) - 2)

    def scale() -> torch.Tensor:
        s = torch.ones((), dtype=param.dtype, device=param.device)  # param is the live tensor: it moves with the model
        for side, get, idx in parts:
            vec = get().to(param.dtype).reshape(-1)
            idx = idx.to(vec.device)  # the model may have moved since the loss was built
            vec = torch.where(idx >= 0, vec[idx.clamp_min(0)], torch.ones((), dtype=vec.dtype, device=vec.device))
            s = s * (vec.reshape(-1, 1, *extra) if side == "out" else vec.reshape(1, -1, *extra))
        return s.transpose(0, 1) if transposed and s.dim() >= 2 else s

    return scale
