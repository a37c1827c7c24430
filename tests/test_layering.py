"""Imports inside graphinterp point one way (DESIGN.md): no module imports a later layer."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "graphinterp"
LAYER = {
    "errors": 0, "_files": 0, "_denormal": 0, "parallel": 0,
    "models": 1, "data": 1, "data_readers": 1, "checkpoint": 1, "loading": 1,
    "coverage": 1, "cifar_resnet": 1, "transformer": 1, "tasks": 1,
    "layer": 2, "graph": 2, "trace": 2, "trace_rules": 2, "state_graph": 2, "dag": 2, "model_trace": 2,
    "sources": 2, "dag_cluster": 3,
    "bsgc": 3, "kmeans_batch": 3, "cluster": 3, "metrics": 3, "mlp_blocks": 3,
    "analysis": 4, "masks": 4, "loss": 4, "gradsim": 4, "significance": 4,
    "evaluation": 4, "hooks": 4, "pruning": 4, "block_ablation": 4,
    "train": 5, "train_transformer": 5, "transformer_config": 5, "transformer_eval": 5, "train_config": 5, "train_state": 5, "ablate": 5, "circuits": 5, "circuit_search": 5, "circuit_eval": 5,
    "circuit_batch": 5, "seeds": 0,
    "io": 6, "viz": 6, "viz_eval": 6, "viz_layer": 6, "benchmark_report": 6, "benchmarking": 6,
}


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                yield node.module.split(".")[0]
            elif node.module and node.module.startswith("graphinterp."):
                yield node.module.split(".")[1]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("graphinterp."):
                    yield alias.name.split(".")[1]


@pytest.mark.parametrize("path", sorted(PKG.glob("*.py")), ids=lambda p: p.name)
def test_imports_point_one_way(path):
    name = path.stem
    if name == "__init__":
        return
    mine = LAYER.get(name)
    assert mine is not None, f"{name}.py is not placed in the layer table of DESIGN.md/test_layering.py"
    for dep in _imports(path):
        if dep == "cli":
            pytest.fail(f"{name} imports the CLI")
        if dep in LAYER:
            assert LAYER[dep] <= mine, f"{name} (layer {mine}) imports {dep} (layer {LAYER[dep]})"
