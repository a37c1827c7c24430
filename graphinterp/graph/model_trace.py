"""Trace an ``nn.Module`` into its graph: run one example forward pass under a :class:`ChannelTracer`.

:func:`trace_graph` guesses an example input when none is given (the first layer's width for an
MLP, small images for a CNN, 224 x 224 for a ViT, a few token ids for a language model), runs the
model once in eval mode, and returns a chained :class:`~graphinterp.graph.layered.LayeredGraph` for a
chain or a :class:`~graphinterp.graph.dag.ModelGraph` otherwise, with its :class:`Coverage`.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from graphinterp.common.inference import eval_mode
from graphinterp.graph.coverage import Coverage, MissingModule
from graphinterp.graph.dag import graph_from_calls
from graphinterp.common.errors import InputMismatchError, UnsupportedModelError
from graphinterp.graph.layered import LayeredGraph
from graphinterp.graph.trace import SAME_SPACE_MIX, ChannelTracer
from graphinterp.graph.trace_folds import NUMBER
from graphinterp.graph.trace_ops import layer_name

__all__ = ["trace_graph", "example_inputs"]

_SPATIAL_GUESSES = (32, 64, 224, 28, 8, 16, 96, 299)
_WEIGHT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def example_inputs(model: nn.Module, input_shape: Optional[Sequence[int]] = None):
    """Yield candidate example inputs ``(args, kwargs, channel_dim)`` for one forward pass."""
    param = next(iter(model.parameters()), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    gen = torch.Generator().manual_seed(0)  # a local generator: tracing never consumes the global RNG
    first = next((m for m in model.modules() if isinstance(m, _WEIGHT_TYPES + (nn.Embedding,))), None)
    config = getattr(model, "config", None)
    # a token model: an HF model whose main input is input_ids (not BEiT's pixels, Wav2Vec2's audio), or a
    # module whose first weight module is an Embedding
    if config is not None:
        tokens = hasattr(config, "vocab_size") and getattr(model, "main_input_name", "input_ids") == "input_ids"
    else:
        tokens = isinstance(first, nn.Embedding)
    if input_shape is not None and tokens:  # a sequence of token ids first, then (a module) floats of that shape
        vocab = int(getattr(config, "vocab_size", None) or first.num_embeddings)
        ids = torch.randint(0, vocab, (1, *(int(s) for s in input_shape)), generator=gen).to(device)
        yield ((ids,) if config is None else ()), (_token_kwargs(config, ids) if config is not None else {}), None
        if config is not None:
            return
    if input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
        dim = 1 if len(shape) >= 2 and isinstance(first, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) else -1
        if _flattened(model, shape):
            dim = "all"  # an MLP on images: one input node per pixel, flattened before the first Linear
        yield (torch.randn(1, *shape, generator=gen, dtype=dtype).to(device),), {}, dim
        return
    if tokens:
        vocab = int(getattr(config, "vocab_size", None) or first.num_embeddings)
        limits = [getattr(config, a, None) for a in ("n_positions", "max_position_embeddings", "n_ctx")]
        length = min([8] + [int(v) for v in limits if isinstance(v, int) and v > 0])  # within the position table
        ids = torch.randint(0, vocab, (1, length), generator=gen).to(device)
        kwargs = _token_kwargs(config, ids) if config is not None else {}
        yield ((ids,) if config is None else ()), kwargs, None
        return
    if isinstance(first, nn.Linear):
        yield (torch.randn(2, first.in_features, generator=gen, dtype=dtype).to(device),), {}, -1
        return
    if isinstance(first, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        nd = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[type(first)]
        for size in _SPATIAL_GUESSES:
            x = torch.randn(1, first.in_channels, *([size] * nd), generator=gen, dtype=dtype).to(device)
            yield (x,), {}, 1


def _token_kwargs(config, ids: torch.Tensor) -> dict:
    """An HF token model's inputs: ``input_ids``, and for an encoder-decoder (T5, BART) the same ids as
    ``decoder_input_ids`` (the decoder reads the encoder's output through its cross-attention)."""
    kwargs = {"input_ids": ids}
    if getattr(config, "is_encoder_decoder", False):
        kwargs["decoder_input_ids"] = ids
    return kwargs


def trace_graph(model: nn.Module, *, example: Any = None, input_shape: Optional[Sequence[int]] = None,
                fold: bool = True) -> LayeredGraph:
    """Trace ``model`` and return its graph (chained when it is a chain, else a ``ModelGraph``).

    Parameters
    ----------
    model : nn.Module
    example : tensor or tuple or dict, optional
        One example input (positional args, or keyword args for a HuggingFace model). Guessed
        when omitted; pass ``input_shape`` (without the batch dimension) to guide the guess.
    input_shape : sequence of int, optional
    fold : bool, default True
        Fold normalisation into the weights (BatchNorm scale and layer_scale into the layer before,
        LayerNorm / RMSNorm gains into the layers after). ``graph.coverage.folded`` lists what was.

    Returns
    -------
    LayeredGraph or ModelGraph
        With ``.coverage`` (share of weights covered, what is missing, folded or approximated).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> class Block(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc1, self.fc2 = nn.Linear(6, 12), nn.Linear(12, 6)
    ...     def forward(self, x):
    ...         return x + self.fc2(torch.relu(self.fc1(x)))
    >>> model = nn.Sequential(nn.Linear(4, 6), Block(), nn.Linear(6, 3))
    >>> g = trace_graph(model)
    >>> type(g).__name__, g.layer_names, g.n_nodes
    ('ModelGraph', ['0', '1.fc1', '1.fc2', '2'], 25)
    >>> bool((g.src_nodes('1.fc1') == g.dst_nodes('1.fc2')).all())  # the block reads and writes one stream
    True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    candidates = [_as_call(example, model)] if example is not None else list(example_inputs(model, input_shape))
    if not candidates:
        recurrent = sorted({type(m).__name__ for m in model.modules() if isinstance(m, nn.RNNBase)})
        if recurrent:
            raise UnsupportedModelError(f"{type(model).__name__}: recurrent layers ({', '.join(recurrent)}) are not "
                                        "supported as graph edges")
        raise UnsupportedModelError(
            f"{type(model).__name__} has no Linear, Conv or Embedding module to guess an input from; give the "
            "input's shape (input_shape=...; --input-shape where a command has it) or, in Python, example=(one batch)"
        )
    last_error: Optional[BaseException] = None
    with eval_mode(model):
        for args, kwargs, dim in candidates:
            tracer = ChannelTracer(model, fold=fold)
            try:
                with torch.enable_grad(), tracer:
                    for t in list(args) + list(kwargs.values()):
                        if isinstance(t, torch.Tensor) and t.is_floating_point() and dim == "all":
                            ids = tracer.new_space("input", t[0].numel()).view(t.shape[1:])
                            tracer._set(t, ids.expand(t.shape))
                        elif isinstance(t, torch.Tensor) and t.is_floating_point() and dim is not None:
                            tracer.tag(t, tracer.new_space("input", t.shape[dim]), dim)
                    tracer.returned(model(*args, **kwargs))
            except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as err:
                last_error = err
                continue
            coverage = _coverage(model, tracer)
            graph = graph_from_calls(tracer, model, coverage)
            graph.coverage = coverage
            return graph
    detail = str(last_error).strip().splitlines()[0][:160] if last_error else ""
    what = ("the example input" if example is not None else
            f"an input of the given shape {tuple(input_shape)}" if input_shape is not None else "a guessed example input")
    if isinstance(last_error, TypeError) and "required positional argument" in detail:
        advice = ("its forward takes more than one input, which no input shape supplies; in Python pass them all "
                  "as example=(x, ...)")
    else:
        advice = ("check that the model and the input (or the dataset) belong together, or give the input's shape "
                  "(input_shape=(C, H, W); --input-shape where a command has it)")
    raise InputMismatchError(f"could not run {type(model).__name__} on {what} ({type(last_error).__name__}: {detail}); "
                             + advice, detail=f"{type(last_error).__name__}: {detail}")


def _prod(shape) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def _as_call(example: Any, model: Optional[nn.Module] = None):
    if isinstance(example, dict):
        return (), dict(example), _guess_dim(next(iter(example.values()), None), model)
    args = example if isinstance(example, tuple) else (example,)
    return args, {}, _guess_dim(args[0] if args else None, model)


_CONV_DIMS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}


def _overlap(a, b) -> bool:
    """Whether two row ranges of one parameter (None: all rows) share a row."""
    return a is None or b is None or (a[0] < b[1] and b[0] < a[1])


def _guess_dim(t: Any, model: Optional[nn.Module] = None):
    """The channel dimension of an example input: 1 for a batch of images, 0 for one image without its batch
    dimension (a Conv2d model given (C, H, W)), the last for features; ``"all"`` (one node per element) for
    an MLP on images, whose first Linear reads the flattened input, as :func:`example_inputs` decides."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        return None
    first = next((m for m in model.modules() if isinstance(m, _WEIGHT_TYPES)), None) if model is not None else None
    if type(first) in _CONV_DIMS:
        return 0 if t.dim() == _CONV_DIMS[type(first)] + 1 else 1
    if t.dim() > 2 and _flattened(model, t.shape[1:]):
        return "all"
    if isinstance(first, nn.Linear) and t.dim() > 2 and t.shape[-1] == first.in_features:
        return -1  # a Linear reading the last dimension (channels last, tokens)
    return 1 if t.dim() >= 4 else -1


def _flattened(model: Optional[nn.Module], shape) -> bool:
    """Whether the model's first weight reads its input (``shape``, without the batch) flattened: its first
    Linear, or its first 2-D parameter (a raw weight applied with ``F.linear`` or ``@``), has ``prod(shape)``
    inputs and the input's last dimension is not that size. Such an input gets one node per element."""
    n, last = _prod(shape), int(shape[-1])
    if model is None or len(shape) < 2 or n == last:
        return False
    first = next((m for m in model.modules() if isinstance(m, _WEIGHT_TYPES)), None)
    if isinstance(first, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) or (isinstance(first, nn.Linear)
                                                                 and first.in_features == last):
        return False  # a conv, or a Linear reading the last dimension (tokens, time steps, channels last)
    if isinstance(first, nn.Linear) and first.in_features == n:
        return True
    # a raw weight: one of its sizes is the flattened input's, none the last dimension's (x @ W reads the last)
    p = next((p for p in model.parameters() if p.dim() == 2), None)
    return (p is not None and n in tuple(p.shape) and last not in tuple(p.shape)
            and not (isinstance(first, nn.Linear) and p is first.weight))


def _coverage(model: nn.Module, tracer: ChannelTracer) -> Coverage:
    covered_params = {c.param for c in tracer.calls}
    owners: Dict[str, str] = {}
    for mod_name, mod in model.named_modules():
        for p_name, _ in mod.named_parameters(recurse=False):
            owners[f"{mod_name}.{p_name}" if mod_name else p_name] = type(mod).__name__
    # a Linear(n, 1) or Conv2d(1, c, 1) weight is a weight matrix too, whatever its shape
    weights_of_layers = {name for name, _ in model.named_parameters(remove_duplicate=False)
                         if name.rpartition(".")[2] == "weight" and isinstance(_owner(model, name), _LAYER_TYPES)}
    weights_of_layers |= covered_params
    total = covered = 0
    missing = []
    seen = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen or (sum(d > 1 for d in p.shape) < 2 and name not in weights_of_layers) or (
                name not in weights_of_layers and isinstance(_owner(model, name), _NORM_TYPES)):
            continue  # vectors (biases, norm gains, layer_scale, class tokens) are not weight matrices
        seen.add(id(p))
        first = tracer.param_names.get(id(p), name)
        total += p.numel()
        if first in covered_params:
            covered += p.numel()
            continue
        mtype = owners.get(name, "tensor")
        if name.endswith("_orig") and _has_buffer(model, name[:-5] + "_mask"):
            reason = (f"pruned with torch.nn.utils.prune: the forward uses {name[:-5]} = {name} * its mask, a tensor "
                      f"the graph cannot bind to a parameter; call torch.nn.utils.prune.remove(module, "
                      f"'{name.rpartition('.')[2][:-5]}') first to make the pruned weight the parameter")
        elif ".parametrizations." in name:
            module = name.partition(".parametrizations.")[0]
            what = name.partition(".parametrizations.")[2].partition(".")[0]
            reason = (f"parametrized with torch.nn.utils.parametrize (weight_norm, spectral_norm, ...): the forward "
                      f"computes {module}.{what} from this tensor, which the graph cannot bind to a parameter; call "
                      f"torch.nn.utils.parametrize.remove_parametrizations({module or 'model'}, '{what}') first")
        elif mtype.startswith("ConvTranspose"):
            reason = "transposed convolutions are not supported as graph edges (the graph is cut there)"
        elif first in tracer.position_mixing:
            reason = ("mixes positions, not nodes (a Linear over a transposed tensor: MLP-Mixer token mixing): like "
                      "attention, each node's values move between positions; its output keeps its input's nodes")
        elif first in tracer.embeddings:
            reason = "embedding (token or position; a lookup, not a bipartite layer); its output dimensions are graph nodes"
        elif mtype in ("LSTM", "GRU", "RNN"):
            reason = "recurrent layers are not supported as graph edges"
        else:
            reason = ("not read as a layer's weight in the traced forward pass (by a Linear, a convolution, F.linear "
                      "or x @ W.T): unused, or used in an operation the graph does not follow (e.g. W @ x, the weight "
                      "on the left)")
        missing.append(MissingModule(name, mtype, p.numel(), reason))
    # "bn1 (BatchNorm scale)" -> bn1; a number's tag ("2 (number in the code)") names no module
    folded_sources = {f.rpartition(" (")[0] for c in tracer.calls for f in c.folded if not f.endswith(f"({NUMBER})")}
    unfolded = {k: v for k, v in tracer.unfolded.items() if k not in folded_sources}
    folded = [f"{c.name}: {f}" for c in tracer.calls for f in c.folded]
    # tied weights (GPT-2's lm_head, b.weight = a.weight: a parameter under several names) and a module applied
    # more than once ("a", "a#2"): one tensor, several layers; listed: the layers not named after its first owner
    tied = {}
    for i, c in enumerate(tracer.calls):
        if c.param in tracer.aliased:  # a parameter under several names: tied unless applied by its first owner
            if re.sub(r"\[[qkv]\]", "", c.name) != layer_name(c.param):
                tied[c.name] = c.param
        elif any(e.param == c.param and _overlap(e.rows, c.rows) for e in tracer.calls[:i]):
            tied[c.name] = c.param  # applied again (a module called twice), whole or in rows already applied
    notes = dict(tracer.notes)
    if SAME_SPACE_MIX in notes:  # where: the spaces (layers' outputs) whose nodes were mixed
        where = list(tracer.mixed_spaces)
        count = notes.pop(SAME_SPACE_MIX)
        notes[f"{SAME_SPACE_MIX}, in {len(where)} node space(s): {', '.join(where[:4])}"
              f"{', ...' if len(where) > 4 else ''}; the mix is not in the graph (nodes of one space are never merged)"] = count
    if tracer.fresh_inputs:
        names = list(tracer.fresh_inputs)
        notes[f"{len(names)} layer(s) read inputs not traced back to the model's input or an earlier layer, so they "
              f"start from fresh input nodes: {', '.join(names[:4])}{', ...' if len(names) > 4 else ''}; unless that "
              "input is a learned constant (a latent array, query embeddings), the graph is cut before them"] = 1
    return Coverage(total, covered, missing, folded, unfolded, notes, tied)


_LAYER_TYPES = _WEIGHT_TYPES + (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Bilinear)
#: Normalisations: their gains and biases are per-feature scales and shifts (folded or listed as not folded),
#: never weight matrices, whatever their shape (LayerNorm([C, H, W]) has a (C, H, W) gain).
_NORM_TYPES = tuple(t for t in (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, getattr(nn, "RMSNorm", None))
                    if t is not None)


def _owner(model: nn.Module, name: str) -> Optional[nn.Module]:
    try:
        return model.get_submodule(name.rpartition(".")[0])
    except AttributeError:
        return None


def _has_buffer(model: nn.Module, name: str) -> bool:
    try:
        model.get_buffer(name)
    except AttributeError:
        return False
    return True
