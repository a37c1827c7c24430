"""The graph of a bare state_dict (no architecture to run): layers from tensor names and shapes.

Without the model's code nothing can be traced, so the layer order is the key order and layers
are linked only when their shapes chain. Everything this reader has to guess is said in the
returned :class:`~graphinterp.graph.coverage.Coverage`:

* 2-D ``*.weight`` tensors are Linear layers, 3-D Conv1d, 4-D Conv2d, 5-D Conv3d;
* HuggingFace GPT-2 ``Conv1D`` weights (``c_attn``, ``c_fc``, ``c_proj``) are stored ``(in, out)``
  and read transposed;
* convolution weights are read in Conv layout, ``(out, in, ...)``: a transposed convolution's
  ``(in, out, ...)`` weight cannot be told apart, so a linked graph with convolutions says so
  (:data:`CONV_LAYOUT_NOTE`, beside :data:`CHAIN_GUESS_NOTE`);
* grouped and depthwise convolutions get ``groups`` from the shapes (in-channels per group
  against the previous layer's outputs), a guess that is noted layer by layer;
* embeddings (by the last part of the name: ``embed``, ``wte``, ``wpe``, ``*_embeddings``), recurrent
  weights (``weight_ih_l0``) and other tensors are listed as not covered, with the reason; tensors
  sharing storage (and copies of an embedding) count once and are listed as tied;
* layers are linked in key order where their shapes chain, which is a guess and is noted.
"""
from __future__ import annotations

import re
from typing import List, Mapping, Optional, Tuple

import torch

from graphinterp.graph.coverage import Coverage, MissingModule, describe_norms
from graphinterp.common.errors import UnsupportedModelError
from graphinterp.graph.layer import KINDS, Layer
from graphinterp.graph.trace_ops import layer_name

__all__ = ["graph_layers_from_state_dict", "layers_from_state_dict", "RESIDUAL_KEY"]

RESIDUAL_KEY = re.compile(r"(^|\.)(layer\d+\.\d+\.|downsample\.|shortcut\.|blocks?\.\d+\.|layers?\.\d+\.|h\.\d+\.)")
_TRANSPOSED = re.compile(r"(^|\.)(c_attn|c_fc|c_proj|q_attn)$")  # HF GPT-2 Conv1D: weight (in, out)
_EMBEDDING_NAMES = {"embed", "embeds", "emb", "embedding", "embeddings", "embed_tokens", "embed_positions", "embed_in",
                    "wte", "wpe", "class_token", "cls_token", "pos_embed", "pos_embedding"}
_RECURRENT = re.compile(r"(^|\.)weight_(ih|hh)_l\d+")
_KIND_OF_DIM = {v: k for k, v in KINDS.items()}
_SUPPORTED_TEXT = "graphinterp reads Linear (2-D), Conv1d/2d/3d (3-5-D) and GPT-2 Conv1D weights"


def _is_weight_matrix(key: str, t: torch.Tensor) -> bool:
    """A layer's weight (any 2-5-D ``*.weight``, a ``Linear(n, 1)`` head included) or another tensor of two
    dimensions or more above 1; not biases, norm gains, layer_scale vectors."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        return False
    return sum(d > 1 for d in t.shape) >= 2 or (key.endswith("weight") and t.dim() >= 2)


def _is_embedding(name: str) -> bool:
    """By the last part of the name: ``wte``, ``embed_tokens``, ``word_embeddings``, ``cls_token``, ... (not
    ``unembed``, nor ``patch_embed.proj``, a convolution)."""
    last = name.rpartition(".")[2].lower()
    return last in _EMBEDDING_NAMES or last.endswith(("_embeddings", "_embedding", "_embed", "_emb"))


def _strip(name: str) -> str:
    return name[len("module."):] if name.startswith("module.") else name


def graph_layers_from_state_dict(state_dict: Mapping[str, torch.Tensor], *, layerwise: bool = False,
                                 ) -> Tuple[List[Layer], bool, Coverage]:
    """Return ``(layers, chained, coverage)`` for a bare state_dict.

    ``chained`` is False when the names look like residual blocks or the shapes do not chain;
    the layers are then analysed one by one, and ``coverage.notes`` says why.
    """
    items: List[Tuple[str, str, torch.Tensor, bool]] = []
    missing: List[MissingModule] = []
    seen = {}
    tied = {}
    total = covered = 0
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor) and (not value.is_floating_point() or value.element_size() == 1) \
                and key.endswith("weight") and value.dim() >= 2:  # integer, bool, complex, quantized, float8
            missing.append(MissingModule(key, f"{str(value.dtype).replace('torch.', '')} weight", value.numel(),
                                         f"{value.dtype} weights are not read (only 16-64-bit floating point); convert them "
                                         "(e.g. dequantize(), .float()) to include them"))
            total += value.numel()
            continue
        if not _is_weight_matrix(key, value) or key.endswith("bias") or key.endswith("running_mean"):
            continue
        ident = (value.data_ptr(), tuple(value.shape), tuple(value.stride())) if value.numel() else key
        # named as a traced module's layer is (one rule: in_proj_weight -> in_proj, fc.weight -> fc)
        name = (layer_name(_strip(key)) if _strip(key) != "weight" else "") if key.endswith("weight") else _strip(key)
        if ident in seen:  # one storage under two names (lm_head = wte): counted once
            tied[name or key] = seen[ident][1]
            continue
        # a copy of an embedding (tied weights saved twice, e.g. by safetensors), whichever comes first
        twin = next((k for k, (n, _, v) in seen.items() if _is_embedding(n) != _is_embedding(name)
                     and v.shape == value.shape and torch.equal(v, value)), None) if value.numel() else None
        if twin is not None and _is_embedding(seen[twin][0]):
            tied[name or key] = seen[twin][1]
            continue
        if twin is not None:  # the applying layer came first (lm_head before wte): it is the tied copy
            earlier, earlier_key, _ = seen.pop(twin)
            if any(item[1] == earlier_key for item in items):
                items = [item for item in items if item[1] != earlier_key]
                covered -= value.numel()
            missing = [m for m in missing if m.name != earlier_key]
            total -= value.numel()
            tied[earlier or earlier_key] = key
        seen[ident] = (name, key, value)
        total += value.numel()
        if _RECURRENT.search(key):
            missing.append(MissingModule(key, "RNN/LSTM/GRU", value.numel(),
                                         "recurrent layers are not supported as graph edges"))
        elif _is_embedding(name):
            missing.append(MissingModule(key, "Embedding", value.numel(),
                                         "token/position embedding (a lookup, not a bipartite layer)"))
        elif not key.endswith("weight") or value.dim() not in _KIND_OF_DIM:
            missing.append(MissingModule(key, "tensor", value.numel(), f"not a layer weight; {_SUPPORTED_TEXT}"))
        else:
            transposed = value.dim() == 2 and bool(_TRANSPOSED.search(name))
            items.append((name or "weight", key, value.detach(), transposed))
            covered += value.numel()
    if not items:
        typed = [m for m in missing if m.module_type.endswith(" weight")]
        if typed:
            raise UnsupportedModelError(f"no floating-point layer weight in the state_dict: {typed[0].reason} "
                                        f"({len(typed)} such, e.g. {typed[0].name})")
        raise UnsupportedModelError(f"no layer weight tensor in the state_dict; {_SUPPORTED_TEXT}")
    notes = {}
    chained = not layerwise
    residual = [n for n, *_ in items if RESIDUAL_KEY.search(n + ".")]
    if chained and residual:
        chained = False
        notes[f"names such as {residual[0]!r} look like residual or transformer blocks; without the model's code "
              "the layers are analysed one by one (load the model as a module, a graphinterp checkpoint, an HF "
              "folder, or the architecture's torchvision name with the file: analyze NAME --weights FILE, benchmark "
              "--arch NAME --weights FILE, for the linked graph)"] = 1
    layers: List[Layer] = []
    prev_out: Optional[int] = None
    prev_kind = None
    for name, key, w, transposed in items:
        weight = w.t() if transposed else w
        kind = _KIND_OF_DIM[weight.dim()]
        groups, in_groups, n_in = 1, None, weight.shape[1]
        if prev_out is not None:
            if kind != "linear" and n_in != prev_out and prev_out % n_in == 0 and weight.shape[0] % (prev_out // n_in) == 0 \
                    and (chained or n_in == 1):  # unlinked layers: the one before in key order need not feed this one
                    # (a ResNet's 1x1 downsample after a 3x3 conv), so only a depthwise one (1 input per group) is guessed
                groups = prev_out // n_in  # grouped / depthwise convolution
                notes[f"layer {name!r}: groups={groups} is a guess from the shapes ({n_in} input channels per group "
                      f"against the {prev_out} outputs of the layer before); a state_dict does not store groups, and a "
                      f"transposed convolution's weight, stored (in, out, ...), can look the same"] = 1
            elif kind == "linear" and prev_kind != "linear" and n_in % prev_out == 0 and n_in != prev_out:
                in_groups = prev_out  # a Linear after a Flatten of conv channels
            elif n_in != prev_out or (kind != "linear" and prev_kind == "linear"):
                if chained:
                    chained = False
                    notes[f"layer {name!r} ({n_in} inputs) does not chain with the layer before it "
                          f"({prev_out} outputs): the layers are analysed one by one"] = 1
        layers.append(Layer(name, kind, weight, in_groups=in_groups, groups=groups, param=key,
                            transposed=transposed))
        prev_out, prev_kind = weight.shape[0], kind
    if not chained and not layerwise:
        layers = [Layer(l.name, l.kind, l.weight, groups=l.groups, param=l.param, transposed=l.transposed)
                  for l in layers]
    norms = _normalisation_tensors(state_dict)
    if norms:  # it never folds: say what it leaves out (the weights around them are raw), and by how much
        notes[f"{NORMS_NOTE}: {describe_norms(norms)}{_scale_range(state_dict)}"] = 1
    return layers, chained, Coverage(total, covered, missing, notes=notes, tied=tied)


#: The note on a state_dict whose layers were linked by their shapes (no architecture says so); added to
#: the opened model's notes by :func:`graphinterp.graph.load.model_graph`.
CHAIN_GUESS_NOTE = ("no architecture: the layers are linked in key order because their shapes chain (a guess; load "
                    "the model as a module, a graphinterp checkpoint, or the architecture's torchvision name with the "
                    "file (analyze NAME --weights FILE, benchmark --arch NAME --weights FILE) for a traced graph)")


#: The note on a linked state_dict graph with convolutions: their orientation is read from the layout, not known.
CONV_LAYOUT_NOTE = ("no architecture: convolution weights are read as Conv layers store them, (out, in, ...); a "
                    "transposed convolution (ConvTranspose) stores (in, out, ...), and would be linked with its inputs "
                    "and outputs swapped (a square one without any sign of it)")


#: The start of the note on a state_dict's normalisation tensors, which a graph without an architecture cannot fold.
NORMS_NOTE = "no architecture: the normalisation in this state_dict cannot be folded"


def _scale_range(state) -> str:
    """``"; folded, their scales would multiply units' weights by 0.0153 to 35, ..."``: the range of the BatchNorm
    scales ``|weight| / sqrt(running_var + 1e-5)`` left unfolded (eps assumed at torch's default), with a warning
    when the units of one layer get scales more than 2x apart (which changes its clusters; one scale per layer
    moves the model-wide E only); "" without any.

    Examples
    --------
    >>> _scale_range({"bn.weight": torch.tensor([1.0, 8.0]), "bn.running_var": torch.tensor([1.0, 1.0])}).split(",")[1]
    " their scales would multiply units' weights by 1 to 8"
    >>> _scale_range({"a.weight": torch.full((2,), 0.1), "a.running_var": torch.ones(2),
    ...               "b.weight": torch.full((2,), 10.0), "b.running_var": torch.ones(2)}).split("; ")[-1]
    'one scale per layer: the model-wide E can move, not the clusters'
    >>> _scale_range({"ln.weight": torch.ones(3)})
    ''
    """
    scales, spread, bad = [], False, 0
    for key, var in state.items():
        if key.endswith("running_var") and isinstance(var, torch.Tensor) and var.is_floating_point():
            gain = state.get(key[: -len("running_var")] + "weight")
            gain = gain if isinstance(gain, torch.Tensor) and gain.shape == var.shape else torch.ones_like(var)
            s = (gain.double().abs() / (var.double().clamp_min(0) + 1e-5).sqrt()).flatten()
            bad += int((~torch.isfinite(s)).sum())
            s = s[torch.isfinite(s)]
            if s.numel():
                scales.append(s)
                spread |= float(s.max()) > 2 * float(s.min())
    if not scales:
        return f"; {bad} of their scales are not finite (NaN or inf statistics)" if bad else ""
    s = torch.cat(scales)
    lo, hi = float(s.min()), float(s.max())
    line = f"; folded, their scales would multiply units' weights by {lo:.3g} to {hi:.3g}"
    if bad:
        line += f" ({bad} not finite: NaN or inf statistics)"
    if spread:
        return line + ", so E and the clusters can differ much from the model's (give the architecture to fold them)"
    return line + ("; one scale per layer: the model-wide E can move, not the clusters" if hi > 2 * lo else "")


def _normalisation_tensors(state) -> list:
    """Names of a state_dict's normalisation tensors: running statistics and 1-D weights (BatchNorm,
    LayerNorm and RMSNorm gains); a model without them has nothing to fold."""
    return [k for k, v in state.items() if isinstance(v, torch.Tensor) and (
        k.endswith(("running_mean", "running_var")) or (k.endswith("weight") and v.dim() == 1))]


def layers_from_state_dict(state_dict: Mapping[str, torch.Tensor], *, layerwise: bool = False) -> List[Layer]:
    """The layers of a bare state_dict (see :func:`graph_layers_from_state_dict`).

    Raises
    ------
    UnsupportedModelError
        No layer weight, or (unless ``layerwise``) names or shapes that are not a simple chain.
    """
    layers, chained, coverage = graph_layers_from_state_dict(state_dict, layerwise=layerwise)
    if not chained and not layerwise:
        raise UnsupportedModelError(next(iter(coverage.notes)).replace("the layers are analysed one by one",
                                                                       "analyse layer by layer (layerwise=True, --layerwise)"))
    return layers
