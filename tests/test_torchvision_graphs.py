"""torchvision architectures (random weights, built locally) as DAG graphs: coverage, connectivity, saved weights."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components

from graphinterp.clustering.analysis import analyze
from graphinterp.graph.load import graph_structure, load_graph

pytest.importorskip("torchvision")


def _components(graph) -> int:
    """Connected components of the graph's nodes that some layer touches, from the layers' non-zero edges."""
    rows, cols = [], []
    for layer in graph:
        src, dst = graph.src_nodes(layer.name), graph.dst_nodes(layer.name)
        mag = layer.magnitude()
        if layer.structure == "dense" and bool((mag > 0).all()):  # a star joins the same nodes as all edges
            rows.append(np.full(src.size + dst.size, src[0]))
            cols.append(np.concatenate([src, dst]))
            continue
        s, d = np.nonzero(mag.cpu().numpy())
        rows.append(src[s])
        cols.append(dst[d])
    r, c = np.concatenate(rows), np.concatenate(cols)
    touched = np.unique(np.concatenate([r, c]))
    index = np.full(graph.n_nodes, -1)
    index[touched] = np.arange(touched.size)
    A = sp.coo_matrix((np.ones(r.size), (index[r], index[c])), shape=(touched.size,) * 2)
    return connected_components(A, directed=False)[0]


def _small_vit():
    """torchvision's VisionTransformer (the vit_b_16 code) at a size that builds in milliseconds."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2", "densenet121", "convnext_tiny", "vit",
                                  "squeezenet1_1"])
def test_architecture_is_one_connected_dag_with_full_coverage(arch):
    opened, graph = load_graph(_small_vit() if arch == "vit" else arch)
    assert graph_structure(graph) == "dag"
    cov = graph.coverage
    assert cov.share >= 0.99, cov.summary_lines()
    # whatever is not in the graph is listed by module and size, and the sizes add up
    assert cov.covered + sum(m.numel for m in cov.missing) == cov.total
    assert _components(graph) == 1
    assert cov.folded or arch == "squeezenet1_1"  # every other one has a normalisation to fold


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_saved_weights_give_the_same_graph_and_scores(arch, tmp_path):
    opened, graph = load_graph(arch, random_state=3)
    path = tmp_path / f"{arch}.pth"
    torch.save(opened.module.state_dict(), path)
    again_opened, again = load_graph(arch, weights=str(path))
    assert again.layer_names == graph.layer_names
    for a, b in zip(graph, again):
        assert torch.equal(a.weight, b.weight), a.name
    names = [n for n in graph.layer_names if not graph[n].structure == "depthwise"][1:4]
    e1 = analyze(graph, [4], layers=names, random_state=0).reports[4]
    e2 = analyze(again, [4], layers=names, random_state=0).reports[4]
    np.testing.assert_allclose([s.E for s in e1.layers], [s.E for s in e2.layers], atol=1e-6)
