"""Mutation pass: do the unit tests notice when the code they cover is broken?

A hand-made set of mutants of the core modules (bsgc, kmeans_batch, metrics, loss, masks, hooks,
circuit_eval, circuit_batch, linear_states, piecewise, label_tasks, and the graph tracer's trace_nodes and
trace_fused). Each mutant is one ``(module,
exact old text, new text, why)`` edit that must match its file exactly once: a flipped comparison, a dropped normalisation, an
off-by-one, swapped rows and columns, a removed ``.detach()``, a changed reduction, a restore
skipped in a ``finally``... For each mutant the script applies the edit to a private copy of the
repository (copied once per worker into a temporary folder; the edit is reverted after the run),
runs the module's test files there with ``python -m pytest -x -q -p no:cacheprovider`` under a
timeout, and records

* **killed**: the tests failed (or the import failed) with the mutant in place;
* **timeout**: the tests ran past ``--timeout`` (counted as detected: a real user would notice);
* **survived**: the tests passed: either a missing test, or an *equivalent* mutant.

Mutants known to be equivalent (they cannot change any result, e.g. a recompute that only costs
time) carry ``equivalent=<reason>``: they are still run and listed, but excluded from the score.

The working tree is never modified. The copies import ``graphinterp`` from the copy
(``PYTHONPATH``), with byte-code writing off so that no stale ``.pyc`` of a mutant survives a revert.
(With an editable install, ``graphinterp.cli`` still resolves to the checkout's ``cli/``; no mutant
touches the CLI.)

Usage::

    python benchmarks/mutation.py                     # all mutants, one worker
    python benchmarks/mutation.py --jobs 2            # two workers, two copies
    python benchmarks/mutation.py --only metrics --only loss
    python benchmarks/mutation.py --index 5 --index 7   # rerun single mutants (numbers from --list)
    python benchmarks/mutation.py --check             # only check that every mutant applies once
    python benchmarks/mutation.py --list              # list the mutants
    python benchmarks/mutation.py --json out.json     # also write every result
    python benchmarks/mutation.py --skip-baseline     # skip the run of the tests on the unmutated copy

Exit status 0 when every non-equivalent mutant is detected, 1 otherwise (2 on a broken mutant
table or a baseline that fails).
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]

#: Test files run for the mutants of each module (the module itself is added for its doctests).
TESTS: Dict[str, List[str]] = {
    "spectral": ["tests/test_bsgc.py"],
    "matrix_checks": ["tests/test_bsgc.py"],
    "pairing": ["tests/test_bsgc.py"],
    "mass": ["tests/test_bsgc.py", "tests/test_metrics.py"],
    "bsgc": ["tests/test_bsgc.py"],
    "bsgc_batch": ["tests/test_bsgc.py"],
    "kmeans_batch": ["tests/test_bsgc.py"],
    "metrics": ["tests/test_metrics.py"],
    "loss": ["tests/test_loss.py", "tests/test_fold_faithfulness.py"],
    "masks": ["tests/test_masks.py", "tests/test_loss.py", "tests/test_fold_faithfulness.py"],
    "trace_nodes": ["tests/test_dag.py", "tests/test_trace_review.py"],
    "trace_fused": ["tests/test_trace_review.py"],
    "hooks": ["tests/test_ablate.py", "tests/test_circuits.py"],
    "interventions": ["tests/test_ablate.py", "tests/test_circuits.py"],
    "circuit_eval": ["tests/test_circuits.py", "tests/test_circuit_modes.py"],
    "circuit_incremental": ["tests/test_circuits.py", "tests/test_circuit_modes.py"],
    "circuit_batch": ["tests/test_circuits.py", "tests/test_circuit_modes.py"],
    "circuit_search": ["tests/test_circuits.py", "tests/test_circuit_modes.py"],
    "circuit_settings": ["tests/test_circuits.py", "tests/test_circuit_modes.py"],
    "piecewise": ["tests/test_circuits.py", "tests/test_circuit_modes.py"],
    "linear_states": ["tests/test_circuits.py", "tests/test_circuit_modes.py", "tests/test_transformer_circuits.py"],
    "label_tasks": ["tests/test_circuits.py", "tests/test_circuit_modes.py", "tests/test_ablate.py",
                    "tests/test_label_tasks.py"],
    "shuffle_results": ["tests/test_significance.py", "tests/test_benchmarking.py"],
    "graphml": ["tests/test_io.py"],
    "trace_folds": ["tests/test_fold_faithfulness.py", "tests/test_trace_silent.py"],
    "edges": ["tests/test_circuits.py"],
    "ablate": ["tests/test_ablate.py"],
    "loading": ["tests/test_loading.py"],
    "layered": ["tests/test_graph.py"],
    "networkx_view": ["tests/test_graph.py", "tests/test_dag.py", "tests/test_export_labels.py"],
    "trace_rules_layout": ["tests/test_trace_silent.py", "tests/test_dag.py"],
    "trace_numbers": ["tests/test_trace_silent.py"],
    "trace_reduce": ["tests/test_trace_silent.py", "tests/test_dag.py"],
    "trace_settle": ["tests/test_trace_silent.py", "tests/test_fold_faithfulness.py"],
    "folded_scales": ["tests/test_trace_silent.py", "tests/test_fold_faithfulness.py"],
    "modularity": ["tests/test_association.py"],
    "eigen": ["tests/test_eigen.py", "tests/test_network_null.py"],
    "rescale": ["tests/test_rescale.py"],
    "layer_matrices": ["tests/test_masks.py", "tests/test_rescale.py", "tests/test_loss.py", "tests/test_model_dtype.py"],
    "network_pieces": ["tests/test_network_null.py"],
    "network_null": ["tests/test_network_null.py"],
    "network_notes": ["tests/test_network_null.py"],
    "dag_cluster": ["tests/test_eigen.py", "tests/test_dag.py"],
    "threads": ["tests/test_threads.py"],
    "parallel": ["tests/test_network_null.py", "tests/test_benchmarking.py"],
    "dag": ["tests/test_fold_faithfulness.py", "tests/test_benchmarking.py", "tests/test_network_null.py"],
    "network_spectral": ["tests/test_eigen.py", "tests/test_network_null.py"],
    "train_state": ["tests/test_train.py", "tests/test_train_run_notes.py"],
    "run_notes": ["tests/test_train_run_notes.py"],
    "mlp_blocks": ["tests/test_mlp_blocks.py"],
    "text": ["tests/test_cli_inputs.py"],
    "train_transformer": ["tests/test_transformer_review.py"],
    "validation": ["tests/test_cli_advice.py"],
    "circuit_result": ["tests/test_circuits.py"],
    "circuit_graph": ["tests/test_circuits.py"],
    "benchmark_layers": ["tests/test_benchmarking.py"],
}


# where each mutated module lives in the package layout
PATHS = {"spectral": "clustering/spectral", "matrix_checks": "clustering/matrix_checks",
         "pairing": "clustering/pairing", "mass": "clustering/mass",
         "bsgc": "clustering/bsgc", "bsgc_batch": "clustering/bsgc_batch",
         "kmeans_batch": "clustering/kmeans_batch", "metrics": "clustering/metrics",
         "loss": "training/loss", "masks": "training/masks", "hooks": "interpret/hooks",
         "trace_nodes": "graph/trace_nodes", "trace_fused": "graph/trace_fused",
         "interventions": "interpret/interventions",
         "circuit_eval": "interpret/circuit_eval", "circuit_incremental": "interpret/circuit_incremental",
         "circuit_batch": "interpret/circuit_batch", "circuit_settings": "interpret/circuit_settings",
         "circuit_search": "interpret/circuit_search", "piecewise": "interpret/piecewise",
         "linear_states": "interpret/linear_states", "label_tasks": "interpret/label_tasks",
         "shuffle_results": "clustering/shuffle_results", "graphml": "reports/graphml",
         "trace_folds": "graph/trace_folds", "edges": "interpret/edges", "ablate": "interpret/ablate",
         "loading": "sources/loading", "layered": "graph/layered", "networkx_view": "graph/networkx_view",
         "trace_rules_layout": "graph/trace_rules_layout", "trace_numbers": "graph/trace_numbers",
         "trace_reduce": "graph/trace_reduce", "trace_settle": "graph/trace_settle",
         "folded_scales": "training/folded_scales", "modularity": "clustering/modularity",
         "eigen": "clustering/eigen", "network_spectral": "clustering/network_spectral", "dag": "graph/dag",
         "rescale": "graph/rescale", "layer_matrices": "graph/layer_matrices",
         "network_pieces": "clustering/network_pieces",
         "network_null": "clustering/network_null", "network_notes": "clustering/network_notes",
         "parallel": "common/parallel",
         "dag_cluster": "clustering/dag_cluster", "threads": "common/threads", "train_state": "training/train_state", "run_notes": "training/run_notes", "mlp_blocks": "clustering/mlp_blocks", "text": "common/text",
         "train_transformer": "training/train_transformer", "validation": "clustering/validation",
         "circuit_result": "interpret/circuit_result", "circuit_graph": "interpret/circuit_graph",
         "benchmark_layers": "reports/benchmark_layers"}


@dataclass(frozen=True)
class Mutant:
    module: str
    old: str
    new: str
    why: str
    equivalent: Optional[str] = None  # the reason it cannot change behaviour; excluded from the score

    @property
    def path(self) -> str:
        return f"graphinterp/{PATHS[self.module]}.py"


M = Mutant
MUTANTS: List[Mutant] = [
    # ------------------------------------------------------------ bsgc (spectral.py, pairing.py and mass.py)
    M("spectral", "du_is, dv_is = _inv_sqrt(A.sum(1)), _inv_sqrt(A.sum(0))",
      "du_is, dv_is = _inv_sqrt(A.sum(0)), _inv_sqrt(A.sum(1))", "row/column degrees swapped"),
    M("spectral", "torch.where(d > 0, d.clamp_min(torch.finfo(d.dtype).tiny).rsqrt(), torch.zeros_like(d))",
      "torch.where(d >= 0, d.clamp_min(torch.finfo(d.dtype).tiny).rsqrt(), torch.zeros_like(d))",
      "isolated nodes (degree 0) get a huge inverse degree instead of 0"),
    M("spectral", "evals, W = evals.flip(-1), W.flip(-1)", "evals, W = evals, W",
      "singular values in ascending order: the smallest vectors are used"),
    M("mass", "r = torch.as_tensor(np.where(rows >= 0, rows, k), device=squared.device)",
      "r = torch.as_tensor(np.where(rows > 0, rows, k), device=squared.device)",
      "cluster 0's rows counted as isolated in the mass matrix"),
    M("mass", "new_label[col_ind] = row_ind", "new_label[row_ind] = col_ind",
      "Hungarian matching applied as its inverse permutation"),
    M("mass", "return np.where(cols >= 0, new_label[np.maximum(cols, 0)], -1)",
      "return np.where(cols >= 0, new_label[np.maximum(cols, 0)], 0)", "isolated columns relabelled into cluster 0"),
    M("pairing", "first = 1 if ncomp > 1 else 0", "first = 0",
      "the trivial first singular vector is kept in the paired embeddings"),
    M("pairing", "n_log = 1 + int(np.ceil(np.log2(k)))", "n_log = 1 + int(np.floor(np.log2(k)))",
      "Dhillon's embedding one vector short for k not a power of 2"),
    M("pairing", "                                _live(sp.dv_is[:, :, None] * sp.V[:, :, first:ncomp], sp.live_c))",
      "                                _live(sp.V[:, :, first:ncomp], sp.live_c))", "column embedding not scaled by D_V^-1/2"),
    M("spectral", "total = du.double().sum(-1, keepdim=True)", "total = 2 * du.double().sum(-1, keepdim=True)",
      "the known top singular pair is mis-normalised, so the deflation is wrong"),
    M("spectral", "            - u1.double()[:, :, None] * v1.double()[:, None, :])",
      "            + u1.double()[:, :, None] * v1.double()[:, None, :])", "deflation adds the top pair instead"),
    M("spectral", "        return Q if known is None else Q[:, :, 1:]", "        return Q if known is None else Q[:, :, :-1]",
      "the randomized SVD keeps the known top pair in its iterates (it comes back as a second singular pair)"),
    M("matrix_checks", "        check_values(A)  # negative", "        pass  # negative",
      "negative similarities accepted"),
    M("pairing", "same = (canon == canon[int(inertia.argmin())]).all(1)",
      "same = (canon == canon[int(inertia.argmax())]).all(1)", "the worst KMeans restart is kept"),
    M("pairing", "E = masses[np.arange(T)[:, None], new_labels, np.arange(k)].sum(1) * scale",
      "E = masses[np.arange(T)[:, None], np.arange(k), new_labels].sum(1) * scale",
      "candidate E read from the transposed pairing"),
    M("pairing", "best = score[pool].max()", "best = score[pool].min()", "the worst candidate clustering is kept"),
    M("pairing", "return int(np.flatnonzero(pool & (score >= best - rel_tol * max(1.0, abs(best))))[0])",
      "return int(np.flatnonzero(pool & (score >= best - rel_tol * max(1.0, abs(best))))[-1])",
      "ties go to the last candidate"),
    M("pairing", "np.put_along_axis(col_sizes, new_labels, own_col_sizes, 1)  # in the matched labels",
      "col_sizes = own_col_sizes", "column sizes counted in the unmatched labels"),
    M("pairing", "return full, normalized_score(E, chance_share(row_sizes, col_sizes))", "return full, E",
      "candidates ranked by E alone (a giant cluster wins)"),
    M("pairing", "gain[counts[labels] < 2] = -np.inf", "gain[counts[labels] < 1] = -np.inf",
      "the repair may empty the cluster it takes a node from"),
    M("spectral", "if k < 2 or k > min(sp.m_live, sp.n_live):", "if k < 2 or k > max(sp.m_live, sp.n_live):",
      "k larger than the smaller side accepted"),
    M("mass", "block = torch.mul(A[i0:i1], A[i0:i1], out=buf[: i1 - i0])", "block = A[i0:i1]",
      "candidates scored on |A| instead of A**2"),
    M("mass", "return torch.mul(A, A, out=torch.empty(A.shape, dtype=A.dtype, device=A.device))", "return A.clone()",
      "candidates of a small layer scored on |A| instead of A**2"),
    M("mass", "return np.where(used, np.maximum(total - others, 0.0), 0.0)", "return np.where(used, total, 0.0)",
      "the last column cluster's mass is the row total, not the total less the other clusters"),
    M("mass", "return np.where(used, np.maximum(total - others, 0.0), 0.0)", "return total - others",
      "an unused last cluster gets rounding noise instead of exactly 0 (it steered the matching)"),
    M("mass", "for i0 in range(0, m, step):", "for i0 in range(0, m - 1, step):",
      "a big layer's last row left out of the candidates' masses"),
    M("bsgc", '"n_clusters": [Interval(Integral, 2, None, closed="left")],',
      '"n_clusters": [Interval(Integral, 1, None, closed="left")],', "k = 1 passes the parameter check"),
    M("bsgc", "raise ClusteringError(str(e).replace(\"\\n\", \" \")) from e", "raise",
      "a bad parameter raises scikit-learn's error, not graphinterp's ClusteringError"),
    M("bsgc", "self.columns_ = cols[None, :] == np.arange(k)[:, None]",
      "self.columns_ = cols[None, :] >= np.arange(k)[:, None]", "get_indices returns the wrong columns"),
    # ---------------------------------------------------------------------------------- kmeans_batch
    M("kmeans_batch", "        if before != 1:\n            torch.set_num_threads(before)", "        pass",
      "one_thread does not restore the thread count in its finally"),
    M("kmeans_batch", "tol_abs = tol * Z1t[:, :d].var(-1).mean(-1)", "tol_abs = 1e6 * tol * Z1t[:, :d].var(-1).mean(-1)",
      "Lloyd stops after one iteration (tolerance not relative to the variance)"),
    M("kmeans_batch", "n_trials = 2 + int(math.log(k))", "n_trials = 1",
      "k-means++ without greedy local trials"),
    M("kmeans_batch", "best = dist.sum(-1).argmin(-1)", "best = dist.sum(-1).argmax(-1)",
      "greedy k-means++ keeps the worst trial"),
    M("kmeans_batch", "return values.squeeze(2).numpy(), (k - top).mul_(top.clamp_max(1)).long()",
      "return values.squeeze(2).numpy(), (k - top).long()", "a point at NaN distance from every centre gets label k"),
    M("kmeans_batch", "np.multiply(P, -2, out=out[..., :-1])", "np.multiply(P, -1, out=out[..., :-1])",
      "wrong distance (cross term halved)"),
    M("kmeans_batch", "new = np.where(counts > 0, sums[:, :d].transpose(0, 2, 1) / np.maximum(counts, 1), cur)",
      "new = np.where(counts > 0, sums[:, :d].transpose(0, 2, 1) / (np.maximum(counts, 1) + 1), cur)",
      "centres are not the means"),
    M("kmeans_batch", "        out[active] = new  # the pairs' final (or latest) centres\n", "",
      "a restart that stops moving keeps its k-means++ seeds, not its last centres"),
    M("kmeans_batch", "total = np.maximum(values.astype(np.float64) + znorm, 0).sum(-1)",
      "total = np.maximum(values.astype(np.float64) + znorm, 0).mean(-1)", "inertia reduced by mean, not sum"),
    M("kmeans_batch", "w = torch.from_numpy(weights)", "w = torch.from_numpy(weights).sqrt()",
      "k-means++ samples by distance, not squared distance"),
    M("kmeans_batch", "torch.add(torch.from_numpy(near), norms, out=w).clamp_min_(0)",
      "w.copy_(torch.from_numpy(near)).clamp_min_(0)", "k-means++ draws by the distance less the point's squared norm"),
    M("kmeans_batch", "pts = Z1t[active // R]  # (P, d + 1, N)", "pts = Z1t[active % C]  # (P, d + 1, N)",
      "in a batch, the restarts still moving are updated with another copy's points"),
    M("kmeans_batch", "if not (total.numpy() > 0).all():", "if False:",
      "a restart whose points all sit on its centres draws its next centre from the last point only"),
    # --------------------------------------------------------------------------------------- metrics
    M("metrics", "return inside / (total + torch.finfo(total.dtype).tiny)", "return inside / total",
      "all-zero weights give NaN"),
    M("metrics", "return (r[:, None] == c[None, :]) & (r[:, None] >= 0)", "return r[:, None] == c[None, :]",
      "isolated rows and columns (label -1) count as one cluster"),
    M("metrics", "return float(chance_share(r, s, int(live_r.sum()), int(live_c.sum())))",
      "return float(chance_share(r, s, int(live_r.sum()), int(live_r.sum())))",
      "column shares divided by the row count"),
    M("metrics", "return float(chance_share(r, s, int(live_r.sum()), int(live_c.sum())))",
      "return float(chance_share(r, s, len(rows), int(live_c.sum())))",
      "isolated rows counted in m (a layer with dead inputs scores above chance)"),
    M("metrics", "live_r, live_c = (sq.sum(1) > 0).cpu().numpy(), (sq.sum(0) > 0).cpu().numpy()",
      "live_r, live_c = rows >= 0, cols >= 0",
      "the nodes without weight decided from the labels alone (a user's -1 on weighted rows)"),
    M("mass", "(E_arr - R_arr) / np.where(R_arr < 1, 1.0 - R_arr, 1.0), 0.0)",
      "(E_arr - R_arr) / np.where(R_arr < 1, 1.0 + R_arr, 1.0), 0.0)", "score normalised by 1 + E_random"),
    M("mass", "(E_arr - R_arr) / np.where(R_arr < 1, 1.0 - R_arr, 1.0), 0.0)",
      "(E_arr - R_arr) / np.where(R_arr < 1, 1.0 - R_arr, 1.0), 1.0)", "score of a one-cluster partition is 1"),
    M("mass", "return (r * c).sum(-1) / (np.maximum(m, 1) * np.maximum(n, 1))",
      "return (r * c).sum(-1) / (np.maximum(m, 1) * np.maximum(m, 1))", "chance share divided by m twice"),
    M("metrics", "inside_total += E * mass", "inside_total += E", "model E not mass-weighted"),
    M("metrics", "random_total += E_rand * mass", "random_total += E_rand", "model E_random not mass-weighted"),
    M("metrics", "n_isolated=int((rows < 0).sum() + (cols < 0).sum())", "n_isolated=int((rows < 0).sum())",
      "isolated columns not counted"),
    M("metrics", "mass = float(sq.sum())", "mass = float(sq.sqrt().sum())", "layer mass from |W| instead of W**2"),
    # ------------------------------------------------------------------------------------------ loss
    M("loss", "        self._current_masks()  # follows the model to another device or dtype\n", "",
      "masks do not follow the model to another dtype/device",
      equivalent="on the CPU only: the loss casts its masks to the accumulation dtype, so a dtype change is "
                 "absorbed; a device move is caught by tests/test_cuda_paths.py::"
                 "test_a_loss_with_folded_scales_follows_the_model_to_the_device on a GPU"),
    M("loss", "            self._between = [(1 - m).reshape(-1) for m in self._mask_tensors]\n        return",
      "        return", "refreshed masks, stale between-cluster masks",
      equivalent="on the CPU only (as the mutant above): stale masks of another dtype are cast where used; on "
                 "another device the CUDA test of the loss following the model fails"),
    M("loss", "return (between[0] + tiny) / (total[0] + tiny)", "return between[0] / (total[0] + tiny)",
      "one layer with zero weights gives 0 instead of 1"),
    M("loss", "return (torch.stack(between).sum() + tiny) / (torch.stack(total).sum() + tiny)",
      "return (torch.stack(between).mean() + tiny) / (torch.stack(total).sum() + tiny)",
      "mass reduction: numerator averaged"),
    M("loss", "return ((torch.stack(between) + tiny) / (torch.stack(total) + tiny)).mean()",
      "return ((torch.stack(between) + tiny) / (torch.stack(total) + tiny)).sum()", "mean reduction sums"),
    M("loss", "if len(between) == 1:", "if len(between) >= 1:", "only the first layer counts"),
    M("loss", "between.append(torch.dot(w, w * m.to(acc)))", "between.append(torch.dot(w.detach(), w * m.to(acc)))",
      "half of the gradient lost (a .detach() added)"),
    M("loss", "if self._clustering() is not clustering or self.reduction != reduction or self._graph() is not graph:",
      "if self._clustering() is not clustering or self._graph() is not graph:", "cache ignores the reduction"),
    M("loss", "self._between = [(1 - m).reshape(-1) for m in self._mask_tensors]  # flat between-cluster masks",
      "self._between = [m.reshape(-1) for m in self._mask_tensors]", "loss is E, not 1 - E"),
    M("loss", "return float(within_share([_wide(m.effective()).square() for m in self.masks.values()], masks))",
      "return float(within_share([_wide(m.effective()).abs() for m in self.masks.values()], masks))",
      "clusterability() from |W|"),
    # ----------------------------------------------------------------------------------------- masks
    M("masks", "    with torch.random.fork_rng(devices=devices):\n", "    if True:\n",
      "tracing consumes the global RNG stream"),
    M("masks", "return within_mask(rows_t.numpy(), cols, device=device).T",
      "return within_mask(rows_t.numpy(), cols, device=device)", "Linear mask not transposed to torch layout"),
    M("layer_matrices", "    group = torch.arange(out_ch, device=device) // (out_ch // groups)",
      "    group = torch.arange(out_ch, device=device) % groups", "grouped conv: wrong group of each out-channel"),
    M("masks", "ParameterMask(name, param, mask.to(dtype=param.dtype).contiguous(),",
      "ParameterMask(name, param, mask.to(dtype=torch.float32).contiguous(),", "mask not in the parameter's dtype"),
    M("masks", "rows_t = layer.expand_input_labels(torch.as_tensor(rows))",
      "rows_t = torch.as_tensor(rows).repeat_interleave(max(1, layer.weight.shape[1] // max(1, len(rows))))",
      "channel labels tiled in the wrong layout after a Flatten"),
    M("masks", 'if layer.kind == "linear" and 0 < t < last and graph[t - 1].kind == "linear"',
      'if layer.kind == "linear" and 0 <= t < last and graph[t - 1].kind == "linear"',
      "the first Linear is selected by default"),
    M("masks", "if tuple(weight.shape) != expected:", "if False:", "shape check of the bound parameter skipped"),
    M("masks", "return tensor if rows is None else tensor[rows[0]:rows[1]]", "return tensor",
      "a row-slice layer (a fused cross-attention in_proj) bound to the whole parameter"),
    M("loss", "w = pm.effective().reshape(-1).to(acc)", "w = pm.param.reshape(-1).to(acc)",
      "the loss scores the whole raw parameter, not the layer's rows times its folded scales"),
    M("trace_nodes", "        if name in self._space_names:", "        if False:",
      "two spaces of one name (two float inputs): their nodes merge in the export"),
    M("trace_fused", "if tr.is_param_like(p) and scale_by_param(tr, [p, x], out):", "if False:",
      "addcmul(bias, param, x) not folded"),
    M("trace_fused", '        unfolded_operand(tr, f"torch.{name}", op)', "        pass",
      "a scale inside addcmul / lerp silently dropped"),
    M("masks", "per_channel = per_channel.gather(1, grouped_input_channels(out_ch, in_per, layer.groups, device))",
      "per_channel = per_channel[:, :in_per]",
      "grouped conv: every group reads the first group's in-channels"),
    # ----------------------------------------------------------------------------------------- hooks
    M("interventions", "        yield iv\n    finally:\n        iv.remove()", "        yield iv\n    finally:\n        pass",
      "hooks not removed in finally"),
    M("interventions", "dim = 1 if channel else x.dim() - 1", "dim = 0 if channel else x.dim() - 1",
      "conv channels looked up on the batch dimension"),
    M("interventions", "value = x.new_zeros(()) if fill is None else", "value = x.new_ones(()) if fill is None else",
      "zero ablation writes ones"),
    M("interventions", "return torch.where(mask, value, x)", "return torch.where(mask, x, value)",
      "the complement is ablated"),
    M("interventions", 'return mods[-1], False, graph.layers[-1].kind == "conv2d", 1',
      'return mods[-1], True, graph.layers[-1].kind == "conv2d", 1', "the output level is ablated at the input"),
    M("interventions", "if bool(mask.any()):", "if bool(mask.all()):", "partial ablations skipped"),
    M("hooks", "return {name: sums[name] / len(x) for name in names}",
      "return {name: sums[name] / (len(x) + 1) for name in names}", "mean off by one example"),
    M("hooks", "v = value.detach().sum(0)", "v = value.detach().mean(0)", "means of batch means"),
    M("interventions", "bad = t[(t < 0) | (t >= n)] if t.numel() else t", "bad = t[(t < 0) | (t > n)] if t.numel() else t",
      "index n accepted"),
    M("interventions", "            while self._hooks:\n                self._hooks.pop().remove()", "            pass",
      "interventions leave their hooks (level_means, ablate)"),
    # ---------------------------------------------------------------------------------- circuit_eval
    M("interventions", "                for param, original in self._saved.values():\n                    param.copy_(original)",
      "                pass", "weights not restored in the interventions' finally (evaluation sessions)"),
    M("interventions", "                    del mod.forward", "                    pass", "overridden forward not restored"),
    M("circuit_incremental", "idx = idx[(idx >= 0) & (idx < mask.numel())]",
      "idx = idx[(idx > 0) & (idx < mask.numel())]",
      "the layer's first edge is never updated incrementally"),
    M("circuit_incremental", "o, i = idx // mask.shape[1], idx % mask.shape[1]",
      "o, i = idx % mask.shape[0], idx // mask.shape[0]",
      "flat edge index decoded column-major"),
    M("circuit_incremental", "parts = ((o[~now], i[~now], -1.0), (o[now], i[now], 1.0))",
      "parts = ((o[~now], i[~now], 1.0), (o[now], i[now], -1.0))", "removal adds the edge's contribution"),
    M("circuit_incremental", "self.offset = sum(layer.live.numel() for layer in self.layers[:j])",
      "self.offset = sum(layer.live.numel() for layer in self.layers[:j + 1])", "offset of the incremental layer"),
    M("circuit_incremental", "return bool((changed < self.offset).any())",
      "return bool((changed < self.offset - 1).any())",
      "a change of the last edge before the incremental layer is missed"),
    M("circuit_eval", "return float(self.task.accuracy(hits_pos, hits_neg)), loss",
      "return (hits_pos + hits_neg) / len(self.x), loss", "accuracy not balanced between positives and negatives"),
    M("circuit_eval", "        total = w @ l.double()\n", "        total = l.double().sum()\n",
      "attribution gradient of the unweighted loss"),
    M("circuit_incremental", "self.bias = None if self.first.bias is None else self.first.bias.detach()[:, None]",
      "self.bias = None", "incremental layer's bias dropped"),
    M("circuit_incremental", "if not torch.equal(last.mask, masks[self.inc_layer.name]):\n            return",
      "if False:\n            return", "accept commits a state that was not the one evaluated last",
      equivalent="a defensive guard: prune only accepts the masks it has just evaluated, and a diff without "
                 "`changed` is taken against whatever state is committed, so committing the last evaluated "
                 "state instead of skipping gives the same values"),
    # --------------------------------------------------------------------------------- circuit_batch
    M("label_tasks", "torch.where(positive, lse - z, lse - lse_others)", "torch.where(positive, lse + z, lse - lse_others)",
      "cross-entropy sign"),
    M("label_tasks", "says = z > maxima[0] if label > 0 else z >= maxima[0]",
      "says = z < maxima[0] if label > 0 else z <= maxima[0]", "accuracy from a class below the maximum"),
    M("label_tasks", "lse_others = max_others + torch.log(total)", "lse_others = torch.log(total)",
      "log-sum-exp of the other classes without its shift"),
    M("linear_states", "d = -(self.w[o, i][:, None] * self.a_t[i])", "d = (self.w[o, i][:, None] * self.a_t[i])",
      "removing an edge adds its contribution"),
    M("linear_states", "after[run] = col + acc(d[run])", "after[run] = col + d[run]",
      "states not cumulative"),
    M("linear_states", "self.z_t.index_add_(0, o, -(self.w[o, i][:, None] * self.a_t[i]))",
      "self.z_t.index_add_(0, o, (self.w[o, i][:, None] * self.a_t[i]))", "commit updates the state with the wrong sign"),
    M("linear_states", "g = self._act(self.z_t[o[0]] + acc(d)) - base", "g = self._act(self.z_t[o[0]] + acc(d)) - self._act(self.z_t[o[0]])",
      "piecewise shifts measured from the current circuit, not from where the unit's pieces were built"),
    M("circuit_batch", "evals += min(j + 1, block.numel())", "evals += block.numel()",
      "states evaluated past the end of a run counted as evaluations"),
    M("circuit_batch", "j = int(change[0]) if change.numel() else block.numel()",
      "j = int(change[-1]) if change.numel() else block.numel()", "decisions after the end of a run taken from the batch"),
    M("circuit_batch", "mask.view(-1)[block[:j]] = False", "mask.view(-1)[block[:j + 1]] = False",
      "the rejected edge is removed from the mask"),
    M("circuit_batch", "o, i = block // n_cols, block % n_cols", "o, i = block % n_cols, block // n_cols",
      "row/column of the flat index swapped"),
    M("piecewise", "active0 = (~moving & (y > 0)) | (moving & (m < 0))",
      "active0 = (~moving & (y > 0)) | (moving & (m > 0))", "piecewise-linear evaluation starts from the wrong units"),
    M("circuit_batch", "                module.weight[o, i] = saved", "                pass",
      "a rejected conv edge is not restored"),
    M("linear_states", "        finally:\n            handle.remove()\n        return self.metrics(logits)",
      "        finally:\n            pass\n        return self.metrics(logits)", "the state hook is never removed"),
    M("linear_states", "if self.commits >= 64:", "if self.commits >= 1:", "exact recompute after every commit",
      equivalent="only recomputes the state exactly more often (the same values up to float rounding): slower, "
                 "not different"),
    M("circuit_search", "            if removed_pass == 0 and near is None:", "            if removed_pass == 0:",
      "a focused pass that removes nothing ends the search (not a local minimum)"),
    M("circuit_settings",
      "return acc >= self.min_accuracy * full_acc - 1e-12 and loss <= full_loss + self.max_loss_increase",
      "return acc >= self.min_accuracy * full_acc - 1e-12", "the loss tolerance is ignored"),
    M("circuit_batch", "            states.commit(o[j:j + 1], i[j:j + 1])", "            pass",
      "an edge removed after a run of kept ones is masked but its weight stays in the state"),
    M("linear_states", "torch.cat([col[None], after[start:end]]) if cumulative else col",
      "torch.cat([col[None], after[start:end]])", "single removals measured against the wrong previous state"),
    M("circuit_batch", "change = torch.nonzero(~ok if removing else ok).flatten()", "change = torch.nonzero(~ok).flatten()",
      "a batch of single removals read as if it were cumulative"),
    M("linear_states", "acc = (lambda v: torch.cumsum(v, 0)) if cumulative else (lambda v: v)",
      "acc = (lambda v: torch.cumsum(v, 0))", "single-removal states accumulate earlier removals"),
    # ------------------------------------ modules probed on 2026-12-07 (survivors of a review, now killed)
    M("shuffle_results", "elif n > 1 and abs(diff) > 1e-12:", "elif n > 1 and abs(diff) > 1e-2:",
      "a null without spread gives z NaN, not +-inf, for a difference under 0.01"),
    M("graphml", "if types <= {int, float}:", "if types <= {float}:",
      "an attribute mixing ints and floats is written as text"),
    M("graphml", "if G.graph.get(\"multigraph\") and not G.is_multigraph():",
      "if G.graph.get(\"multigraph\") and G.is_multigraph():",
      "a multigraph without parallel edges reads back as a DiGraph"),
    M("trace_folds", "call.out_scale = vec if call.out_scale is None else call.out_scale * vec",
      "call.out_scale = vec", "BatchNorm then a layer scale: only the last scale folded"),
    M("trace_folds", "dim = 1 if name in (\"group_norm\", \"instance_norm\") else -1", "dim = -1",
      "GroupNorm / InstanceNorm gains not folded per channel"),
    M("edges", "if w.dim() == 4 and mod.groups != 1:", "if False:",
      "circuits run on a grouped conv's (out, in / groups) weight"),
    M("ablate", "w = self.counts / self.counts.sum()", "w = np.full(len(self.counts), 1.0 / len(self.counts))",
      "overall ON/OFF accuracy a plain mean over classes on imbalanced data"),
    M("ablate", "means = level_means(model, graph, reference if reference is not None else x,",
      "means = level_means(model, graph, x,", "mean ablation ignores the reference data"),
    M("ablate", "present = np.flatnonzero(counts > 0)", "present = np.arange(len(counts))",
      "classes without examples listed (NaN rows)"),
    M("loading", "if state and all(k.startswith(prefix) for k in state):",
      "if state and any(k.startswith(prefix) for k in state):", "a prefix on one key cut off every key"),
    M("networkx_view", "within = (rows[ii] == cols[jj]) & (rows[ii] >= 0)", "within = rows[ii] == cols[jj]",
      "every edge of an unclustered layer exported as within a cluster"),
    M("networkx_view", "                                                                                and cluster[src[i]] >= 0)))",
      "                                                                                or True)))",
      "edges between unlabelled nodes marked as one cluster"),
    M("networkx_view", "    if network is not None and not getattr(network, \"network_wide\", False):\n",
      "    if False:\n", "a per-layer clustering taken as network-wide labels"),
    M("label_tasks", "        return 0.5 * (hits_pos / n_pos) + 0.5 * (hits_neg / n_neg)",
      "        return hits_pos * (0.5 / n_pos) + hits_neg * (0.5 / n_neg)",
      "an accuracy of every example right rounds below 1"),
    M("trace_folds", "    if name == \"instance_norm\" and _arg(args, kwargs, 5, \"use_input_stats\", True) is False:",
      "    if False:", "an InstanceNorm's running statistics left out of its fold"),
    M("trace_settle", "                _number_undone(tr, layer, tag, call.name)\n                continue",
      "                _number_undone(tr, layer, tag, call.name)",
      "an activation's own number listed as an unfolded scale"),
    M("trace_reduce", "        elif _stacked(tr, r, d):", "        elif False:",
      "branches stacked then summed lose their nodes silently"),
    M("trace_reduce", "                r = _merge_slices(tr, r, d, name)", "                r = r.narrow(d, 0, 1)",
      "stacked branches summed: only the first one's nodes kept"),
    M("trace_reduce", "    if isinstance(d, int) and s.dim() and not bool", "    if False and not bool",
      "a cumsum along the nodes not noted"),
    M("trace_rules_layout", "           for sh, d in ((sa, -2), (sb, -1))):", "           for sh, d in ((sa, -1), (sb, -2))):",
      "linear attention's product not noted (scores noted instead)"),
    M("trace_reduce", "        if spaces & seen:\n            return False", "        if False:\n            return False",
      "a head's features summed (attention scores, a QK-norm) merged as stacked branches"),
    M("trace_settle", "        if out_id is None or set(", "        if out_id is None and set(",
      "a number fold undone where its value entered a sum not noted"),
    M("trace_folds", "    if not what.endswith(f\"({NUMBER})\"):  # a number", "    if True:  # a number",
      "a number's tag removes a module of that name from the unfolded list"),
    M("trace_numbers", "    return short if float(short) == value else repr(float(value))", "    return short",
      "a folded number kept to 6 digits: training's weight differs from the graph's"),
    M("trace_numbers", "    value = 1 / numbers[0] if name in DIVS else numbers[0]", "    value = numbers[0]",
      "f(x) / 10 folded as 10 f(x)"),
    M("trace_numbers", "    coeff = -alpha if name in T.SUBS else alpha", "    coeff = alpha",
      "x - f(x) folded without its sign"),
    M("trace_numbers", "    if not scaled or not _merges(tr, a, b):", "    if True:",
      "a number after an activation, in a sum, not noted"),
    M("folded_scales", "        get = _number(tag) or _provider(model, source)", "        get = _provider(model, source)",
      "training refuses a folded number"),
    M("layered", "consecutive = self.chained and idx == list(range(idx[0], idx[-1] + 1))", "consecutive = self.chained",
      "a selection of non-consecutive layers claims to be a chain"),
    M("modularity", "    keep = labels >= 0\n", "    keep = labels >= -1\n", "unlabelled units scored as a cluster of their own"),
    M("modularity", "    return S + S.T", "    return S", "the shuffle null's copies are triangular, not symmetric"),
    # ------------------------------------------------------------ network eigenvectors (eigen.py, network_spectral.py)
    M("eigen", "    return (out / np.sqrt(2)).astype(", "    return (out / 1.0).astype(", "bipartite eigenvectors not normalised"),
    M("eigen", "    out[p], out[q] = U, V", "    out[p], out[q] = U, -V",
      "the second side's vectors negated: the eigenvectors of -sigma"),
    M("eigen", " or S[np.ix_(p, p)].any() or S[np.ix_(q, q)].any()", "",
      "edges inside a side ignored: a non-bipartite matrix decomposed as bipartite"),
    M("eigen", "    B = S[np.ix_(p, q)].astype(np.float64)", "    B = S[np.ix_(p, q)].copy()",
      "the Gram matrix of a float32 layer formed in float32 (half its digits)"),
    M("eigen", "    B /= top  #", "    B /= 1.0  #", "raw weights squared unscaled: overflow or subnormals"),
    M("eigen", "        if not w[0] > _GRAM_MIN_RATIO * w[-1]:", "        if False:",
      "singular values below the Gram matrix's resolution accepted"),
    M("eigen", "            elif (implied != implied[0]).any() or not _colour(side, src, dst, implied[0]):",
      "            elif not _colour(side, src, dst, implied[0]):", "an odd cycle coloured as if bipartite"),
    M("network_spectral", "        A[d[:, None], s[None, :]] += block.T\n", "\n",
      "only one orientation of each layer's block in the dense adjacency"),
    M("dag", "            spread *= float(s.max()) / low if low > 0 else math.inf", "            spread = float(s.max()) / low if low > 0 else math.inf",
      "the spread of the rows' scales forgotten when the inputs are scaled too"),
    M("dag", "            spread *= float(s.max()) / low if low > 0 else math.inf", "            spread *= float(s.max()) / low if low > 0 else 1.0",
      "a zero folded scale counted as no spread"),
    M("rescale", "        weights[l + 1] *= _input_scale(graph.layers[l + 1], scale)\n", "\n",
      "incoming weights normalised without pushing the factor into the next layer"),
    M("rescale", "    channel = grouped_input_channels(out_ch, in_per, layer.groups)",
      "    channel = torch.arange(in_per)[None, :].expand(out_ch, in_per)", "a grouped convolution's inputs scaled as group 0's"),
    M("rescale", "        per_feature = scale if layer.in_index is None else scale[layer.in_index]",
      "        per_feature = scale if layer.in_index is None else scale.repeat(len(layer.in_index) // len(scale))",
      "a flatten's features scaled channel-minor instead of by their channel"),
    M("network_pieces", "    good = np.intersect1d(comp[inputs[touched[inputs]]], comp[outputs[touched[outputs]]])",
      "    good = np.union1d(comp[inputs[touched[inputs]]], comp[outputs[touched[outputs]]])",
      "a piece that reaches the outputs but not the inputs kept"),
    M("network_pieces", "    return out, int((touched & ~keep).sum())", "    return out, 0",
      "the nodes left out not counted (no note)"),
    M("network_notes", "            if lab.size and (lab != lab[0]).any():", "            if lab.size and (lab != lab[0]).all():",
      "every clustering taken to follow whole levels (a false note)"),
    M("network_notes", "    if dominant:\n        notes.append(dominant", "    if False:\n        notes.append(dominant",
      "no note when one layer holds nearly all the squared weight"),
    M("network_null", "        null = np.concatenate(run_tasks(_null_chunk, [(graph, ids, c, *setting) for c in chunks]",
      "        null = np.concatenate(run_tasks(_null_chunk, [(graph, ids, c, *setting) for c in chunks[::-1]]",
      "the shares of shuffles put back in the wrong order"),
    M("network_null", "    gen = torch.Generator().manual_seed(seeds[0])", "    gen = torch.Generator().manual_seed(seeds[0] % 2)",
      "shuffled networks from two permutations only"),
    M("parallel", "    bounds = [i * len(items) // parts for i in range(parts + 1)]",
      "    bounds = [i * len(items) // parts for i in range(parts)] + [len(items) - 1]",
      "the last shuffle of the last share dropped"),
    M("dag_cluster", "        with single_threaded_blas():  # ARPACK's BLAS", "        with torch.no_grad():  # ARPACK's BLAS",
      "ARPACK on a DAG's graph with BLAS threads contending with torch's"),
    M("network_spectral", "        with single_threaded_blas():  # ARPACK's BLAS", "        with torch.no_grad():  # ARPACK's BLAS",
      "ARPACK on the Filan graph with BLAS threads contending with torch's"),
    M("dag_cluster", "            Y[s[:, None], d[None, :]] += M * d_is[None, d]",
      "            Y[s[:, None], d[None, :]] += M * d_is[None, d] * (1 + 2 ** -52)",
      "the dense adjacency a rounding off the identity product's"),
    M("threads", "        if _HOLDERS == 0:\n            if _CONTROLLER is None or", "        if True:\n            if _CONTROLLER is None or",
      "every block takes the BLAS limit again (and the first to leave lifts it under the others)"),
    M("threads", 'if _CONTROLLER is None or (not _WITH_SCIPY and "scipy.linalg" in sys.modules):', "if _CONTROLLER is None:",
      "scipy's BLAS, loaded after the first block, is never limited"),
    M("train_state", "if data_sha256 is not None and stored is not None and stored != data_sha256:",
      "if data_sha256 is not None and stored is None and stored != data_sha256:",
      "a resumed run no longer checks that it trains on the examples its checkpoint was trained on"),
    M("train_transformer", "if step % config.eval_every == 0 or step == total or step == config.warmup_steps:",
      "if step % config.eval_every == 0 or step == total:",
      "a transformer's first modular history row averages the warm-up's CE with the modular steps'"),
    M("validation", "    cls = KTooLargeError if _smaller_k_helps(k, left_out) else ClusteringError",
      "    cls = ClusteringError",
      "a --k too large for every layer is reported as the model's fault (exit 1), not a bad --k (exit 2)"),
    M("circuit_graph", "grouped_layers=\",\".join(grouped), exact=not grouped)",
      "grouped_layers=\",\".join(grouped), exact=True)",
      "a CNN circuit's GraphML claims to be exact where it grouped the flattened channels"),
    M("benchmark_layers", "if k in labels and max(fitting) == k:", "if k in labels:",
      "the tested layer clustered from the k sweep's SVD, unlike its shuffled copies"),
    M("shuffle_results", "return self.no_spread and abs(self.observed - self.mean) <= 1e-12", "return False",
      "a null that reproduces the layer is not said to tell nothing"),
    M("trace_numbers", "        if tr.fold:\n            tr.merged_sums.scaled(", "        if False:\n            tr.merged_sums.scaled(",
      "a number scaling a sum of branches ((a + b) / 2) dropped without a note"),
    M("trace_numbers", "if reads <= 1]", "if True]", "a hand-written GELU on a residual sum noted as a scaled sum"),
    M("metrics", "E = float(clusterability(sq, rows, cols)) if mass > 0 else nan",
      "E = float(clusterability(sq, rows, cols)) if mass > 0 else 0.0", "a layer without weight scored E = 0"),
    M("metrics", "on_unlabelled = float(sq[r_out].sum() + sq[~r_out][:, c_out].sum())", "on_unlabelled = 0.0",
      "weight on nodes labelled isolated goes unmentioned"),
    M("loading", "if dense > stored and expanded > _MAX_EXPANDED_BYTES:", "if False:",
      "a tiny file declaring a huge tensor is read"),
    M("trace_numbers", "        record[0] -= 1  # the view itself", "        record[0] -= 0  # the view itself",
      "a view of a sum, then scaled by a number, dropped without a note"),
    M("trace_settle", "        _, leaks, layers = undone.setdefault(gain.source, (gain.kind, Counter(), []))",
      "        _, leaks, layers = undone[gain.source] = (gain.kind, Counter(), [])",
      "a norm applied at several depths names only its last application's layers"),
    M("run_notes", "    model.train()\n", "    pass\n", "a model handed over in eval mode trains in eval mode"),
    M("train_state", "                settings[\"layers\"] = list(default_layers)", "                pass",
      "naming the default layers refuses to resume a run that left them unset"),
    M("layer_matrices", "        w = w.float()\n    w2 = w.square()", "        pass\n    w2 = w.square()",
      "float16 weights squared in float16: small ones vanish, large ones overflow"),
    M("pairing", "    big = top > _Z_MAX", "    big = top < 0", "an embedding beyond float32's range goes to KMeans as inf"),
    M("mlp_blocks", "np.arange(n, dtype=np.int64) * int(k) // n", "np.arange(n, dtype=np.int64) % int(k)",
      "the authors' contiguous clusters interleaved"),
    M("text", "    if any(parts) and not all(parts):", "    if False:", "an empty value between commas skipped"),
]


@dataclass
class Result:
    index: int
    module: str
    why: str
    status: str  # killed / survived / timeout / error
    seconds: float
    equivalent: Optional[str]
    detail: str = ""


def check_table(mutants: Sequence[Mutant], root: Path = ROOT) -> List[str]:
    """Problems of the mutant table against the files in ``root`` (each old text must occur exactly once)."""
    problems = []
    for n, m in enumerate(mutants):
        text = (root / m.path).read_text()
        count = text.count(m.old)
        if count != 1:
            problems.append(f"#{n} {m.module}: old text found {count} times: {m.old[:70]!r}")
        if m.old == m.new:
            problems.append(f"#{n} {m.module}: new text equals old text")
    return problems


def _copy(dest: Path) -> Path:
    ignore = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", "*.egg-info", "report", ".pytest_cache",
                                    "*.pt", "*.png", "*.svg")
    shutil.copytree(ROOT, dest, ignore=ignore, symlinks=True)
    return dest


def _pytest(copy: Path, files: Sequence[str], timeout: float):
    env = dict(os.environ, PYTHONPATH=str(copy) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONDONTWRITEBYTECODE="1", MPLBACKEND="Agg")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *files]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - start, ""
    tail = (proc.stdout.strip().splitlines() or [""])[-1]
    return ("survived" if proc.returncode == 0 else "killed"), time.monotonic() - start, tail


def run(mutants: Sequence[Mutant], indices: Sequence[int], jobs: int, timeout: float, verbose: bool = True,
        baseline: bool = True) -> List[Result]:
    work: "queue.Queue[int]" = queue.Queue()
    for i in indices:
        work.put(i)
    results: List[Result] = []
    lock = threading.Lock()
    tmp = Path(tempfile.mkdtemp(prefix="graphinterp-mutation-"))
    baseline_failed: List[str] = []

    def worker(w: int) -> None:
        copy = _copy(tmp / f"w{w}")
        modules = sorted({mutants[i].module for i in indices})
        files = sorted({f for mod in modules for f in TESTS[mod]} | {f"graphinterp/{PATHS[mod]}.py" for mod in modules})
        status, secs, tail = _pytest(copy, files, timeout * 3) if baseline else ("survived", 0.0, "")
        if status != "survived":  # the unmutated copy must pass
            baseline_failed.append(f"worker {w}: baseline {status} ({tail}) in {secs:.0f} s")
            return
        while True:
            try:
                i = work.get_nowait()
            except queue.Empty:
                return
            m = mutants[i]
            target = copy / m.path
            original = target.read_text()
            target.write_text(original.replace(m.old, m.new, 1))
            try:
                status, secs, tail = _pytest(copy, [m.path] + TESTS[m.module], timeout)  # doctests first: fast
            finally:
                target.write_text(original)
            r = Result(i, m.module, m.why, status, secs, m.equivalent, tail)
            with lock:
                results.append(r)
                if verbose:
                    flag = " (equivalent)" if m.equivalent else ""
                    print(f"#{i:<3} {m.module:<14} {status:<9} {secs:6.1f} s  {m.why}{flag}", flush=True)

    try:
        threads = [threading.Thread(target=worker, args=(w,)) for w in range(max(1, jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if baseline_failed:
        raise SystemExit("baseline failed, fix the tests first: " + "; ".join(baseline_failed))
    return sorted(results, key=lambda r: r.index)


def table(results: Sequence[Result]) -> str:
    rows = []
    modules = list(dict.fromkeys(r.module for r in results))

    def line(name, rs):
        scored = [r for r in rs if not r.equivalent]
        killed = sum(r.status == "killed" for r in scored)
        timeout = sum(r.status == "timeout" for r in scored)
        survived = sum(r.status == "survived" for r in scored)
        equiv = len(rs) - len(scored)
        rate = f"{100 * (killed + timeout) / len(scored):.0f}%" if scored else "n/a"
        return f"| {name} | {len(rs)} | {killed} | {timeout} | {survived} | {equiv} | {rate} |"

    rows.append("| module | mutants | killed | timeout | survived | equivalent (not scored) | detected |")
    rows.append("|---|---|---|---|---|---|---|")
    for mod in modules:
        rows.append(line(mod, [r for r in results if r.module == mod]))
    rows.append(line("**all**", list(results)))
    return "\n".join(rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=1, help="parallel workers, each with its own copy (default 1)")
    ap.add_argument("--only", action="append", choices=sorted(TESTS), help="only this module (repeatable)")
    ap.add_argument("--index", type=int, action="append", help="only mutant #N (repeatable; see --list)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant (default 300)")
    ap.add_argument("--check", action="store_true", help="only check that every mutant applies exactly once")
    ap.add_argument("--list", action="store_true", help="list the mutants")
    ap.add_argument("--skip-baseline", action="store_true",
                    help="do not first run the tests on the unmutated copy (when you know they pass)")
    ap.add_argument("--json", type=Path, help="write every result to this JSON file")
    args = ap.parse_args(argv)

    problems = check_table(MUTANTS)
    if problems:
        print("broken mutant table:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    indices = [i for i, m in enumerate(MUTANTS) if (not args.only or m.module in args.only)
               and (not args.index or i in args.index)]
    if args.list or args.check:
        if args.list:
            for i in indices:
                m = MUTANTS[i]
                print(f"#{i:<3} {m.module:<14} {m.why}" + (f"  [equivalent: {m.equivalent}]" if m.equivalent else ""))
        print(f"{len(indices)} mutants apply exactly once")
        return 0
    start = time.monotonic()
    results = run(MUTANTS, indices, args.jobs, args.timeout, baseline=not args.skip_baseline)
    print()
    print(table(results))
    survivors = [r for r in results if r.status == "survived" and not r.equivalent]
    if survivors:
        print("\nsurvived:")
        for r in survivors:
            m = MUTANTS[r.index]
            print(f"  #{r.index} {m.module}: {m.why}\n      {m.old.strip()[:90]!r}\n   -> {m.new.strip()[:90]!r}")
    print(f"\n{len(results)} mutants in {time.monotonic() - start:.0f} s with {args.jobs} worker(s)")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
