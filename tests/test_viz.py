"""Tests of graphinterp.reports.viz: headless rendering, file output, planted structure and input validation."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graphinterp.reports import viz

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _check_png(path: Path, fig) -> np.ndarray:
    """The PNG exists, has figsize * 150 pixels and is not blank; return its pixels."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == tuple(int(round(v * 150)) for v in fig.get_size_inches())
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.std() > 5, "the image is blank"
    return pixels


def _suptitle(fig) -> str:
    return fig.get_suptitle() if hasattr(fig, "get_suptitle") else fig._suptitle.get_text()  # matplotlib < 3.8


def _lines(ax):
    from matplotlib.collections import LineCollection

    (lines,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    return lines


def _planted(seed=0, n_in=200, n_out=300, k=4):
    """A block-diagonal layer (rows/columns shuffled) and its true labels."""
    rng = np.random.default_rng(seed)
    rows, cols = rng.permutation(np.arange(n_in) % k), rng.permutation(np.arange(n_out) % k)
    w = (rows[:, None] == cols[None, :]) * rng.normal(0, 1, (n_in, n_out))
    return w, rows, cols


# --- rendering -----------------------------------------------------------------------------------------------

def test_clusterability_png_and_svg(tmp_path):
    curves = {"unclustered": {2: 0.6, 3: 0.45, 4: 0.38}, "modular": {2: 0.99, 3: 0.98, 4: 0.99}}
    baselines = {name: {k: 1 / k for k in (2, 3, 4)} for name in curves}
    fig = viz.plot_clusterability_vs_k(curves, baselines=baselines, out=tmp_path / "e.png")
    _check_png(tmp_path / "e.png", fig)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["unclustered", "modular",
                                                                   "random partition (dashed, hollow)"]
    assert list(ax.get_xticks()) == [2, 3, 4] and ax.get_ylim()[0] == 0
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert [line.get_color() for line in dashed] == [line.get_color() for line in ax.get_lines()[::2]]
    viz.plot_clusterability_vs_k(curves, out=tmp_path / "e.svg")
    assert b"<svg" in (tmp_path / "e.svg").read_bytes()[:2000]


def test_a_baseline_at_a_single_k_is_drawn():
    """A one-point dashed line is invisible: at a single --k the chance level the legend promises was not drawn."""
    fig = viz.plot_clusterability_vs_k({"m": {4: 0.53}}, baselines={"m": {4: 0.27}})
    base = [line for line in fig.axes[0].get_lines() if line.get_linestyle() == "--"]
    assert len(base) == 1 and list(base[0].get_ydata()) == [0.27] and base[0].get_marker() not in (None, "", "None")


def test_ablation_heatmaps_with_full_row(tmp_path):
    rng = np.random.default_rng(0)
    on, off, full = rng.uniform(size=(4, 10)), rng.uniform(size=(4, 10)), rng.uniform(0.9, 1, 10)
    fig = viz.plot_ablation(on, off, full=full, class_names=CLASSES, out=tmp_path / "a.png")
    _check_png(tmp_path / "a.png", fig)
    top, bottom = fig.axes[:2]
    np.testing.assert_allclose(top.images[0].get_array(), np.vstack([full, on]))
    np.testing.assert_allclose(bottom.images[0].get_array(), np.vstack([full, off]))
    assert [t.get_text() for t in top.get_yticklabels()] == ["all clusters"] + [f"cluster {i}" for i in range(4)]
    assert [t.get_text() for t in bottom.get_xticklabels()] == CLASSES
    texts = [t for t in top.texts]
    assert len(texts) == 50 and texts[0].get_text() == f"{full[0]:.2f}"
    # readable annotations: dark text on bright (high) cells, white text on dark (low) cells
    assert all((t.get_color() == "black") == (float(t.get_text()) >= 0.5) for t in texts)


def test_ablation_skips_annotations_when_cells_are_tiny():
    fig = viz.plot_ablation(np.full((3, 100), 0.5), np.full((3, 100), 0.5))
    assert not fig.axes[0].texts


def test_ecs_comparison(tmp_path):
    a, b = np.array([0.4, 0.5, 0.2]), np.array([0.1, 0.3, 0.2])
    fig = viz.plot_ecs_comparison(a, b, labels=["cat", "dog", "ship"], out=tmp_path / "c.png")
    _check_png(tmp_path / "c.png", fig)
    ax = fig.axes[0]
    assert "mean relative change unclustered \u2192 modular: -38.3%" in ax.get_title()
    assert [t.get_text() for t in ax.texts if t.get_text()] == ["-75.0%", "-40.0%", "+0.0%"]
    arrows = [t.arrow_patch for t in ax.texts if t.arrow_patch is not None]  # wider for a larger |b - a|
    assert arrows[0].get_linewidth() > arrows[1].get_linewidth() > arrows[2].get_linewidth()


def test_ecs_zero_baseline_is_not_a_number():
    fig = viz.plot_ecs_comparison([0.0, 0.5], [0.1, 0.25])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts if t.get_text()] == ["n/a", "-50.0%"]
    assert ax.get_title().endswith("-50.0%")


def test_clustered_layer_planted_blocks(tmp_path):
    w, rows, cols = _planted()
    fig = viz.plot_clustered_layer(w, rows, cols, in_name="fc1", out_name="fc2", out=tmp_path / "l.png")
    _check_png(tmp_path / "l.png", fig)
    graph, matrix = fig.axes[:2]
    assert len(fig.axes) == 3  # graph, matrix, colour bar
    segments = _lines(graph).get_segments()
    assert len(segments) == np.count_nonzero(w) <= 20000 and "showing" not in _suptitle(fig)
    # nodes are ordered by cluster on both sides, so every planted edge joins the same band of the two sides
    ends = np.asarray(segments)[:, :, 1]
    np.testing.assert_array_equal(np.floor((1 - ends[:, 0]) * 4), np.floor((1 - ends[:, 1]) * 4))
    image = np.asarray(matrix.images[0].get_array())
    same = np.sort(rows)[:, None] == np.sort(cols)[None, :]
    assert image.shape == w.shape and np.all(image[~same] == 0) and np.count_nonzero(image) == np.count_nonzero(w)
    lo, hi = matrix.images[0].get_clim()
    assert lo == -hi == -np.abs(w).max()


def test_clustered_layer_edge_colours_and_alpha():
    w = np.array([[2.0, -1.0], [0.0, -0.5]])
    fig = viz.plot_clustered_layer(w, np.array([0, 1]), np.array([0, 1]), kind="graph")
    colours = _lines(fig.axes[0]).get_colors()  # drawn weakest first
    np.testing.assert_allclose(colours[:, 3], [0.25, 0.5, 1.0])
    assert colours[0, 0] > colours[0, 2] and colours[1, 0] > colours[1, 2]  # negative: red
    assert colours[2, 2] > colours[2, 0]  # positive: blue


def test_clustered_layer_keeps_only_the_largest_edges(tmp_path):
    rng = np.random.default_rng(1)
    w = rng.normal(size=(200, 300))
    fig = viz.plot_clustered_layer(w, rng.integers(0, 3, 200), rng.integers(0, 3, 300), max_edges=1000,
                                   kind="graph", out=tmp_path / "g.png")
    _check_png(tmp_path / "g.png", fig)
    assert "showing the 1,000 largest |w| of 60,000 edges" in _suptitle(fig)
    assert len(_lines(fig.axes[0]).get_segments()) == 1000
    threshold = np.sort(np.abs(w).ravel())[-1000]
    alphas = _lines(fig.axes[0]).get_colors()[:, 3]
    assert alphas.min() == pytest.approx(threshold / np.abs(w).max() * alphas.max(), rel=1e-6)


def test_clustered_layer_isolated_nodes_last_and_grey():
    w = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
    fig = viz.plot_clustered_layer(w, np.array([1, -1, 0]), np.array([0, 1]), kind="matrix")
    image = np.asarray(fig.axes[0].images[0].get_array())
    np.testing.assert_array_equal(image, [[0.0, 2.0], [1.0, 0.0], [0.0, 0.0]])
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["c0", "c1", "iso"]
    graph = viz.plot_clustered_layer(w, np.array([1, -1, 0]), np.array([0, 1]), kind="graph").axes[0]
    assert "isolated" in [t.get_text() for t in graph.texts]


def test_significance(tmp_path):
    null = {"fc1": np.array([0.2, 0.3, 0.4]), "fc2": np.array([0.5, 0.5])}
    fig = viz.plot_significance({"fc1": 0.5, "fc2": 0.5}, null, out=tmp_path / "s.png")
    _check_png(tmp_path / "s.png", fig)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["z = +2.0\np = 0.25 (n = 3)", "z = n/a\np = 1 (n = 2)"]


def test_significance_figure_gives_the_tables_z_and_p():
    """The figure computed its own z and p: a null value equal to the observed one up to rounding did not count as
    a tie there (p 0.25) while the table counted it (p 0.5); a null with a rounding-level spread got a huge z."""
    from graphinterp.clustering.shuffle_results import NullComparison

    null = {"tie": np.array([0.3 - 1e-14, 0.2, 0.1]), "flat": np.array([0.3, 0.3 + 1e-15, 0.3])}  # sd 6e-16
    observed = {"tie": 0.3, "flat": 0.5}
    texts = [t.get_text() for t in viz.plot_significance(observed, null).axes[0].texts]
    for text, name in zip(texts, null):
        table = NullComparison.from_samples(observed[name], null[name])
        assert f"p = {table.p_value:.2g} " in text, (name, text)
    assert texts[0].startswith("z = +1.0") and texts[1].startswith("z = +inf"), texts


def test_pdf_output(tmp_path):
    viz.plot_significance({"fc1": 0.9}, {"fc1": [0.1, 0.2]}, out=tmp_path / "s.pdf")
    assert (tmp_path / "s.pdf").read_bytes().startswith(b"%PDF")


def test_no_pyplot_is_imported():
    code = textwrap.dedent("""
        import sys, numpy as np
        from graphinterp.reports import viz
        viz.plot_clustered_layer(np.eye(3), np.arange(3), np.arange(3))
        assert "matplotlib.pyplot" not in sys.modules
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)


# --- saving ----------------------------------------------------------------------------------------------------

def test_unsupported_suffix_writes_nothing(tmp_path):
    fig = viz.plot_clusterability_vs_k({"m": {2: 0.5}})
    with pytest.raises(ValueError, match=r"\.png, \.svg or \.pdf"):
        viz.save_figure(fig, tmp_path / "e.jpg")
    with pytest.raises(ValueError, match="suffix"):
        viz.plot_clusterability_vs_k({"m": {2: 0.5}}, out=tmp_path / "sub" / "e")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_leaves_no_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "e.png"
    target.write_bytes(b"old")
    fig = viz.plot_clusterability_vs_k({"m": {2: 0.5}})

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    fig.savefig = broken
    with pytest.raises(RuntimeError, match="disk full"):
        viz.save_figure(fig, target)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["e.png"]


# --- validation ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, match", [
    (lambda: viz.plot_clusterability_vs_k({}), "empty"),
    (lambda: viz.plot_clusterability_vs_k({"m": {2.5: 0.5}}), "positive integers"),
    (lambda: viz.plot_clusterability_vs_k({"m": {2: 1.5}}), r"\[0, 1\]"),
    (lambda: viz.plot_clusterability_vs_k({"m": {2: 0.5}}, baselines={"x": {2: 0.5}}), "not in curves"),
    (lambda: viz.plot_ablation(np.zeros((2, 3)), np.zeros((3, 3))), "same shape"),
    (lambda: viz.plot_ablation(np.zeros((2, 3)), np.zeros((2, 3)), full=np.zeros(4)), r"shape \(3,\)"),
    (lambda: viz.plot_ablation(np.zeros((2, 3)), np.zeros((2, 3)), class_names=["a"]), "class_names has 1"),
    (lambda: viz.plot_ablation(np.zeros(3), np.zeros(3)), "2-D"),
    (lambda: viz.plot_ablation(np.full((1, 1), np.nan), np.zeros((1, 1))), "NaN"),
    (lambda: viz.plot_ecs_comparison([0.1, 0.2], [0.1]), "same shape"),
    (lambda: viz.plot_ecs_comparison([0.1], [0.1], names=("a",)), "two model names"),
    (lambda: viz.plot_ecs_comparison([0.1], [0.1], labels=["a", "b"]), "labels has 2"),
    (lambda: viz.plot_clustered_layer(np.ones((3, 2)), np.zeros(2, int), np.zeros(2, int)), r"row_labels.*\(3,\)"),
    (lambda: viz.plot_clustered_layer(np.ones((3, 2)), np.zeros(3, int), np.zeros(3, int)), r"col_labels.*\(2,\)"),
    (lambda: viz.plot_clustered_layer(np.ones((2, 2)), np.zeros(2), np.zeros(2, int)), "integer"),
    (lambda: viz.plot_clustered_layer(np.ones((2, 2)), np.array([0, -2]), np.zeros(2, int)), "-1"),
    (lambda: viz.plot_clustered_layer(np.ones((2, 2)), np.zeros(2, int), np.zeros(2, int), kind="x"), "kind"),
    (lambda: viz.plot_clustered_layer(np.ones((2, 2)), np.zeros(2, int), np.zeros(2, int), max_edges=0),
     "max_edges"),
    (lambda: viz.plot_significance({"a": 0.5}, {"b": [0.1]}), "same"),
    (lambda: viz.plot_significance({"a": 0.5}, {"a": []}), "non-empty"),
])
def test_invalid_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_the_benchmark_curves_title_fits_in_the_figure(tmp_path):
    from graphinterp.reports.benchmark_report import CURVES_TITLE

    names = ["cifar-cnn", "mnist-mlp-784-512-512-10", "d"]  # a long legend narrows the axes the title is centred on
    fig = viz.plot_clusterability_vs_k({n: {2: 0.5, 3: 0.4} for n in names}, baselines={n: {2: 0.5, 3: 0.33} for n in names},
                                       title=CURVES_TITLE, out=tmp_path / "e.png")  # saving lays the figure out
    assert fig.get_suptitle() == CURVES_TITLE
    box, canvas = fig._suptitle.get_window_extent(), fig.bbox
    assert box.x0 >= canvas.x0 and box.x1 <= canvas.x1 and box.y1 <= canvas.y1
