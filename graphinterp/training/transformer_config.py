"""Settings of a transformer training run (:class:`TransformerConfig`) and each task's defaults.

Defaults per task (``None`` fields are filled from :data:`TASK_DEFAULTS` by :meth:`TransformerConfig.validate`):

========  ==================================================================================
modadd    p = 113, 30% of the pairs train (Nanda et al.); 1 layer, d_model 128, 4 heads,
          d_mlp 512, ReLU, no LayerNorm; AdamW lr 1e-2 (not 1e-3: it generalises within ~500
          steps instead of thousands, see benchmarks/README.md), weight decay 1, betas
          (0.9, 0.98), full batch; weights and embeddings drawn N(0, 1/d_model); 200 + 600 steps
chars     windows of 32 characters, batches of 32; 2 layers, d_model 64, 4 heads, d_mlp 256,
          ReLU, pre-LayerNorm; AdamW lr 3e-3, weight decay 0.1, betas (0.9, 0.98); 100 + 500 steps
========  ==================================================================================
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Optional

from graphinterp.common.errors import ClusteringError, GraphinterpError, TrainingError
from graphinterp.clustering.mlp_blocks import METHODS
from graphinterp.data.tasks import TASKS
from graphinterp.training.settings import (
    LR_MAX, absolute_path, check_clustering_options, check_common_settings, check_ranges, setting_name,
)

__all__ = ["TransformerConfig", "TASK_DEFAULTS", "RESUME_FIXED", "CHARS_ONLY"]

TASK_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "modadd": dict(warmup_steps=200, steps=600, lr=1e-2, weight_decay=1.0, n_layers=1, layernorm=False,
                   eval_every=100, init_std=128 ** -0.5, d_model=128, d_mlp=512),
    "chars": dict(warmup_steps=100, steps=500, lr=3e-3, weight_decay=0.1, n_layers=2, layernorm=True,
                  eval_every=100, init_std=None, d_model=64, d_mlp=256),
}
#: Settings a resumed run must share with the checkpoint.
#: Settings of the character LM only: a modadd run records them as None (it never uses them).
CHARS_ONLY = ("corpus", "data_dir", "n_ctx", "batch_size", "max_chars", "eval_windows")
RESUME_FIXED = ("task", "k", "lam", "warmup_steps", "lr", "weight_decay", "beta1", "beta2", "similarity", "clusters",
                "reduction", "seed", "p", "train_frac", "data_seed", "n_ctx", "batch_size", "d_model", "n_heads",
                "d_mlp", "n_layers", "layernorm", "act", "init_std", "max_chars")


@dataclass
class TransformerConfig:
    """Everything that defines a transformer training run (``None``: the task's default).

    ``validate()`` makes ``corpus`` and ``data_dir`` absolute, so the checkpoint's record of them holds
    from any folder.

    Parameters
    ----------
    task : {"modadd", "chars"}, default "modadd"
        Modular addition, or a character language model on a text corpus.
    k : int, default 4
        Number of clusters of the MLP blocks (>= 2).
    lam : float, default 20.0
        Weight of the enmeshment loss in ``CE + lam * L_E``, in ``0..LAMBDA_MAX``; 0 trains the baseline.
    warmup_steps, steps : int, optional
        Optimiser steps before and after the clustering (``warmup_steps + steps >= 1``).
    lr, weight_decay : float, optional
        AdamW's learning rate (in ``(0, LR_MAX]``) and weight decay (in ``[0, 1000]``).
    beta1, beta2 : float, default 0.9 and 0.98
        AdamW's betas, in ``[0, 1)``.
    similarity : {"weight", "gradient"}, default "weight"
        What BSGC clusters: ``|W|``, or gradient similarities accumulated during warm-up.
    clusters : {"bsgc", "contiguous"}, default "bsgc"
        BSGC of every MLP block, or the fixed contiguous ranges of the authors' GPT-2 experiment
        (:func:`~graphinterp.clustering.mlp_blocks.cluster_mlp_blocks`, ``method``), which need no warm-up.
    reduction : {"mean", "mass"}, default "mean"
        Layer weighting of L_E (:class:`~graphinterp.training.loss.EnmeshmentLoss`).
    seed : int, default 0
        Seed of the initialisation, batches and clustering, in ``0..SEED_MAX``.
    device : str, default "auto"
        Where training runs (:func:`graphinterp.common.devices.resolve_device`).
    eval_every : int, optional
        Steps between evaluations (history rows, checkpoints, progress lines); the end of the warm-up and the
        last step are always ones.
    d_model, n_heads, d_mlp, n_layers, act, layernorm, init_std
        Model sizes and settings of :func:`graphinterp.sources.transformer.transformer`
        (``d_model`` divisible by ``n_heads``; ``n_heads`` default 4, ``act`` default ``"relu"``).
    p : int, default 113
        Modulus of modular addition (``task="modadd"``).
    train_frac : float, default 0.3
        Share of the ``p * p`` pairs in the training split (modadd).
    data_seed : int, default 0
        Seed of the train/test split (modadd).
    corpus : str, optional
        Text file of ``task="chars"``; default :func:`graphinterp.data.tasks.default_corpus_path`.
    data_dir : str, optional
        Data folder of the default corpus.
    n_ctx : int, default 32
        Window length of the character LM (>= 2).
    batch_size : int, default 32
        Windows per step (chars; modadd trains on the full training split).
    max_chars : int, optional
        Use only the corpus's first ``max_chars`` characters.
    eval_windows : int, optional
        Validation windows evaluated (the first ones, consecutive and non-overlapping); default every one.
    quiet : bool, default False
        No progress lines.
    """

    task: str = "modadd"
    k: int = 4
    lam: float = 20.0
    warmup_steps: Optional[int] = None
    steps: Optional[int] = None
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    beta1: float = 0.9
    beta2: float = 0.98
    similarity: str = "weight"
    clusters: str = "bsgc"
    reduction: str = "mean"
    seed: int = 0
    device: str = "auto"
    eval_every: Optional[int] = None
    # model
    d_model: Optional[int] = None
    n_heads: int = 4
    d_mlp: Optional[int] = None
    n_layers: Optional[int] = None
    act: str = "relu"
    layernorm: Optional[bool] = None
    init_std: Optional[float] = None
    # modadd
    p: int = 113
    train_frac: float = 0.3
    data_seed: int = 0
    # chars
    corpus: Optional[str] = None
    data_dir: Optional[str] = None
    n_ctx: int = 32
    batch_size: int = 32
    max_chars: Optional[int] = None
    eval_windows: Optional[int] = None  # None: every validation window (was 256: 7% of Tiny Shakespeare's, unsaid)
    quiet: bool = False

    def validate(self) -> "TransformerConfig":
        """Fill the task's defaults; raise :class:`TrainingError` / :class:`ClusteringError` on a bad value."""
        if self.task not in TASKS:
            raise TrainingError(f"unknown transformer task {self.task!r}; choose one of {', '.join(TASKS)}")
        explicit_init = self.init_std is not None
        for key, value in TASK_DEFAULTS[self.task].items():
            if getattr(self, key) is None and not (key == "init_std" and explicit_init):
                setattr(self, key, value)
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 2:
            raise ClusteringError(f"k must be an integer >= 2, got {self.k!r}")
        check_common_settings(self, (("warmup_steps", 0), ("steps", 0), ("seed", 0), ("eval_every", 1), ("d_model", 1),
                                     ("n_heads", 1), ("d_mlp", 1), ("n_layers", 1), ("p", 2), ("data_seed", 0),
                                     ("n_ctx", 2), ("batch_size", 1), ("eval_windows", 1)), optional=("eval_windows",))
        if self.warmup_steps + self.steps < 1:
            raise TrainingError(f"{setting_name('warmup_steps')} + {setting_name('steps')} must be at least 1, got "
                                f"{self.warmup_steps} + {self.steps}; train for at least one step")
        if self.d_model % self.n_heads:
            raise TrainingError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.k > min(self.d_model, self.d_mlp):  # before any data is read or step taken
            raise TrainingError(f"k={self.k} is larger than the MLP blocks allow (d_model {self.d_model}, d_mlp "
                                f"{self.d_mlp}): use k <= {min(self.d_model, self.d_mlp)}")
        # AdamW refuses betas of 1 or more; a train_frac of 1 leaves no test split
        check_ranges(self, [("lr", 0.0, LR_MAX, "right"), ("weight_decay", 0.0, 1e3, "both"), ("beta1", 0.0, 1.0, "left"),
                            ("beta2", 0.0, 1.0, "left"), ("train_frac", 0.0, 1.0, "neither")])
        check_clustering_options(self.similarity, self.reduction, "warmup_steps", self.warmup_steps)
        if self.clusters not in METHODS:
            raise TrainingError(f"{setting_name('clusters')} must be one of {', '.join(METHODS)}, got {self.clusters!r}")
        if self.clusters == "contiguous" and self.similarity == "gradient":
            raise TrainingError(f"{setting_name('similarity')} gradient does not apply to fixed contiguous clusters "
                                f"({setting_name('clusters')} contiguous), which no similarity decides")
        self.corpus, self.data_dir = absolute_path(self.corpus), absolute_path(self.data_dir)
        if self.act not in ("relu", "gelu"):
            raise TrainingError(f"act must be 'relu' or 'gelu', got {self.act!r}")
        from graphinterp.common.files import resolve_device

        try:
            resolve_device(self.device)
        except GraphinterpError as err:
            raise TrainingError(str(err)) from None
        return self

    def model_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments of :func:`graphinterp.sources.transformer.transformer` set by this config."""
        return dict(d_model=self.d_model, n_heads=self.n_heads, d_mlp=self.d_mlp, n_layers=self.n_layers,
                    act=self.act, layernorm=bool(self.layernorm), init_std=self.init_std)

    def to_dict(self) -> Dict[str, Any]:
        """The settings as a checkpoint records them; a modadd run's character-LM settings are None (unused)."""
        out = asdict(self)
        if self.task == "modadd":
            out.update({key: None for key in CHARS_ONLY})
        return out

    def resume_fixed(self) -> tuple:
        """The settings a resumed run must share with the checkpoint (``RESUME_FIXED``, less the character LM's
        for modadd, which older checkpoints recorded with the defaults they never used)."""
        return RESUME_FIXED if self.task == "chars" else tuple(k for k in RESUME_FIXED if k not in CHARS_ONLY)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "TransformerConfig":
        """The config recorded by :meth:`to_dict` (unknown keys are ignored, missing ones take their defaults).

        Parameters
        ----------
        data : dict
            Field name to value, e.g. a checkpoint's record of the run's settings.

        Returns
        -------
        TransformerConfig
            Not validated (call :meth:`validate`).
        """
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names and not (v is None and k in CHARS_ONLY)})
