"""Which ``graphinterp train`` options apply to which kind of training (mlp and cnn in epochs, the built-in
digits, a transformer task in steps): the one table of that rule and the check that refuses an option the
chosen dataset would ignore."""
from __future__ import annotations

import click

from graphinterp.cli._options import given_options

__all__ = ["TRAINING_OPTIONS", "check_training_options"]


#: What each kind of training is, as the error line says it: mlp and cnn on an image dataset read from
#: --data-dir ("epochs") or on the built-in digits, or a transformer task.
_KINDS = {"epochs": "trained in epochs by --model mlp or cnn",
          "digits": "built in, read from no folder; trained in epochs by --model mlp or cnn",
          "modadd": "a generated transformer task, trained full-batch in steps",
          "chars": "a transformer task trained in steps"}
_TRANSFORMER = ("modadd", "chars")
_EPOCHS = ("epochs", "digits")
#: The one rule on which ``train`` options apply to which kind of training (the others apply to all):
#: parameter -> (the kinds it applies to, what to do instead, one hint or one per kind it is refused for).
TRAINING_OPTIONS = {
    "corpus": (("chars",), "--corpus FILE is the text of --dataset chars; use that dataset or leave --corpus out"),
    "epochs": (_EPOCHS, "use --steps"),
    "warmup_epochs": (_EPOCHS, "use --warmup-steps"),
    "layers": (_EPOCHS, "every MLP block is clustered; leave --layers out"),
    "max_train": (_EPOCHS, {"modadd": "modadd trains on a fixed 30% of the pairs; leave --max-train out",
                            "chars": "train on a shorter --corpus FILE instead"}),
    "download": (("epochs",), {"modadd": "leave --download out", "digits": "leave --download out",
                               "chars": "pass the text with --corpus FILE instead"}),
    "data_dir": (("epochs", "chars"), {"modadd": "leave --data-dir out",
                                       "digits": "leave --data-dir out"}),
    "batch_size": (_EPOCHS + ("chars",), "leave --batch-size out"),
    "steps": (_TRANSFORMER, "use --epochs"),
    "warmup_steps": (_TRANSFORMER, "use --warmup-epochs"),
    "weight_decay": (_TRANSFORMER, "mlp and cnn train with Adam, without weight decay; leave --weight-decay out"),
    "clusters": (_TRANSFORMER, "mlp and cnn layers are clustered by BSGC; leave --clusters out"),
}


def check_training_options(ctx: click.Context, dataset: str) -> None:
    """Refuse every option the user gave that ``--dataset``'s kind of training would ignore (see
    :data:`TRAINING_OPTIONS`); options left at their defaults are never refused.

    Raises
    ------
    click.UsageError
        ``--X does not apply to --dataset D (what D is); what to do instead``, for the first such option.
    """
    kind = dataset if dataset in _TRANSFORMER + ("digits",) else "epochs"
    flags = {p.name: max(p.opts, key=len) for p in ctx.command.params}
    for name in given_options(ctx, TRAINING_OPTIONS):
        kinds, hint = TRAINING_OPTIONS[name]
        if kind not in kinds:
            hint = hint[kind] if isinstance(hint, dict) else hint
            raise click.UsageError(f"{flags[name]} does not apply to --dataset {dataset} ({_KINDS[kind]}); {hint}")
    if kind == "chars" and set(given_options(ctx, ("corpus", "data_dir"))) == {"corpus", "data_dir"}:
        raise click.UsageError("--data-dir does not apply with --corpus FILE (it only locates the default corpus, "
                               "<data-dir>/tinyshakespeare/input.txt); leave one of them out")
