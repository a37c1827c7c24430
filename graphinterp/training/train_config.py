"""Settings of a modular-training run (:class:`TrainConfig`), its result and the history table (the rules every
training config shares are in :mod:`graphinterp.training.settings`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from torch import nn

from graphinterp.clustering.cluster import Clustering
from graphinterp.clustering.validation import check_k
from graphinterp.data.datasets import dataset_info, default_data_dir
from graphinterp.common.errors import GraphinterpError, TrainingError
from graphinterp.training.settings import (LR_MAX, absolute_path, check_clustering_options, check_common_settings,
                                           check_ranges, setting_name)

__all__ = ["RESUME_FIXED", "TrainConfig", "TrainResult", "format_history"]

RESUME_FIXED = ("dataset", "model", "arch", "k", "lam", "warmup_epochs", "batch_size", "lr", "similarity",
                 "layers", "reduction", "seed", "max_train")


@dataclass
class TrainConfig:
    """Everything that defines a modular-training run (defaults: the paper's Table 1).

    ``layers=None`` clusters :func:`graphinterp.training.masks.default_cluster_layers`; ``arch`` overrides
    :func:`graphinterp.sources.models.default_spec` (e.g. other hidden widths); ``max_train``/``max_test``
    take seeded random subsets; ``device="auto"`` uses CUDA when available. ``validate()`` makes
    ``data_dir`` absolute, so the checkpoint's record of it holds from any folder.

    ``reduction`` is the :class:`~graphinterp.training.loss.EnmeshmentLoss` layer weighting. The default,
    ``"mean"``, drives every clustered layer towards E = 1; ``"mass"`` trains the model-wide E that
    ``analyze`` reports, where a big layer dominates a small one (CIFAR-10 CNN, ``fc1`` and ``fc2``
    clustered, 1 + 10 epochs: E of ``fc2`` 0.9997 with ``"mean"``, 0.904 with ``"mass"``). With one
    clustered layer they are the same.

    Parameters
    ----------
    dataset : {"digits", "mnist", "fashion-mnist", "cifar10"}, default "digits"
    model : {"mlp", "cnn"}, default "mlp"
        Architecture of :func:`graphinterp.sources.models.default_spec` for ``dataset``.
    k : int, default 4
        Number of clusters (>= 2).
    lam : float, default 20.0
        Weight of the enmeshment loss in ``CE + lam * L_E``, in ``0..LAMBDA_MAX``; 0 trains the unclustered
        baseline.
    warmup_epochs : int, default 1
        Epochs of cross-entropy only before the clustering.
    epochs : int, default 10
        Epochs after the clustering (``warmup_epochs + epochs >= 1``).
    batch_size : int, default 64
        Global batch size (split over the ranks of a distributed run).
    lr : float, default 1e-3
        Adam's learning rate, in ``(0, LR_MAX]``.
    similarity : {"weight", "gradient"}, default "weight"
        What BSGC clusters: ``|W|``, or gradient similarities accumulated during warm-up (needs
        ``warmup_epochs >= 1``).
    layers : list of str, optional
        Layers to cluster; default :func:`graphinterp.training.masks.default_cluster_layers`.
    reduction : {"mean", "mass"}, default "mean"
        The layer weighting of L_E (above).
    seed : int, default 0
        Seed of the initialisation, batch order, subsets and clustering, in ``0..SEED_MAX``.
    device : str, default "auto"
        Where training runs (:func:`graphinterp.common.devices.resolve_device`).
    data_dir : str, optional
        Folder of the datasets; default :func:`graphinterp.data.datasets.default_data_dir` (resolved by
        :meth:`validate` and recorded, so that ablate and circuits read the data from the same folder later).
    download : bool, default False
        Download a missing dataset.
    max_train, max_test : int, optional
        Sizes of seeded random subsets of the training and test sets (>= 1); default whole sets.
    arch : dict, optional
        An architecture spec for :func:`graphinterp.sources.models.build_model`, used instead of the default.
    quiet : bool, default False
        No progress bars.
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
    reduction: str = "mean"
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
        dataset_info(self.dataset)  # DataError for an unknown dataset
        if self.model not in ("mlp", "cnn"):
            raise TrainingError(f"unknown model {self.model!r}; choose 'mlp' or 'cnn' (or pass model=...)")
        check_common_settings(self, (("warmup_epochs", 0), ("epochs", 0), ("batch_size", 1), ("seed", 0),
                                     ("max_train", 1), ("max_test", 1)), optional=("max_train", "max_test"))
        check_k(self.k)  # against the model's layers once the graph is built (train._check_layers)
        if self.total_epochs < 1:
            raise TrainingError(f"{setting_name('warmup_epochs')} + {setting_name('epochs')} must be at least 1, got "
                                f"{self.warmup_epochs} + {self.epochs}; train for at least one epoch")
        check_ranges(self, [("lr", 0.0, LR_MAX, "right")])
        from graphinterp.common.files import resolve_device

        try:
            resolve_device(self.device)
        except GraphinterpError as err:
            raise TrainingError(str(err)) from None
        check_clustering_options(self.similarity, self.reduction, "warmup_epochs", self.warmup_epochs)
        if self.data_dir is None and self.dataset != "digits":  # the folder it reads now, recorded in the checkpoint
            self.data_dir = str(default_data_dir())  # ($GRAPHINTERP_DATA_DIR may be unset when it is evaluated)
        self.data_dir = absolute_path(self.data_dir)
        if self.layers is not None:
            if isinstance(self.layers, str) or not self.layers or not all(isinstance(n, str) for n in self.layers):
                raise TrainingError(f"layers must be a non-empty list of layer names or None, got {self.layers!r}")
            self.layers = list(self.layers)
            twice = sorted({n for n in self.layers if self.layers.count(n) > 1})
            if twice:  # each occurrence was clustered again, the last overwriting the first
                raise TrainingError(f"{setting_name('layers')} names {', '.join(twice)} more than once; give each layer once")
        return self

    def to_dict(self) -> Dict[str, Any]:
        """Plain dict (checkpoint- and JSON-safe)."""
        return asdict(self)


@dataclass
class TrainResult:
    """What :func:`train` returns; ``table()`` formats the history.

    ``notes`` are one-line remarks about the run that change no result but that a user should know,
    e.g. that ``max_train`` exceeded the training set, which was then used whole.

    Parameters
    ----------
    model : torch.nn.Module
        The trained model.
    arch : dict or None
        Its architecture spec (None for a model passed in without one).
    clustering : Clustering or None
        The clustering trained with; for ``lam = 0``, one fitted to the final weights.
    history : list of dict
        One row per epoch (see :func:`format_history`).
    notes : list of str, optional
        One-line remarks about the run.
    """

    model: nn.Module
    arch: Optional[Dict[str, Any]]
    clustering: Optional[Clustering]
    history: List[Dict[str, Any]]
    notes: List[str] = field(default_factory=list)

    def table(self) -> str:
        return format_history(self.history)


def format_history(history: List[Dict[str, Any]]) -> str:
    """The per-epoch history as a plain-text table (``-`` where a value does not exist yet).

    Parameters
    ----------
    history : list of dict
        One row per epoch with (some of) ``epoch``, ``phase``, ``loss``, ``ce``, ``l_e``, ``E``, ``E_random``,
        ``score``, ``test_acc`` and ``time``; other keys are ignored.

    Returns
    -------
    str
        A header line and one line per row, joined by newlines.

    Examples
    --------
    ``E_rand`` is E's random-partition baseline and ``score`` the normalised score (absent in rows of
    older checkpoints: ``-``).

    >>> print(format_history([{"epoch": 1, "phase": "warmup", "loss": 0.5, "ce": 0.5, "l_e": None,
    ...                        "E": 0.3, "E_random": 0.25, "score": 0.0667, "test_acc": 0.9, "time": 1.0}]))
    epoch  phase   loss    CE      L_E  E       E_rand  score   test acc  time (s)
    1      warmup  0.5000  0.5000  -    0.3000  0.2500  0.0667  0.9000    1.0
    """
    cols = [("epoch", "epoch", "{}"), ("phase", "phase", "{}"), ("loss", "loss", "{:.4f}"), ("CE", "ce", "{:.4f}"),
            ("L_E", "l_e", "{:.4f}"), ("E", "E", "{:.4f}"), ("E_rand", "E_random", "{:.4f}"),
            ("score", "score", "{:.4f}"), ("test acc", "test_acc", "{:.4f}"),
            ("time (s)", "time", "{:.1f}")]
    rows = [[("-" if r.get(key) is None else fmt.format(r[key])) for _, key, fmt in cols] for r in history]
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, (h, _, _) in enumerate(cols)]
    lines = [[h for h, _, _ in cols]] + rows
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines)
