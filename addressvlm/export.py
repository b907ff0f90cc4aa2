"""A trained XTuner checkpoint as one Hugging Face ``LlavaForConditionalGeneration`` folder (the llava-hf layout that
transformers and vLLM read).

The recipe's model is built as training built it and the checkpoint loaded with every tensor checked
(``addressvlm.infer``); the LoRA adapters are merged into Phi-3 and into CLIP, XTuner's two-layer projector becomes
``multi_modal_projector``, and the processor is saved so that it works as loaded: ``<image>`` added to the tokenizer,
``patch_size``, ``vision_feature_select_strategy="default"`` and ``num_additional_image_tokens=1`` (CLIP's class
token, which "default" drops), so one ``<image>`` expands to exactly the 576 features the model inserts. The chat
template is written from the recipe's XTuner template, and ``image_aspect_ratio="pad"`` in the config records that
training padded images to a square with the processor's mean colour (the processor itself does not pad).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import torch

from addressvlm.infer import IMAGE_TOKEN, build_recipe_model, load_checked_state, resolve_checkpoint
from addressvlm.precision import is_quantized

# XTuner ProjectorModel(depth=2) -> LlavaMultiModalProjector
_PROJECTOR_NAMES = {"model.0.": "multi_modal_projector.linear_1.", "model.2.": "multi_modal_projector.linear_2."}


def chat_template_from_xtuner(template) -> str:
    """A Jinja chat template producing exactly the text XTuner's template built in training: the system turn, each
    user turn followed by the assistant cue, each answer followed by its suffix and separator. Message content is
    a string; an image is the ``<image>`` token in it (``"<image>\\n" + question``, as training wrote it)."""
    user_before, user_after = template.INSTRUCTION.split("{input}")
    system = template.get("SYSTEM", "")
    suffix = template.get("SUFFIX", "") + template.get("SEP", "")
    quote = json.dumps
    parts = ["{{ bos_token }}{% for message in messages %}"]
    if system:
        system_before, system_after = system.split("{system}")
        parts.append("{% if message['role'] == 'system' %}"
                     f"{{{{ {quote(system_before)} + message['content'] + {quote(system_after)} }}}}"
                     "{% el")
    else:
        parts.append("{% ")
    parts.append(f"if message['role'] == 'user' %}}{{{{ {quote(user_before)} + message['content'] + "
                 f"{quote(user_after)} }}}}"
                 f"{{% elif message['role'] == 'assistant' %}}{{{{ message['content'] + {quote(suffix)} }}}}"
                 "{% endif %}{% endfor %}")
    return "".join(parts)


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """A PEFT model with its adapters merged into the base weights; a plain model as it is."""
    return module.merge_and_unload() if hasattr(module, "merge_and_unload") else module


def _renamed(state: dict, names: dict[str, str]) -> dict:
    out = {}
    for key, value in state.items():
        prefix = next((p for p in names if key.startswith(p)), None)
        if prefix is None:
            raise KeyError(f"no Llava name for tensor {key!r}")
        out[names[prefix] + key[len(prefix):]] = value
    return out


def _add_image_token(tokenizer, llm) -> int:
    """Add ``<image>`` to the tokenizer; grow the LLM's embeddings if its id is past them (new rows: the mean row,
    so the token is never the likeliest next one and its input embedding is replaced by image features anyway)."""
    from transformers import AddedToken

    tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    old = llm.get_input_embeddings().weight.shape[0]
    if image_id >= old:
        llm.resize_token_embeddings(image_id + 1, mean_resizing=False)
        with torch.no_grad():
            for weight in (llm.get_input_embeddings().weight, llm.get_output_embeddings().weight):
                weight[old:] = weight[:old].mean(dim=0)
    return image_id


def export_llava_hf(config: str | os.PathLike, checkpoint: str | os.PathLike, out_dir: str | os.PathLike,
                    cfg_options: Sequence[str] | dict | None = None, dtype: str = "float16") -> Path:
    """Write the merged ``LlavaForConditionalGeneration``, its processor, chat template and generation config to
    ``out_dir`` (plus the recipe, as ``xtuner_config.py``); return ``out_dir``."""
    from accelerate import init_empty_weights
    from transformers import GenerationConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from xtuner.dataset.utils import get_bos_eos_token_ids
    from xtuner.registry import BUILDER

    checkpoint = resolve_checkpoint(checkpoint)
    cfg, model = build_recipe_model(config, cfg_options)
    load_checked_state(model, checkpoint)
    model.eval()
    if is_quantized(model.llm):
        raise ValueError(f"{config} loads the LLM in 4/8 bits: merging LoRA into it would export rounded weights. "
                         "Export with the full-precision recipe of the same LoRA settings (for "
                         "stage2_pitts_qlora.py: --config recipes/stage2_pitts.py) and this checkpoint")
    projector = model.projector
    if projector.config.depth != 2:
        raise ValueError(f"Llava's projector is Linear-act-Linear; this recipe's projector has depth "
                         f"{projector.config.depth}")
    llm, vision = _unwrap(model.llm), _unwrap(model.visual_encoder)
    dataset = cfg.train_dataloader.dataset
    template = dataset.template_map_fn.template
    tokenizer = BUILDER.build(cfg.tokenizer)
    image_processor = BUILDER.build(cfg.image_processor)
    image_id = _add_image_token(tokenizer, llm)
    # Llava's forward takes no token_type_ids; a tokenizer that returns them breaks `generate(**processor(...))`.
    tokenizer.model_input_names = tokenizer.init_kwargs["model_input_names"] = ["input_ids", "attention_mask"]

    text_config = llm.config.to_dict()
    for key in ("auto_map", "_name_or_path", "_attn_implementation_autoset"):
        text_config.pop(key, None)  # the native transformers class, not the release's remote code
    text_config.update(architectures=[type(llm).__name__], use_cache=True, torch_dtype=dtype)
    vision_config = vision.config.to_dict()
    vision_config.pop("_name_or_path", None)
    patches = (vision.config.image_size // vision.config.patch_size) ** 2
    llava_config = LlavaConfig(
        vision_config=vision_config, text_config=text_config, image_token_index=image_id,
        projector_hidden_act=projector.config.hidden_act, vision_feature_select_strategy="default",
        vision_feature_layer=model.visual_select_layer, image_seq_length=patches,
        multimodal_projector_bias=projector.config.bias, pad_token_id=tokenizer.pad_token_id,
        image_aspect_ratio="pad" if dataset.get("pad_image_to_square", False) else "original",
        architectures=["LlavaForConditionalGeneration"], torch_dtype=dtype)

    state = {**_renamed(llm.state_dict(), {"model.": "language_model.model.", "lm_head.": "language_model.lm_head."}),
             **_renamed(vision.state_dict(), {"vision_model.": "vision_tower.vision_model."}),
             **_renamed(projector.state_dict(), _PROJECTOR_NAMES)}
    with init_empty_weights():
        hf_model = LlavaForConditionalGeneration(llava_config)
    hf_model.load_state_dict({k: v.to(getattr(torch, dtype)) for k, v in state.items()}, strict=True, assign=True)
    hf_model.tie_weights()

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(out_dir)
    chat_template = chat_template_from_xtuner(template)
    tokenizer.chat_template = chat_template
    LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=vision.config.patch_size,
                   vision_feature_select_strategy="default", chat_template=chat_template, image_token=IMAGE_TOKEN,
                   num_additional_image_tokens=1).save_pretrained(out_dir)
    _, eos_ids = get_bos_eos_token_ids(tokenizer)
    stops = list(eos_ids) + [i for w in template.get("STOP_WORDS", [])
                             for i in tokenizer.encode(w, add_special_tokens=False)]
    GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=sorted(set(stops)),
                     pad_token_id=tokenizer.pad_token_id, do_sample=False).save_pretrained(out_dir)
    shutil.copyfile(config, out_dir / "xtuner_config.py")
    return out_dir
