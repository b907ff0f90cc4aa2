"""The LLaVA model the recipes train: XTuner's ``LLaVAModel`` with a stage chain that cannot fail silently.

XTuner loads ``pretrained_pth`` with ``strict=False`` and ignores every mismatch, and its LLaVA model starts from a
random projector. A two-stage recipe needs the opposite on both counts:

- stage 1 starts from the *trained* LLaVA-Phi3-mini: the LLM and CLIP weights come from their folders, and the
  projector from the release's ``projector/`` folder (``projector_name_or_path``); without it we refuse to start;
- stage 2 starts from stage 1's final checkpoint, found from stage 1's ``work_dir`` (``init_from_work_dir``), and
  refuses to start, naming the keys, if any LoRA or projector tensor of that checkpoint did not load.

Stage 2 *continues* stage 1's LoRA adapters (same rank, same target modules) rather than merging them and opening new
ones: the adapters keep all of stage 1's update, the chain stays one adapter per module (one merge at export), and
the step-0 equality with stage 1 is checkable tensor by tensor. Table 4's variants declare otherwise part by part
(``stage_chain``): an adapter stage 1 did not train is opened fresh, one stage 2 does not train is carried frozen.
"""
from __future__ import annotations

from pathlib import Path

from mmengine import print_log
from peft import get_peft_model
from xtuner.model import LLaVAModel
from xtuner.model.modules import ProjectorModel
from xtuner.model.utils import find_all_linear_names

from addressvlm.training import xtuner_shims  # noqa: F401  (applies the CPU shims before XTuner runs)
from addressvlm.training.inputs import require_model_folder
from addressvlm.training.precision import is_quantized, load_dtype, upcast_trainable
from addressvlm.training.stage_chain import StageChainError, load_chained_tensors


def vision_layers_used(num_layers: int, select_layer: int) -> int:
    """How many encoder layers (from the first) compute ``hidden_states[select_layer]``, whose length is
    ``num_layers + 1`` (the embeddings, then each layer's output)."""
    return select_layer % (num_layers + 1)


# The parts a LLaVA stage trains and saves, by key (full-state names): what ``stage_chain`` declares part by part.
LLAVA_CHAIN_PARTS = {
    "llm_lora": lambda key: key.startswith("llm.") and "lora_" in key,
    "visual_encoder_lora": lambda key: key.startswith("visual_encoder.") and "lora_" in key,
    "projector": lambda key: key.startswith("projector."),
}


def is_chained_llava_tensor(key: str) -> bool:
    """LoRA adapters and the projector: what a LLaVA stage trains, saves and the next stage continues."""
    return any(selects(key) for selects in LLAVA_CHAIN_PARTS.values())


class AddressLLaVAModel(LLaVAModel):
    """``LLaVAModel`` plus a loaded projector and a checked stage chain.

    Args (beyond ``LLaVAModel``'s):
        projector_name_or_path: the trained projector folder (``<llava-phi-3-mini-xtuner>/projector``).
        init_from_work_dir: the previous stage's ``work_dir``; its final checkpoint initialises LoRA and projector.
        stage_chain: what this stage does with each part of that checkpoint, ``{part: mode}`` over the parts
            ``llm_lora``, ``visual_encoder_lora``, ``projector``: ``"continue"`` (the default for every part),
            ``"open"`` (stage 1 did not train it: fresh) or ``"frozen"`` (loaded, not trained). Any checkpoint that
            does not match the declaration is refused, naming the keys (``addressvlm.training.stage_chain``).
        torch_dtype: the dtype the frozen LLM and vision encoder load in (``addressvlm.training.precision``); an
        explicit
            ``torch_dtype`` in the ``llm`` dict (a QLoRA recipe's compute dtype) wins for the LLM. Trained tensors
            are fp32 whatever this is.
    """

    def __init__(self, llm: dict, visual_encoder: dict, *args, projector_name_or_path: str | None = None,
                 init_from_work_dir: str | None = None, stage_chain: dict[str, str] | None = None,
                 pretrained_pth: str | None = None, torch_dtype: str = "bfloat16", visual_select_layer: int = -2, **kwargs):
        if pretrained_pth is not None:
            raise StageChainError(
                "pretrained_pth loads with strict=False and ignores mismatches; use init_from_work_dir "
                "(the previous stage's work_dir) so every LoRA and projector tensor is checked")
        if projector_name_or_path is None:
            raise StageChainError(
                "no projector_name_or_path: a LLaVA stage must start from the trained LLaVA-Phi3-mini projector "
                "(xtuner/llava-phi-3-mini-xtuner/projector), not a random one")
        for part in (llm, visual_encoder):
            if isinstance(part, dict):
                require_model_folder(part.get("pretrained_model_name_or_path"), "xtuner/llava-phi-3-mini-xtuner")
                part.setdefault("torch_dtype", load_dtype(torch_dtype))
        # XTuner sets visual_select_layer only after it has placed the vision LoRA, which must know it.
        self._lora_select_layer = visual_select_layer
        super().__init__(llm, visual_encoder, *args, visual_select_layer=visual_select_layer, **kwargs)
        upcast_trainable(self)
        if next(self.projector.parameters()).is_meta:
            # Built empty (`xtuner convert pth_to_hf`): the caller loads a checkpoint over every trained tensor.
            return
        self._load_projector(projector_name_or_path)
        if init_from_work_dir is not None:
            self.load_previous_stage(init_from_work_dir, stage_chain)

    def _prepare_llm_for_lora(self, lora_config, use_activation_checkpointing=True):
        """XTuner runs peft's ``prepare_model_for_kbit_training`` on every LLM, which casts all fp16/bf16 weights to
        fp32 (8 GB more per rank for Phi-3-mini); that preparation is for quantized LLMs only."""
        if is_quantized(self.llm):
            return super()._prepare_llm_for_lora(lora_config, use_activation_checkpointing)
        lora_config = self._parse_lora_config(lora_config)
        if lora_config.target_modules is None:
            lora_config.target_modules = find_all_linear_names(self.llm)
        self.llm = get_peft_model(self.llm, lora_config)

    def _prepare_visual_encoder_for_lora(self, lora_config, use_activation_checkpointing=True):
        """LoRA only in the vision layers whose output reaches the LLM: with ``visual_select_layer=-2`` CLIP's last
        layer never gets a gradient, and an adapter there would be dead weight (and stop a plain DDP run on unused
        parameters)."""
        lora_config = self._parse_lora_config(lora_config)
        if lora_config.target_modules is None and lora_config.layers_to_transform is None:
            lora_config.target_modules = find_all_linear_names(self.visual_encoder)
            lora_config.layers_to_transform = list(range(vision_layers_used(
                self.visual_encoder.config.num_hidden_layers, self._lora_select_layer)))
            lora_config.layers_pattern = "layers"
        self.visual_encoder = get_peft_model(self.visual_encoder, lora_config)

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

    def load_previous_stage(self, work_dir: str, stage_chain: dict[str, str] | None = None) -> Path:
        return load_chained_tensors(self, work_dir, LLAVA_CHAIN_PARTS, stage_chain)
