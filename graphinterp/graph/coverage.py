"""What part of a model a graph covers, what was folded into it, and what was approximated.

Every graph built by graphinterp carries a :class:`Coverage`, and every report prints it: the
share of the model's weight parameters (tensors with two or more dimensions, tied tensors counted
once) that became graph edges, the modules left out with their type and the reason, the
normalisation scales folded into weights, the ones that could not be folded, and notes on
operations the tracer could only approximate. Nothing is dropped silently.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

__all__ = ["Coverage", "MissingModule", "describe_norms"]


@dataclass(frozen=True)
class MissingModule:
    """A weight parameter that is not part of the graph.

    Attributes
    ----------
    name : str
        Parameter name (``"lstm.weight_ih_l0"``).
    module_type : str
        Type of the module that owns it (``"LSTM"``), or ``"tensor"`` for a bare state_dict.
    numel : int
    reason : str
    """

    name: str
    module_type: str
    numel: int
    reason: str


@dataclass
class Coverage:
    """How much of a model a graph covers.

    Parameters
    ----------
    total : int
        Number of weights in the model's weight tensors (2-D and larger), tied tensors once.
    covered : int
        Number of those weights that are edges of the graph.
    missing : list of MissingModule
        Weight parameters that are not part of the graph, with the reason (default: none).
    folded : list of str
        ``"<layer>: <what>"`` for each normalisation scale folded into a layer's weight.
    unfolded : dict of str to str
        Normalisation parameters that were not folded, and why.
    notes : dict of str to int
        Operations the tracer approximated or could not follow, with their number of calls (1 for a note
        said once, e.g. on what a state_dict without an architecture cannot fold; not shown as "(1x)").
    tied : dict of str to str
        Layers that apply a weight tensor owned by another module (tied weights: GPT-2's ``lm_head``
        applies ``transformer.wte.weight``), with that tensor's name.
    """

    total: int
    covered: int
    missing: List[MissingModule] = field(default_factory=list)
    folded: List[str] = field(default_factory=list)
    unfolded: Dict[str, str] = field(default_factory=dict)
    notes: Dict[str, int] = field(default_factory=dict)
    tied: Dict[str, str] = field(default_factory=dict)

    @property
    def share(self) -> float:
        """Covered share of the weight parameters (1.0 for a model without any)."""
        return self.covered / self.total if self.total else 1.0

    @property
    def complete(self) -> bool:
        """True when every weight tensor is covered and nothing was approximated."""
        return not self.missing and not self.notes

    def missing_by_type(self) -> List[Tuple[str, int, int]]:
        """``(module type, number of tensors, weights)`` of the missing parameters, largest first."""
        acc: Dict[str, List[int]] = {}
        for m in self.missing:
            entry = acc.setdefault(m.module_type, [0, 0])
            entry[0] += 1
            entry[1] += m.numel
        return sorted(((k, v[0], v[1]) for k, v in acc.items()), key=lambda r: -r[2])

    def summary_lines(self, *, max_items: int = 6) -> List[str]:
        """Human-readable lines for a report (coverage first, then what is missing or approximated).

        Parameters
        ----------
        max_items : int, default 6
            Most unfolded parameters and most notes listed one per line (the rest are counted); the folded
            scales show ``max_items // 2`` examples.

        Returns
        -------
        list of str
            One line each, without trailing newlines.
        """
        lines = [f"coverage: {self.covered:,} of {self.total:,} weights in the graph ({100 * self.share:.1f}%)"]
        for mtype, count, numel in self.missing_by_type():
            names = [m.name for m in self.missing if m.module_type == mtype]
            shown = ", ".join(names[:3]) + (f", ... ({len(names)} tensors)" if len(names) > 3 else "")
            reason = next(m.reason for m in self.missing if m.module_type == mtype)
            lines.append(f"not covered: {mtype} ({numel:,} weights: {shown}): {reason}")
        for layer, param in self.tied.items():
            lines.append(f"tied: layer {layer} applies {param} (one tensor, counted once; masking or training "
                         f"{layer} changes {param.rpartition('.')[0] or param} too)")
        if self.folded:
            lines.append(f"folded: {len(self.folded)} normalisation scale(s), e.g. "
                         + "; ".join(self.folded[:max_items // 2]))
        for name, why in list(self.unfolded.items())[:max_items]:
            lines.append(f"not folded: {name}: {why}")
        if len(self.unfolded) > max_items:
            more = list(self.unfolded)[max_items:]
            lines.append(f"not folded: ... and {len(more)} more ({', '.join(more[:3])}{', ...' if len(more) > 3 else ''}; "
                         "all are in --json under coverage.unfolded)")
        for note, count in list(self.notes.items())[:max_items]:
            lines.append(f"approximated: {note}" + (f" ({count}x)" if count != 1 else ""))
        if len(self.notes) > max_items:
            lines.append(f"approximated: ... and {len(self.notes) - max_items} more (all are in --json under "
                         "coverage.notes)")
        return lines

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {
            "total_weights": self.total, "covered_weights": self.covered, "share": self.share,
            "missing": [m.__dict__ for m in self.missing], "folded": list(self.folded),
            "unfolded": dict(self.unfolded), "notes": dict(self.notes), "tied": dict(self.tied),
        }


def describe_norms(norms: list) -> str:
    """What the unfolded normalisation tensors are, counted by layer: ``"4 BatchNorm layers (12 tensors:
    weight, running_mean, running_var), e.g. bn1"``; a layer with running statistics is a BatchNorm, one
    with only a 1-D weight a LayerNorm or RMSNorm.

    Examples
    --------
    >>> describe_norms(["bn1.weight", "bn1.running_mean", "bn1.running_var", "ln.weight"])
    '1 BatchNorm layer and 1 LayerNorm/RMSNorm layer (4 tensors: weight, running_mean, running_var), e.g. bn1'
    """
    layers: dict = {}
    for name in norms:
        prefix, _, leaf = name.rpartition(".")
        layers.setdefault(prefix, []).append(leaf)
    bn = [p for p, leaves in layers.items() if {"running_mean", "running_var"} & set(leaves)]
    kinds = [(len(bn), "BatchNorm"), (len(layers) - len(bn), "LayerNorm/RMSNorm")]
    leaves = ", ".join(dict.fromkeys(leaf for lv in layers.values() for leaf in lv))
    counted = " and ".join(f"{n} {kind} layer{'s' if n != 1 else ''}" for n, kind in kinds if n)
    example = next(iter(layers)) or norms[0]
    return f"{counted} ({len(norms)} tensor{'s' if len(norms) != 1 else ''}: {leaves}), e.g. {example}"
