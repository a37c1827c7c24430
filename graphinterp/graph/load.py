"""One entry point from any model source to its graph, used by every command and by the Python API.

A source is an ``nn.Module``; a state_dict; a file (graphinterp checkpoint, bare or wrapped
state_dict, TorchScript, ``.safetensors``, a pickled module with ``trust_pickle``); a HuggingFace
model folder (``config.json`` + weights, through the optional ``transformers`` extra); or a
torchvision architecture name, with a local ``weights`` file or random weights.

:func:`open_model` resolves the source; :func:`model_graph` builds the graph: traced from the module
when there is one (chained, or a :class:`~graphinterp.graph.dag.ModelGraph` for residual and attention
models), else read from the state_dict. The graph's ``coverage`` says what it covers.
"""
from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from graphinterp.common.errors import InvalidWeightsError, ModelFileError, UnsupportedModelError
from graphinterp.common.text import first_line
from graphinterp.graph.state_graph import CHAIN_GUESS_NOTE, CONV_LAYOUT_NOTE, NORMS_NOTE
from graphinterp.graph.layered import LayeredGraph

__all__ = ["OpenedModel", "open_model", "opened_from_loaded", "model_graph", "load_graph", "graph_structure"]

Source = Union[str, "os.PathLike[str]", nn.Module, Mapping[str, torch.Tensor]]


@dataclass
class OpenedModel:
    """A resolved model source.

    Attributes
    ----------
    name : str
    kind : str
        ``module``, ``checkpoint``, ``state_dict``, ``torchscript``, ``safetensors``, ``hf`` or ``torchvision``.
    module : nn.Module or None
        A runnable module when the source has an architecture.
    state_dict : dict
    loaded : LoadedModel or None
        The file's contents (history, stored clustering, meta) for model files.
    notes : list of str
    """

    name: str
    kind: str
    module: Optional[nn.Module]
    state_dict: Dict[str, torch.Tensor]
    loaded: Any = None
    notes: List[str] = field(default_factory=list)
    path: str = ""

    @property
    def clustering(self) -> Optional[dict]:
        """The clustering stored in a graphinterp checkpoint, else None."""
        return getattr(self.loaded, "clustering", None)

    @property
    def history(self) -> list:
        """The training history stored in a graphinterp checkpoint, else empty."""
        return list(getattr(self.loaded, "history", None) or [])


def opened_from_loaded(loaded) -> OpenedModel:
    """Wrap a :class:`~graphinterp.sources.loading.LoadedModel` (what a model file held)."""
    module = loaded.module if loaded.kind != "torchscript" else None
    notes = ["TorchScript cannot be traced: layers read from its parameters"] if loaded.kind == "torchscript" else []
    opened = OpenedModel(Path(loaded.path).stem if loaded.path else "model", loaded.kind, module, loaded.state_dict,
                         loaded, notes, loaded.path)
    return _with_known_architecture(opened) if loaded.kind == "state_dict" else opened


def _with_known_architecture(opened: OpenedModel) -> OpenedModel:
    """Give a bare state_dict its module when its keys and shapes are those of a known architecture.

    Known: the CIFAR ResNets of He et al. (:mod:`graphinterp.sources.cifar_resnet`). The module makes the
    graph a traced DAG (residual streams linked, BatchNorm folded) instead of unlinked layers.
    """
    from graphinterp.sources.cifar_resnet import recognise

    found = recognise(opened.state_dict)
    if found is not None:
        opened.module = found[0]
        opened.notes.append(f"architecture recognised from the state_dict's keys and shapes: {found[1]}")
    return opened


def _torchvision_names() -> List[str]:
    from torchvision import models

    return sorted(models.list_models(module=models)) if hasattr(models, "list_models") else []


def open_model(source: Source, *, weights: Optional[str] = None, trust_pickle: bool = False,
               random_state: Optional[int] = 0) -> OpenedModel:
    """Resolve ``source`` (see the module docstring) into an :class:`OpenedModel`.

    Parameters
    ----------
    source : str, os.PathLike, torch.nn.Module or mapping of str to torch.Tensor
        A module, a state_dict, a model file, a HuggingFace model folder or a torchvision architecture name.
    weights : str, optional
        A local weights file for a torchvision architecture name (not for a model file, which holds its own).
    trust_pickle : bool, default False
        Allow unpickling a file that holds a pickled module (can run arbitrary code).
    random_state : int or None, default 0
        Seed of the random initialisation of a torchvision architecture without ``weights`` (None: 0).

    Returns
    -------
    OpenedModel

    Raises
    ------
    ModelFileError
        A missing, unreadable or unsafe file; an HF folder without ``config.json``; a safetensors file
        with missing tensors; ``weights`` given with a model file or missing.
    UnsupportedModelError
        An unknown torchvision name.
    InvalidWeightsError
        ``weights`` that do not fit the torchvision architecture.

    Examples
    --------
    >>> from torch import nn
    >>> opened = open_model(nn.Sequential(nn.Linear(3, 2)))
    >>> opened.kind, list(opened.state_dict)
    ('module', ['0.weight', '0.bias'])
    """
    if isinstance(source, nn.Module):
        return OpenedModel(type(source).__name__, "module", source, _cpu_state(source))  # its train/eval mode untouched
    if isinstance(source, Mapping):
        return _with_known_architecture(OpenedModel("state_dict", "state_dict", None, dict(source)))
    path = Path(source).expanduser()
    if weights is not None and path.exists():
        raise ModelFileError(f"weights {weights} were given for the model file {source}, which holds its own: a weights "
                             "file goes with a torchvision architecture name (e.g. resnet18 --weights FILE)")
    if weights is not None or (not path.exists() and _looks_like_arch(str(source))):
        return _torchvision(str(source), weights, trust_pickle, random_state)
    if path.is_dir():
        return _hf_folder(path)
    if path.suffix == ".safetensors" and path.is_file():
        config = path.parent / "config.json"
        if config.is_file():
            return _hf_folder(path.parent, weights_file=path)
        state = _read_safetensors(path)
        order = sorted(state, key=natural_key)
        note = [] if order == list(state) else [SAFETENSORS_ORDER_NOTE]
        return OpenedModel(path.stem, "safetensors", None, {k: state[k] for k in order}, notes=note, path=str(path))
    from graphinterp.sources.loading import load_model_file

    return opened_from_loaded(load_model_file(path, trust_pickle=trust_pickle))


def _cpu_state(module: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in module.state_dict().items()}


def _looks_like_arch(name: str) -> bool:
    return os.sep not in name and "." not in name


def _torchvision(arch: str, weights: Optional[str], trust_pickle: bool, random_state: Optional[int]) -> OpenedModel:
    from graphinterp.sources.models import torchvision_model

    if arch not in _torchvision_names():
        near = [n for n in _torchvision_names() if n.startswith(arch[:4])][:5]
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise UnsupportedModelError(f"unknown torchvision model {arch!r} and no model file of that name{hint}; "
                                    "pass a model file, a HuggingFace folder, or a torchvision name such as resnet18")
    if weights is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0 if random_state is None else int(random_state))
            module = torchvision_model(arch)
        return OpenedModel(arch, "torchvision", module.eval(), _cpu_state(module),
                           notes=[f"random initialisation (torchvision default, seed {random_state})"])
    if not Path(weights).expanduser().is_file():
        raise ModelFileError(f"weights file not found: {weights}; check the path given to --weights")
    module = _fit_weights(arch, weights, trust_pickle)
    return OpenedModel(f"{arch}:{Path(weights).stem}", "torchvision", module, _cpu_state(module), path=weights)


def _fit_weights(arch: str, weights: str, trust_pickle: bool) -> torch.nn.Module:
    """Load a local weights file into a torchvision architecture; a clear error if they do not fit."""
    from graphinterp.sources.loading import load_model_file
    from graphinterp.sources.models import torchvision_model

    model = torchvision_model(arch)  # UnsupportedModelError for an unknown name, before reading the file
    state = load_model_file(weights, trust_pickle=trust_pickle).state_dict
    ours = model.state_dict()
    # the architecture's own last weight is its classifier (the file's key order is not the model's: safetensors
    # sorts its keys); one of another height means another number of classes
    head = [k for k, v in ours.items() if k.endswith("weight") and v.dim() >= 2][-1]
    if head in state and state[head].dim() >= 2 and state[head].shape[0] != ours[head].shape[0]:
        with contextlib.suppress(UnsupportedModelError):
            model, ours = _with_classes(arch, int(state[head].shape[0]))
    typed = [f"{k} ({str(state[k].dtype).replace('torch.', '')})" for k, v in ours.items()
             if k in state and v.is_floating_point() and not state[k].is_floating_point()]
    if typed:  # load_state_dict would cast them (bool to 0/1, complex to its real part) without a word
        raise InvalidWeightsError(f"{weights} holds {len(typed)} tensor(s) that are not floating point where torchvision "
                                  f"{arch!r} has floating-point ones (e.g. {typed[0]}); convert them (.float(), "
                                  "dequantize()) and save again")
    # BatchNorm's step counter is not a weight, and files saved without it load (torch fills it in)
    missing = [k for k in ours if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in ours]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in ours.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
                 f"{len(wrong)} of another shape (e.g. {wrong[0]})" if wrong else ""]
        raise InvalidWeightsError(
            f"{weights} does not fit torchvision {arch!r}: {', '.join(p for p in parts if p)} key(s); "
            f"give the architecture the weights were saved from, or the file itself as the MODEL")
    model.load_state_dict(state)
    return model.eval()


def _with_classes(arch: str, num_classes: int):
    from graphinterp.sources.models import torchvision_model

    model = torchvision_model(arch, num_classes=num_classes)
    return model, model.state_dict()


#: A .safetensors file keeps its tensors sorted by name, not in the order they were saved (the model's order).
SAFETENSORS_ORDER_NOTE = ("a .safetensors file keeps no layer order (its keys come back sorted as text: 0, 1, 10, 11, 2, "
                          "...); they are read with numbers as numbers (0, 1, 2, ..., 10), the order of nn.Sequential "
                          "and of numbered blocks")


def natural_key(key: str) -> list:
    """Sort key for state_dict names that orders their numbers as numbers: ``"2.weight"`` before ``"10.weight"``.

    Examples
    --------
    >>> sorted(["10.weight", "2.weight", "1.bias", "layers.11.fc", "layers.9.fc"], key=natural_key)
    ['1.bias', '2.weight', '10.weight', 'layers.9.fc', 'layers.11.fc']
    """
    parts = re.split(r"(\d+)", key)  # text, number, text, number, ...: the same type at the same position
    return [int(p) if i % 2 else p for i, p in enumerate(parts)]


def _read_safetensors(path: Path) -> Dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise ModelFileError(f"reading {path.name} needs the safetensors package: pip install 'graphinterp[hf]'") from exc
    try:
        return load_file(str(path))
    except Exception as exc:  # SafetensorError: header or data damaged
        raise ModelFileError(f"{path} is not a readable safetensors file ({first_line(exc)})") from exc


def _hf_folder(folder: Path, weights_file: Optional[Path] = None) -> OpenedModel:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelFileError(f"{folder} is a folder without config.json; pass a HuggingFace model folder "
                             "(config.json + model.safetensors) or a model file")
    try:
        import transformers
    except ImportError as exc:
        raise ModelFileError(f"reading the HuggingFace folder {folder} needs transformers: "
                             "pip install 'graphinterp[hf]'") from exc
    transformers.utils.logging.disable_progress_bar()  # our own report says what was loaded
    transformers.utils.logging.set_verbosity_error()  # its config lint came as raw "[transformers] ..." lines
    try:  # never the folder's own Python code (auto_map): transformers would otherwise ask on stdin and run it
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # OSError, ValueError (custom code refused), JSONDecodeError, KeyError, ...
        if "trust_remote_code" in str(exc) or "custom code" in str(exc):
            raise ModelFileError(f"{folder} needs its own Python code to be built (config.json's auto_map); graphinterp "
                                 "never runs a model folder's code: build the model in Python and pass the module "
                                 "(graphinterp.trace_graph(model))") from exc
        raise ModelFileError(f"{config_path} is not a usable HuggingFace config ({first_line(exc)})") from exc
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if isinstance(arch, str) else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        cls = None  # a pipeline, tokenizer or unknown name: the base model, noted below
    cls = cls or transformers.AutoModel
    if weights_file is not None and weights_file.name != "model.safetensors":
        raise ModelFileError(f"{weights_file} sits beside a config.json: pass the folder {folder} instead")
    if not weights_file and not any(folder.glob("*.safetensors")) and not (folder / "pytorch_model.bin").is_file():
        raise ModelFileError(f"{folder} has config.json but no weights (*.safetensors or pytorch_model.bin)")
    try:
        with torch.random.fork_rng(devices=[]):
            model, info = cls.from_pretrained(str(folder), local_files_only=True, output_loading_info=True,
                                              trust_remote_code=False,
                                              use_safetensors=True if any(folder.glob("*.safetensors")) else None)
    except Exception as exc:  # OSError, ValueError, RuntimeError, KeyError, UnpicklingError (a damaged .bin), ...
        raise ModelFileError(f"{folder}: the weights cannot be loaded ({first_line(exc)})") from exc
    tied = getattr(config, "tie_word_embeddings", False)
    missing = [k for k in info.get("missing_keys", []) if not (tied and "lm_head" in k)
               and not k.endswith(("position_ids", "masked_bias"))]
    mismatched = info.get("mismatched_keys", [])
    if missing or mismatched:
        bad = missing or [m[0] for m in mismatched]
        raise ModelFileError(f"{folder}: the weights lack {len(missing)} tensor(s) and have {len(mismatched)} of another "
                             f"shape that {type(model).__name__} needs (e.g. {bad[0]}); the file is incomplete or "
                             "for another architecture")
    unexpected = info.get("unexpected_keys", [])
    notes = [f"unexpected tensors ignored: {len(unexpected)} (e.g. {sorted(unexpected)[0]})"] if unexpected else []
    if cls is transformers.AutoModel:  # no head class: a task head (lm_head, classifier) is not in the graph
        what = (f"names {arch!r}, which is not a transformers model class" if arch else "names no architecture")
        notes.insert(0, f"config.json {what}: loaded the base model {type(model).__name__}, so a task head (lm_head, "
                        "a classifier) is not in the graph; add \"architectures\": [\"...ForCausalLM\"] (or the "
                        "right class) to config.json to include it")
    return OpenedModel(folder.name, "hf", model.eval(), _cpu_state(model), notes=notes, path=str(folder))


def model_graph(opened: OpenedModel, *, layerwise: bool = False, fold: bool = True,
                input_shape: Optional[Sequence[int]] = None) -> LayeredGraph:
    """The graph of an opened model: traced from its module, else read from its state_dict.

    ``input_shape`` is the example input a module is traced with; for a state_dict (no module) it
    has no use, and ``opened.notes`` says so rather than dropping it silently.

    Parameters
    ----------
    opened : OpenedModel
        From :func:`open_model`.
    layerwise : bool, default False
        Keep every weight layer as its own bipartite graph (unlinked).
    fold : bool, default True
        Fold normalisation scales into the weights (traced modules); when False, a state_dict's note that
        its normalisation could not be folded is dropped.
    input_shape : sequence of int, optional
        Input shape without the batch dimension, to guide the guess of the example input of a module.

    Returns
    -------
    LayeredGraph
        A :class:`LayeredGraph` or :class:`~graphinterp.graph.dag.ModelGraph`, with ``coverage``.
    """
    if opened.module is not None:
        return LayeredGraph.from_module(opened.module, layerwise=layerwise, fold=fold, input_shape=input_shape)
    graph = LayeredGraph.from_state_dict(opened.state_dict, layerwise=layerwise)
    unused = (f"input shape {tuple(input_shape)} not used: a file without an architecture is read from its tensors, "
              "nothing is traced") if input_shape is not None else None
    if unused and unused not in opened.notes:
        opened.notes.append(unused)
    if graph.chained and len(graph.layers) > 1:
        guesses = [CHAIN_GUESS_NOTE] + ([CONV_LAYOUT_NOTE] if any(l.kind != "linear" for l in graph.layers) else [])
        opened.notes.extend(note for note in guesses if note not in opened.notes)
    if graph.coverage is not None and not fold:  # nothing was asked to be folded: no note that it could not be
        graph.coverage.notes = {k: v for k, v in graph.coverage.notes.items() if not k.startswith(NORMS_NOTE)}
    return graph


def load_graph(source: Source, *, weights: Optional[str] = None, trust_pickle: bool = False,
               layerwise: bool = False, fold: bool = True, input_shape: Optional[Sequence[int]] = None,
               random_state: Optional[int] = 0, unit_norm: bool = False) -> Tuple[OpenedModel, LayeredGraph]:
    """:func:`open_model` then :func:`model_graph`; returns ``(opened, graph)``.

    With ``unit_norm`` the graph's weights are rescaled as Filan et al. rescale them
    (:func:`graphinterp.graph.rescale.unit_norm_rescaled`, a chain only: UnsupportedModelError otherwise)
    and ``opened.notes`` says so.

    Examples
    --------
    >>> opened, graph = load_graph("resnet18")
    >>> type(graph).__name__, graph.coverage.share
    ('ModelGraph', 1.0)
    """
    opened = open_model(source, weights=weights, trust_pickle=trust_pickle, random_state=random_state)
    graph = model_graph(opened, layerwise=layerwise, fold=fold, input_shape=input_shape)
    if graph.coverage is not None:
        graph.coverage.notes.update({n: 1 for n in opened.notes if n.startswith("TorchScript")})
    if unit_norm:
        from graphinterp.graph.rescale import rescaled_with_note

        graph, note = rescaled_with_note(graph, opened.module, fold=fold)
        opened.notes.append(note)
    return opened, graph


def graph_structure(graph: LayeredGraph) -> str:
    """``"chained"``, ``"dag"`` (a :class:`~graphinterp.graph.dag.ModelGraph`) or ``"layerwise"``.

    Parameters
    ----------
    graph : LayeredGraph
        Any graph built by graphinterp.

    Returns
    -------
    str
        ``"chained"`` when ``graph.chained``; ``"dag"`` for a graph with shared nodes; else ``"layerwise"``.
    """
    if graph.chained:
        return "chained"
    return "dag" if hasattr(graph, "src_nodes") else "layerwise"
