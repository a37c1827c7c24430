"""Training for modularity (Section 3): warm-up, cluster, then train with ``CE + lambda * L_E``.

1. Train for ``warmup_epochs`` with cross-entropy only.
2. Cluster the chosen layers (default :func:`graphinterp.masks.default_cluster_layers`) with
   :func:`graphinterp.cluster.cluster_network`, one label per neuron, on ``|W|`` (weight-based) or
   on :mod:`graphinterp.gradsim` similarities accumulated during warm-up (gradient-based).
3. Train ``epochs`` more epochs with ``CE + lam * L_E`` (:class:`graphinterp.loss.EnmeshmentLoss`).
   ``lam = 0`` is the unclustered baseline; its final history row also records ``E_refit``, the E
   of a clustering fitted to the final weights.

Every epoch appends a history row (``epoch, phase, loss, ce, l_e, E, test_acc, time``) and, when a
checkpoint path is given, writes an atomic checkpoint holding the architecture, the clustering, the
history and the training state (optimiser, epoch, RNG streams), so ``resume=True`` continues an
interrupted run and ends with exactly the weights an uninterrupted run would have.

On the CPU, training runs with subnormal floats flushed to zero (``torch.set_flush_denormal``, restored
afterwards): the enmeshment loss drives between-cluster weights and their Adam moments towards zero
geometrically, and arithmetic on subnormal numbers is about ten times slower on x86 CPUs, which
otherwise makes late modular epochs markedly slower than early ones.

Under ``torch.distributed`` (one process per rank, process group initialised by the caller),
:func:`train` wraps the model in ``DistributedDataParallel``, gives each rank its share of every
global batch of ``batch_size``, scales the loss so that the all-reduced gradient is the gradient of
the global batch's mean loss, clusters on rank 0 and broadcasts the labels, and writes checkpoints
and progress bars on rank 0 only: results match a single-process run.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ._files import resolve_device
from .checkpoint import load_checkpoint, save_checkpoint
from .cluster import Clustering, cluster_network
from .data import LabeledTensors, dataset_info, load_dataset
from .errors import ClusteringError, TrainingError
from .gradsim import GradientSimilarity
from .graph import Layer, LayeredGraph
from .loss import REDUCTIONS, EnmeshmentLoss
from .masks import default_cluster_layers, trace_graph
from .models import build_model, default_spec

__all__ = ["TrainConfig", "TrainResult", "train", "train_step", "evaluate", "format_history"]

SIMILARITIES = ("weight", "gradient")
_RESUME_FIXED = ("dataset", "model", "arch", "k", "lam", "warmup_epochs", "batch_size", "lr", "similarity",
                 "layers", "reduction", "seed", "max_train")


@dataclass
class TrainConfig:
    """Everything that defines a modular-training run (defaults: the paper's Table 1).

    ``layers=None`` clusters :func:`graphinterp.masks.default_cluster_layers`; ``arch`` overrides
    :func:`graphinterp.models.default_spec` (e.g. other hidden widths); ``max_train``/``max_test``
    take seeded random subsets; ``device="auto"`` uses CUDA when available.

    ``reduction`` is the :class:`~graphinterp.loss.EnmeshmentLoss` layer weighting. The default,
    ``"mass"``, trains the model-wide E that ``analyze`` reports; when the clustered layers differ
    greatly in size, as the CNN's ``fc1`` (16 channels x 256 features -> 64) and ``fc2`` (64 -> 64)
    do, the big layer dominates it and the small one stays less modular (CIFAR-10 CNN, 1 + 10
    epochs: E of ``fc2`` 0.904 with ``"mass"``, 0.9997 with ``"mean"``); use ``"mean"`` there.
    """

    dataset: str = "digits"
    model: str = "mlp"
    k: int = 4
    lam: float = 20.0
    warmup_epochs: int = 1
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    similarity: str = "weight"
    layers: Optional[List[str]] = None
    reduction: str = "mass"
    seed: int = 0
    device: str = "auto"
    data_dir: Optional[str] = None
    download: bool = False
    max_train: Optional[int] = None
    max_test: Optional[int] = None
    arch: Optional[Dict[str, Any]] = None
    quiet: bool = False

    @property
    def total_epochs(self) -> int:
        return self.warmup_epochs + self.epochs

    def validate(self) -> "TrainConfig":
        """Raise :class:`TrainingError`/:class:`ClusteringError`/:class:`DataError` on a bad value."""
        def integer(name: str, low: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise TrainingError(f"{name} must be an integer >= {low}, got {v!r}")
        dataset_info(self.dataset)  # DataError for an unknown dataset
        if self.model not in ("mlp", "cnn"):
            raise TrainingError(f"unknown model {self.model!r}; choose 'mlp' or 'cnn' (or pass model=...)")
        lam = self.lam
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
            raise TrainingError(f"lambda must be a finite number >= 0 (0 trains the unclustered baseline), got {lam!r}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 2:
            raise ClusteringError(f"k must be an integer >= 2, got {self.k!r}")
        for name, low in (("warmup_epochs", 0), ("epochs", 0), ("batch_size", 1), ("seed", 0)):
            integer(name, low)
        if self.total_epochs < 1:
            raise TrainingError("warmup_epochs + epochs must be at least 1")
        if not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) or self.lr <= 0:
            raise TrainingError(f"lr must be a positive number, got {self.lr!r}")
        if self.similarity not in SIMILARITIES:
            raise TrainingError(f"similarity must be one of {SIMILARITIES}, got {self.similarity!r}")
        if self.similarity == "gradient" and self.warmup_epochs < 1:
            raise TrainingError("gradient-based clustering needs warmup_epochs >= 1 to accumulate gradients")
        if self.reduction not in REDUCTIONS:
            raise TrainingError(f"reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        for name in ("max_train", "max_test"):
            if getattr(self, name) is not None:
                integer(name, 1)
        if self.layers is not None:
            if isinstance(self.layers, str) or not self.layers or not all(isinstance(n, str) for n in self.layers):
                raise TrainingError(f"layers must be a non-empty list of layer names or None, got {self.layers!r}")
            self.layers = list(self.layers)
        return self

    def to_dict(self) -> Dict[str, Any]:
        """Plain dict (checkpoint- and JSON-safe)."""
        return asdict(self)


@dataclass
class TrainResult:
    """What :func:`train` returns; ``table()`` formats the history."""

    model: nn.Module
    arch: Optional[Dict[str, Any]]
    clustering: Optional[Clustering]
    history: List[Dict[str, Any]]

    def table(self) -> str:
        return format_history(self.history)


def format_history(history: List[Dict[str, Any]]) -> str:
    """The per-epoch history as a plain-text table (``-`` where a value does not exist yet).

    Examples
    --------
    >>> print(format_history([{"epoch": 1, "phase": "warmup", "loss": 0.5, "ce": 0.5, "l_e": None,
    ...                        "E": 0.3, "test_acc": 0.9, "time": 1.0}]))
    epoch  phase   loss    CE      L_E  E       test acc  time (s)
    1      warmup  0.5000  0.5000  -    0.3000  0.9000    1.0
    """
    cols = [("epoch", "epoch", "{}"), ("phase", "phase", "{}"), ("loss", "loss", "{:.4f}"), ("CE", "ce", "{:.4f}"),
            ("L_E", "l_e", "{:.4f}"), ("E", "E", "{:.4f}"), ("test acc", "test_acc", "{:.4f}"),
            ("time (s)", "time", "{:.1f}")]
    rows = [[("-" if r.get(key) is None else fmt.format(r[key])) for _, key, fmt in cols] for r in history]
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, (h, _, _) in enumerate(cols)]
    lines = [[h for h, _, _ in cols]] + rows
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines)


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *,
               loss_fn: Optional[Callable[[], torch.Tensor]] = None, lam: float = 0.0, ce_scale: Optional[float] = None,
               after_backward=None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """One optimiser step on ``CE (+ lam * L_E)``; returns the detached ``(CE, L_E or None)``.

    ``loss_fn`` is any zero-argument callable returning the regulariser (an :class:`EnmeshmentLoss`);
    ``ce_scale`` replaces the batch mean by ``sum * ce_scale`` (used to split a global batch over
    ranks); ``after_backward`` is called between ``backward()`` and ``step()`` (gradient similarity).
    """
    out = net(x)
    ce = F.cross_entropy(out, y) if ce_scale is None else F.cross_entropy(out, y, reduction="sum") * ce_scale
    le = loss_fn() if (loss_fn is not None and lam > 0) else None
    loss = ce if le is None else torch.add(ce, le, alpha=lam)  # one fused op: ce + lam * le
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if after_backward is not None:
        after_backward()
    optimizer.step()
    return ce.detach(), (None if le is None else le.detach())


@torch.no_grad()
def evaluate(model: nn.Module, data: LabeledTensors, *, batch_size: int = 1024) -> float:
    """Accuracy of ``model`` on ``data`` (evaluated in eval mode on the model's device)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        correct = 0
        for i in range(0, len(data), batch_size):
            pred = model(data.x[i:i + batch_size].to(device)).argmax(1)
            correct += int((pred == data.y[i:i + batch_size].to(device)).sum())
    finally:
        model.train(was_training)
    return correct / max(len(data), 1)


def _dist() -> Tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _as_data(data, name: str) -> LabeledTensors:
    if isinstance(data, LabeledTensors):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = (torch.as_tensor(t) for t in data)
        return LabeledTensors(x.float() if x.dim() == 4 else x.float().view(len(x), 1, 1, -1), y.long(), [], name)
    raise TrainingError(f"{name} must be a LabeledTensors or an (x, y) pair of tensors, got {type(data).__name__}")


def _load_data(config: TrainConfig, train_data, test_data) -> Tuple[LabeledTensors, LabeledTensors]:
    out = []
    for data, split, limit in ((train_data, "train", config.max_train), (test_data, "test", config.max_test)):
        if data is None:
            data = load_dataset(config.dataset, split=split, data_dir=config.data_dir, download=config.download)
        data = _as_data(data, f"{split}_data")
        out.append(data.subset(limit, seed=config.seed) if limit else data)
    return out[0], out[1]


def _cpu_graph(graph: LayeredGraph) -> LayeredGraph:
    """A frozen CPU snapshot (the traced graph's weights are live views of the parameters)."""
    return LayeredGraph([Layer(l.name, l.kind, l.weight.detach().cpu().clone(), l.in_groups, l.groups) for l in graph],
                        chained=graph.chained)


def _cluster(graph: LayeredGraph, layers: List[str], config: TrainConfig, gradsim, rank: int, world: int) -> Clustering:
    payload: List[Any] = [None]
    if rank == 0:
        sims = gradsim.similarity() if gradsim is not None else None
        clustering = cluster_network(_cpu_graph(graph), config.k, layers=layers, similarity=sims,
                                     random_state=config.seed)
        clustering.similarity = config.similarity
        payload = [clustering.to_dict()]
    if world > 1:
        import torch.distributed as dist

        dist.broadcast_object_list(payload, src=0)
    return Clustering.from_dict(payload[0])


def _check_layers(graph: LayeredGraph, config: TrainConfig) -> List[str]:
    layers = list(config.layers) if config.layers is not None else default_cluster_layers(graph)
    for name in layers:
        if name not in graph.layer_names:
            raise ClusteringError(f"unknown layer {name!r} to cluster; the model's layers are {graph.layer_names}")
        smallest = min(graph[name].shape())
        if config.k > smallest:
            raise ClusteringError(f"k={config.k} is out of range for layer {name!r} "
                                  f"({graph[name].n_in()}x{graph[name].n_out} nodes): use 2 <= k <= {smallest}")
    return layers


def _resume(path: Path, config: TrainConfig, arch, model: nn.Module, opt, gen) -> Dict[str, Any]:
    ckpt = load_checkpoint(path)
    state = ckpt.get("train_state") or {}
    if "epoch" not in state or "config" not in state:
        raise TrainingError(f"{path} holds no training state and cannot be resumed; train into another --out")
    old, new = state["config"], config.to_dict()
    diff = [k for k in _RESUME_FIXED if old.get(k) != new.get(k)]
    if diff:
        was = ", ".join(f"{k}={old.get(k)!r}" for k in diff)
        raise TrainingError(f"cannot resume {path}: it was trained with other settings ({was}); "
                            "use the same settings or another --out")
    if state["epoch"] > config.total_epochs:
        raise TrainingError(f"{path} already has {state['epoch']} epochs, "
                            f"more than the {config.total_epochs} requested")
    if arch is not None and ckpt["arch"] != arch:
        raise TrainingError(f"cannot resume {path}: its architecture {ckpt['arch']} differs from {arch}")
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise TrainingError(f"cannot resume {path}: its weights do not fit the model ({first})") from err
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    gen.set_state(state["rng"]["shuffle"])
    if state["rng"].get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return {"epoch": int(state["epoch"]), "history": list(ckpt["history"]), "gradsim": state.get("gradsim"),
            "clustering": Clustering.from_dict(state["train_clustering"]) if state.get("train_clustering") else None}


def _epoch(net, opt, x, y, gen, config: TrainConfig, rank: int, world: int, bar, loss_fn, gradsim):
    """One pass over the data; returns the sample-weighted mean CE and mean L_E (None if not trained)."""
    ce_sum = torch.zeros((), dtype=torch.float64, device=x.device)  # this rank's share of the CE sum
    le_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    perm = torch.randperm(len(y), generator=gen).to(x.device)
    for b, i in enumerate(range(0, len(y), config.batch_size)):
        idx = perm[i:i + config.batch_size]
        n_global = len(idx)
        if world > 1:  # this rank's part of the global batch; the loss is scaled so DDP's mean is the batch mean
            idx = idx.tensor_split(world)[rank]
        ce, le = train_step(net, opt, x[idx], y[idx], loss_fn=loss_fn, lam=config.lam,
                            ce_scale=world / n_global if world > 1 else None,
                            after_backward=gradsim.update if gradsim is not None else None)
        ce_sum.add_(ce, alpha=n_global / world)
        if le is not None:
            le_sum.add_(le, alpha=n_global)
        bar.update(1)
        if not bar.disable and b % 50 == 0:
            bar.set_postfix(ce=f"{float(ce):.3f}")
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(ce_sum)  # L_E is the same on every rank
    return float(ce_sum) / len(y), (float(le_sum) / len(y) if loss_fn is not None else None)


def train(config: TrainConfig, *, model: Optional[nn.Module] = None, train_data=None, test_data=None,
          checkpoint=None, resume: bool = False) -> TrainResult:
    """Run the modular-training pipeline of Section 3 (see the module docstring).

    Parameters
    ----------
    config : TrainConfig
    model : torch.nn.Module, optional
        Train this model instead of building ``config.arch`` / the default for ``config.dataset``
        (its architecture is then recorded as ``None``).
    train_data, test_data : LabeledTensors or (x, y), optional
        Instead of loading ``config.dataset``.
    checkpoint : path, optional
        Written atomically after every epoch.
    resume : bool
        Continue from ``checkpoint`` if it exists (same settings required; ``epochs`` may grow).

    Returns
    -------
    TrainResult

    Raises
    ------
    TrainingError, ClusteringError, DataError
        Invalid settings, a clustering that does not fit the model, missing data, a checkpoint
        that cannot be resumed.

    Examples
    --------
    >>> cfg = TrainConfig(dataset="digits", k=2, warmup_epochs=1, epochs=1, max_train=256, quiet=True)
    >>> result = train(cfg)
    >>> [row["phase"] for row in result.history], result.clustering.layer_names
    (['warmup', 'modular'], ['fc2'])
    """
    config = config.validate()
    flushed = _denormals_flushed()
    torch.set_flush_denormal(True)  # see the module docstring; a no-op where unsupported
    try:
        return _run(config, model, train_data, test_data, checkpoint, resume)
    finally:
        torch.set_flush_denormal(flushed)


def _denormals_flushed() -> bool:
    """Whether this thread already flushes subnormal floats to zero (torch has no getter)."""
    return float(torch.tensor([1e-39], dtype=torch.float32) * 1.0) == 0.0


def _run(config: TrainConfig, model, train_data, test_data, checkpoint, resume) -> TrainResult:
    from tqdm.auto import tqdm

    rank, world = _dist()
    device = resolve_device(config.device)
    if world > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    train_set, test_set = _load_data(config, train_data, test_data)
    torch.manual_seed(config.seed)
    arch = None
    if model is None:
        arch = config.arch if config.arch is not None else default_spec(config.dataset, config.model)
        model = build_model(arch)
    model.to(device)
    graph = trace_graph(model, input_shape=tuple(train_set.x.shape[1:]))
    if int(train_set.y.max()) >= graph.layers[-1].n_out:
        raise TrainingError(f"labels go up to {int(train_set.y.max())} "
                            f"but the model has {graph.layers[-1].n_out} outputs")
    layers = _check_layers(graph, config)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    gradsim = GradientSimilarity(model, layers, graph=graph) if config.similarity == "gradient" else None
    state: Dict[str, Any] = {"epoch": 0, "history": [], "clustering": None, "gradsim": None}
    path = Path(checkpoint) if checkpoint is not None else None
    if resume and path is not None and path.exists():
        state = _resume(path, config, arch, model, opt, gen)
        if gradsim is not None and state["gradsim"] is not None:
            gradsim.load_state_dict(state["gradsim"])
    history, clustering = state["history"], state["clustering"]
    if clustering is None and config.warmup_epochs == 0:
        clustering = _cluster(graph, layers, config, None, rank, world)
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    x, y = train_set.x.to(device), train_set.y.to(device)
    show = not config.quiet and rank == 0
    loss_fn = EnmeshmentLoss(model, clustering, graph=graph, reduction=config.reduction) if clustering else None
    for epoch in range(state["epoch"] + 1, config.total_epochs + 1):
        start, modular = time.perf_counter(), epoch > config.warmup_epochs
        bar = tqdm(total=math.ceil(len(y) / config.batch_size), desc=f"epoch {epoch}/{config.total_epochs} "
                   f"[{'modular' if modular else 'warm-up'}]", disable=not show, leave=False, unit="batch")
        try:
            ce_mean, le_mean = _epoch(net, opt, x, y, gen, config, rank, world, bar,
                                      loss_fn if modular and config.lam > 0 else None,
                                      gradsim if not modular else None)
        finally:
            bar.close()
        if epoch == config.warmup_epochs:
            clustering = _cluster(graph, layers, config, gradsim, rank, world)
            loss_fn = EnmeshmentLoss(model, clustering, graph=graph, reduction=config.reduction)
        l_e = le_mean if le_mean is not None else (float(loss_fn().detach()) if loss_fn else None)
        history.append({
            "epoch": epoch, "phase": "modular" if modular else "warmup", "lam": float(config.lam) if modular else 0.0,
            "loss": ce_mean + (config.lam * le_mean if le_mean is not None else 0.0), "ce": ce_mean, "l_e": l_e,
            "E": loss_fn.clusterability() if loss_fn else None, "test_acc": evaluate(model, test_set),
            "time": time.perf_counter() - start,
        })
        if path is not None and rank == 0:
            _save(path, model, arch, config, history, clustering, clustering, opt, gen, epoch, gradsim)
    final = clustering
    if config.lam == 0 and history:  # the baseline: E of a clustering fitted to the final weights
        final = _cluster(graph, layers, config, None, rank, world)
        final.meta["fitted"] = "final weights"
        history[-1]["E_refit"] = EnmeshmentLoss(model, final, graph=graph).clusterability()
        if path is not None and rank == 0:
            _save(path, model, arch, config, history, final, clustering, opt, gen, config.total_epochs, gradsim)
    return TrainResult(model, arch, final, history)


def _save(path, model, arch, config, history, clustering, train_clustering, opt, gen, epoch, gradsim) -> None:
    rng = {"torch": torch.get_rng_state(), "shuffle": gen.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    train_state = {"epoch": epoch, "config": config.to_dict(), "optimizer": opt.state_dict(), "rng": rng,
                   "train_clustering": train_clustering.to_dict() if train_clustering else None,
                   "gradsim": gradsim.state_dict() if gradsim is not None else None}
    meta = {"producer": "graphinterp.train", "dataset": config.dataset, "k": config.k, "lam": float(config.lam),
            "similarity": config.similarity, "epochs_done": epoch}
    save_checkpoint(path, model, arch=arch, clustering=clustering.to_dict() if clustering else None,
                    history=history, train_state=train_state, meta=meta)
