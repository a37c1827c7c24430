"""The notes both trainers give about how a run starts (:func:`~graphinterp.training.train.train` and
:func:`~graphinterp.training.train_transformer.train_transformer`): a resume with nothing to resume, a
checkpoint the new run replaces, a model handed over in eval mode.

The replacement note is given once every check that can stop the run has passed (the checkpoint's lock, the
data, the model's graph, the clustered layers), just before the first step: said earlier, it announced the
replacement of a file that an error then left as it was.
"""
from __future__ import annotations

import os
from typing import List, Optional

from torch import nn

__all__ = ["resume_notes", "replace_note", "enter_train_mode"]


def resume_notes(checkpoint, resume: bool) -> List[str]:
    """``resume=True`` with no checkpoint to read: the run starts anew, which is said.

    Examples
    --------
    >>> resume_notes(None, True)
    ['resume=True without a checkpoint to resume from: starting a new run (pass checkpoint=PATH)']
    >>> resume_notes("no/such.pt", True)
    ['no/such.pt does not exist yet: starting a new run']
    >>> resume_notes(None, False)
    []
    """
    if not resume:
        return []
    if checkpoint is None:
        return ["resume=True without a checkpoint to resume from: starting a new run (pass checkpoint=PATH)"]
    if not os.path.exists(checkpoint):
        return [f"{os.fspath(checkpoint)} does not exist yet: starting a new run"]
    return []


def replace_note(checkpoint, resume: bool) -> Optional[str]:
    """The note that a new run (not resumed) replaces an existing ``checkpoint``, or None.

    Examples
    --------
    >>> replace_note(__file__, False).endswith("this new run replaces it when it writes its first checkpoint "
    ...                                        "(pass --resume to continue it)")
    True
    >>> replace_note(__file__, True) is None
    True
    """
    if resume or checkpoint is None or not os.path.isfile(checkpoint):
        return None
    return (f"{os.fspath(checkpoint)} exists: this new run replaces it when it writes its first checkpoint (pass "
            "--resume to continue it)")


def enter_train_mode(model: nn.Module) -> Optional[str]:
    """Put ``model`` in train mode when it came in eval mode (dropout off, batch norms on running statistics), as a
    training loop does; returns the note that says so, or None when it already was (submodules frozen with
    ``.eval()`` inside a model in train mode are left as they are).

    Examples
    --------
    >>> m = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).eval()
    >>> enter_train_mode(m).startswith("the model was given in eval mode")
    True
    >>> m.training, m[1].training, enter_train_mode(m)
    (True, True, None)
    """
    if model.training:
        return None
    model.train()
    return ("the model was given in eval mode: it is trained in train mode (dropout active, batch norms on batch "
            "statistics), as a training loop does, and returned in train mode (call .eval() to evaluate it)")
