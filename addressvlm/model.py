"""The LLaVA model the recipes train: XTuner's ``LLaVAModel`` with a stage chain that cannot fail silently.

XTuner loads ``pretrained_pth`` with ``strict=False`` and ignores every mismatch, and its LLaVA model starts from a
random projector. A two-stage recipe needs the opposite on both counts:

- stage 1 starts from the *trained* LLaVA-Phi3-mini: the LLM and CLIP weights come from their folders, and the
  projector from the release's ``projector/`` folder (``projector_name_or_path``); without it we refuse to start;
- stage 2 starts from stage 1's final checkpoint, found from stage 1's ``work_dir`` (``init_from_work_dir``), and
  refuses to start, naming the keys, if any LoRA or projector tensor of that checkpoint did not load.

Stage 2 *continues* stage 1's LoRA adapters (same rank, same target modules) rather than merging them and opening new
ones: the adapters keep all of stage 1's update, the chain stays one adapter per module (one merge at export), and
the step-0 equality with stage 1 is checkable tensor by tensor.
"""
from __future__ import annotations

from pathlib import Path

from mmengine import print_log

from addressvlm import xtuner_shims  # noqa: F401  (applies the CPU shims before XTuner runs)
from addressvlm.stage_chain import StageChainError, load_chained_tensors
from xtuner.model import LLaVAModel
from xtuner.model.modules import ProjectorModel


def _is_chained_tensor(key: str) -> bool:
    return "lora_" in key or key.startswith("projector.")


class AddressLLaVAModel(LLaVAModel):
    """``LLaVAModel`` plus a loaded projector and a checked stage chain.

    Args (beyond ``LLaVAModel``'s):
        projector_name_or_path: the trained projector folder (``<llava-phi-3-mini-xtuner>/projector``).
        init_from_work_dir: the previous stage's ``work_dir``; its final checkpoint initialises LoRA and projector.
    """

    def __init__(self, *args, projector_name_or_path: str | None = None, init_from_work_dir: str | None = None,
                 pretrained_pth: str | None = None, **kwargs):
        if pretrained_pth is not None:
            raise StageChainError(
                "pretrained_pth loads with strict=False and ignores mismatches; use init_from_work_dir "
                "(the previous stage's work_dir) so every LoRA and projector tensor is checked")
        if projector_name_or_path is None:
            raise StageChainError(
                "no projector_name_or_path: a LLaVA stage must start from the trained LLaVA-Phi3-mini projector "
                "(xtuner/llava-phi-3-mini-xtuner/projector), not a random one")
        super().__init__(*args, **kwargs)
        if next(self.projector.parameters()).is_meta:
            # Built empty (`xtuner convert pth_to_hf`): the caller loads a checkpoint over every trained tensor.
            return
        self._load_projector(projector_name_or_path)
        if init_from_work_dir is not None:
            self.load_previous_stage(init_from_work_dir)

    def _load_projector(self, path: str) -> None:
        if not Path(path).is_dir():
            raise StageChainError(f"projector folder {path} not found: download the trained LLaVA-Phi3-mini "
                                  "(see the recipe's header)")
        trained = ProjectorModel.from_pretrained(path).state_dict()
        own = self.projector.state_dict()
        wrong = sorted(k for k in own if k not in trained or trained[k].shape != own[k].shape)
        if wrong:
            raise StageChainError(f"projector in {path} does not fit this LLM/vision pair: {wrong}")
        self.projector.load_state_dict({k: v.to(own[k].dtype) for k, v in trained.items()})
        print_log(f"Loaded the trained projector from {path}", "current")

    def load_previous_stage(self, work_dir: str) -> Path:
        return load_chained_tensors(self, work_dir, _is_chained_tensor)
