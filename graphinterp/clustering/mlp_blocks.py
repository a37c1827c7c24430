"""MLP blocks of transformers: find them in the model's graph and cluster each one with BSGC.

An MLP block reads the residual stream, writes ``d_hidden`` hidden units, and writes back to the
stream: ``stream -> hidden -> stream``. In the traced :class:`~graphinterp.graph.dag.ModelGraph` it is an
*output* Linear ``O`` whose input nodes are exactly the output nodes of one or more *input* Linears
(GPT-2 ``c_fc`` -> ``c_proj``, GPT-NeoX ``dense_h_to_4h`` -> ``dense_4h_to_h``, Llama's gated
``gate_proj``, ``up_proj`` -> ``down_proj``, graphinterp's ``fc_in`` -> ``fc_out``), which read the
same stream nodes that ``O`` writes. Attention (a value projection followed by the output
projection has the same shape) is told apart by its module path (``attn``/``attention``).

**Labels.** Each block is clustered on its own as one bipartite graph between the stream's
``d_model`` nodes and the block's ``d_hidden`` hidden units, with edge weight

.. math::

    B_{sh} = \\sqrt{\\textstyle\\sum_{L \\in \\text{inputs}} W_L[h, s]^2 + W_O[s, h]^2},

so a stream dimension has **one label per block, the same for what the block reads and what it
writes** (the authors' GPT-2 setting ties them too: hidden units 0-767 with residual dims 0-191, and
so on), each hidden unit has one label, and :math:`\\sum B^2` is the block's squared weight mass: the
within-cluster share of ``B`` is exactly the block's E. Different blocks may label the stream
differently (each block is clustered on its own). BSGC runs on ``B`` (or on the same combination of
gradient similarities); the result is a :class:`~graphinterp.clustering.cluster.Clustering` with one entry per
weight layer of the blocks (input layers: rows = stream labels, columns = hidden labels; output
layer: rows = hidden labels, columns = stream labels), so :class:`~graphinterp.training.loss.EnmeshmentLoss`,
``analyze`` and checkpoints use it unchanged.

Normalisation gains folded into the graph (LayerNorm before the block) enter ``B``, and the loss scores
the same folded weights (recomputed from the live gain at every call; see
:mod:`graphinterp.training.folded_scales`).

**On your own HuggingFace causal LM** (``pip install graphinterp[hf]``; any device)::

    from graphinterp.graph.model_trace import trace_graph
    from graphinterp.clustering.mlp_blocks import cluster_mlp_blocks
    from graphinterp.training.loss import EnmeshmentLoss
    from graphinterp.interpret.block_ablation import ablate_clusters

    graph = trace_graph(model, example={"input_ids": batch["input_ids"][:1]})
    clustering = cluster_mlp_blocks(graph, k=4, random_state=0)   # every MLP block, BSGC
    l_e = EnmeshmentLoss(model, clustering, graph=graph)          # differentiable 1 - E
    for batch in loader:                                          # your loop
        loss = model(**batch).loss + 20 * l_e()
        ...
    with ablate_clusters(model, clustering, cluster=0, state="off"):
        evaluate(model)                                           # cluster 0's hidden units zeroed

Examples
--------
>>> from graphinterp.sources.transformer import transformer
>>> from graphinterp.graph.model_trace import trace_graph
>>> from graphinterp.training.loss import EnmeshmentLoss
>>> model = transformer(vocab=12, n_out=11, d_model=16, n_heads=2, d_mlp=32)
>>> graph = trace_graph(model)
>>> l_e = EnmeshmentLoss(model, cluster_mlp_blocks(graph, 4, random_state=0), graph=graph)
>>> value = l_e()
>>> value.backward()
>>> bool(0 < value < 1), model.blocks[0].mlp.fc_in.weight.grad is not None
(True, True)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from graphinterp.clustering.bsgc import BSGC
from graphinterp.clustering.cluster import Clustering
from graphinterp.common.errors import ClusteringError, UnsupportedModelError

__all__ = ["MLPBlock", "find_mlp_blocks", "block_matrix", "cluster_mlp_blocks", "blocks_from_clustering"]

_ATTENTION_WORDS = ("attn", "attention")


@dataclass(frozen=True)
class MLPBlock:
    """One MLP block of a graph.

    Attributes
    ----------
    name : str
        Common module path of its layers (``"transformer.h.0.mlp"``).
    inputs : tuple of str
        Layers reading the stream and writing the hidden units (two for a gated MLP).
    output : str
        Layer reading the hidden units and writing the stream.
    d_model, d_hidden : int
    """

    name: str
    inputs: Tuple[str, ...]
    output: str
    d_model: int
    d_hidden: int

    @property
    def layers(self) -> Tuple[str, ...]:
        return self.inputs + (self.output,)

    def to_dict(self) -> Dict:
        return {"name": self.name, "inputs": list(self.inputs), "output": self.output,
                "d_model": self.d_model, "d_hidden": self.d_hidden}


def _prefix(names: Sequence[str]) -> str:
    parts = [n.split(".") for n in names]
    common = []
    for items in zip(*parts):
        if len(set(items)) > 1:
            break
        common.append(items[0])
    return ".".join(common)


def find_mlp_blocks(graph) -> List[MLPBlock]:
    """Every MLP block of a traced transformer graph, in the order of their output layers.

    Parameters
    ----------
    graph : ModelGraph
        From :func:`graphinterp.graph.model_trace.trace_graph`.

    Raises
    ------
    UnsupportedModelError
        If the graph has no shared node sets (a chain) or no MLP block is found.

    Examples
    --------
    >>> from graphinterp.sources.transformer import transformer
    >>> from graphinterp.graph.model_trace import trace_graph
    >>> g = trace_graph(transformer(vocab=12, n_out=11, d_model=16, n_heads=2, d_mlp=32, n_layers=2))
    >>> [(b.inputs, b.output) for b in find_mlp_blocks(g)][0]
    (('blocks.0.mlp.fc_in',), 'blocks.0.mlp.fc_out')
    """
    if not hasattr(graph, "src_nodes"):
        raise UnsupportedModelError("no MLP blocks found: the model's graph is a plain chain without a residual "
                                    "stream; MLP blocks are stream -> hidden -> stream")
    written: Dict[frozenset, List[str]] = {}
    readers: Dict[int, List[str]] = {}
    for layer in graph:
        written.setdefault(frozenset(graph.dst_nodes(layer.name).tolist()), []).append(layer.name)
        for n in graph.src_nodes(layer.name).tolist():
            readers.setdefault(n, []).append(layer.name)
    blocks = []
    for out in graph:
        hidden = graph.src_nodes(out.name)
        inputs = [n for n in written.get(frozenset(hidden.tolist()), []) if n != out.name]
        names = inputs + [out.name]
        if not inputs or any(graph[n].kind != "linear" for n in names):
            continue
        if any(w in part for n in names for part in n.lower().split(".") for w in _ATTENTION_WORDS):
            continue
        stream = graph.src_nodes(inputs[0])
        if any(set(graph.src_nodes(n).tolist()) != set(stream.tolist()) for n in inputs) \
                or set(graph.dst_nodes(out.name).tolist()) != set(stream.tolist()):
            continue  # not stream -> hidden -> the same stream
        if any(set(readers.get(h, [])) != {out.name} for h in hidden.tolist()):
            continue  # hidden units read by another layer too
        blocks.append(MLPBlock(_prefix(names), tuple(inputs), out.name, len(stream), len(hidden)))
    if not blocks:
        raise UnsupportedModelError(
            "no MLP blocks found: no Linear layers read the residual stream into hidden units that one Linear "
            f"writes back (layers: {', '.join(graph.layer_names[:6])}{' ...' if len(graph) > 6 else ''})"
            + ("; its gate and up projections are fused in one layer (e.g. Phi-3's gate_up_proj), which is not "
               "split into gate and up units" if any("fused gate/up" in n for n in (getattr(graph, "coverage", None)
                                                                                   and graph.coverage.notes or {}))
               else ""))
    return blocks


def _orders(graph, block: MLPBlock) -> Tuple[np.ndarray, np.ndarray]:
    """Global stream and hidden nodes of a block, in the order of its first input / its output layer."""
    return graph.src_nodes(block.inputs[0]), graph.src_nodes(block.output)


def _positions(order: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    lookup = {int(n): i for i, n in enumerate(order)}
    return np.array([lookup[int(n)] for n in nodes], dtype=np.int64)


def block_matrix(graph, block: MLPBlock, similarity: Optional[Mapping[str, torch.Tensor]] = None) -> torch.Tensor:
    """The block's ``(d_model, d_hidden)`` bipartite matrix ``B`` (see the module docstring).

    ``similarity`` (per layer, ``(n_in, n_out)``, e.g. gradient similarities) replaces ``|W|``.
    """
    stream, hidden = _orders(graph, block)
    B2 = torch.zeros(len(stream), len(hidden), dtype=torch.float64)
    for name in block.layers:
        M = similarity[name] if similarity is not None else graph[name].magnitude()
        M2 = M.detach().double().cpu().square()
        src, dst = graph.src_nodes(name), graph.dst_nodes(name)
        if name == block.output:  # (hidden, stream) -> (stream, hidden)
            M2, src, dst = M2.T, dst, src
        rows, cols = _positions(stream, src), _positions(hidden, dst)
        B2.index_put_((torch.as_tensor(rows)[:, None].expand_as(M2), torch.as_tensor(cols)[None, :].expand_as(M2)),
                      M2, accumulate=True)
    return B2.sqrt()


METHODS = ("bsgc", "contiguous")


def cluster_mlp_blocks(graph, k: int, *, blocks: Optional[Sequence[MLPBlock]] = None,
                       similarity: Optional[Mapping[str, torch.Tensor]] = None, n_init: int = 10,
                       random_state=None, method: str = "bsgc") -> Clustering:
    """BSGC clustering of every MLP block (one label per hidden unit and per stream dimension per block).

    ``method="contiguous"`` gives the fixed clusters of the paper's authors' GPT-2 experiment instead: the
    ``k`` equal contiguous ranges of hidden units and of stream dimensions, range ``c`` of each paired (k = 4
    on GPT-2 small: hidden units 0-767 with stream dimensions 0-191, and so on), the weights not consulted.

    Parameters
    ----------
    graph : ModelGraph
    k : int
        Clusters per block, ``2 <= k <= min(d_model, d_hidden)``.
    blocks : sequence of MLPBlock, optional
        Default :func:`find_mlp_blocks`.
    similarity : dict of str to Tensor, optional
        Per-layer similarity matrices (gradient-based BSGC) instead of ``|W|``.
    n_init : int, default 10
        KMeans restarts of each block's BSGC (:class:`~graphinterp.clustering.bsgc.BSGC`).
    random_state : int, optional
    method : {"bsgc", "contiguous"}, default "bsgc"
        ``"contiguous"``: the fixed contiguous clusters above (``similarity``, ``n_init`` and ``random_state``
        are then unused).

    Returns
    -------
    Clustering
        Entries for every layer of every block; ``meta["blocks"]`` lists the blocks, ``meta["method"]`` is
        ``"bsgc-mlp-blocks"`` or ``"contiguous-mlp-blocks"``.

    Raises
    ------
    ClusteringError
        If ``k`` is out of range for a block.

    Examples
    --------
    >>> from graphinterp.sources.transformer import transformer
    >>> from graphinterp.graph.model_trace import trace_graph
    >>> g = trace_graph(transformer(vocab=12, n_out=11, d_model=16, n_heads=2, d_mlp=32))
    >>> c = cluster_mlp_blocks(g, 2, random_state=0)
    >>> c.layer_names, bool((c.col_labels["blocks.0.mlp.fc_in"] == c.row_labels["blocks.0.mlp.fc_out"]).all())
    (['blocks.0.mlp.fc_in', 'blocks.0.mlp.fc_out'], True)
    >>> fixed = cluster_mlp_blocks(g, 4, method="contiguous")
    >>> fixed.col_labels["blocks.0.mlp.fc_in"][[0, 7, 8, 31]].tolist(), fixed.row_labels["blocks.0.mlp.fc_in"][:5].tolist()
    ([0, 0, 1, 3], [0, 0, 0, 0, 1])
    """
    blocks = list(blocks) if blocks is not None else find_mlp_blocks(graph)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ClusteringError(f"k must be an integer >= 2, got {k!r}")
    if method not in METHODS:
        raise ClusteringError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    rows: Dict[str, np.ndarray] = {}
    cols: Dict[str, np.ndarray] = {}
    seed = int(random_state) if isinstance(random_state, (int, np.integer)) else None
    for b_i, block in enumerate(blocks):
        if k > min(block.d_model, block.d_hidden):
            raise ClusteringError(f"k={k} is larger than MLP block {block.name!r} allows "
                                  f"(d_model {block.d_model}, d_mlp {block.d_hidden}): use 2 <= k <= "
                                  f"{min(block.d_model, block.d_hidden)}")
        stream, hidden = _orders(graph, block)
        if method == "contiguous":  # range c of the stream with range c of the hidden units, in feature order
            s_lab, h_lab = (np.arange(n, dtype=np.int64) * int(k) // n for n in (len(stream), len(hidden)))
        else:
            B = block_matrix(graph, block, similarity).numpy()
            est = BSGC(int(k), n_init=n_init, random_state=None if seed is None else seed + b_i).fit(B)
            s_lab, h_lab = est.row_labels_.astype(np.int64), est.column_labels_.astype(np.int64)
        for name in block.inputs:
            rows[name] = s_lab[_positions(stream, graph.src_nodes(name))]
            cols[name] = h_lab[_positions(hidden, graph.dst_nodes(name))]
        rows[block.output] = h_lab
        cols[block.output] = s_lab[_positions(stream, graph.dst_nodes(block.output))]
    if method == "contiguous":
        meta = {"method": "contiguous-mlp-blocks", "blocks": [b.to_dict() for b in blocks]}
        return Clustering(int(k), rows, cols, network_wide=False, similarity="fixed", meta=meta)
    meta = {"method": "bsgc-mlp-blocks", "blocks": [b.to_dict() for b in blocks], "random_state": seed}
    return Clustering(int(k), rows, cols, network_wide=False,
                      similarity="gradient" if similarity is not None else "weight", meta=meta)


def blocks_from_clustering(clustering: Clustering) -> List[MLPBlock]:
    """The :class:`MLPBlock` list stored in a clustering's ``meta`` by :func:`cluster_mlp_blocks`.

    Parameters
    ----------
    clustering : Clustering
        A clustering made by :func:`cluster_mlp_blocks` (its ``meta["blocks"]``).

    Returns
    -------
    list of MLPBlock
        The blocks, in the stored order.

    Raises
    ------
    ClusteringError
        The clustering lists no MLP blocks.
    """
    stored = (clustering.meta or {}).get("blocks")
    if not stored:
        raise ClusteringError("this clustering was not made by cluster_mlp_blocks (it lists no MLP blocks)")
    return [MLPBlock(d["name"], tuple(d["inputs"]), d["output"], int(d["d_model"]), int(d["d_hidden"]))
            for d in stored]
