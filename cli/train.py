"""``graphinterp train``: train a model for modularity (warm-up, BSGC, CE + lambda * L_E)."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, List, Optional, Tuple

import click
import torch

from graphinterp.cli._common import (
    setting_usage_errors,
    POSITIVE_INT, check_output_path, device_option, json_option, parse_layers, quiet_option, seed_option,
)
from graphinterp.cli._eval_data import read_checkpoint
from graphinterp.cli._options import NamedPath
from graphinterp.cli._train_options import check_training_options
from graphinterp.cli._paths import CHECKPOINT_SUFFIXES, record_left_behind
from graphinterp.cli._train_report import report_training, report_transformer
from graphinterp import (
    check_device,
    DATASETS,
    GraphinterpError,
    Launch,
    launch_from_env,
    process_group,
    SIMILARITIES,
    TASKS,
    train,
    TrainConfig,
)

__all__ = ["command"]


@click.command("train", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dataset", type=click.Choice(DATASETS + TASKS), default="digits", show_default=True,
              help="Training data. 'digits' (scikit-learn's 8x8 digits) is built in and works offline; the "
                   "others are read from --data-dir (torchvision layout, or CIFAR-10 as train/<class>/*.jpg). "
                   "Transformer tasks: 'modadd' (a + b mod 113, generated) and 'chars' (a character-level "
                   "language model on --corpus FILE, default <data-dir>/tinyshakespeare/input.txt).")
@click.option("--model", "model_name", type=click.Choice(["mlp", "cnn", "transformer"]), default=None,
              help="Architecture: mlp (paper's Table 1: hidden 64, 64; 32, 32 on digits), cnn (conv 16 channels, "
                   "2x2 max-pool, then 64, 64; 32, 32 on digits), or transformer (modadd, chars; every MLP block is "
                   "clustered). "
                   "Default: transformer for modadd/chars, else mlp.")
@click.option("--k", type=click.IntRange(min=2), default=4, show_default=True, help="Number of clusters per clustered layer.")
@click.option("--lambda", "lam", type=float, default=20.0, show_default=True,
              help="Weight of the enmeshment loss L_E = 1 - E in CE + lambda * L_E, 0..1e6; 0 trains the unclustered "
                   "baseline.")
@click.option("--warmup-epochs", type=click.IntRange(min=0), default=1, show_default=True,
              help="mlp and cnn: epochs of plain cross-entropy training before the layers are clustered.")
@click.option("--epochs", type=click.IntRange(min=0), default=10, show_default=True,
              help="mlp and cnn: epochs of training with the enmeshment loss after clustering.")
@click.option("--batch-size", type=POSITIVE_INT, default=None,
              help="Mini-batch size [default: 64; chars: 32 windows; not for modadd, which trains full-batch].")
@click.option("--lr", type=float, default=None, help="Learning rate [default: Adam 1e-3; transformer: AdamW 1e-2 on modadd, 3e-3 on chars].")
@click.option("--steps", type=click.IntRange(min=0), default=None,
              help="Transformer: optimiser steps with the enmeshment loss after clustering "
                   "[default: modadd 600, chars 500].")
@click.option("--warmup-steps", type=click.IntRange(min=0), default=None,
              help="Transformer: steps of plain cross-entropy before the MLP blocks are clustered "
                   "[default: modadd 200, chars 100].")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=None,
              help="Transformer: AdamW weight decay [default: modadd 1, chars 0.1].")
@click.option("--corpus", type=NamedPath(dir_okay=False), default=None,
              help="chars: UTF-8 text file to train on (first 90% train, last 10% validation).")
@click.option("--similarity", type=click.Choice(SIMILARITIES), default="weight", show_default=True,
              help="What BSGC clusters: the weights |W|, or the average cosine of gradients accumulated in warm-up.")
@click.option("--clusters", type=click.Choice(["bsgc", "contiguous"]), default="bsgc", show_default=True,
              help="Transformer: BSGC of every MLP block, or the fixed contiguous ranges of the paper's authors' GPT-2 "
                   "experiment (hidden units 0..d_mlp/k-1 with stream dimensions 0..d_model/k-1, and so on), which "
                   "need no warm-up (--warmup-steps 0).")
@click.option("--reduction", type=click.Choice(["mean", "mass"]), default="mean", show_default=True,
              help="How L_E combines several clustered layers: the mean of per-layer E (every layer counts the "
                   "same, e.g. a CNN's small fc2 beside a 4096-input fc1) or mass-weighted (the model-wide E "
                   "that analyze reports).")
@click.option("--layers", default=None, metavar="NAMES",
              help="mlp and cnn: comma-separated layers to cluster (e.g. fc1,fc2). Default: every Linear layer "
                   "between two hidden levels (fc2 for the MLP and for the CNN, whose fc1 reads the conv channels).")
@seed_option
@device_option
@click.option("--data-dir", type=NamedPath(file_okay=False), default=None,
              help="Folder holding the dataset files, or chars' default corpus (not with --corpus; modadd is "
                   "generated) (default: $GRAPHINTERP_DATA_DIR or ~/.cache/graphinterp/datasets).")
@click.option("--download", is_flag=True,
              help="mlp and cnn: download the dataset into --data-dir if it is missing (never done otherwise).")
@click.option("--max-train", type=POSITIVE_INT, default=None, metavar="N",
              help="mlp and cnn: train on a seeded random subset of N examples (N >= 1); when the training set "
                   "is smaller, all of it is used and a note says so.")
@click.option("--out", type=NamedPath(dir_okay=False), default="model.pt", show_default=True,
              help="Checkpoint written atomically after every epoch (transformer: every 100 steps and the last) "
                   "(weights, architecture, clustering, history, training state); locked while training, so two "
                   "runs cannot write the same file.")
@click.option("--resume", is_flag=True,
              help="Continue from --out if it exists (same settings; --epochs, or a transformer's --steps, may be "
                   "raised). After Ctrl-C the error line says what --out holds and whether --resume continues it.")
@quiet_option
@json_option
def command(dataset: str, model_name: str, k: int, lam: float, warmup_epochs: int, epochs: int, batch_size: int,
            lr: Optional[float], steps: Optional[int], warmup_steps: Optional[int], weight_decay: Optional[float],
            corpus: Optional[str], similarity: str, clusters: str, reduction: str, layers: Optional[str], seed: int,
            device: str, data_dir: Optional[str], download: bool, max_train: Optional[int], out: str, resume: bool,
            quiet: bool, as_json: bool) -> None:
    """Train a modular network: warm up, cluster with BSGC, then train with CE + lambda * L_E.

    \b
    Examples:
      graphinterp train --dataset digits --epochs 5
      graphinterp train --dataset mnist --data-dir ~/data --k 4 --lambda 20 --out modular.pt
      graphinterp train --dataset mnist --data-dir ~/data --lambda 0 --out baseline.pt
      graphinterp train --dataset cifar10 --model cnn --data-dir ~/data --out cnn.pt
      graphinterp train --dataset modadd --model transformer --out modadd.pt
      graphinterp train --dataset chars --corpus input.txt --lambda 0 --out chars-base.pt
      torchrun --nproc-per-node 2 -m graphinterp.cli train --dataset digits --out ddp.pt

    Options that the chosen --dataset's training would not use are refused, not ignored: --epochs,
    --warmup-epochs, --layers, --max-train and --download are for mlp and cnn, --steps, --warmup-steps
    and --weight-decay for transformers, --corpus for chars, --data-dir and --batch-size not for modadd,
    --data-dir and --download not for the built-in digits.

    Under torchrun (mlp and cnn only, no --resume) every process trains its share of each batch
    (gloo on the CPU, NCCL with one GPU per process); the result equals a one-process run, and only
    rank 0 prints and writes --out.

    Prints the per-epoch history (loss, CE, L_E, clusterability E of the clustered layers beside
    E_rand, the E of a random partition with the same cluster sizes, and the normalised score
    (E - E_rand) / (1 - E_rand), test accuracy) and the final E, E_random, score and accuracy.
    --data-dir and --corpus are stored as absolute paths, so OUT can be evaluated from any folder.
    Inspect the result with `graphinterp analyze OUT --k K`.
    """
    if model_name is None:
        model_name = "transformer" if dataset in TASKS else "mlp"
    if (model_name == "transformer") != (dataset in TASKS):
        raise click.UsageError(f"--model {model_name} does not train on --dataset {dataset}: the transformer trains on "
                               f"{' or '.join(TASKS)}, mlp and cnn on {', '.join(DATASETS)}")
    check_training_options(click.get_current_context(), dataset)
    launch, torch_device = _launch(model_name, resume, device)
    if model_name == "transformer":
        _train_transformer(dataset, k, lam, steps, warmup_steps, lr, weight_decay, batch_size, similarity, clusters,
                           reduction, seed, device, data_dir, corpus, out, resume, quiet, as_json)
        return
    config = _validated(TrainConfig(dataset=dataset, model=model_name, k=k, lam=lam, warmup_epochs=warmup_epochs,
                                    epochs=epochs, batch_size=batch_size or 64, lr=1e-3 if lr is None else lr,
                                    similarity=similarity, reduction=reduction, layers=parse_layers(layers), seed=seed,
                                    device=device, data_dir=data_dir, download=download, max_train=max_train,
                                    quiet=quiet or as_json))
    existing = _existing(out)
    check_output_path(out, input_dirs=_guarded(existing, config.data_dir) if config.dataset != "digits" else [],
                      suffixes=CHECKPOINT_SUFFIXES, param_hint="--out", note_replaced=False)  # the trainer says so
    _replacing(out, existing, resume)
    with process_group(launch, torch_device), _resume_hint(resume, launch.is_main):  # arguments checked on every rank
        with setting_usage_errors():  # found once the graph is built (gradient similarity: when the warm-up ends)
            result = train(config, checkpoint=out, resume=resume, on_note=_note)
    if launch.is_main:  # rank 0 alone prints (train() already writes --out on rank 0 only)
        report_training(config, result, out, lam, k, as_json)


def _data_folder(data_dir: Optional[str]) -> str:
    """The folder the data is read from: --data-dir, else the default ($GRAPHINTERP_DATA_DIR or the cache)."""
    from graphinterp import default_data_dir

    return str(data_dir) if data_dir is not None else str(default_data_dir())


def _existing(out: str) -> Optional[bool]:
    """What --out is now: None when there is no file, else whether it is a graphinterp checkpoint (read once)."""
    return read_checkpoint(out) is not None if os.path.isfile(out) else None


def _guarded(existing: Optional[bool], data_dir: Optional[str]) -> List[str]:
    """The data folder --out must not write into, unless --out is already a graphinterp checkpoint there (this
    command's own earlier run: rerunning or resuming it must work; no data file is a checkpoint)."""
    return [] if existing else [_data_folder(data_dir)]


def _note(text: str) -> None:
    """A note about the run (e.g. --max-train above the training set), on stderr as it arises."""
    click.echo(f"note: {text}", err=True)


def _replacing(out: str, existing: Optional[bool], resume: bool) -> None:
    """A new run onto an existing --out: refused unless that file is a graphinterp checkpoint (a third-party
    model, data or any other file is never replaced). The trainers note the replacement once every other check
    has passed (graphinterp.training.run_notes)."""
    if resume or existing is None:
        return
    if not existing:
        raise click.BadParameter(f"{out} exists and is not a graphinterp checkpoint, so a new run will not replace it: "
                                 "choose another path (or delete the file first if it is meant to go)",
                                 param_hint="--out")


@contextlib.contextmanager
def _resume_hint(resume: bool, record: bool = True) -> Iterator[None]:
    """On Ctrl-C, record for ``graphinterp``'s error line what --out holds and how to resume it.

    The trainers raise :class:`graphinterp.TrainingInterrupted` (a ``KeyboardInterrupt`` that
    describes the checkpoint). ``record`` is False on the torchrun ranks that write no checkpoint.
    """
    from graphinterp import TrainingInterrupted

    try:
        yield
    except TrainingInterrupted as err:
        if record:
            record_left_behind(err.describe("run the same command again to continue" if resume
                                            else "continue with the same command plus --resume"))
        raise


def _launch(model_name: str, resume: bool, device: str) -> Tuple[Launch, torch.device]:
    """The torchrun launch of this process and its device; usage errors for what several processes cannot do.

    Runs before the process group exists, so a bad combination is one ``error:`` line on every rank.
    """
    launch = launch_from_env()
    if launch.distributed and model_name == "transformer":
        raise click.UsageError(f"--model transformer trains on one process only; run it without torchrun "
                               f"(this launch has {launch.world_size} processes)")
    if launch.distributed and resume:
        raise click.UsageError("--resume is not supported under torchrun (each process would read --out on its "
                               "own); resume with one process: graphinterp train --resume ...")
    try:
        return launch, check_device(launch, device)
    except GraphinterpError as err:
        raise click.BadParameter(str(err), param_hint="--device") from None


def _validated(config):
    """``config.validate()``, a bad setting refused as a usage error (exit code 2, as click's own checks of the
    flags); the message names the flag."""
    try:
        return config.validate()
    except GraphinterpError as err:
        raise click.UsageError(str(err)) from None


def _train_transformer(task, k, lam, steps, warmup_steps, lr, weight_decay, batch_size, similarity, clusters,
                       reduction, seed, device, data_dir, corpus, out, resume, quiet, as_json) -> None:
    from graphinterp import TransformerConfig, train_transformer

    config = _validated(TransformerConfig(task=task, k=k, lam=lam, steps=steps, warmup_steps=warmup_steps, lr=lr,
                                          weight_decay=weight_decay, similarity=similarity, clusters=clusters,
                                          reduction=reduction,
                                          seed=seed, device=device, data_dir=data_dir, corpus=corpus,
                                          quiet=quiet or as_json,
                                          **({"batch_size": batch_size} if batch_size is not None else {})))
    inputs = []
    if task == "chars":
        from graphinterp import default_corpus_path

        inputs.append(corpus or default_corpus_path(config.data_dir))
    existing = _existing(out)
    check_output_path(out, inputs=inputs, input_dirs=_guarded(existing, config.data_dir) if task == "chars" and not
                      corpus else [], suffixes=CHECKPOINT_SUFFIXES, param_hint="--out", note_replaced=False)
    _replacing(out, existing, resume)  # --out itself (--resume reads it); the trainer says that a new run replaces it
    if task == "chars":  # a missing or empty corpus is reported before the model is built
        from graphinterp import load_corpus

        load_corpus(config.corpus, data_dir=config.data_dir, n_ctx=config.n_ctx, max_chars=config.max_chars)
    with _resume_hint(resume):
        result = train_transformer(config, checkpoint=out, resume=resume, on_note=_note)
    report_transformer(config, result, out, lam, k, as_json)
