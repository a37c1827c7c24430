"""Evaluation helpers shared by ablation and circuit extraction: data as tensors, class-wise accuracy."""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from graphinterp.common.files import resolve_device
from graphinterp.common.inference import eval_mode, in_model_dtype, on_device, predictions  # noqa: F401  (re-exported)
from graphinterp.common.errors import DataError

__all__ = ["as_inputs", "as_tensors", "class_accuracy", "eval_mode", "load_runnable", "per_class", "predictions"]


def as_tensors(data: Any, model: Optional[nn.Module] = None) -> Tuple[torch.Tensor, torch.Tensor, Optional[List[str]]]:
    """``(x, y, class_names or None)`` from a ``LabeledTensors``, an ``(x, y)`` pair or a ``TensorDataset``.

    With ``model``, floating-point ``x`` comes in the dtype of its parameters (:func:`in_model_dtype`:
    float32 data for a float16, bfloat16 or float64 model).

    Raises
    ------
    DataError
        If ``data`` is of another type, ``x`` and ``y`` disagree in length, or it is empty.

    Examples
    --------
    >>> import torch
    >>> x, y, names = as_tensors((torch.zeros(3, 2), torch.tensor([0, 1, 1])))
    >>> x.shape, names
    (torch.Size([3, 2]), None)
    """
    classes = None
    if hasattr(data, "x") and hasattr(data, "y"):
        x, y, classes = data.x, data.y, list(getattr(data, "classes", None) or []) or None
    elif isinstance(data, torch.utils.data.TensorDataset) and len(data.tensors) >= 2:
        x, y = data.tensors[:2]
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
    else:
        raise DataError(f"expected a LabeledTensors, an (x, y) pair of tensors or a TensorDataset, got {type(data).__name__}")
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if y.dim() != 1 or len(x) != len(y):
        raise DataError(f"labels must be a 1-D tensor as long as the inputs, got x {tuple(x.shape)} and y {tuple(y.shape)}")
    if len(y) == 0:
        raise DataError("the dataset is empty; pass at least one labelled example")
    return (x if model is None else in_model_dtype(model, x)), y.long(), classes


def as_inputs(data: Any, model: Optional[nn.Module] = None) -> torch.Tensor:
    """The inputs ``x`` of ``data``: a tensor as it is, else the ``x`` of :func:`as_tensors` (labels not needed);
    with ``model``, in the dtype of its parameters (:func:`in_model_dtype`).

    Examples
    --------
    >>> as_inputs(torch.zeros(2, 3)).shape, as_inputs((torch.ones(4, 1), torch.zeros(4))).shape
    (torch.Size([2, 3]), torch.Size([4, 1]))
    """
    x = data if isinstance(data, torch.Tensor) else as_tensors(data)[0]
    return x if model is None else in_model_dtype(model, x)


def class_accuracy(model: nn.Module, data: Any, *, batch_size: int = 1024, device=None,
                   num_classes: Optional[int] = None) -> np.ndarray:
    """Accuracy on each class's examples, batched on ``device`` (the model runs there and is moved back afterwards).

    Parameters
    ----------
    model : nn.Module
        Returns one score per class on its last dimension; the prediction is the argmax.
    data : LabeledTensors, (x, y) or TensorDataset
    batch_size : int
    device : str or torch.device, optional
        Where the model runs (``"auto"``: CUDA when available); default: where its parameters are.
    num_classes : int, optional
        Length of the result: the larger of this and ``max(y) + 1`` (the default is ``max(y) + 1``, so
        output classes above the largest label in ``y`` are not listed; pass the model's number of
        outputs to get one entry per output).

    Returns
    -------
    ndarray of shape (max(num_classes, max(y) + 1),)
        ``NaN`` for a class without examples.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Linear(2, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.eye(2))
    >>> x, y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 1, 1])
    >>> class_accuracy(model, (x, y), device="cpu").tolist()
    [1.0, 0.5]
    """
    x, y, _ = as_tensors(data, model)
    device = resolve_device(device)
    with on_device(model, device):
        pred = predictions(model, x, batch_size, device)
    return per_class(pred, y, num_classes)


def per_class(pred: torch.Tensor, y: torch.Tensor, num_classes: Optional[int]) -> np.ndarray:
    c = max(int(num_classes or 0), int(y.max()) + 1)
    total = torch.bincount(y, minlength=c).double()
    hits = torch.bincount(y[pred == y], minlength=c).double()
    with np.errstate(invalid="ignore", divide="ignore"):
        return (hits / total).numpy()




def load_runnable(path, *, trust_pickle: bool = False, input_shape=None):
    """Load a model file as a runnable ``nn.Module`` and trace its layered graph.

    Returns ``(LoadedModel, module, LayeredGraph)``. Ablation and circuit extraction run the model,
    so the file must hold its architecture: a graphinterp checkpoint (with ``arch``) or, with
    ``trust_pickle``, a pickled module. A model with float16, bfloat16 or float64 weights is
    converted to float32, the data's precision, and ``loaded.meta["cast_note"]`` says so.

    Parameters
    ----------
    path : str or os.PathLike
        The model file.
    trust_pickle : bool, default False
        Allow unpickling a file that holds a pickled module (can run arbitrary code).
    input_shape : sequence of int, optional
        Input shape without the batch dimension, to trace the model with (e.g. the dataset's).

    Returns
    -------
    loaded : LoadedModel
        What the file held (state_dict, arch, stored clustering, history).
    module : nn.Module
        The runnable model (``loaded.module``).
    graph : LayeredGraph
        Its traced graph.

    Raises
    ------
    ModelFileError
        A bare state_dict or a TorchScript archive (which cannot be hooked).
    DataError
        The model does not accept inputs of ``input_shape``.
    """
    from graphinterp.common.errors import ModelFileError, UnsupportedModelError
    from graphinterp.graph.layered import LayeredGraph
    from graphinterp.sources.loading import load_model_file

    loaded = load_model_file(path, trust_pickle=trust_pickle)
    if loaded.kind == "torchscript":
        raise ModelFileError(f"{path} is TorchScript, which cannot be hooked or re-parametrised; save the model as a "
                             "graphinterp checkpoint (graphinterp.sources.checkpoint.save_checkpoint with arch=...)")
    if loaded.module is None:
        raise ModelFileError(f"{path} holds weights without an architecture, so the model cannot be run; save it with "
                             "graphinterp.sources.checkpoint.save_checkpoint(path, model, arch=spec) or train it with graphinterp train")
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in list(loaded.module.parameters()) +
                     list(loaded.module.buffers()) if t.is_floating_point() and t.dtype != torch.float32})
    if dtypes:  # the data is float32: a half / bfloat16 / float64 model is run in float32 (and says so)
        loaded.module.float()
        loaded.meta["cast_note"] = (f"{path} holds {', '.join(dtypes)} weights; it is evaluated in float32, as the "
                                    "data is (the results can differ from the model's own precision in rounding)")
    try:
        graph = LayeredGraph.from_module(loaded.module, input_shape=input_shape)
    except UnsupportedModelError as err:
        if input_shape is not None and "forward pass" in str(err):
            raise DataError(f"{path} does not accept inputs of shape {tuple(input_shape)}; pass the dataset it was "
                            "trained on") from err
        raise
    return loaded, loaded.module, graph
