"""A recipe's model built as training builds it, and its checkpoints: which file a checkpoint path means (a file, a
DeepSpeed folder, a work_dir's last), what identifies its weights, and loading one with every tensor checked.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from addressvlm.core.records import file_identity
from addressvlm.training.precision import default_device_dtype
from addressvlm.training.recipes import load_recipe, parse_cfg_options
from addressvlm.training.stage_chain import find_last_checkpoint, fit_problems


class CheckpointError(RuntimeError):
    """A checkpoint that does not fit the model built from its recipe."""


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """An ``iter_N.pth`` file, a DeepSpeed checkpoint folder, or a work_dir (its last checkpoint)."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        if any(path.glob("*model_states.pt")):
            return path
        return find_last_checkpoint(path)
    raise FileNotFoundError(f"checkpoint {path} not found (an iter_N.pth file, a DeepSpeed folder or a work_dir)")


def weights_identity(path: str | os.PathLike) -> str:
    """What identifies the weights of a checkpoint (file, DeepSpeed folder, or a work_dir's last checkpoint), as
    recorded beside answers: its files' names, sizes and modification times (``records.file_identity``). Hashing
    the content would cost a minute per start on a multi-GB checkpoint; a retrain rewrites the file, which changes
    its time."""
    return file_identity(resolve_checkpoint(path))


def load_checked_state(model: torch.nn.Module, checkpoint: Path) -> int:
    """Load a training checkpoint with ``strict=False`` (it holds only the trained tensors) and fail, naming keys,
    unless it holds exactly what this model trains and every tensor fits; return the tensor count."""
    from xtuner.model.utils import guess_load_checkpoint

    state = guess_load_checkpoint(str(checkpoint))
    # model.state_dict() (LLaVAModel's, AddressMiniCPMV's): the tensors training saves.
    problems = fit_problems(torch.nn.Module.state_dict(model), set(model.state_dict()), state)
    if problems:
        raise CheckpointError(f"{checkpoint} does not fit the model its recipe builds (same recipe and --cfg-options "
                              "as training?): " + "; ".join(problem.strip() for problem in problems))
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise CheckpointError(f"{checkpoint}: tensors did not load: {sorted(result.unexpected_keys)[:20]}")
    return len(state)


def build_recipe_model(config: str | os.PathLike, cfg_options: Sequence[str] | dict | None = None,
                       dtype: torch.dtype | None = None):
    """``(cfg, model)``: the recipe's model built as training builds it, ``cfg_options`` merged (e.g.
    ``recipes.model_root_options``), without a previous stage (a checkpoint will replace every trained tensor); frozen
    weights load in ``dtype`` (default: the dtype answering uses on this machine,
    ``precision.default_device_dtype``)."""
    # lazy: the shims import XTuner, which callers that only resolve checkpoints (the launcher) do not need.
    from addressvlm.training import xtuner_shims  # noqa: F401
    from xtuner.registry import BUILDER

    cfg = load_recipe(str(config))
    cfg.merge_from_dict(parse_cfg_options(cfg_options))
    if "torch_dtype" in cfg.model:
        cfg.model.torch_dtype = str(dtype or default_device_dtype()[1]).removeprefix("torch.")
    if "init_from_work_dir" in cfg.model:
        cfg.model.init_from_work_dir = None
    return cfg, BUILDER.build(cfg.model)


def run_lora_options(config: str | os.PathLike, checkpoint: Path) -> dict:
    """The rank and alpha of each LoRA adapter that the run which wrote ``checkpoint`` (a resolved one) trained, as
    cfg options: read from the copy of the recipe, its --cfg-options merged, that XTuner keeps in the run's work_dir
    under the recipe's name. So a run trained at another rank than its recipe's (the demo's) loads with no option
    given by hand. Empty when the work_dir holds no such copy."""
    from mmengine.config import Config

    saved = checkpoint.parent / Path(config).name
    if not saved.is_file():
        return {}
    model = Config.fromfile(str(saved)).model
    return {f"model.{adapter}.{key}": model[adapter][key] for adapter in ("llm_lora", "visual_encoder_lora")
            if isinstance(model.get(adapter), dict) for key in ("r", "lora_alpha") if key in model[adapter]}


def build_trained_model(config: str | os.PathLike, checkpoint: str | os.PathLike,
                        cfg_options: Sequence[str] | dict | None = None, dtype: torch.dtype | None = None):
    """``(cfg, model)``: the recipe's model (``build_recipe_model``) with ``checkpoint`` (a file, DeepSpeed folder or
    work_dir) loaded and every tensor checked; its LoRA shapes are the run's (``run_lora_options``) unless
    ``cfg_options`` set them."""
    checkpoint = resolve_checkpoint(checkpoint)
    options = {**run_lora_options(config, checkpoint), **parse_cfg_options(cfg_options)}
    cfg, model = build_recipe_model(config, options, dtype)
    load_checked_state(model, checkpoint)
    return cfg, model
