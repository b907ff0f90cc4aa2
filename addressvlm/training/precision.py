"""Which dtype each tensor of a model lives in, decided in one place.

- Frozen weights load in the recipe's ``torch_dtype`` (``bfloat16`` on GPUs; ``float16`` on a GPU without bf16, such
  as a V100; ``float32`` on CPU through ``addressvlm.training.recipes``'s switch): a Phi-3-mini + CLIP-L pair is 8.2 GB
  per rank instead of 16.5 GB.
- Trained tensors (LoRA, projector, resampler) are kept in fp32 whatever the frozen dtype: at lr 1e-5 a bf16 weight
  loses most updates to rounding (bf16 has 8 mantissa bits). AMP computes in half precision from these fp32 master
  copies; DeepSpeed casts the module itself and keeps its own fp32 copies.
"""
from __future__ import annotations

from collections import Counter

import torch
from mmengine import print_log
from torch import nn


def load_dtype(name: str | torch.dtype) -> torch.dtype:
    """The dtype frozen weights load in: ``name`` (``"bfloat16"``, ``"float16"``, ``"float32"`` or a dtype), with
    bf16 replaced by fp16 on a CUDA device that lacks it."""
    dtype = getattr(torch, name, None) if isinstance(name, str) else name
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"torch_dtype {name!r} is not a floating-point torch dtype (bfloat16, float16, float32)")
    if dtype == torch.bfloat16 and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        print_log("this GPU has no bfloat16: frozen weights load in float16", "current")
        return torch.float16
    return dtype


def default_device_dtype(device: str | torch.device | None = None,
                         dtype: str | torch.dtype | None = None) -> tuple[torch.device, torch.dtype]:
    """CUDA in bf16 (fp16 where bf16 is missing) when there is a GPU, else CPU in fp32; ``dtype`` overrides."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is not None:
        return device, load_dtype(dtype)
    if device.type == "cuda":
        return device, load_dtype(torch.bfloat16)
    return device, torch.float32


def upcast_trainable(model: nn.Module) -> int:
    """Put every parameter that requires grad in fp32 (in place); returns how many were cast."""
    cast = 0
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
            cast += 1
    return cast


def is_quantized(module: nn.Module) -> bool:
    """Whether a transformers model was loaded in 4 or 8 bits (bitsandbytes): its weights cannot be cast."""
    return bool(getattr(module, "is_loaded_in_4bit", False) or getattr(module, "is_loaded_in_8bit", False))


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``{"trainable_params", "frozen_params"}``: the figures preflight and the memory estimate report."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable, "frozen_params": sum(p.numel() for p in model.parameters()) - trainable}


def dtype_census(model: nn.Module) -> dict[str, dict[str, int]]:
    """``{"trainable": {dtype: n_params}, "frozen": {dtype: n_params}}``: what a dtype test and preflight print."""
    census = {"trainable": Counter(), "frozen": Counter()}
    for parameter in model.parameters():
        part = "trainable" if parameter.requires_grad else "frozen"
        census[part][str(parameter.dtype).removeprefix("torch.")] += parameter.numel()
    return {part: dict(counts) for part, counts in census.items()}
