"""Parameter counts and per-GPU memory of a recipe at the real releases' sizes, without their weights.

The model is the recipe's own model class, built on the meta device from the releases' published shapes
(``addressvlm/releases/release_configs/``), with the recipe's LoRA applied by the same code as in training: the counts
are exact, not estimated. Memory is arithmetic over those counts (bytes per parameter for each training setting) plus an
activation estimate, labelled as such; ``tools/gpu_check.sh`` measures the ZeRO-2 case on a GPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from addressvlm.core.records import DataError, read_text, replace_generated_block, writable_output
from addressvlm.releases.shapes import build_meta_model
from addressvlm.training.precision import count_parameters
from addressvlm.training.recipes import load_recipe

GB = 1e9
HALF = 2  # bytes of a bf16/fp16 value
NF4 = 0.5 + 0.127 / 8  # bytes per 4-bit weight, double-quantised block scales included (blocks of 64, then 256)

# Name prefixes of each part, for both backbones (LLaVA: llm / visual_encoder / projector; MiniCPM-V: model.*).
PARTS = {"llm": ("llm.", "model.llm."), "vision": ("visual_encoder.", "model.vpm."),
         "connector": ("projector.", "model.resampler.")}


def count_by_part(model: nn.Module) -> dict[str, int]:
    """Trainable and frozen parameters of each part: LLM LoRA, vision LoRA, projector/resampler, frozen LLM and
    frozen vision tower (anything else is reported as ``other``)."""
    counts = {"llm_lora": 0, "vision_lora": 0, "connector": 0, "frozen_llm": 0, "frozen_vision": 0, "other": 0}
    for name, parameter in model.named_parameters():
        part = next((p for p, prefixes in PARTS.items() if name.startswith(prefixes)), None)
        if part == "connector":
            key = "connector"
        elif part is None:
            key = "other"
        elif parameter.requires_grad:
            key = f"{part}_lora" if "lora_" in name else "other"
        else:
            key = f"frozen_{part}"
        counts[key] += parameter.numel()
    return counts


def quantizable_llm_weights(model: nn.Module) -> int:
    """Weights a 4-bit load quantizes: the frozen LLM's linear layers, lm_head excepted (the QLoRA recipes skip it)."""
    total = 0
    for name, module in model.named_modules():
        part = next((p for p, prefixes in PARTS.items() if name.startswith(prefixes)), None)
        if part == "llm" and isinstance(module, nn.Linear) and "lora_" not in name and not name.endswith("lm_head"):
            total += module.weight.numel()
    return total


@dataclass
class Shapes:
    """What activations scale with: per-device batch, tokens per sequence (images included), LLM and vision sizes."""
    batch: int
    tokens: int
    hidden: int
    layers: int
    vocab: int
    vision_tokens: int
    vision_hidden: int
    vision_layers: int


def recipe_shapes(cfg, model: nn.Module) -> Shapes:
    llava = hasattr(model, "visual_encoder")
    config = (model.llm if llava else model.model.llm).config
    if llava:
        vision = model.visual_encoder.config
        image_tokens = (vision.image_size // vision.patch_size) ** 2
        tokens = cfg.train_dataloader.dataset.max_length + image_tokens  # XTuner counts the image as one token
        vision_tokens, vision_layers = image_tokens + 1, vision.num_hidden_layers
    else:
        vision = model.model.config.vision_config
        tokens = cfg.train_dataloader.dataset.max_length  # MiniCPM-V's image placeholders are in the sequence
        # A 640 x 480 street view: the source view and 2 slices of about 448 x 448 through SigLIP.
        vision_tokens, vision_layers = 3 * (448 // vision.patch_size) ** 2, len(model.model.vpm.encoder.layers)
    return Shapes(batch=cfg.train_dataloader.batch_size, tokens=tokens, hidden=config.hidden_size,
                  layers=config.num_hidden_layers, vocab=config.vocab_size, vision_tokens=vision_tokens,
                  vision_hidden=vision.hidden_size, vision_layers=vision_layers)


def activation_bytes(s: Shapes) -> float:
    """Gradient checkpointing: each layer's bf16 input kept, one layer recomputed at a time (about 34 values per
    token and hidden unit with flash/sdpa attention), and the logits in bf16 plus their fp32 upcast and gradient."""
    llm = s.batch * s.tokens * s.hidden * (HALF * s.layers + 34) + s.batch * s.tokens * s.vocab * (HALF + 4 + 4)
    vision = s.batch * s.vision_tokens * s.vision_hidden * (HALF * s.vision_layers + 34)
    return llm + vision


def estimate(cfg, gpus: int = 8) -> dict:
    """Counts by part and per-GPU memory (GB) for plain DDP, DeepSpeed ZeRO-2 and ZeRO-3 on ``gpus`` GPUs, and QLoRA
    on one GPU, at the recipe's per-device batch and length."""
    model = build_meta_model(cfg)
    parts = count_by_part(model)
    counts = count_parameters(model)
    trainable, frozen = counts["trainable_params"], counts["frozen_params"]
    quantized = quantizable_llm_weights(model)
    shapes = recipe_shapes(cfg, model)
    activations = activation_bytes(shapes)
    adam_master = 12 * trainable  # fp32 master copy + Adam's two moments
    settings = {
        # torch DDP with AMP: fp32 trained tensors, their fp32 grads, Adam, and DDP's fp32 gradient buckets.
        "ddp": {"weights": HALF * frozen + 4 * trainable, "trainable_states": (4 + 8 + 4) * trainable},
        # DeepSpeed casts the module to bf16; fp32 master + Adam and gradients are partitioned over the GPUs.
        "zero2": {"weights": HALF * (frozen + trainable),
                  "trainable_states": (adam_master + (HALF + 4) * trainable) / gpus},
        "zero3": {"weights": HALF * (frozen + trainable) / gpus,
                  "trainable_states": (adam_master + (HALF + 4) * trainable) / gpus},
        # One GPU: NF4 LLM linears; peft's k-bit preparation keeps the rest of the LLM (embeddings, lm_head, norms)
        # in fp32; the vision tower in bf16; trained tensors fp32 with grads and Adam.
        "qlora": {"weights": NF4 * quantized + 4 * (parts["frozen_llm"] - quantized) + HALF * parts["frozen_vision"]
                  + 4 * trainable, "trainable_states": (4 + 8) * trainable},
    }
    memory = {}
    for name, figures in settings.items():
        total = figures["weights"] + figures["trainable_states"] + activations
        memory[name] = {"weights_gb": figures["weights"] / GB, "trainable_states_gb": figures["trainable_states"] / GB,
                        "activations_estimate_gb": activations / GB, "total_gb": total / GB}
    return {"trainable_params": trainable, "frozen_params": frozen, "parts": parts,
            "quantizable_llm_weights": quantized, "gpus": gpus, "shapes": shapes.__dict__, "memory": memory}


SETTING_NAMES = {"ddp": "torch DDP + AMP, {gpus} GPUs", "zero2": "DeepSpeed ZeRO-2, {gpus} GPUs",
                 "zero3": "DeepSpeed ZeRO-3, {gpus} GPUs", "qlora": "QLoRA (NF4 LLM), 1 GPU"}


def markdown_table(recipe: str, result: dict) -> str:
    """The README's memory table for one recipe (generated; a test checks the README holds it)."""
    p = result["parts"]
    lines = [
        f"`{recipe}`: {result['trainable_params'] / 1e6:.1f} M trainable (LLM LoRA {p['llm_lora'] / 1e6:.1f} M, "
        f"vision LoRA {p['vision_lora'] / 1e6:.1f} M, projector/resampler {p['connector'] / 1e6:.1f} M), "
        f"{result['frozen_params'] / 1e9:.2f} B frozen (LLM {p['frozen_llm'] / 1e9:.2f} B, vision "
        f"{p['frozen_vision'] / 1e9:.2f} B); per-device batch {result['shapes']['batch']} x "
        f"{result['shapes']['tokens']} tokens.",
        "",
        "| setting | weights | trainable states | activations (estimate) | per GPU |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, label in SETTING_NAMES.items():
        m = result["memory"][name]
        lines.append(f"| {label.format(gpus=result['gpus'])} | {m['weights_gb']:.1f} GB | "
                     f"{m['trainable_states_gb']:.1f} GB | {m['activations_estimate_gb']:.1f} GB | "
                     f"**{m['total_gb']:.1f} GB** |")
    return "\n".join(lines)


README_RECIPES = ("recipes/stage1_pitts.py", "recipes/minicpmv26/stage1_pitts.py")
README_START = "<!-- memory table: tools/estimate_memory.py --readme README.md -->"
README_END = "<!-- end of memory table -->"


def readme_block(repo: Path) -> str:
    """The README's generated memory section: one table per backbone's stage-1 recipe."""
    tables = [markdown_table(recipe, estimate(load_recipe(str(repo / recipe)))) for recipe in README_RECIPES]
    return "\n\n".join([README_START, *tables, README_END])


def replace_readme_block(text: str, block: str) -> str:
    try:
        return replace_generated_block(text, README_START, README_END, block)
    except ValueError:
        raise ValueError(f"README has no generated memory section (the line {README_START})") from None


def checked_readme(path: str | Path) -> str:
    """The text of the README ``--readme`` names, checked before any estimate: a file with the generated section,
    in a checkout (the tables are made from the recipes beside it), that can be rewritten."""
    readme = Path(path)
    if not readme.is_file():
        raise DataError(readme, None, "--readme not found: give the checkout's README.md")
    missing = [recipe for recipe in README_RECIPES if not (readme.resolve().parent / recipe).is_file()]
    if missing:
        raise DataError(readme, None, f"--readme is not a checkout's README: no {missing[0]} beside it")
    text = read_text(readme)
    try:
        replace_readme_block(text, "")
    except ValueError as exc:
        raise DataError(readme, None, str(exc)) from None
    writable_output(readme, "--readme")
    return text
