"""The vocabulary of the channel tracer: which torch operations belong to which family, and the
records it produces (:class:`LayerCall`, pending normalisation gains).

Shared by :mod:`graphinterp.graph.trace` (the tracer) and :mod:`graphinterp.graph.trace_rules` (one
rule per family), so that neither imports the other's internals.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

__all__ = ["LayerCall"]

_CONV = {"conv1d": "conv1d", "conv2d": "conv2d", "conv3d": "conv3d"}
_IDENTITY = {"to", "type", "type_as", "float", "double", "half", "bfloat16", "cpu", "cuda", "contiguous", "clone",
             "detach", "requires_grad_", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
             "feature_alpha_dropout", "identity", "data", "real"}
_LAYOUT = {"view", "reshape", "permute", "transpose", "t", "flatten", "unflatten", "squeeze", "unsqueeze",
           "expand", "expand_as", "view_as", "reshape_as", "__getitem__", "narrow", "select", "split",
           "split_with_sizes", "tensor_split", "chunk", "unbind", "movedim", "moveaxis", "swapaxes",
           "swapdims", "repeat", "tile", "roll", "flip", "index_select", "cat", "concat", "concatenate",
           "stack", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "native_channel_shuffle",
           "repeat_interleave", "broadcast_to", "mT", "T", "contiguous_format", "unsafe_view", "hsplit",
           "vsplit", "gather", "take_along_dim"}
_BINARY = {"add", "sub", "mul", "div", "true_divide", "where", "maximum", "minimum", "addcmul", "addcdiv",
           "lerp", "hypot", "fmax", "fmin", "rsub", "masked_fill", "add_", "sub_", "mul_", "div_",
           "__add__", "__radd__", "__iadd__", "__sub__", "__rsub__", "__isub__", "__mul__", "__rmul__",
           "__imul__", "__truediv__", "__rtruediv__", "__itruediv__", "__and__", "__or__", "masked_fill_"}
_MATMUL = {"matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "baddbmm", "einsum"}
_REDUCE = {"sum", "mean", "amax", "amin", "max", "min", "norm", "var", "std", "logsumexp", "prod", "nansum",
           "nanmean", "median", "var_mean", "std_mean", "linalg_vector_norm", "argmax", "argmin"}
_SPATIAL = {"max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
            "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
            "adaptive_max_pool2d", "adaptive_max_pool3d", "max_pool2d_with_indices", "interpolate",
            "upsample", "upsample_nearest", "upsample_bilinear", "lp_pool2d", "fractional_max_pool2d"}
_NORMS = {"layer_norm", "rms_norm", "group_norm", "instance_norm"}
#: sums and differences of two tensors (the residual merges; the operand signs of trace_numbers)
ADDS = {"add", "__add__", "__radd__", "add_", "__iadd__"}
SUBS = {"sub", "__sub__", "sub_", "__isub__", "subtract", "__rsub__", "rsub"}
_SCANS = {"cumsum", "cumprod", "cummax", "cummin", "logcumsumexp", "cumsum_", "cumprod_"}
_SKIP = {"size", "dim", "numel", "__len__", "__bool__", "item", "tolist", "__format__", "__repr__",
         "__hash__", "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "eq", "ne", "lt", "le",
         "gt", "ge", "isfinite", "isnan", "any", "all", "stride", "data_ptr", "element_size", "is_contiguous",
         "is_floating_point", "__iter__", "__contains__", "new_zeros", "new_ones", "new_empty", "new_full",
         "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "arange",
         "dim_order", "__reduce_ex__", "__deepcopy__", "storage_offset", "get_device", "__array__"}


@dataclass
class LayerCall:
    """One call of a weight layer found by the tracer (node ids are the tracer's raw ids)."""

    name: str
    param: str
    kind: str
    weight: torch.Tensor  # torch layout (out, in, ...), raw (unfolded), detached
    transposed: bool
    groups: int
    src: torch.Tensor  # raw node id per input feature / in-channel
    dst: torch.Tensor  # raw node id per output
    in_scale: Optional[torch.Tensor] = None  # per input feature (folded gains)
    out_scale: Optional[torch.Tensor] = None  # per output (folded BatchNorm / layer_scale)
    folded: List[str] = field(default_factory=list)
    # per fold: (tag, "out" or "in", for each row / input feature the index of its scale in the source's
    # flattened per-channel vector, -1 where it has none; None when that index is unknown)
    fold_maps: List[Tuple[str, str, Optional[List[int]]]] = field(default_factory=list)
    rows: Optional[Tuple[int, int]] = None  # the rows [start, stop) of the parameter this layer holds (a fused in_proj)


def layer_name(param_name: str) -> str:
    """``"fc1.weight"`` -> ``"fc1"``: a layer is named after its weight parameter."""
    for suffix in (".weight", "_weight"):
        if param_name.endswith(suffix):
            return param_name[: -len(suffix)] or "weight"
    return param_name


def element_index(ids: torch.Tensor, elems: Optional[torch.Tensor] = None,
                  known: bool = True) -> Optional[Dict[int, int]]:
    """Node id -> the index of its scale in the folded source's flattened per-channel vector: ``elems[i]`` for
    ``ids[i]``, its position in ``ids`` by default; None when the index is not known."""
    if not known:
        return None
    return dict(zip(ids.tolist(), (elems if elems is not None else torch.arange(len(ids))).tolist()))


def fold_index(elem_by_id: Optional[Dict[int, int]], nodes: torch.Tensor) -> Optional[List[int]]:
    """The index (:func:`element_index`) behind each of a layer's ``nodes``, -1 for a node without a scale;
    None when not known: a ``LayerCall.fold_maps`` entry."""
    return None if elem_by_id is None else [elem_by_id.get(int(i), -1) for i in nodes]


def one_per_node(vec: torch.Tensor, scale: torch.Tensor):
    """``(ids, scales, positions)`` with one entry per distinct node of ``vec`` (its first feature), or None when
    two features of one node have different scales."""
    if torch.unique(vec).numel() == vec.numel():  # every feature its own node (the common case)
        return vec, scale, torch.arange(vec.numel())
    by_id, first = {}, []
    for pos, (i, v) in enumerate(zip(vec.tolist(), scale.tolist())):
        if i not in by_id:
            by_id[i] = v
            first.append(pos)
        elif by_id[i] != v:
            return None
    idx = torch.tensor(first, dtype=torch.long)
    return vec[idx], scale[idx], idx


class _Gain:
    """A per-node scale waiting to be folded into the layers that read these nodes.

    Folding it as an input gain is exact only when weight layers are the *only* readers of the scaled
    tensor (and of its re-layouts): ``folded_by`` lists the layer calls that took it, ``leaks`` counts
    the other operations that read it (a residual sum, an activation, a concatenation, ...). The
    tracer undoes the fold when there is any leak (:meth:`ChannelTracer.settle_gains`).

    ``ids`` may repeat: a LayerNorm or BatchNorm1d over a conv's flattened output has one gain per
    feature but one node per channel. When every feature of a node has the same gain (``uniform``) the
    gain is folded by node; otherwise only a layer that reads the normalised tensor itself (or an
    identity of it: dropout, a cast) along the gain's dimension can take it, one gain per input feature
    (``per_feature``); any other reader is a leak.
    """

    def __init__(self, ids: torch.Tensor, scale: torch.Tensor, source: str, kind: str = "gain",
                 elems: Optional[torch.Tensor] = None, known: bool = True, *, dim: Optional[int] = None,
                 tensor: Optional[torch.Tensor] = None) -> None:
        per_node = one_per_node(ids, scale)
        self.uniform = per_node is not None
        nodes, scales, first = per_node if per_node is not None else (ids[:0], scale[:0], ids[:0])
        self.by_id = dict(zip(nodes.tolist(), scales.tolist()))  # used only when uniform
        where = elems.tolist() if elems is not None else None
        # node id -> index of its scale in the source's flattened vector (its first position in ``ids`` by default)
        self.elem_by_id = ({i: (where[p] if where is not None else p) for i, p in zip(nodes.tolist(), first.tolist())}
                           if known else None)
        self.values = scale.detach().reshape(-1).clone()  # one per feature along ``dim`` (the per-feature form)
        self.elems, self.known = where, known
        self.dim = dim
        self.tensors = {id(tensor)} if tensor is not None else set()  # the normalised tensor and its identities
        self.source = source
        self.kind = kind
        self.used = False
        self.folded_by: List[int] = []  # indices into the tracer's calls
        self.leaks: Counter = Counter()  # operation name -> times it read the scaled tensor

    def for_reader(self, x: torch.Tensor, dim: int, nodes: torch.Tensor, find) -> Optional[Tuple[List[float], Optional[List[int]]]]:
        """``(scale, index)`` per input feature of a layer reading ``x`` along ``dim`` with input ``nodes``, or
        None when no such per-feature scale is exact (a non-uniform gain read re-laid out). ``index`` is the
        position of each scale in the source's vector (-1 for none; None when unknown); ``find`` maps a node
        id to its current root (ids may have been merged since the gain was recorded)."""
        n = len(nodes)
        if (not self.uniform and id(x) in self.tensors and self.dim is not None
                and self.dim % x.dim() == dim % x.dim() and self.values.numel() == n):
            index = (self.elems if self.elems is not None else list(range(n))) if self.known else None
            return self.values.tolist(), index
        if not self.uniform:
            return None
        by_root = {find(k): v for k, v in self.by_id.items()}
        elem = None if self.elem_by_id is None else {find(k): v for k, v in self.elem_by_id.items()}
        roots = [find(int(i)) for i in nodes]
        return [by_root.get(r, 1.0) for r in roots], (None if elem is None else [elem.get(r, -1) for r in roots])


_KNOWN = (_IDENTITY | _LAYOUT | _BINARY | _MATMUL | _REDUCE | _SPATIAL | _NORMS | set(_CONV)
          | {"linear", "addmm", "embedding", "batch_norm", "scaled_dot_product_attention", "softmax",
             "log_softmax", "relu", "gelu", "silu", "sigmoid", "tanh", "pad", "hardswish", "relu6", "elu",
             "leaky_relu", "mish", "softplus", "hardsigmoid", "glu", "hardtanh", "multi_head_attention_forward",
             "pow", "neg", "abs", "exp", "log", "sqrt", "rsqrt", "square", "clamp", "clamp_min", "clamp_max",
             "relu_", "sigmoid_", "tanh_", "gelu_", "silu_", "erf", "sin", "cos", "reciprocal", "__neg__",
             "__pow__", "__rpow__", "__abs__", "sign", "softsign", "logsigmoid", "celu", "selu", "prelu",
             "hardswish_", "hardsigmoid_", "leaky_relu_", "threshold", "softmin", "float_power", "tril",
             "triu", "masked_fill", "nan_to_num"} | _SCANS)


class _OutFolds:
    """Scales folded into the layer that produced a tensor (BatchNorm, layer_scale), and who else read it.

    ``BN(conv(x))`` folds into conv's output rows, which is exact only when the BatchNorm is the only
    reader of conv's raw output (and of the views of it the fold read through): in a pre-activation
    ResNet the stem conv's output is also the identity shortcut, which carries no scale. Reads of a
    layer's direct outputs are counted; a fold whose input was also read by anything but the fold and
    re-layouts is undone when the trace ends (:meth:`ChannelTracer.settle_gains`).
    """

    def __init__(self) -> None:
        self.through: Dict[int, int] = {}  # tensor id -> layer whose fold read it (or a view of it)
        self.parent: Dict[int, int] = {}  # a re-layout's output tensor id -> the tensor id it viewed
        self.reads: Dict[int, Counter] = {}  # direct-output tensor id -> operations that read it
        self.tags: Dict[int, List[str]] = {}  # layer -> the out-folds it took ("bn1 (BatchNorm scale)")
        self.just_folded: set = set()  # tensor ids folded through by the operation now being applied
        self.keep: List[torch.Tensor] = []  # the tensors above, alive so that their ids are not reused

    def fold(self, x: torch.Tensor, layer: int, tag: str) -> None:
        """Record that ``tag`` was folded into ``layer`` reading ``x`` (and, through views, its ancestors)."""
        self.tags.setdefault(layer, []).append(tag)
        self.just_folded.add(id(x))
        self.keep.append(x)
        t, seen = id(x), set()
        while t is not None and t not in seen:
            seen.add(t)
            if t in self.through:  # another fold already reads this tensor (two BatchNorms on one output)
                self.reads.setdefault(t, Counter())[tag.rpartition(" (")[0] or tag] += 1
                break
            self.through[t] = layer
            t = self.parent.get(t)

    def read(self, name: str, x_ids: List[int], out, direct: Dict[int, int]) -> None:
        """Count the operation ``name`` reading the direct outputs ``x_ids`` (a re-layout keeping them direct
        is a view, not a reader; the fold itself is not counted)."""
        outs = [out] if isinstance(out, torch.Tensor) else [o for o in out if isinstance(o, torch.Tensor)]
        for t in x_ids:
            if t in self.just_folded:
                continue
            if name in _IDENTITY | _LAYOUT and any(direct.get(id(o)) == direct.get(t) for o in outs):
                for o in outs:
                    if id(o) != t:  # x.contiguous() may return x itself
                        self.parent.setdefault(id(o), t)
                continue
            self.reads.setdefault(t, Counter())[name] += 1
        self.just_folded.clear()

    def returned(self, x_id: int, name: str) -> None:
        """Count the model's return value (reader ``name``) as reading the direct output ``x_id``."""
        self.just_folded.clear()  # no operation is being applied: nothing was just folded through
        self.reads.setdefault(x_id, Counter())[name] += 1

    def leaking(self) -> Dict[int, List[str]]:
        """Layer -> the operations that read an input of its out-fold besides the fold (layers to undo)."""
        out: Dict[int, List[str]] = {}
        for t, names in self.reads.items():
            u, seen = t, set()  # a read of the folded tensor, of one of its views, or of a sibling view (y.clone())
            while u is not None and u not in self.through and u not in seen:
                seen.add(u)
                u = self.parent.get(u)
            if u in seen:
                u = None
            if u is not None:
                out.setdefault(self.through[u], []).extend(names)
        return out
