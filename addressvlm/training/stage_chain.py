"""The stage chain: find the previous stage's final checkpoint and load what this stage continues, loudly.

XTuner's ``pretrained_pth`` loads with ``strict=False`` and ignores every mismatch; a two-stage method needs the
opposite, for every backbone. What a stage does with each part of the checkpoint (continue it, open it fresh, carry
it frozen) is declared, and a checkpoint that does not match the declaration is refused, naming the keys.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

import torch
from mmengine import print_log
from torch import nn


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


def listed(keys: list[str]) -> str:
    """At most 20 keys, for an error message."""
    return f"{keys[:20]}{' ...' if len(keys) > 20 else ''}"


def fit_problems(own: dict, expected: set[str], state: dict) -> list[str]:
    """What keeps checkpoint ``state`` from fitting a model whose full state is ``own`` and which trains the keys
    ``expected``: tensors the model lacks, trained tensors the checkpoint lacks, tensors of another shape (one line
    each, empty when it fits). The one check behind the stage chain and loading a checkpoint to answer."""
    unknown = sorted(k for k in state if k not in own)
    absent = sorted(expected - set(state))
    wrong_shape = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    problems = [("in the checkpoint but not in this model", unknown), ("with another shape", wrong_shape),
                ("trained by this model but not in the checkpoint", absent)]
    return [f"  {what}: {listed(keys)}" for what, keys in problems if keys]


# What the next stage does with each part of the previous stage's checkpoint (``stage_chain`` in a recipe's model).
CONTINUE, OPEN, FROZEN = "continue", "open", "frozen"
CHAIN_MODES = {
    CONTINUE: "load the previous stage's tensors and train them on",
    OPEN: "start fresh: the previous stage did not train this part",
    FROZEN: "load the previous stage's tensors and keep them, untrained",
}


def chain_plan(parts: dict[str, Callable[[str], bool]], stage_chain: dict[str, str] | None) -> dict[str, str]:
    """Every part's mode: ``stage_chain``'s declaration over the default, continuing every part. Unknown parts
    or modes raise ``StageChainError`` naming the known ones."""
    declared = dict(stage_chain or {})
    unknown = sorted(set(declared) - set(parts))
    if unknown:
        raise StageChainError(f"stage_chain names {unknown}; this model's parts are {sorted(parts)}")
    wrong = {part: mode for part, mode in declared.items() if mode not in CHAIN_MODES}
    if wrong:
        modes = "; ".join(f"{mode!r}: {meaning}" for mode, meaning in CHAIN_MODES.items())
        raise StageChainError(f"stage_chain modes {wrong}: each part is one of {modes}")
    return {part: declared.get(part, CONTINUE) for part in parts}


def plan_problems(part: str, mode: str, own: dict, state: dict) -> list[str]:
    """Why checkpoint ``state`` (this part's tensors) does not fit the declared ``mode`` for a model holding this
    part's tensors ``own`` (empty when the model lacks the part)."""
    if mode == OPEN:
        if state:
            return [f"  {part} is declared {OPEN!r} but the previous stage trained it (declare it {CONTINUE!r} or "
                    f"{FROZEN!r}), {len(state)} tensors: {listed(sorted(state))}"]
        if not own:
            return [f"  {part} is declared {OPEN!r} but this model has none: give it a config or drop the declaration"]
        return []
    if mode == FROZEN and not own:
        return [f"  {part} is declared {FROZEN!r} but this model has none to load it into: keep the previous "
                "stage's config for it"]
    return [f"  {part} ({mode}): {line.strip()}" for line in fit_problems(own, set(own), state)]


def load_chained_tensors(module: nn.Module, work_dir: str | os.PathLike, parts: dict[str, Callable[[str], bool]],
                         stage_chain: dict[str, str] | None = None) -> Path:
    """Load the previous stage's final checkpoint (from its ``work_dir``) into ``module`` part by part, as
    ``stage_chain`` declares (``chain_plan``; each part's tensors are those its predicate in ``parts`` selects):
    continued and frozen parts must match the checkpoint key for key and shape for shape and load exactly, frozen
    ones then stop taking gradients; opened parts must be absent from the checkpoint and keep their fresh values.
    Anything else raises ``StageChainError`` naming the keys. Returns the checkpoint path.

    Reads and writes the *full* state (``nn.Module.state_dict``), not a subclass's trained subset."""
    plan = chain_plan(parts, stage_chain)
    checkpoint = find_last_checkpoint(work_dir)
    # lazy: xtuner.model imports bitsandbytes and DeepSpeed, seconds of import and GPU warnings on stderr before
    # every tool's one-line usage error, for the one function that reads a checkpoint.
    from xtuner.model.utils import guess_load_checkpoint

    state = guess_load_checkpoint(str(checkpoint))
    chained = {k: v for k, v in state.items() if any(selects(k) for selects in parts.values())}
    if not chained:
        raise StageChainError(f"{checkpoint} holds no tensor this stage continues: is it a stage checkpoint?")
    own = nn.Module.state_dict(module)
    problems = []
    for part, selects in parts.items():
        problems += plan_problems(part, plan[part], {k: v for k, v in own.items() if selects(k)},
                                  {k: v for k, v in chained.items() if selects(k)})
    if problems:
        raise StageChainError(f"stage chain from {checkpoint} does not fit this model and its stage_chain {plan} "
                              "(same LoRA rank and targets needed):\n" + "\n".join(problems))
    result = nn.Module.load_state_dict(module, chained, strict=False)
    if result.unexpected_keys:
        raise StageChainError(f"tensors of {checkpoint} did not load: {sorted(result.unexpected_keys)[:20]}")
    with torch.no_grad():
        full = nn.Module.state_dict(module)
        unequal = [k for k, v in chained.items() if not torch.equal(full[k].cpu(), v.to(full[k].dtype).cpu())]
    if unequal:
        raise StageChainError(f"tensors of {checkpoint} differ after loading: {unequal[:20]}")
    frozen = [selects for part, selects in parts.items() if plan[part] == FROZEN]
    for name, parameter in module.named_parameters():
        if any(selects(name) for selects in frozen):
            parameter.requires_grad_(False)
    print_log(f"Continued from {checkpoint}: {len(chained)} tensors loaded and checked; {plan}", "current")
    return checkpoint
