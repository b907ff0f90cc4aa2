"""The MiniCPM-V 2.6 model the ``recipes/minicpmv26/`` recipes train: an XTuner (mmengine) model on the pattern of
XTuner 0.2.0's ``InternVL_V1_5``, with the same checked stage chain as ``addressvlm.training.model``.

The model is the release itself (``AutoModel.from_pretrained(model_path, trust_remote_code=True)``: SigLIP ``vpm``,
``resampler``, Qwen2 ``llm``). Its base weights stay frozen; what trains is Table A1's set for this backbone:

- LoRA on the LLM's attention projections (``q/k/v/o_proj`` of the Qwen2 layers) and on the vision tower (every
  linear layer of SigLIP unless the recipe names targets), injected in place so the remote code's module paths
  (``self.llm.model.embed_tokens``, ...) keep working;
- the resampler, whole (it is the projector of this architecture).

``state_dict`` holds only those tensors (LoRA and resampler), so checkpoints are small and stage 2 starts from stage 1
through ``init_from_work_dir``, refusing to start if any of them does not load (XTuner's ``pretrained_pth`` loads with
``strict=False`` and is refused, as for LLaVA).
"""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from mmengine import print_log
from mmengine.model import BaseModel
from peft import inject_adapter_in_model
from torch import nn
from transformers import AutoModel, AutoTokenizer
from xtuner.registry import BUILDER

from addressvlm.training import xtuner_shims  # noqa: F401
from addressvlm.training.inputs import require_model_folder
from addressvlm.training.minicpmv_dataset import (
    IGNORE_INDEX, ImageSettings, check_marker_tokens, encode_question, render_turns,
)
from addressvlm.training.precision import load_dtype, upcast_trainable
from addressvlm.training.remote_code import hub_code_names
from addressvlm.training.stage_chain import StageChainError, load_chained_tensors


# The parts a MiniCPM-V stage trains and saves, by key, as the stage chain continues them.
MINICPMV_CHAIN_PARTS = {
    "llm_lora": lambda key: key.startswith("model.llm.") and "lora_" in key,
    "visual_encoder_lora": lambda key: key.startswith("model.vpm.") and "lora_" in key,
    "resampler": lambda key: key.startswith("model.resampler."),
}


def is_trained_minicpmv_tensor(key: str) -> bool:
    """LoRA adapters and the resampler: what a MiniCPM-V stage trains and saves."""
    return any(selects(key) for selects in MINICPMV_CHAIN_PARTS.values())


class AddressMiniCPMV(BaseModel):
    """MiniCPM-V 2.6 for ``xtuner train``.

    Args:
        model_path: the ``openbmb/MiniCPM-V-2_6`` folder (weights, remote code, tokenizer, processor config), or a
            model already built (``tools/estimate_memory.py`` builds the release's shapes on the meta device).
        llm_lora, visual_encoder_lora: ``LoraConfig`` (or config dicts); ``target_modules=None`` means every linear
            layer of that part (``lm_head`` excepted).
        torch_dtype: the dtype the weights load in (``"bfloat16"`` on GPUs, ``"float32"`` on CPU).
        attn_implementation: passed to ``from_pretrained`` (``"sdpa"``, ``"flash_attention_2"``) when given.
        max_slice_nums: slice cap for ``answer`` (the dataset has its own; recipes pass the same variable).
        gradient_checkpointing: recompute activations of the LLM and SigLIP layers in the backward pass.
        init_from_work_dir: the previous stage's ``work_dir``; its final checkpoint initialises LoRA and resampler.
    """

    def __init__(self, model_path: str | nn.Module, llm_lora=None, visual_encoder_lora=None, torch_dtype="bfloat16",
                 attn_implementation: str | None = None, max_slice_nums: int | None = None,
                 gradient_checkpointing: bool = True, init_from_work_dir: str | None = None,
                 pretrained_pth: str | None = None):
        if pretrained_pth is not None:
            raise StageChainError(
                "pretrained_pth loads with strict=False and ignores mismatches; use init_from_work_dir "
                "(the previous stage's work_dir) so every LoRA and resampler tensor is checked")
        super().__init__()
        if isinstance(model_path, nn.Module):
            self.model_path, self.model = None, model_path
        else:
            require_model_folder(model_path, "openbmb/MiniCPM-V-2_6")
            self.model_path = str(model_path)
            extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
            with hub_code_names():
                self.model = AutoModel.from_pretrained(self.model_path, trust_remote_code=True,
                                                       torch_dtype=load_dtype(torch_dtype), **extra)
        self.model.requires_grad_(False)
        if llm_lora is not None:
            self._inject_lora(self.model.llm, llm_lora)
        if visual_encoder_lora is not None:
            self._inject_lora(self.model.vpm, visual_encoder_lora)
        self.model.resampler.requires_grad_(True)
        upcast_trainable(self.model)
        if gradient_checkpointing:
            # Non-reentrant: the frozen embeddings' outputs need not require grad for the LoRA grads to flow.
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.image_settings = ImageSettings.from_model_dir(self.model_path, max_slice_nums) if self.model_path else None
        self._tokenizer = None
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.model.parameters())
        print_log(f"MiniCPM-V from {self.model_path}: {trainable:,} of {total:,} parameters trained "
                  "(LoRA + resampler)", "current")
        if init_from_work_dir is not None:
            self.load_previous_stage(init_from_work_dir)

    @staticmethod
    def _inject_lora(part: nn.Module, lora_config) -> None:
        config = BUILDER.build(lora_config) if isinstance(lora_config, dict) else lora_config
        if config.target_modules is None:
            # lazy: xtuner.model imports bitsandbytes and DeepSpeed, seconds of import and GPU warnings on stderr
            # before every tool's one-line usage error, for a model that is built here only.
            from xtuner.model.utils import find_all_linear_names

            config.target_modules = find_all_linear_names(part)
        inject_adapter_in_model(config, part)

    def init_weights(self):
        """Everything comes from the release (and the previous stage); mmengine must not re-initialise it."""

    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        return type(state)((k, v) for k, v in state.items() if is_trained_minicpmv_tensor(k))

    def load_previous_stage(self, work_dir: str) -> Path:
        return load_chained_tensors(self, work_dir, MINICPMV_CHAIN_PARTS)

    def forward(self, data, data_samples=None, mode="loss"):
        if mode != "loss":
            raise NotImplementedError(f"mode {mode!r}: training computes the loss; answer questions with answer()")
        inputs = {k: v for k, v in data.items() if k != "labels"}
        outputs = self.model(data=inputs, labels=data["labels"], attention_mask=data["attention_mask"], use_cache=False)
        return {"loss": outputs.loss}

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=True)
            check_marker_tokens(self._tokenizer, self.image_settings)
        return self._tokenizer

    def answer(self, image: Image.Image, question: str, max_new_tokens: int = 64) -> str:
        """Greedy answer to one question about one image (``question`` may hold ``<image>``; else the image goes
        first), prompted exactly as in training."""
        was_training = self.training
        self.eval()
        try:
            prompt = encode_question(question, image.convert("RGB"), self.tokenizer, self.image_settings)
            device = next(self.model.parameters()).device
            input_ids = prompt["input_ids"][None].to(device)
            return self.model.generate(
                input_ids=input_ids, pixel_values=[[t.to(device) for t in prompt["pixel_values"]]],
                tgt_sizes=[prompt["tgt_sizes"].to(device)], image_bound=[prompt["image_bound"].to(device)],
                attention_mask=torch.ones_like(input_ids), tokenizer=self.tokenizer, decode_text=True,
                max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)[0]
        finally:
            self.train(was_training)

    @torch.inference_mode()
    def prompt_embeddings(self, image: Image.Image, question: str) -> torch.Tensor:
        """``[1, L, hidden]``: the answering prompt of ``answer`` with the image features in place, for scoring
        answers over its cache (``addressvlm.answering.ranking``)."""
        prompt = encode_question(question, image.convert("RGB"), self.tokenizer, self.image_settings)
        device = next(self.model.parameters()).device
        embeddings, _ = self.model.get_vllm_embedding({
            "input_ids": prompt["input_ids"][None].to(device),
            "pixel_values": [[t.to(device) for t in prompt["pixel_values"]]],
            "tgt_sizes": [prompt["tgt_sizes"].to(device)], "image_bound": [prompt["image_bound"].to(device)]})
        return embeddings

    def answer_ids(self, answer: str) -> list[int]:
        """The token ids training labels for ``answer``: the answer and its ``<|im_end|>``."""
        _, labels = render_turns(self.tokenizer, [{"role": "user", "content": "?"},
                                                  {"role": "assistant", "content": answer}])
        return [token for token in labels if token != IGNORE_INDEX]
