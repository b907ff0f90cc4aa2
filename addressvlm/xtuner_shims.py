"""Shims XTuner 0.2.0 needs to run on a CPU-only machine, applied on import.

Lazy (pure-Python) mmengine configs ignore ``custom_imports``, so this module is imported by the classes the
recipes name (``addressvlm.model``, ``addressvlm.dataset``); every shim is a no-op where the real feature exists.
"""
import os

import torch


def apply() -> None:
    # XTuner's LLaVAModel asks the current device whether it supports bf16; torch.cpu has no such method.
    if not hasattr(torch.cpu, "is_bf16_supported"):
        torch.cpu.is_bf16_supported = lambda: False
    # torch >= 2.6 unpickles checkpoints with weights_only=True, which rejects mmengine's HistoryBuffer in the
    # message hub and so breaks `--resume`. The checkpoints are the run's own files.
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


apply()
