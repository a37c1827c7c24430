"""graphinterp: neural networks as layered graphs, for interpretability.

A model becomes a :class:`LayeredGraph` (neurons or channels as nodes, weights as edges);
:class:`BSGC` splits each layer into bipartite clusters; :func:`clusterability_report` measures
how much squared weight stays inside clusters; :class:`EnmeshmentLoss` trains models to be
modular; :mod:`graphinterp.ablate` and :mod:`graphinterp.circuits` evaluate the clusters.

Names are imported lazily (PEP 562), so ``import graphinterp`` stays cheap and has no side effects.

Examples
--------
>>> import graphinterp as gi
>>> from torch import nn
>>> g = gi.LayeredGraph.from_module(nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4)))
>>> report = gi.clusterability_report(g, gi.cluster_layers(g, 2, random_state=0))
>>> 0.0 <= report.E <= 1.0
True
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # errors
    "GraphinterpError": "errors", "ModelFileError": "errors", "UnsupportedModelError": "errors",
    "InvalidWeightsError": "errors", "ClusteringError": "errors", "DataError": "errors", "TrainingError": "errors",
    # models, data, files
    "mlp": "models", "cnn": "models", "build_model": "models", "default_spec": "models",
    "torchvision_model": "models",
    "load_dataset": "data", "LabeledTensors": "data",
    "save_checkpoint": "checkpoint", "load_model_file": "loading", "LoadedModel": "loading",
    # graph
    "Layer": "layer", "LayeredGraph": "graph", "layered_graph": "graph",
    # clustering and metrics
    "BSGC": "bsgc", "Clustering": "cluster", "cluster_layers": "cluster", "cluster_network": "cluster",
    "within_share": "metrics", "clusterability": "metrics", "clusterability_report": "metrics",
    "random_partition_expectation": "metrics",
    "analyze": "analysis", "load_graph": "analysis",
    "shuffle_test": "significance",
    # training
    "parameter_masks": "masks", "default_cluster_layers": "masks",
    "EnmeshmentLoss": "loss", "enmeshment_loss": "loss",
    "GradientSimilarity": "gradsim",
    "TrainConfig": "train", "TrainResult": "train",
    # evaluation
    "ablation_matrix": "ablate", "class_accuracy": "ablate", "run_with_ablation": "ablate",
    "extract_circuit": "circuits", "extract_circuits": "circuits", "compare_circuits": "circuits",
    # output
    "export_graphml": "io", "write_graphml": "io",
    # files, devices and floating point (public home of the helpers in _files / _denormal)
    "atomic_write": "_files", "check_writable": "_files", "OutputPathError": "_files",
    "resolve_device": "_files", "flush_denormals": "_denormal",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'graphinterp' has no attribute {name!r}")


def __dir__():
    return __all__
