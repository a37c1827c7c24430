"""Ablation of transformer nodes: MLP hidden units by cluster, attention heads, any module's features.

A node is one feature of a module's input or output (the last dimension of the tensor it reads or
writes). :func:`ablate_features` zeroes (or replaces by a given value) the chosen features while the
context is open, through forward (pre-)hooks that are always removed on exit, also after an
exception. On top of it:

* :func:`ablate_clusters` turns cluster ``c`` of every MLP block (from
  :func:`graphinterp.clustering.mlp_blocks.cluster_mlp_blocks`) OFF (its hidden units zeroed) or ON (every
  other hidden unit zeroed): the hidden units are the input features of the block's output layer
  (``fc_out``, GPT-2 ``c_proj``, ``dense_4h_to_h``, Llama ``down_proj``, whose input is
  ``act(gate) * up``), so the ablation is exactly "remove these neurons". With ``stream=True`` the
  block also stops reading and writing the cluster's stream dimensions (OFF) or every other one
  (ON), i.e. all of the block's weights incident to the cluster's nodes are removed, as in the
  paper's ablation of a layer's rows and columns (biases of the output layer on those dimensions
  go with them).
* :func:`ablate_heads` zeroes attention heads: head ``h``'s features ``h * d_head .. (h+1) * d_head``
  of the input of the attention's output projection.

Examples
--------
>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
>>> x = torch.randn(5, 3)
>>> with ablate_features(net, inputs={"2": [0, 1]}):
...     y = net(x)
>>> h = net[1](net[0](x)); h[:, :2] = 0
>>> torch.allclose(y, net[2](h)), len(net[2]._forward_pre_hooks)
(True, 0)
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from graphinterp.clustering.cluster import Clustering
from graphinterp.common.errors import ClusteringError, UnsupportedModelError
from graphinterp.training.masks import unwrap_model
from graphinterp.clustering.mlp_blocks import MLPBlock, blocks_from_clustering
from graphinterp.interpret.interventions import interventions

__all__ = ["ablate_features", "ablate_clusters", "ablate_heads", "cluster_units", "STATES"]

STATES = ("on", "off")


def _module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise UnsupportedModelError(f"the model has no module {name!r} to ablate") from None


def _replacer(index: torch.Tensor, value: Optional[torch.Tensor]):
    def replace(x: torch.Tensor) -> torch.Tensor:
        idx = index.to(x.device)
        x = x.clone()
        if value is None:
            x[..., idx] = 0
        else:
            x[..., idx] = value.to(x.device, x.dtype)[idx]
        return x
    return replace


@contextlib.contextmanager
def ablate_features(model: nn.Module, *, inputs: Optional[Mapping[str, Sequence[int]]] = None,
                    outputs: Optional[Mapping[str, Sequence[int]]] = None,
                    values: Optional[Mapping[str, torch.Tensor]] = None) -> Iterator[nn.Module]:
    """Replace features of modules' inputs (``inputs``) or outputs (``outputs``) inside a ``with`` block.

    Parameters
    ----------
    model : nn.Module
    inputs, outputs : dict of module name to feature indices
        Features along the last dimension; an empty list leaves the module alone.
    values : dict of module name to Tensor, optional
        Replacement values (a vector over all features, e.g. the mean activation) instead of zero.

    Raises
    ------
    UnsupportedModelError
        If a module does not exist; ``IndexError`` at the forward pass for an index out of range.
    """
    model = unwrap_model(model)
    with interventions(model) as iv:
        for where, spec in (("in", inputs or {}), ("out", outputs or {})):
            for name, idx in spec.items():
                index = torch.as_tensor(np.asarray(idx, dtype=np.int64).reshape(-1))
                if index.numel() == 0:
                    continue
                iv.hook(_module(model, name), _replacer(index, None if values is None else values.get(name)),
                        output=where == "out")
        yield model


def cluster_units(clustering: Clustering, block: MLPBlock, cluster: int, state: str, *,
                  reader: Optional[str] = None) -> Dict[str, np.ndarray]:
    """Hidden units and stream dimensions a state removes: ``{"hidden": idx, "stream_in": idx, "stream_out": idx}``.

    ``state="off"`` removes the cluster's nodes; ``"on"`` removes every other node (also unclustered
    ``-1`` nodes). Indices are positions in the output layer's input (hidden), the first input
    layer's input (stream read; or ``reader``'s input) and the output layer's output (stream written).
    """
    if state not in STATES:
        raise ValueError(f"state must be one of {STATES}, got {state!r}")
    if isinstance(cluster, bool) or not isinstance(cluster, (int, np.integer)) or not 0 <= cluster < clustering.k:
        raise ClusteringError(f"cluster must lie in 0..{clustering.k - 1}, got {cluster!r}")
    hidden = np.asarray(clustering.row_labels[block.output])
    pick = (lambda lab: np.flatnonzero(lab == cluster)) if state == "off" else (lambda lab: np.flatnonzero(lab != cluster))
    return {"hidden": pick(hidden), "stream_in": pick(np.asarray(clustering.row_labels[reader or block.inputs[0]])),
            "stream_out": pick(np.asarray(clustering.col_labels[block.output]))}


@contextlib.contextmanager
def ablate_clusters(model: nn.Module, clustering: Clustering, cluster: int, state: str = "off", *,
                    blocks: Optional[Sequence[MLPBlock]] = None, stream: bool = False) -> Iterator[nn.Module]:
    """Cluster ``cluster`` OFF or ON in every MLP block (see the module docstring).

    Parameters
    ----------
    model : nn.Module
    clustering : Clustering
        From :func:`graphinterp.clustering.mlp_blocks.cluster_mlp_blocks`.
    cluster : int
    state : {"off", "on"}
    blocks : sequence of MLPBlock, optional
        Default: the blocks stored in ``clustering.meta``; pass a subset to ablate some blocks only.
    stream : bool
        Also cut the block's reads and writes of the removed stream dimensions.
    """
    blocks = list(blocks) if blocks is not None else blocks_from_clustering(clustering)
    inputs: Dict[str, np.ndarray] = {}
    outputs: Dict[str, np.ndarray] = {}
    for block in blocks:
        units = cluster_units(clustering, block, cluster, state)
        inputs[block.output] = units["hidden"]
        if stream:
            for name in block.inputs:  # each input layer's own order of the stream
                inputs[name] = cluster_units(clustering, block, cluster, state, reader=name)["stream_in"]
            outputs[block.output] = units["stream_out"]
    with ablate_features(model, inputs=inputs, outputs=outputs) as m:
        yield m


@contextlib.contextmanager
def ablate_heads(model: nn.Module, heads: Mapping[str, Sequence[int]], d_head: int) -> Iterator[nn.Module]:
    """Zero attention heads: ``heads`` maps an attention output projection (``blocks.0.attn.out``, GPT-2
    ``attn.c_proj``, NeoX ``attention.dense``, Llama ``self_attn.o_proj``) to the heads to remove."""
    if isinstance(d_head, bool) or not isinstance(d_head, int) or d_head < 1:
        raise ValueError(f"d_head must be a positive integer, got {d_head!r}")
    spec = {name: np.concatenate([np.arange(h * d_head, (h + 1) * d_head) for h in hs]) if len(hs) else []
            for name, hs in heads.items()}
    with ablate_features(model, inputs=spec) as m:
        yield m
