"""The released models' architectures at their published shapes (``release_configs/``), built around a recipe's
model class without the weights: on the meta device for exact parameter counts, or at random weights to time a
release's per-input cost without its download.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from addressvlm.training.minicpmv import AddressMiniCPMV
from addressvlm.training.model import AddressLLaVAModel
from addressvlm.training.remote_code import hub_code_names
from addressvlm.training.retrieval_models import CLIPDualEncoder, LVLMRetriever


RELEASE_CONFIGS = Path(__file__).resolve().parent / "release_configs"


def release_config(name: str) -> dict:
    config = json.loads((RELEASE_CONFIGS / f"{name}.json").read_text())
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _type_name(value) -> str:
    return value.rsplit(".", 1)[-1] if isinstance(value, str) else value.__name__


def build_meta_model(cfg) -> nn.Module:
    """The recipe's model class around the real architectures, built on the meta device (no weights, no memory)."""
    return build_release_model(cfg, torch.device("meta"), torch.bfloat16)


def clip_release_config():
    """CLIP ViT-L/14-336 whole (both towers), as the CLIP dual encoder's release."""
    from transformers import CLIPConfig

    vision = release_config("clip_vit_large_patch14_336")
    return CLIPConfig(text_config=release_config("clip_text_large_patch14"), vision_config=vision,
                      projection_dim=vision["projection_dim"])


def build_release_model(cfg, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The recipe's model class around the real architectures (``release_configs/``): on the meta device for counts,
    or on a real one at random weights, so a release's per-input cost is measured without its download. A LLaVA
    recipe's projector is random too (written to a temporary folder, which the model loads as it loads the
    release's)."""
    import tempfile

    from xtuner.registry import BUILDER

    model_cfg = cfg.model.copy()
    model_type = _type_name(model_cfg.pop("type"))
    if model_type != "CLIPDualEncoder":
        model_cfg["init_from_work_dir"] = None  # no previous stage: counts and timing need none
    loras = {k: BUILDER.build(v) for k, v in model_cfg.items() if k.endswith("_lora") and isinstance(v, dict)}
    with torch.device(device), tempfile.TemporaryDirectory() as folder:
        if model_type in ("AddressLLaVAModel", "LVLMRetriever"):
            from transformers import CLIPVisionConfig, CLIPVisionModel, Phi3Config, Phi3ForCausalLM

            from xtuner.model.modules import ProjectorConfig, ProjectorModel

            model_cfg["llm"] = Phi3ForCausalLM(Phi3Config(**release_config("phi3_mini_4k"))).to(dtype)
            model_cfg["visual_encoder"] = CLIPVisionModel(
                CLIPVisionConfig(**release_config("clip_vit_large_patch14_336"))).to(dtype)
            if device.type != "meta":
                ProjectorModel(ProjectorConfig(
                    visual_hidden_size=model_cfg["visual_encoder"].config.hidden_size,
                    llm_hidden_size=model_cfg["llm"].config.hidden_size, depth=2)).save_pretrained(folder)
                model_cfg["projector_name_or_path"] = folder
            model_class = AddressLLaVAModel if model_type == "AddressLLaVAModel" else LVLMRetriever
            return model_class(**{**model_cfg, **loras})
        if model_type == "CLIPDualEncoder":
            from transformers import CLIPModel

            return CLIPDualEncoder(**{**model_cfg, "clip": CLIPModel(clip_release_config()).to(dtype)})
        if model_type == "AddressMiniCPMV":
            with hub_code_names():
                # lazy: the hub code's own imports resolve only inside hub_code_names, under the release's module names.
                from addressvlm.training.minicpmv_code.configuration_minicpm import MiniCPMVConfig
                from addressvlm.training.minicpmv_code.modeling_minicpmv import MiniCPMV
            release = MiniCPMV(MiniCPMVConfig(**release_config("minicpm_v_2_6"))).to(torch.bfloat16)
            model_cfg["model_path"] = release
            return AddressMiniCPMV(**model_cfg)
    raise ValueError(f"no release shapes for a {model_type} recipe")
