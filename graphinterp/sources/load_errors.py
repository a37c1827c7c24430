"""Why ``torch.load(weights_only=True)`` failed on a file, in one line: the one rule for every reader of model files
(:func:`graphinterp.sources.loading.load_model_file`, :func:`graphinterp.sources.checkpoint.load_checkpoint`)."""
from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Tuple

from graphinterp.common.errors import ModelFileError
from graphinterp.common.text import first_line

__all__ = ["explain_load_failure", "is_torchscript", "load_failure"]

_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # torch.save(_use_new_zipfile_serialization=False)
_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")


def load_failure(path: Path, exc: BaseException) -> Tuple[str, str, str]:
    """Why ``torch.load(weights_only=True)`` failed on ``path``: ``(kind, what, advice)``, with ``kind`` one of
    ``"pickle"``, ``"zip"``, ``"corrupt"``, ``"foreign"`` and the message ``f"{path} {what}; {advice}"``."""
    match = _GLOBAL.search(str(exc))
    if match:
        return ("pickle", f"holds pickled code ({match.group(1)}), which can run arbitrary code when loaded",
                "pass --trust-pickle (trust_pickle=True) only if you trust its source, or re-save it as a state_dict")
    with open(path, "rb") as handle:
        head = handle.read(len(_LEGACY_MAGIC))
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            if not any(name.split("/", 1)[-1] == "data.pkl" for name in zf.namelist()):
                return "zip", "is a zip archive but not a PyTorch file", "pass a file written by torch.save"
    if head.startswith(b"PK\x03\x04") or head == _LEGACY_MAGIC:
        return "corrupt", f"is a truncated or corrupt PyTorch file ({first_line(exc)})", "re-download or re-save it"
    return "foreign", "is not a PyTorch model file", "pass a .pt/.pth file written by torch.save or torch.jit.save"


def explain_load_failure(path: Path, exc: BaseException) -> Tuple[ModelFileError, bool]:
    """Turn a failed ``torch.load(weights_only=True)`` into a one-line error; True if it is pickled code."""
    kind, what, advice = load_failure(path, exc)
    return ModelFileError(f"{path} {what}; {advice}"), kind == "pickle"


def is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (``torch.jit.save``)."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return any(name.split("/", 1)[-1] == "constants.pkl" for name in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
