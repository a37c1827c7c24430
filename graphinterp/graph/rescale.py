"""Filan et al.'s unit-norm rescaling of a chain's weights, before its graph is clustered.

A ReLU is positively homogeneous (:math:`\\mathrm{relu}(s x) = s\\,\\mathrm{relu}(x)` for :math:`s > 0`), so
dividing a hidden unit's incoming weights (and bias) by :math:`s` and multiplying its outgoing weights by
:math:`s` leaves the network's function unchanged while changing its weighted graph. Filan et al. (2021,
"Clusterability in neural networks") remove that freedom before clustering: every hidden unit's incoming
weights are scaled to unit norm, from the first hidden level to the last, each level's scale pushed into the
next layer (whose incoming norms are then taken). The products of the weights along every input-output
path are unchanged. Which functions keep their output is the activations' business: ReLU, leaky ReLU,
max-pooling, average pooling and the identity do; GELU, tanh or sigmoid between the layers do not (the graph
does not record the activations, so the caller says so).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional, Tuple

import torch
from torch import nn

from graphinterp.common.errors import UnsupportedModelError
from graphinterp.graph.layer import Layer
from graphinterp.graph.layer_matrices import grouped_input_channels
from graphinterp.graph.layered import LayeredGraph

__all__ = ["unit_norm_rescaled", "rescaled_with_note", "RESCALED_NOTE"]

_WHAT = ("weights rescaled as Filan et al. rescale them: every hidden unit's incoming weights to unit norm, the factor "
         "pushed into its outgoing weights")
#: what a report says of a model whose weights were rescaled, when its modules cannot be checked (a state_dict)
RESCALED_NOTE = _WHAT + " (the same function through ReLU-like activations, which graphinterp does not check)"
#: modules through which a unit's scale does not pass unchanged (f(s x) != s f(x) for s > 0)
_NOT_HOMOGENEOUS = (nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.Softplus, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Hardswish,
                    nn.Hardsigmoid, nn.Hardtanh, nn.ReLU6, nn.LogSigmoid, nn.Softsign, nn.Tanhshrink, nn.Softmax,
                    nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.instancenorm._InstanceNorm)


def unit_norm_rescaled(graph: LayeredGraph) -> LayeredGraph:
    """A copy of the chained ``graph`` whose hidden units' incoming weights have unit norm.

    Level by level from the input: each output unit of layer ``l`` (a neuron, or a channel with its whole
    kernel) is divided by the norm of its incoming weights, and the weights of layer ``l + 1`` that read it
    are multiplied by that norm. The last layer's outputs (the model's) keep their scale, as do units with
    no incoming weight. Only weights are rescaled (the graph holds no biases; a model's biases would be
    divided alike). The computation is in float64; each layer keeps its dtype.

    Parameters
    ----------
    graph : LayeredGraph
        A chain (``graph.chained``): each layer reads the previous one's outputs.

    Returns
    -------
    LayeredGraph
        Chained, with the same layers (names, kinds, groups, folds) and rescaled weights, and the input
        graph's coverage.

    Raises
    ------
    UnsupportedModelError
        For a graph that is not a chain (a DAG with residual streams or concatenations, or layers
        analysed one by one), where a unit's incoming and outgoing weights are not one layer's rows and
        the next layer's columns.

    Examples
    --------
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
    >>> with torch.no_grad():
    ...     _ = net[0].weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 2.0]]))
    ...     _ = net[2].weight.copy_(torch.tensor([[1.0, 1.0]]))
    >>> g = unit_norm_rescaled(LayeredGraph.from_module(net))
    >>> g["0"].weight.tolist(), g["2"].weight.tolist()
    ([[0.6000000238418579, 0.800000011920929], [0.0, 1.0]], [[5.0, 2.0]])
    """
    if not graph.chained or hasattr(graph, "src_nodes"):
        raise UnsupportedModelError(
            "unit-norm rescaling needs a chain of layers (each reading the previous one's outputs); this graph "
            + ("has residual streams or concatenations" if hasattr(graph, "src_nodes") else "has its layers one by one")
            + ": analyse it without the rescaling")
    weights = [layer.weight.detach().to("cpu", torch.float64, copy=True) for layer in graph.layers]
    for l in range(len(weights) - 1):
        norms = weights[l].flatten(1).norm(dim=1)
        scale = torch.where(norms > 0, norms, torch.ones_like(norms))
        weights[l] /= scale.view(-1, *([1] * (weights[l].dim() - 1)))
        weights[l + 1] *= _input_scale(graph.layers[l + 1], scale)
    out = LayeredGraph([replace(layer, weight=w.to(layer.weight.device, layer.weight.dtype))
                        for layer, w in zip(graph.layers, weights)], chained=True)
    out.coverage = graph.coverage
    return out


def _input_scale(layer: Layer, scale: torch.Tensor) -> torch.Tensor:
    """``scale`` (one per input node of ``layer``) broadcast onto ``layer``'s weight, entry by entry."""
    if layer.kind == "linear":
        per_feature = scale if layer.in_index is None else scale[layer.in_index]
        return per_feature[None, :]
    out_ch, in_per = layer.weight.shape[:2]
    channel = grouped_input_channels(out_ch, in_per, layer.groups)  # the input channel of each (out, in) pair
    return scale[channel].view(out_ch, in_per, *([1] * (layer.weight.dim() - 2)))


def rescaled_with_note(graph: LayeredGraph, module: Optional[nn.Module] = None, *,
                       fold: bool = True) -> Tuple[LayeredGraph, str]:
    """:func:`unit_norm_rescaled` and the note a report gives: whether the rescaled weights still describe the model.

    With the model's ``module`` its modules are checked: an activation that a unit's scale does not pass
    through unchanged (GELU, tanh, sigmoid, ...), a LayerNorm or GroupNorm, or a BatchNorm that was not folded
    (``fold=False``, or one the graph could not fold) makes the rescaled weights another network's, and the
    note says so; functions called in ``forward`` (``torch.tanh(x)``) are not seen. Without a module (a
    state_dict) the note says nothing was checked.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    >>> _, note = rescaled_with_note(LayeredGraph.from_module(net), net)
    >>> "applies Tanh" in note and "function changes" in note
    True
    """
    out = unit_norm_rescaled(graph)
    if module is None:
        return out, RESCALED_NOTE
    bad = {type(m).__name__ for m in module.modules()
           if isinstance(m, _NOT_HOMOGENEOUS) or (not fold and isinstance(m, nn.modules.batchnorm._BatchNorm))}
    coverage = getattr(graph, "coverage", None)
    if coverage is not None and any("cannot be folded" in n for n in coverage.notes):
        bad.add("a normalisation the graph could not fold")
    if bad:
        return out, (f"{_WHAT}; but this model applies {', '.join(sorted(bad))}, which a unit's scale does not pass "
                     "through unchanged, so the rescaled weights are not a reparametrisation of it (its function "
                     "changes): Filan et al.'s rescaling is meant for ReLU networks")
    return out, (f"{_WHAT} (the same function: the model's activation and normalisation modules let a unit's scale "
                 "through; functions called in its forward are not checked)")
