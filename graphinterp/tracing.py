"""Find the chain of Linear/Conv2d layers of a model: by tracing a forward pass, or from a state_dict.

Tracing follows Torch-Pruning's idea: one forward pass with temporary hooks records each weight
layer's output autograd node; walking ``grad_fn.next_functions`` back from a layer's input then
tells which earlier layer(s) it depends on. A chain needs exactly one: the previous layer (or the
model input for the first). Residual additions, concatenations and branches show up as two
sources and are rejected with a message naming the module.
"""
from __future__ import annotations

import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from .errors import UnsupportedModelError
from .layer import Layer

__all__ = ["layers_from_module", "layers_from_state_dict"]

_UNSUPPORTED = (
    nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.MultiheadAttention, nn.RNNBase, nn.Embedding, nn.EmbeddingBag, nn.Bilinear,
    nn.TransformerEncoderLayer, nn.TransformerDecoderLayer,
)
_SUPPORTED_TEXT = (
    "graphinterp supports chains of nn.Linear / nn.Conv2d with activations, pooling, Flatten, "
    "Dropout and BatchNorm in between"
)
_RESIDUAL_KEY = re.compile(r"(^|\.)(layer\d+\.\d+\.|downsample\.|shortcut\.)")
_SPATIAL_GUESSES = (32, 28, 64, 224, 8, 16, 96)


def _weight_modules(module: nn.Module) -> List[Tuple[str, nn.Module]]:
    found = []
    for name, sub in module.named_modules():
        if isinstance(sub, _UNSUPPORTED):
            raise UnsupportedModelError(
                f"module {name!r} is a {type(sub).__name__}; {_SUPPORTED_TEXT}"
            )
        if isinstance(sub, (nn.Linear, nn.Conv2d)):
            found.append((name or type(sub).__name__, sub))
    if not found:
        raise UnsupportedModelError(f"the model has no nn.Linear or nn.Conv2d layer; {_SUPPORTED_TEXT}")
    return found


def _make_layer(name: str, mod: nn.Module, in_groups: Optional[int] = None) -> Layer:
    if isinstance(mod, nn.Conv2d):
        return Layer(name, "conv2d", mod.weight.detach(), groups=mod.groups)
    return Layer(name, "linear", mod.weight.detach(), in_groups=in_groups)


def _example_inputs(first: nn.Module, input_shape: Optional[Sequence[int]]):
    if input_shape is not None:
        yield tuple(input_shape)
    elif isinstance(first, nn.Linear):
        yield (first.in_features,)
    else:
        for size in _SPATIAL_GUESSES:
            yield (first.in_channels, size, size)


def layers_from_module(
    module: nn.Module, *, input_shape: Optional[Sequence[int]] = None, layerwise: bool = False
) -> List[Layer]:
    """Return the model's weight layers in forward order, checking that they form a chain.

    Parameters
    ----------
    module : nn.Module
    input_shape : sequence of int, optional
        Shape of one input example without the batch dimension. Guessed when omitted: the first
        Linear's ``in_features``, or square images of a few common sizes for a Conv2d.
    layerwise : bool
        Skip the chain check and return every Linear/Conv2d in registration order, each to be
        analysed as its own bipartite graph (for residual networks).

    Raises
    ------
    UnsupportedModelError
        No weight layer, an unsupported layer type, or a structure that is not a chain.
    """
    mods = _weight_modules(module)
    if layerwise:
        return [_make_layer(name, mod) for name, mod in mods]
    calls = _trace(module, mods, input_shape)
    layers: List[Layer] = []
    for t, (name, mod, in_shape, _) in enumerate(calls):
        in_groups = None
        if t > 0:
            prev_name, prev_mod, _, prev_out = calls[t - 1]
            in_groups = _link(prev_name, prev_mod, prev_out, name, mod, in_shape)
        layers.append(_make_layer(name, mod, in_groups))
    return layers


def _trace(module: nn.Module, mods, input_shape):
    names = {id(m): n for n, m in mods}
    first = mods[0][1]
    last_error: Optional[Exception] = None
    was_training = module.training
    module.eval()
    try:
        for shape in _example_inputs(first, input_shape):
            records: list = []

            def hook(mod, inputs, output, _records=records):
                _records.append((mod, inputs[0], output, output.grad_fn))

            handles = [m.register_forward_hook(hook) for _, m in mods]
            try:
                param = next(module.parameters())
                # a local generator: tracing never consumes the global RNG streams
                gen = torch.Generator().manual_seed(0)
                x = torch.randn(2, *shape, generator=gen, dtype=param.dtype).to(param.device).requires_grad_()
                with torch.enable_grad():
                    out = module(x)
            except (RuntimeError, ValueError, TypeError) as err:  # wrong guess of the input shape
                last_error = err
                continue
            finally:
                for h in handles:
                    h.remove()
            return _check_chain(records, names, x, out)
    finally:
        module.train(was_training)
    raise UnsupportedModelError(
        f"could not run a forward pass to find the layer order ({type(last_error).__name__}: "
        f"{str(last_error).splitlines()[0] if last_error else ''}); pass input_shape=(C, H, W) "
        "or use layerwise analysis"
    )


def _check_chain(records, names, x, out):
    seen = set()
    for mod, *_ in records:
        if id(mod) in seen:
            raise UnsupportedModelError(
                f"module {names[id(mod)]!r} is called more than once in forward (shared weights); {_SUPPORTED_TEXT}"
            )
        seen.add(id(mod))
    if len(records) < len(names):
        unused = [n for i, n in names.items() if i not in seen]
        raise UnsupportedModelError(f"module(s) {unused} are not used in forward; {_SUPPORTED_TEXT}")
    out_fns = {rec[3]: t for t, rec in enumerate(records)}
    for t, (mod, inp, _, _) in enumerate(records):
        sources = _sources(inp, out_fns, x)
        expected = {t - 1} if t else {"input"}
        if sources != expected:
            raise UnsupportedModelError(
                f"module {names[id(mod)]!r} takes input from {_describe(sources, records, names)} "
                f"instead of a single chain; residual connections and branches are not supported as a "
                f"layered graph: analyse layer by layer (layerwise=True, --layerwise)"
            )
    final = _sources(out if isinstance(out, torch.Tensor) else None, out_fns, x)
    if final != {len(records) - 1}:
        raise UnsupportedModelError(
            f"the model output depends on {_describe(final, records, names)}, not only on the last "
            f"layer {names[id(records[-1][0])]!r}; {_SUPPORTED_TEXT}"
        )
    return [(names[id(m)], m, tuple(inp.shape), tuple(o.shape)) for m, inp, o, _ in records]


def _sources(tensor: Optional[torch.Tensor], out_fns: Dict, x: torch.Tensor) -> set:
    if tensor is None:
        return set()
    if tensor is x:
        return {"input"}
    found: set = set()
    stack, seen = [tensor.grad_fn], set()
    while stack:
        f = stack.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        if f in out_fns:
            found.add(out_fns[f])
            continue
        if getattr(f, "variable", None) is x:
            found.add("input")
            continue
        stack.extend(nf for nf, _ in f.next_functions)
    return found


def _describe(sources, records, names) -> str:
    parts = sorted("the model input" if s == "input" else repr(names[id(records[s][0])]) for s in sources)
    return " and ".join(parts) if parts else "no layer"


def _link(prev_name, prev_mod, prev_out, name, mod, in_shape) -> Optional[int]:
    """Check that ``mod`` consumes ``prev_mod``'s nodes; return ``in_groups`` for Conv2d -> Linear."""
    n_prev = prev_mod.out_channels if isinstance(prev_mod, nn.Conv2d) else prev_mod.out_features
    if isinstance(mod, nn.Conv2d):
        if isinstance(prev_mod, nn.Linear) or mod.in_channels != n_prev:
            raise UnsupportedModelError(
                f"module {name!r} (Conv2d, {mod.in_channels} in-channels) does not chain with {prev_name!r} "
                f"({n_prev} outputs); {_SUPPORTED_TEXT}"
            )
        return None
    if isinstance(prev_mod, nn.Conv2d):
        if len(in_shape) == 2 and mod.in_features % n_prev == 0:
            return n_prev
    elif mod.in_features == n_prev and in_shape[-1] == n_prev:
        return None
    raise UnsupportedModelError(
        f"module {name!r} (Linear, {mod.in_features} inputs) does not chain with {prev_name!r} "
        f"({n_prev} outputs, output shape {prev_out[1:]}); {_SUPPORTED_TEXT}"
    )


def layers_from_state_dict(state_dict: Mapping[str, torch.Tensor], *, layerwise: bool = False) -> List[Layer]:
    """Infer the chain of layers from a bare state_dict: keys in order, shapes must chain.

    2-D ``*.weight`` tensors are Linear layers, 4-D ones Conv2d; 1-D weights (BatchNorm, LayerNorm)
    and biases are pass-through. A ``module.`` prefix (DataParallel) is stripped.

    Raises
    ------
    UnsupportedModelError
        No weight layer, keys that look like residual blocks (``layer1.0.conv1``, ``downsample``,
        ``shortcut``) or shapes that do not chain, unless ``layerwise=True``.
    """
    items = []
    for key, value in state_dict.items():
        if not (isinstance(value, torch.Tensor) and key.endswith("weight") and value.dim() in (2, 4)):
            continue
        name = key[: -len("weight")].rstrip(".")
        name = name[len("module."):] if name.startswith("module.") else name
        items.append((name or "weight", value.detach()))
    if not items:
        raise UnsupportedModelError(
            f"no Linear (2-D) or Conv2d (4-D) '*.weight' tensor in the state_dict; {_SUPPORTED_TEXT}"
        )
    if not layerwise:
        residual = [n for n, _ in items if _RESIDUAL_KEY.search(n + ".")]
        if residual:
            raise UnsupportedModelError(
                f"keys such as {residual[0]!r} look like residual blocks, which are not a chain; "
                "analyse layer by layer (layerwise=True, --layerwise)"
            )
    layers: List[Layer] = []
    for t, (name, w) in enumerate(items):
        kind = "linear" if w.dim() == 2 else "conv2d"
        in_groups = None
        if t > 0:
            prev_name, prev = items[t - 1]
            n_prev, n_in = prev.shape[0], w.shape[1]
            if prev.dim() == 4 and kind == "linear" and n_in % n_prev == 0:
                in_groups = n_prev
            elif n_in != n_prev or (kind == "conv2d" and prev.dim() == 2):
                if not layerwise:
                    raise UnsupportedModelError(
                        f"layer {name!r} ({n_in} inputs) does not chain with {prev_name!r} ({n_prev} outputs); "
                        "the state_dict is not a simple chain: load the model as an nn.Module, or analyse "
                        "layer by layer (layerwise=True, --layerwise)"
                    )
        layers.append(Layer(name, kind, w, in_groups=in_groups))
    return layers
