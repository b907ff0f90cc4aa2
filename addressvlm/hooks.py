"""mmengine hooks the recipes add to XTuner's."""
import random

import numpy as np
import torch
from mmengine.hooks import Hook


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
