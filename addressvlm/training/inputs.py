"""A run's inputs (model folders, data files) checked before anything heavy loads, and reported in one line.

``xtuner train`` with a missing model folder otherwise ends in a 30-line transformers traceback
(``Incorrect path_or_model_id``). The errors of this module, ``DataError`` and ``StageChainError`` are the user's to
fix, not ours to debug: when one ends the process, Python's exception hook prints ``error: <message>`` instead of the
traceback (set ``ADDRESSVLM_TRACEBACK=1`` to see it anyway). Every other exception is printed as usual.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from addressvlm.core.records import DataError
from addressvlm.training.stage_chain import StageChainError


class MissingInputError(FileNotFoundError):
    """A recipe's weights or data are not where it says."""


def is_local_path(name: str) -> bool:
    """A path, as opposed to a hub id (``org/name``): hub ids never start with ``.``, ``/`` or ``~``."""
    return name.startswith((".", "/", "~")) or os.path.isabs(name)


def require_model_folder(path: str | None, release: str) -> None:
    """Raise ``MissingInputError`` if ``path`` is a local model folder that does not exist."""
    if path and is_local_path(str(path)) and not Path(path).expanduser().is_dir():
        raise MissingInputError(
            f"model folder {path} not found: download {release} first (the recipe's header has the command), "
            "or point the recipe at your copy with --cfg-options")


def _user_error_classes() -> tuple[type, ...]:
    return MissingInputError, DataError, StageChainError


def _install_one_line_hook() -> None:
    previous = sys.excepthook
    if getattr(previous, "addressvlm", False):
        return

    def hook(kind, error, traceback):
        if issubclass(kind, _user_error_classes()) and not os.environ.get("ADDRESSVLM_TRACEBACK"):
            print(f"error: {error}", file=sys.stderr)
        else:
            previous(kind, error, traceback)

    hook.addressvlm = True
    sys.excepthook = hook


_install_one_line_hook()
