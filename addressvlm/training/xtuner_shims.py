"""Shims XTuner 0.2.0 needs to run on a CPU-only machine, and two for short runs, applied on import.

Lazy (pure-Python) mmengine configs ignore ``custom_imports``, so this module is imported by the classes the
recipes name (``addressvlm.training.model``, ``addressvlm.training.dataset``); every shim is a no-op where the real
feature exists.
"""
import functools
import os
import sys

import torch

# XTuner tokenizes a LLaVA JSON with 32 map processes whatever its size; starting them costs seconds, far more than
# tokenizing a small file. One process per this many records (at most XTuner's 32): the same for a real city.
RECORDS_PER_MAP_PROCESS = 1000


def map_processes_for_size(process_hf_dataset):
    @functools.wraps(process_hf_dataset)
    def sized(*args, **kwargs):
        dataset = kwargs["dataset"] if "dataset" in kwargs else args[0]
        records = sum(len(split) for split in dataset.values()) if hasattr(dataset, "values") else len(dataset)
        wanted = kwargs.get("map_num_proc", 32)
        processes = max(1, min(wanted, -(-records // RECORDS_PER_MAP_PROCESS)))
        # datasets >= 3 forks a pool for num_proc=1 too; None maps in this process.
        kwargs["map_num_proc"] = processes if processes > 1 else None
        return process_hf_dataset(*args, **kwargs)

    sized.sized_for_records = True
    return sized


def formatted_once(format_code):
    """mmengine formats a run's config with yapf six times (the log, the dump, the visualizer), the same text each
    time: over a second and a half of every short run. The same text and style give the same result."""
    done: dict[tuple[str, str], tuple[str, bool]] = {}

    @functools.wraps(format_code)
    def format_known(text, style_config=None, **kwargs):
        if kwargs:  # an older yapf's verify=True: not the call to remember
            return format_code(text, style_config=style_config, **kwargs)
        key = (text, repr(sorted(style_config.items())) if isinstance(style_config, dict) else repr(style_config))
        if key not in done:
            done[key] = format_code(text, style_config=style_config)
        return done[key]

    format_known.formats_once = True
    return format_known


def apply() -> None:
    # XTuner's LLaVAModel asks the current device whether it supports bf16; torch.cpu has no such method.
    if not hasattr(torch.cpu, "is_bf16_supported"):
        torch.cpu.is_bf16_supported = lambda: False
    # torch >= 2.6 unpickles with weights_only=True, which refuses the non-tensor state mmengine keeps in a
    # checkpoint, and `xtuner train --resume` reads the checkpoint (for its seed) before any hook runs: a process
    # started to resume may read it fully. addressvlm.answering.hooks.ResumeLoadHook lifts this once the checkpoint has
    # loaded (and sets it itself for a config-level resume); no other process is touched.
    if any(arg == "--resume" or arg.startswith("--resume=") for arg in sys.argv):
        os.environ.setdefault(RESUME_VARIABLE, "1")
    import xtuner.dataset.llava as llava

    if not getattr(llava.process_hf_dataset, "sized_for_records", False):
        llava.process_hf_dataset = map_processes_for_size(llava.process_hf_dataset)
    import mmengine.config.config as mmengine_config

    if not getattr(mmengine_config.FormatCode, "formats_once", False):
        mmengine_config.FormatCode = formatted_once(mmengine_config.FormatCode)


RESUME_VARIABLE = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


apply()
