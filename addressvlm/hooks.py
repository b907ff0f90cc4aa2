"""mmengine hooks the recipes add to XTuner's."""
import os
import random

import numpy as np
import torch
from mmengine.hooks import Hook

from addressvlm.xtuner_shims import RESUME_VARIABLE


class RNGStateHook(Hook):
    """Save the RNG states in every checkpoint and restore them on resume.

    mmengine restores weights, optimizer, scheduler and the sampler's seed, but not the generators LoRA dropout draws
    from, so a resumed run drifts from the uninterrupted one; with this hook it reproduces it exactly.
    """

    priority = "VERY_LOW"

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint["rng_state"] = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get("rng_state")
        if state is None:
            return
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if state["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class ResumeLoadHook(Hook):
    """Let a resume read the run's own checkpoint, and nothing else, without torch's ``weights_only`` check.

    torch >= 2.6 unpickles with ``weights_only=True``, which refuses what mmengine stores beside the weights (its
    message hub's ``HistoryBuffer``, whose statistics are bound methods, and numpy arrays), so ``--resume`` fails.
    Allowing those types would allow ``getattr`` on them for every ``torch.load`` of the process; instead the
    override is on only in a run that resumes (or ``load_from``s), until its checkpoint has loaded
    (``addressvlm.xtuner_shims`` turns it on for ``--resume``, which XTuner reads before any hook runs).
    """

    priority = "VERY_HIGH"

    def before_run(self, runner) -> None:
        if runner._resume or runner._load_from:
            os.environ.setdefault(RESUME_VARIABLE, "1")

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        os.environ.pop(RESUME_VARIABLE, None)

    def before_train(self, runner) -> None:
        os.environ.pop(RESUME_VARIABLE, None)
