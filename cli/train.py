"""``graphinterp train``: train a model for modularity (warm-up, BSGC, CE + lambda * L_E)."""
from __future__ import annotations

from typing import Optional

import click

from graphinterp.cli._common import (
    POSITIVE_INT, check_output_path, device_option, emit_json, format_table, json_option, parse_layers, quiet_option,
    seed_option,
)
from graphinterp.data import DATASETS
from graphinterp.train import SIMILARITIES, TrainConfig, format_history, train

__all__ = ["command"]


@click.command("train", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dataset", type=click.Choice(DATASETS), default="digits", show_default=True,
              help="Training data. 'digits' (scikit-learn's 8x8 digits) is built in and works offline; the "
                   "others are read from --data-dir (torchvision layout, or CIFAR-10 as train/<class>/*.jpg).")
@click.option("--model", "model_name", type=click.Choice(["mlp", "cnn"]), default="mlp", show_default=True,
              help="Architecture of the paper's Table 1: mlp (hidden 64, 64; 32, 32 on digits) or cnn "
                   "(conv 16 channels, 2x2 max-pool, then 64, 64).")
@click.option("--k", type=click.IntRange(min=2), default=4, show_default=True, help="Number of clusters per clustered layer.")
@click.option("--lambda", "lam", type=float, default=20.0, show_default=True,
              help="Weight of the enmeshment loss L_E = 1 - E in CE + lambda * L_E, 0..1e6; 0 trains the unclustered "
                   "baseline.")
@click.option("--warmup-epochs", type=click.IntRange(min=0), default=1, show_default=True,
              help="Epochs of plain cross-entropy training before the layers are clustered.")
@click.option("--epochs", type=click.IntRange(min=0), default=10, show_default=True,
              help="Epochs of training with the enmeshment loss after clustering.")
@click.option("--batch-size", type=POSITIVE_INT, default=64, show_default=True, help="Mini-batch size.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate.")
@click.option("--similarity", type=click.Choice(SIMILARITIES), default="weight", show_default=True,
              help="What BSGC clusters: the weights |W|, or the average cosine of gradients accumulated in warm-up.")
@click.option("--reduction", type=click.Choice(["mean", "mass"]), default="mean", show_default=True,
              help="How L_E combines several clustered layers: the mean of per-layer E (every layer counts the "
                   "same, e.g. a CNN's small fc2 beside a 4096-input fc1) or mass-weighted (the model-wide E "
                   "that analyze reports).")
@click.option("--layers", default=None, metavar="NAMES",
              help="Comma-separated layers to cluster (e.g. fc1,fc2). Default: every Linear layer between two hidden "
                   "levels (fc2 for the MLP, fc1,fc2 for the CNN).")
@seed_option
@device_option
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Folder holding the dataset files "
                   "(default: $GRAPHINTERP_DATA_DIR or ~/.cache/graphinterp/datasets).")
@click.option("--download", is_flag=True,
              help="Download the dataset into --data-dir if it is missing (never done otherwise).")
@click.option("--max-train", type=POSITIVE_INT, default=None, metavar="N", help="Train on a seeded random subset of N examples.")
@click.option("--out", type=click.Path(dir_okay=False), default="model.pt", show_default=True,
              help="Checkpoint written atomically after every epoch "
                   "(weights, architecture, clustering, history, training state); locked while training, so two "
                   "runs cannot write the same file.")
@click.option("--resume", is_flag=True,
              help="Continue from --out if it exists (same settings; --epochs may be raised).")
@quiet_option
@json_option
def command(dataset: str, model_name: str, k: int, lam: float, warmup_epochs: int, epochs: int, batch_size: int,
            lr: float, similarity: str, reduction: str, layers: Optional[str], seed: int, device: str,
            data_dir: Optional[str], download: bool, max_train: Optional[int], out: str, resume: bool, quiet: bool,
            as_json: bool) -> None:
    """Train a modular network: warm up, cluster with BSGC, then train with CE + lambda * L_E.

    \b
    Examples:
      graphinterp train --dataset digits --epochs 5
      graphinterp train --dataset mnist --data-dir ~/data --k 4 --lambda 20 --out modular.pt
      graphinterp train --dataset mnist --data-dir ~/data --lambda 0 --out baseline.pt
      graphinterp train --dataset cifar10 --model cnn --data-dir ~/data --out cnn.pt

    Prints the per-epoch history (loss, CE, L_E, clusterability E of the clustered layers, test
    accuracy) and the final E and accuracy. Inspect the result with `graphinterp analyze OUT --k K`.
    """
    config = TrainConfig(dataset=dataset, model=model_name, k=k, lam=lam, warmup_epochs=warmup_epochs, epochs=epochs,
                         batch_size=batch_size, lr=lr, similarity=similarity, reduction=reduction,
                         layers=parse_layers(layers), seed=seed, device=device, data_dir=data_dir, download=download,
                         max_train=max_train, quiet=quiet or as_json).validate()
    check_output_path(out, param_hint="--out")
    result = train(config, checkpoint=out, resume=resume)
    last = result.history[-1]
    per_layer = {}
    if result.clustering is not None:
        from graphinterp.loss import EnmeshmentLoss

        per_layer = EnmeshmentLoss(result.model, result.clustering).per_layer()
    if as_json:
        emit_json({"config": config.to_dict(), "checkpoint": out, "history": result.history,
                   "final": {"test_acc": last["test_acc"], "E": last.get("E_refit", last["E"]),
                             "E_per_layer": per_layer,
                             "clustering": result.clustering.to_dict() if result.clustering else None}})
        return
    click.echo(format_history(result.history))
    click.echo("")
    if per_layer:
        what = "clustering fitted to the final weights" if lam == 0 else "training clustering"
        click.echo(format_table([[name, k, value] for name, value in per_layer.items()], ["layer", "k", f"E ({what})"]))
    E = last.get("E_refit", last["E"])
    click.echo(f"final test accuracy {last['test_acc']:.4f}; E = {E:.4f}; checkpoint: {out}")
