"""The notes of the whole-network test (:mod:`graphinterp.clustering.network_null`): what it leaves out or cannot see.

Each note names what is missing or approximated and how much, so that a result is never read
without its caveats: layers left out, pieces of the graph (and those ``drop_pieces`` removed), a
layer holding nearly all the squared weight, per-unit scales from a folded normalisation, and a
clustering that only follows the network's depth.
"""
from __future__ import annotations

from typing import List, Mapping, Optional, Sequence

import numpy as np
import torch

from graphinterp.clustering.metrics import dominant_note
from graphinterp.clustering.network_pieces import piece_sizes
from graphinterp.graph.layered import LayeredGraph

__all__ = ["follows_levels", "network_notes"]


def follows_levels(labels: np.ndarray, ids) -> bool:
    """True when every layer's inputs share one cluster and its outputs one (unlabelled nodes aside)."""
    for src, dst in ids.values():
        for nodes in (src, dst):
            lab = labels[nodes]
            lab = lab[lab >= 0]
            if lab.size and (lab != lab[0]).any():
                return False
    return True


def network_notes(graph: LayeredGraph, names: Sequence[str], left_out: Mapping[str, str],
                  mags: Mapping[str, torch.Tensor], ids, dropped: Optional[int], labels: np.ndarray, k: int) -> List[str]:
    """The test's notes, the most important first.

    ``mags`` are the edge weights clustered, ``ids`` each layer's node ids, ``dropped`` None without
    ``drop_pieces`` (else the nodes it left out) and ``labels`` the observed clustering's node labels.
    """
    notes = []
    if follows_levels(labels, ids):
        notes.append("the clusters are unions of whole levels (each layer's inputs in one cluster, its outputs in "
                     "one), which permuting weights within layers cannot change: the shuffled networks can score "
                     "the same, and the test then says nothing about the structure of the weights (the network's "
                     f"depth, not its weights, decides the split at k={k})")
    if dropped:
        notes.append(f"{dropped} node(s) in pieces of the graph that do not join its inputs to its outputs were left "
                     "out, as Filan et al. leave them out (and likewise in each shuffled network)")
    elif dropped == 0:
        notes.append("drop_pieces left out no node: every piece of the graph joins its inputs to its outputs")
    dominant = dominant_note({n: float(mags[n].square().sum()) for n in names}, "E over the network")
    if dominant:
        notes.append(dominant + " (the n-cut weighs edges by |w|, not their squares)")
    scaled = [n for n in names if getattr(graph[n], "has_unit_scales", False)]  # not a fold that scales all alike
    approximated = graph.coverage is not None and any("cannot be folded" in n for n in graph.coverage.notes)
    if scaled or approximated:
        if scaled:
            notes.append(f"{len(scaled)} of its {len(names)} layers have a normalisation folded into their weights, "
                         "which gives their units scales of their own that the shuffles scatter; the whole-network "
                         "null can then err either way (structureless MLPs with log-normal unit scales of sd 0.5 "
                         "reached the smallest p in 20 of 20 networks, without the scales 1 of 20), so read its p "
                         "with care")
        else:
            notes.append("its normalisation could not be folded, so the graph lacks the per-unit scales the model "
                         "applies: the test is of the raw weights, not of the function's")
    if left_out:
        notes.append(f"{len(left_out)} layer(s) left out of the graph: "
                     + "; ".join(f"{n} ({why})" for n, why in list(left_out.items())[:3]) + ("; ..." if len(left_out) > 3 else ""))
    pieces = piece_sizes(ids, mags)
    if len(pieces) > 1:
        notes.append(f"the graph is in {len(pieces)} pieces (nodes: {', '.join(map(str, pieces[:5]))}"
                     f"{', ...' if len(pieces) > 5 else ''}): a cluster that follows a piece cuts no edge, so the "
                     "n-cut can be low for that reason alone" + ("" if dropped is not None else " (Filan et al. first "
                     "remove the pieces that do not join the inputs to the outputs: drop_pieces, benchmark --drop-pieces)"))
    return notes
