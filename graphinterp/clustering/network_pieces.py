"""The pieces (connected components) of a network's graph, and the part of it Filan et al. keep.

A network whose weights are partly zero (pruned, or units that died in training) can fall into pieces;
a cluster that follows a piece cuts no edge, so the n-cut is low for that reason alone. Filan et al.
(2021) first delete the pieces that do not join the network's inputs to its outputs. Here the input
nodes are those some layer reads and none writes, the outputs those some layer writes and none reads.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Tuple

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["piece_sizes", "joined_part"]

Ids = Mapping[str, Tuple[np.ndarray, np.ndarray]]


def _components(ids: Ids, sims: Mapping[str, torch.Tensor]) -> Tuple[np.ndarray, np.ndarray]:
    """Component of every node and whether it has an edge; a dense layer joins all its nodes (a star of its
    rows and columns stands for its edges)."""
    src_all, dst_all = [], []
    for name, (src, dst) in ids.items():
        nz = (sims[name] != 0).cpu().numpy()
        if nz.all():
            nodes = np.concatenate([src, dst])
            src_all.append(np.full(len(nodes), nodes[0]))
            dst_all.append(nodes)
        else:
            i, j = np.nonzero(nz)
            src_all.append(src[i])
            dst_all.append(dst[j])
    a, b = np.concatenate(src_all), np.concatenate(dst_all)
    n = 1 + max(int(max(s.max(initial=-1), d.max(initial=-1))) for s, d in ids.values())
    _, comp = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)
    touched = np.zeros(n, dtype=bool)
    touched[a], touched[b] = True, True
    return comp, touched


def piece_sizes(ids: Ids, sims: Mapping[str, torch.Tensor]) -> List[int]:
    """Sizes of the pieces of the nodes with an edge, largest first.

    Examples
    --------
    >>> ids = {"a": (np.array([0, 1]), np.array([2, 3]))}
    >>> piece_sizes(ids, {"a": torch.tensor([[1.0, 0.0], [0.0, 2.0]])})
    [2, 2]
    >>> piece_sizes(ids, {"a": torch.tensor([[0.0, 0.0], [1.0, 2.0]])})  # node 0 has no edge: no piece of size 0
    [3]
    """
    comp, touched = _components(ids, sims)
    sizes = np.bincount(comp[touched])
    return sorted(sizes[sizes > 0].tolist(), reverse=True)  # a node without edges is a component of its own, not a piece


def joined_part(ids: Ids, sims: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], int]:
    """The similarities with every edge of a piece that does not join an input to an output set to 0, and the
    number of nodes with an edge left out that way.

    Examples
    --------
    >>> ids = {"a": (np.array([0, 1]), np.array([2, 3])), "b": (np.array([2, 3]), np.array([4]))}
    >>> sims, dropped = joined_part(ids, {"a": torch.tensor([[1.0, 0.0], [0.0, 2.0]]),
    ...                                   "b": torch.tensor([[3.0], [0.0]])})
    >>> sims["a"].tolist(), dropped  # nodes 1 and 3 reach no output
    ([[1.0, 0.0], [0.0, 0.0]], 2)
    """
    comp, touched = _components(ids, sims)
    read = np.unique(np.concatenate([s for s, _ in ids.values()]))
    written = np.unique(np.concatenate([d for _, d in ids.values()]))
    inputs, outputs = np.setdiff1d(read, written), np.setdiff1d(written, read)
    good = np.intersect1d(comp[inputs[touched[inputs]]], comp[outputs[touched[outputs]]])
    keep = np.isin(comp, good) & touched
    out = {}
    for name, (src, dst) in ids.items():
        M = sims[name]
        mask = torch.as_tensor(keep[src][:, None] & keep[dst][None, :], device=M.device)
        out[name] = M * mask.to(M.dtype) if not mask.all() else M
    return out, int((touched & ~keep).sum())
