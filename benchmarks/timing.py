"""What the benchmarks share: a tiny LLaVA-Phi3 at the release's image shape, built here (nothing downloaded), and a
timer that waits for the GPU before it reads the clock."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable, TypeVar

import torch

from addressvlm.answering.chat_model import VisionChatModel
from addressvlm.answering.loading import wrap_xtuner_model
from addressvlm.standins.tiny import TinySize, make_tiny_llava
from addressvlm.training.checkpoints import build_recipe_model
from addressvlm.training.recipes import load_recipe, model_root_options

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "stage2_pitts.py"
Result = TypeVar("Result")


def add_tiny_model_arguments(parser) -> None:
    """The tiny model's width and depth (``tiny_recipe_model``) and where it runs."""
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--device", help="default: cuda when present")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])


def release_shaped(hidden: int, layers: int, head_size: int = 16) -> TinySize:
    """A tiny LLaVA-Phi3 of the release's image shape: a 336 px CLIP with 14 px patches (576 image tokens)."""
    return TinySize(hidden=hidden, layers=layers, intermediate=2 * hidden, heads=hidden // head_size, image_size=336,
                    patch_size=14, vision_hidden=hidden, vision_layers=layers)


def tiny_recipe_model(folder: Path, corpus: Iterable[str], hidden: int, layers: int, device: str | None,
                      dtype: str | None) -> VisionChatModel:
    """The reference recipe's model (LoRA on LLM and CLIP, projector) over a tiny LLaVA-Phi3 written to ``folder``,
    its tokenizer trained on ``corpus``: a 336 px CLIP with 14 px patches, so 576 image tokens precede every question
    as in the release, at a width and depth a CPU runs."""
    make_tiny_llava(folder, release_shaped(hidden, layers), corpus=list(corpus))
    cfg, model = build_recipe_model(RECIPE, model_root_options(load_recipe(str(RECIPE)), str(folder)))
    return wrap_xtuner_model(cfg, model, device, dtype)


def timed(run: Callable[[], Result], device: torch.device) -> tuple[float, Result]:
    """``(seconds, result)`` of ``run()``, the GPU's queued work finished before each reading of the clock."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result
