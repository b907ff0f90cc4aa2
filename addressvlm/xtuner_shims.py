"""Shims XTuner 0.2.0 needs to run on a CPU-only machine, applied on import.

Lazy (pure-Python) mmengine configs ignore ``custom_imports``, so this module is imported by the classes the
recipes name (``addressvlm.model``, ``addressvlm.dataset``); every shim is a no-op where the real feature exists.
"""
import os
import sys

import torch


def apply() -> None:
    # XTuner's LLaVAModel asks the current device whether it supports bf16; torch.cpu has no such method.
    if not hasattr(torch.cpu, "is_bf16_supported"):
        torch.cpu.is_bf16_supported = lambda: False
    # torch >= 2.6 unpickles with weights_only=True, which refuses the non-tensor state mmengine keeps in a
    # checkpoint, and `xtuner train --resume` reads the checkpoint (for its seed) before any hook runs: a process
    # started to resume may read it fully. addressvlm.hooks.ResumeLoadHook lifts this once the checkpoint has
    # loaded (and sets it itself for a config-level resume); no other process is touched.
    if any(arg == "--resume" or arg.startswith("--resume=") for arg in sys.argv):
        os.environ.setdefault(RESUME_VARIABLE, "1")


RESUME_VARIABLE = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


apply()
