"""graphinterp: neural networks as layered graphs, for interpretability.

A model becomes a :class:`LayeredGraph` (neurons or channels as nodes, weights as edges);
:class:`BSGC` splits each layer into bipartite clusters; :func:`clusterability_report` measures
how much squared weight stays inside clusters; :class:`EnmeshmentLoss` trains models to be
modular; :mod:`graphinterp.interpret.ablate` and :mod:`graphinterp.interpret.circuits` evaluate the clusters.

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

#: The subpackages in the order data flows through them (DESIGN.md draws it): a module imports only
#: from its own subpackage or from one listed before it. tests/test_layering.py derives its rules from
#: this tuple and the folders, so this is the one place where the order is written down.
LAYERS = ("common", "data", "sources", "graph", "clustering", "training", "interpret", "reports")

_EXPORTS = {
    # common: errors, files, devices, floating point, seeds, parallel and distributed execution
    "ClusteringError": "common.errors", "KTooLargeError": "common.errors", "UnknownLayerError": "common.errors", "DataError": "common.errors", "GraphinterpError": "common.errors",
    "InvalidWeightsError": "common.errors", "Launch": "common.distributed", "ModelFileError": "common.errors",
    "OutputPathError": "common.files", "SCHEDULER_ENV": "common.parallel", "TrainingError": "common.errors",
    "UnsupportedModelError": "common.errors", "InputMismatchError": "common.errors", "atomic_write": "common.files",
    "check_device": "common.distributed", "check_writable": "common.files", "deterministic": "common.seeds",
    "flush_denormals": "common.denormal", "launch_from_env": "common.distributed",
    "process_group": "common.distributed", "resolve_device": "common.files", "summarize": "common.seeds",
    "layer_seed": "common.seeds",
    "MAX_RANGE_VALUES": "common.text",
    "format_table": "common.text",
    "parse_int_ranges": "common.text", "comma_parts": "common.text",
    "parse_k_values": "common.text",
    # data: datasets and tasks
    "DATASETS": "data.datasets", "LabeledTensors": "data.datasets", "NORMALIZATION": "data.datasets", "subset_indices": "data.datasets",
    "TASKS": "data.tasks",
    "load_corpus": "data.tasks", "load_dataset": "data.datasets", "default_corpus_path": "data.tasks", "default_data_dir": "data.datasets",
    # sources: models and model files
    "LoadedModel": "sources.loading", "Transformer": "sources.transformer", "transformer": "sources.transformer", "build_model": "sources.models",
    "cnn": "sources.models", "default_spec": "sources.models", "is_checkpoint": "sources.checkpoint",
    "load_model_file": "sources.loading", "mlp": "sources.models", "save_checkpoint": "sources.checkpoint",
    "torchvision_model": "sources.models", "validate_checkpoint": "sources.checkpoint",
    # graph: a model as a graph
    "Coverage": "graph.coverage", "Layer": "graph.layer", "LayeredGraph": "graph.layered",
    "ModelGraph": "graph.dag", "graph_structure": "graph.load", "layered_graph": "graph.layered", "unit_norm_rescaled": "graph.rescale", "RESCALED_NOTE": "graph.rescale",
    "model_graph": "graph.load", "open_model": "graph.load", "trace_graph": "graph.model_trace",
    # clustering: clustering and clusterability
    "BSGC": "clustering.bsgc", "Clustering": "clustering.labels", "analyze": "clustering.analysis",
    "blocks_from_clustering": "clustering.mlp_blocks", "cluster_dag": "clustering.dag_cluster",
    "cluster_layers": "clustering.cluster", "cluster_mlp_blocks": "clustering.mlp_blocks",
    "cluster_network": "clustering.cluster", "clusterability": "clustering.metrics",
    "clusterability_report": "clustering.metrics", "fit_batch": "clustering.bsgc_batch",
    "load_graph": "clustering.analysis", "random_partition_expectation": "clustering.metrics",
    "shuffle_test": "clustering.significance", "network_shuffle_test": "clustering.network_null",
    "multiple_tests_line": "clustering.shuffle_results",
    "network_measures": "clustering.network_null", "within_share": "clustering.metrics",
    "check_k": "clustering.validation",
    "UnitClusters": "clustering.modularity", "cluster_units": "clustering.modularity",
    "modularity": "clustering.modularity", "modularity_test": "clustering.modularity", "hidden_level_labels": "interpret.ablate",
    "live_sizes": "clustering.validation",
    "clusterable_layers": "clustering.validation",
    "require_clusterable": "clustering.validation", "nothing_clusterable": "clustering.validation", "nothing_clusterable_error": "clustering.validation",
    "stored_clustering": "clustering.labels",
    # training: training for modularity
    "EnmeshmentLoss": "training.loss", "GradientSimilarity": "training.gradsim",
    "SIMILARITIES": "training.train", "TrainConfig": "training.train", "TrainResult": "training.train",
    "TransformerConfig": "training.transformer_config", "default_cluster_layers": "training.masks",
    "layer_random": "training.baselines", "with_baseline": "training.baselines",
    "enmeshment_loss": "training.loss", "format_history": "training.train_config",
    "parameter_masks": "training.masks", "task_data": "training.train_transformer",
    "checkpoint_task_data": "training.train_transformer", "train": "training.train",
    "train_transformer": "training.train_transformer", "TrainingInterrupted": "training.interrupts",
    # interpret: interpretability: ablation and circuits
    "Circuit": "interpret.circuit_result", "grouped_layers": "interpret.circuit_graph", "CircuitComparison": "interpret.circuit_compare",
    "HeldOut": "interpret.circuit_result", "HELDOUT_MIN_GROUP": "interpret.circuit_heldout", "heldout_task": "interpret.label_tasks", "label_task": "interpret.label_tasks",
    "ASSOCIATION_KINDS": "interpret.association", "association_matrices": "interpret.association",
    "association_moments": "interpret.association", "association_graph": "clustering.modularity",
    "FunctionalModules": "interpret.functional_modules", "functional_modules": "interpret.functional_modules",
    "reinitialised": "interpret.functional_modules",
    "chance_note": "interpret.chance", "clearly_above": "interpret.chance",
    "Schedule": "interpret.circuit_settings", "Tolerance": "interpret.circuit_settings", "ablate": "interpret.hooks",
    "ablation_matrix": "interpret.ablate", "class_accuracy": "interpret.ablate",
    "cluster_share": "interpret.circuit_compare", "compare_circuits": "interpret.circuits",
    "extract_circuit": "interpret.circuit_extract", "extract_circuits": "interpret.circuits",
    "extract_transformer_circuits": "interpret.transformer_circuits", "interventions": "interpret.interventions",
    "load_runnable": "interpret.evaluation", "onoff_matrix": "interpret.transformer_eval",
    "run_with_ablation": "interpret.ablate", "specialisation": "interpret.transformer_eval",
    # reports: output, figures and benchmarks
    "ModelSource": "reports.model_sources", "export_graphml": "reports.io",
    "format_report": "reports.benchmark_report", "graph_with_fallback": "reports.model_sources",
    "plot_ablation": "reports.viz", "plot_association": "reports.viz_assoc", "plot_clusterability_vs_k": "reports.viz",
    "plot_clustered_layer": "reports.viz", "plot_ecs_comparison": "reports.viz", "plot_ecs_per_label": "reports.viz_eval",
    "run_benchmark": "reports.benchmarking", "SignificanceKError": "reports.benchmarking", "save_figure": "reports.viz", "write_graphml": "reports.io", "read_graphml": "reports.io",
    "write_json": "reports.io", "write_report": "reports.benchmark_report",
    "json_default": "reports.io", "json_text": "reports.io",
}

__all__ = sorted(_EXPORTS) + ["__version__", "LAYERS"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'graphinterp' has no attribute {name!r}")


def __dir__():
    return __all__
