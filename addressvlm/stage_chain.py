"""The stage chain: find the previous stage's final checkpoint and load what this stage continues, loudly.

XTuner's ``pretrained_pth`` loads with ``strict=False`` and ignores every mismatch; a two-stage method needs the
opposite, for every backbone.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

import torch
from mmengine import print_log
from torch import nn

from xtuner.model.utils import guess_load_checkpoint


class StageChainError(RuntimeError):
    """A stage would start from the wrong weights."""


def find_last_checkpoint(work_dir: str | os.PathLike) -> Path:
    """The checkpoint a finished run left in ``work_dir``: mmengine's ``last_checkpoint`` pointer, else the highest
    ``iter_N.pth`` (a file, or a DeepSpeed folder)."""
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        raise StageChainError(f"previous stage's work_dir {work_dir} does not exist: run that stage first")
    pointer = work_dir / "last_checkpoint"
    if pointer.is_file():
        target = Path(pointer.read_text().strip())
        if not target.is_absolute() and not target.exists():
            target = work_dir / target.name
        if target.exists():
            return target
    numbered = []
    for path in work_dir.glob("iter_*.pth"):
        match = re.fullmatch(r"iter_(\d+)\.pth", path.name)
        if match:
            numbered.append((int(match.group(1)), path))
    if not numbered:
        raise StageChainError(f"no checkpoint (last_checkpoint or iter_N.pth) in {work_dir}: did that stage finish?")
    return max(numbered)[1]


def fit_problems(own: dict, expected: set[str], state: dict) -> list[str]:
    """What keeps checkpoint ``state`` from fitting a model whose full state is ``own`` and which trains the keys
    ``expected``: tensors the model lacks, trained tensors the checkpoint lacks, tensors of another shape (one line
    each, empty when it fits). The one check behind the stage chain and loading a checkpoint to answer."""
    def listed(keys: list[str]) -> str:
        return f"{keys[:20]}{' ...' if len(keys) > 20 else ''}"

    unknown = sorted(k for k in state if k not in own)
    absent = sorted(expected - set(state))
    wrong_shape = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    problems = [("in the checkpoint but not in this model", unknown), ("with another shape", wrong_shape),
                ("trained by this model but not in the checkpoint", absent)]
    return [f"  {what}: {listed(keys)}" for what, keys in problems if keys]


def load_chained_tensors(module: nn.Module, work_dir: str | os.PathLike, is_chained: Callable[[str], bool]) -> Path:
    """Load the tensors selected by ``is_chained`` from the final checkpoint of the previous stage's ``work_dir`` into
    ``module``, and raise ``StageChainError`` naming the keys unless every one exists here with the same shape, every
    such tensor of ``module`` is in the checkpoint, and all are equal after loading. Returns the checkpoint path.

    Reads and writes the *full* state (``nn.Module.state_dict``), not a subclass's trained subset."""
    checkpoint = find_last_checkpoint(work_dir)
    state = guess_load_checkpoint(str(checkpoint))
    chained = {k: v for k, v in state.items() if is_chained(k)}
    if not chained:
        raise StageChainError(f"{checkpoint} holds no tensor this stage continues: is it a stage checkpoint?")
    own = nn.Module.state_dict(module)
    problems = fit_problems(own, {k for k in own if is_chained(k)}, chained)
    if problems:
        raise StageChainError(f"stage chain from {checkpoint} does not fit this model (same LoRA rank and targets "
                              "needed):\n" + "\n".join(problems))
    result = nn.Module.load_state_dict(module, chained, strict=False)
    if result.unexpected_keys:
        raise StageChainError(f"tensors of {checkpoint} did not load: {sorted(result.unexpected_keys)[:20]}")
    with torch.no_grad():
        full = nn.Module.state_dict(module)
        unequal = [k for k, v in chained.items() if not torch.equal(full[k].cpu(), v.to(full[k].dtype).cpu())]
    if unequal:
        raise StageChainError(f"tensors of {checkpoint} differ after loading: {unequal[:20]}")
    print_log(f"Continued from {checkpoint}: {len(chained)} tensors loaded and checked", "current")
    return checkpoint
