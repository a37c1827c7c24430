"""A found circuit checked on examples its search never saw.

The search (:mod:`graphinterp.interpret.circuits`) prunes edges for as long as the circuit meets its
criterion on the label's task, so the circuit's accuracy and loss on that task are in-sample
figures: edges the label needs on other examples may have gone because these examples did not
need them. :func:`check_heldout` evaluates the circuit and the full model on a disjoint task of
the same kind (:func:`~graphinterp.interpret.label_tasks.heldout_task`) and says whether the
circuit still meets the search's own criterion there.

A circuit is pruned until it sits at the edge of its tolerance on the search examples, and that
selection makes it lose a little on new examples: most circuits miss the tolerance held out, by
amounts that one label's examples cannot tell from noise. Each criterion is therefore also written as a mean of per-example terms that is non-negative where the criterion is
met (``hit_circuit - min_accuracy * hit_full`` and ``loss_full + max_loss_increase - loss_circuit``,
weighted as the task weighs its examples; for the authors' criterion ``loss_full - loss_circuit``),
and the circuit is *clearly outside* when one of these means is below zero by more than
:data:`~graphinterp.interpret.chance.MARGIN_SD` standard errors: it fits the examples it was pruned
on, not only the label. With fewer than :data:`HELDOUT_MIN_GROUP` held-out examples of the label or of the
others nothing is called clear (``HeldOut.too_few``).
"""
from __future__ import annotations

import math
from typing import Dict, List

import torch
from torch import nn

from graphinterp.interpret.chance import MARGIN_SD
from graphinterp.interpret.circuit_batch import batched_logits
from graphinterp.interpret.circuit_result import HeldOut
from graphinterp.interpret.circuit_search import masked_in_place
from graphinterp.interpret.circuit_settings import AUTHORS_RTOL, Tolerance
from graphinterp.interpret.edges import EdgeLayer
from graphinterp.interpret.label_tasks import LabelTask, split_hits, task_terms

__all__ = ["check_heldout", "HELDOUT_MIN_GROUP"]

#: Held-out examples of the label, and of the others, needed to tell a miss from sampling noise.
HELDOUT_MIN_GROUP = 10


def check_heldout(model: nn.Module, layers: List[EdgeLayer], modules: List[nn.Module], masks: Dict[str, torch.Tensor],
                  task: LabelTask, *, mode: str, tolerance: Tolerance, batch_size: int = 4096) -> HeldOut:
    """The circuit ``masks`` and the full model on the held-out ``task``.

    Parameters
    ----------
    model : nn.Module
        On the layers' device and in eval mode (as during the search).
    layers, modules : list
        The pruned :class:`~graphinterp.interpret.edges.EdgeLayer` and the modules holding them.
    masks : dict of str to BoolTensor
        The circuit's kept edges per layer.
    task : LabelTask
        Held-out examples; in ``"authors"`` mode only its positives are used, as the search does.
    mode : {"graphinterp", "authors"}
        The search's criterion: ``tolerance`` against the full model, or the authors' (the loss not
        above the full model's).
    tolerance : Tolerance
    batch_size : int

    Returns
    -------
    HeldOut

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from graphinterp.interpret.edges import edge_layers
    >>> from graphinterp.interpret.label_tasks import label_task
    >>> from graphinterp.graph.layered import LayeredGraph
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(4, 8, bias=False), nn.ReLU(), nn.Linear(8, 3, bias=False)).eval()
    >>> x = torch.randn(90, 4); y = model(x).argmax(1)
    >>> layers = edge_layers(model, LayeredGraph.from_module(model))
    >>> full = {l.name: l.live.clone() for l in layers}
    >>> h = check_heldout(model, layers, [model[0], model[2]], full, label_task(x, y, 0), mode="graphinterp",
    ...                   tolerance=Tolerance())
    >>> h.accuracy == h.full_accuracy, h.within_tolerance, h.clearly_outside, h.missed
    (True, True, False, ())
    """
    if mode == "authors" and task.n_neg:
        task = LabelTask(task.label, task.x[task.positive], task.positive[task.positive])
    device = layers[0].weight.device
    x, pos, w = task.x.to(device), task.positive.to(device), task.weights().to(device)
    full = task_terms(batched_logits(model, x, batch_size), task.label, pos)
    with masked_in_place(model, layers, modules, {k: v.to(device) for k, v in masks.items()}):
        circuit = task_terms(batched_logits(model, x, batch_size), task.label, pos)
    (hit_f, loss_f), (hit_c, loss_c) = ((h.double(), l.double()) for h, l in (full, circuit))
    acc, full_acc = (float(task.accuracy(*split_hits(h, pos))) for h in (hit_c, hit_f))  # 1 when all are right
    loss, full_loss = float(w @ loss_c), float(w @ loss_f)
    if mode == "authors":  # the loss not above the full model's
        limits = {"loss": full_loss + AUTHORS_RTOL * abs(full_loss)}
        terms = {"loss": loss_f - loss_c}
    else:
        limits = {"accuracy": tolerance.min_accuracy * full_acc - 1e-12, "loss": full_loss + tolerance.max_loss_increase}
        terms = {"accuracy": hit_c - tolerance.min_accuracy * hit_f,
                 "loss": loss_f + tolerance.max_loss_increase - loss_c}
    value = {"accuracy": acc, "loss": loss}
    missed = tuple(n for n in limits if not (value[n] >= limits[n] if n == "accuracy" else value[n] <= limits[n]))
    too_few = any(0 < n < HELDOUT_MIN_GROUP for n in (task.n_pos, task.n_neg))
    clearly = () if too_few else tuple(n for n in missed if _clearly_below_zero(terms[n], w, pos))
    return HeldOut(acc, loss, full_acc, full_loss, task.n_pos, task.n_neg, not missed, bool(clearly), missed, clearly,
                   too_few, limits)


def _clearly_below_zero(terms: torch.Tensor, w: torch.Tensor, positive: torch.Tensor) -> bool:
    """Whether the weighted mean of the per-example criterion ``terms`` (>= 0 where met) is below zero by more
    than :data:`~graphinterp.interpret.chance.MARGIN_SD` standard errors.

    The examples are independent draws within two groups (positives, negatives), each term's weight
    fixed by its group; the standard error is that of the weighted sum, from each group's spread
    (``ddof=1``; groups of at least :data:`HELDOUT_MIN_GROUP` examples). A mean that is not finite (an
    infinite loss) is clearly below zero.
    """
    mean = float(w @ terms)
    if not math.isfinite(mean):
        return True
    var = 0.0
    for group in (positive, ~positive):
        if int(group.sum()) > 1:
            t = terms[group]
            var += float((w[group] ** 2).sum() * t.var(unbiased=True))
    return mean < -MARGIN_SD * math.sqrt(var) - 1e-12
