"""Readers of the model sources that are not a model file: torchvision names, .safetensors files, HF folders.

Each returns an :class:`~graphinterp.graph.opened.OpenedModel` for :func:`graphinterp.graph.load.open_model`:
a torchvision architecture with random or local weights (``_torchvision``; ``_fit_weights`` loads a weights
file into it, with a clear error when they do not fit), the tensors of a ``.safetensors`` file in
:func:`natural_key` order (``_read_safetensors``), and a HuggingFace model folder through the optional
``transformers`` extra, never running the folder's own code (``_hf_folder``).
"""
from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Dict, List, Optional

import torch

from graphinterp.common.errors import InvalidWeightsError, ModelFileError, UnsupportedModelError
from graphinterp.common.text import first_line
from graphinterp.graph.opened import OpenedModel, _cpu_state

__all__ = ["SAFETENSORS_ORDER_NOTE", "natural_key"]


def _torchvision_names() -> List[str]:
    from torchvision import models

    return sorted(models.list_models(module=models)) if hasattr(models, "list_models") else []

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
