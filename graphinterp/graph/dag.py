"""The graph of any model: weight layers as bipartite edge sets between shared node sets (a DAG).

Nodes are neurons, channels and residual-stream dimensions; each weight layer connects its input
nodes to its output nodes. Residual connections are not extra edges: a block that adds its output
to a stream *writes* to the stream's nodes, so the stream is one set of nodes that many layers
read from and write to (see DESIGN.md for drawings of a ResNet block and a transformer block).
A chain (the paper's MLPs and CNNs) is the special case where each layer reads exactly the nodes
the previous one wrote; :func:`trace_graph` then returns a chained :class:`LayeredGraph`.
"""
from __future__ import annotations

import math

from collections import Counter
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from graphinterp.graph.coverage import Coverage
from graphinterp.common.errors import UnsupportedModelError
from graphinterp.graph.layered import LayeredGraph
from graphinterp.graph.layer import Layer
from graphinterp.graph.layer_matrices import grouped_input_channels
from graphinterp.graph.networkx_view import to_networkx

__all__ = ["ModelGraph"]


class ModelGraph(LayeredGraph):
    """A model's weight layers over a shared set of nodes (residual streams, concatenations, attention).

    Behaves as a layer-by-layer :class:`LayeredGraph` (``chained`` is False) for per-layer
    clustering and metrics, and adds the node sets: layer ``l`` reads global nodes
    ``src_nodes(l)`` (one per grouped input node) and writes ``dst_nodes(l)``.

    Parameters
    ----------
    layers : sequence of Layer
    src, dst : sequence of ndarray
        Global node index of each layer's (grouped) input nodes and output nodes.
    node_names : sequence of str
        ``"<space>:<index>"`` of every global node; the space is the first layer (or ``input``,
        or an embedding) that created it, prefixed with ``stream@`` when several layers write it.
    coverage : Coverage, optional
        What part of the model the graph covers (kept as ``coverage``).

    Raises
    ------
    UnsupportedModelError
        A layer's node lists do not fit its shape, or name a node beyond ``node_names``.
    """

    def __init__(self, layers: Sequence[Layer], src: Sequence[np.ndarray], dst: Sequence[np.ndarray],
                 node_names: Sequence[str], coverage: Optional[Coverage] = None) -> None:
        super().__init__(layers, chained=False)
        n = len(node_names)
        for layer, s, d in zip(self.layers, src, dst):
            if len(s) != layer.n_in() or len(d) != layer.n_out or (len(s) and max(s.max(), d.max()) >= n):
                raise UnsupportedModelError(f"layer {layer.name!r}: node lists do not fit its shape")
        self._src = {l.name: np.asarray(s, dtype=np.int64) for l, s in zip(self.layers, src)}
        self._dst = {l.name: np.asarray(d, dtype=np.int64) for l, d in zip(self.layers, dst)}
        self.node_names = list(node_names)
        if len(set(self.node_names)) != n:  # the export keys nodes by name: two with one name would merge there
            seen = Counter(self.node_names)
            raise UnsupportedModelError("node names must be unique, got " + ", ".join(
                f"{name!r} x{c}" for name, c in seen.most_common(3) if c > 1))
        self.coverage = coverage

    @property
    def n_nodes(self) -> int:
        """Number of distinct nodes over all layers."""
        return len(self.node_names)

    def src_nodes(self, name: str) -> np.ndarray:
        """Global nodes read by layer ``name`` (its grouped input nodes, in order).

        Parameters
        ----------
        name : str
            A layer name.

        Returns
        -------
        ndarray of int64
            Indices into ``node_names``.
        """
        return self._src[name]

    def dst_nodes(self, name: str) -> np.ndarray:
        """Global nodes written by layer ``name`` (its output nodes, in order).

        Parameters
        ----------
        name : str
            A layer name.

        Returns
        -------
        ndarray of int64
            Indices into ``node_names``.
        """
        return self._dst[name]

    def select(self, names: Optional[Sequence[str]]) -> "ModelGraph":
        """Sub-graph of the named layers, on the same nodes.

        Parameters
        ----------
        names : sequence of str or None
            Layers to keep (kept in forward order); None keeps all and returns ``self``.

        Returns
        -------
        ModelGraph
            Over all of this graph's nodes, with the same coverage.

        Raises
        ------
        KeyError
            A name that is not a layer of the graph.
        """
        if names is None:
            return self
        keep = [self[n] for n in sorted({self.index(n) for n in names})]
        return ModelGraph(keep, [self._src[l.name] for l in keep], [self._dst[l.name] for l in keep],
                          self.node_names, self.coverage)

    def __repr__(self) -> str:
        return f"ModelGraph({len(self)} layers, {self.n_nodes} nodes)"

    def adjacency(self, layers: Optional[Sequence[str]] = None) -> "torch.Tensor":
        """Symmetric ``(n_nodes, n_nodes)`` matrix of summed edge magnitudes |w| (for network-wide clustering).

        Parameters
        ----------
        layers : sequence of str, optional
            Layers whose edges are summed; default (None or empty) all.

        Returns
        -------
        torch.Tensor of float64, shape (n_nodes, n_nodes)
            On the CPU; ``A + A.T`` of the summed ``|w|`` from input to output nodes.
        """
        A = torch.zeros(self.n_nodes, self.n_nodes, dtype=torch.float64)
        for layer in (self.select(layers) if layers else self):
            M = layer.magnitude().double().cpu()
            s, d = torch.as_tensor(self._src[layer.name]), torch.as_tensor(self._dst[layer.name])
            A.index_put_((s[:, None].expand_as(M), d[None, :].expand_as(M)), M, accumulate=True)
        return A + A.T

    def to_networkx(self, clustering=None, *, view: str = "grouped", min_abs_weight: float = 0.0,
                    network=None, progress: bool = False):
        """The graph as a ``networkx.MultiDiGraph`` over its global nodes, an edge per (layer, input node, output node).

        :func:`graphinterp.graph.networkx_view.to_networkx` of this graph (the parameters, node, edge and
        graph attributes are documented there).
        """
        return to_networkx(self, clustering, view=view, min_abs_weight=min_abs_weight, network=network,
                           progress=progress)


# ------------------------------------------------------------------ building from a trace
def graph_from_calls(tracer, model: nn.Module, coverage: Coverage) -> LayeredGraph:
    """Turn a finished :class:`~graphinterp.graph.trace.ChannelTracer` into a chained or DAG graph."""
    if not tracer.calls:
        raise UnsupportedModelError(
            "no weight layer (Linear, Conv1d/2d/3d, GPT-2 Conv1D) was called in the forward pass; "
            + "; ".join(coverage.summary_lines()[1:3])
        )
    roots = tracer.roots().numpy()
    used = np.unique(np.concatenate([roots[c.src.numpy()] for c in tracer.calls]
                                    + [roots[c.dst.numpy()] for c in tracer.calls]))
    compact = {int(r): i for i, r in enumerate(used)}
    names = _node_names(tracer, roots, used)
    layers, src, dst = [], [], []
    for call in tracer.calls:
        s_glob = np.array([compact[int(r)] for r in roots[call.src.numpy()]], dtype=np.int64)
        d_glob = np.array([compact[int(r)] for r in roots[call.dst.numpy()]], dtype=np.int64)
        if len(np.unique(d_glob)) != len(d_glob):
            raise UnsupportedModelError(
                f"layer {call.name!r}: two of its outputs were traced to the same node (an operation the tracer "
                "does not follow mixes this layer's own outputs: a state-space scan, a gated convolution, a reshape "
                "that moves outputs onto another dimension such as a detection head's box decoding); this model's "
                "graph cannot be traced; its layers can be read one by one from its weights (a state_dict or "
                ".safetensors file: --layerwise; in Python LayeredGraph.from_state_dict(model.state_dict()))")
        nodes, in_index = np.unique(s_glob, return_inverse=True)
        if call.kind != "linear" and len(nodes) != len(s_glob):
            raise UnsupportedModelError(
                f"layer {call.name!r}: two of its input channels are the same node (one tensor concatenated with "
                "itself, e.g. CReLU's cat([relu(y), relu(-y)]), or an example input without its batch dimension); "
                "a convolution's graph cannot read one node twice: analyse it layer by layer (--layerwise, "
                "layerwise=True)")
        layer = Layer(call.name, call.kind, _folded_weight(call), groups=call.groups, param=call.param,
                      transposed=call.transposed, folded=tuple(call.folded), fold_maps=tuple(call.fold_maps),
                      fold_spread=_fold_spread(call),
                      in_index=torch.as_tensor(in_index) if len(nodes) != len(s_glob) else None, rows=call.rows)
        layers.append(layer)
        src.append(nodes if len(nodes) != len(s_glob) else s_glob)
        dst.append(d_glob)
    chain = _as_chain(layers, src, dst)
    if chain is not None:
        return chain
    return ModelGraph(layers, src, dst, names, coverage)


def _node_names(tracer, roots: np.ndarray, used: np.ndarray) -> List[str]:
    starts = np.array([s[1] for s in tracer.spaces])
    space_of = np.searchsorted(starts, np.arange(len(roots)), side="right") - 1
    members: Dict[int, set] = {}
    for i, r in enumerate(roots):
        members.setdefault(int(r), set()).add(int(space_of[i]))
    out = []
    for r in used:
        sp = int(space_of[r])
        name, start, _ = tracer.spaces[sp]
        prefix = f"stream@{name}" if len(members[int(r)]) > 1 else name
        out.append(f"{prefix}:{int(r) - start}")
    return out


def _folded_weight(call) -> torch.Tensor:
    w = call.weight
    if call.out_scale is not None:
        w = w * call.out_scale.view(-1, *([1] * (w.dim() - 1))).to(w.dtype)
    if call.in_scale is not None:
        scale = call.in_scale.to(w.dtype)
        if call.kind == "linear":
            w = w * scale[None, :]
        else:
            cols = grouped_input_channels(w.shape[0], w.shape[1], call.groups)
            w = w * scale[cols].view(*cols.shape, *([1] * (w.dim() - 2)))
    return w.detach()


def _fold_spread(call) -> float:
    """Largest over smallest ``|scale|`` the folds applied to the rows, times the same for the input features."""
    spread = 1.0
    for scale in (call.out_scale, call.in_scale):
        if scale is not None and scale.numel():
            s = scale.detach().abs().double()
            low = float(s.min())
            spread *= float(s.max()) / low if low > 0 else math.inf
    return spread


def _as_chain(layers: List[Layer], src: List[np.ndarray], dst: List[np.ndarray]) -> Optional[LayeredGraph]:
    """A chained LayeredGraph when every layer reads exactly the nodes the previous one wrote."""
    written = set(np.concatenate(dst).tolist())
    if set(src[0].tolist()) & written or len(written) != sum(len(d) for d in dst):
        return None  # a residual stream: several layers write the same nodes
    for t in range(1, len(layers)):
        if len(src[t]) != len(dst[t - 1]) or not np.array_equal(src[t], dst[t - 1]):
            return None
    channel_major = []
    for layer in layers:
        idx = layer.in_index
        if idx is not None:
            n = layer.n_in()
            per = idx.numel() // n
            if not torch.equal(idx, torch.arange(n).repeat_interleave(per)):
                return None  # a channels-last flatten: keep the node map of the DAG graph
            layer = Layer(layer.name, layer.kind, layer.weight, in_groups=n, groups=layer.groups,
                          param=layer.param, transposed=layer.transposed, folded=layer.folded,
                          fold_maps=layer.fold_maps, fold_spread=layer.fold_spread, rows=layer.rows)
        channel_major.append(layer)
    return LayeredGraph(channel_major, chained=True)
