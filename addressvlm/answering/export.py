"""A trained XTuner checkpoint as one Hugging Face folder with its LoRA merged, in the layout the serving engines
(vLLM, lmdeploy) and transformers read: ``export_hf`` (``tools/export_hf.py``) builds the recipe's model as training
built it, loads the checkpoint with every tensor checked (``addressvlm.answering.loading``), merges in float32,
and writes

- for LLaVA-Phi3-mini, a ``LlavaForConditionalGeneration`` folder (the llava-hf layout): the LoRA adapters merged into
  Phi-3 and into CLIP, XTuner's two-layer projector as ``multi_modal_projector``, and the processor saved so that it
  works as loaded: ``<image>`` added to the tokenizer, ``patch_size``, ``vision_feature_select_strategy="default"``
  and ``num_additional_image_tokens=1`` (CLIP's class token, which "default" drops), so one ``<image>`` expands to
  exactly the 576 features the model inserts. The chat template is written from the recipe's XTuner template, and
  ``image_aspect_ratio="pad"`` in the config records that training padded images to a square with the processor's
  mean colour (the processor itself does not pad);
- for MiniCPM-V 2.6, the release's own folder with its weights replaced: LoRA merged into the Qwen2 attention and
  SigLIP layers, the trained resampler, every tensor under the release's name; the release's remote code, tokenizer,
  chat template, processor and generation configs copied as they are (training prompts with them), so whatever loads
  the release (``--trust-remote-code``) loads the export.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import torch

from addressvlm.answering.loading import prompts_itself
from addressvlm.core.records import refuse_output_over_inputs, replaced_folder, writable_output
from addressvlm.training.checkpoints import build_trained_model, resolve_checkpoint
from addressvlm.training.image_prompts import IMAGE_TOKEN
from addressvlm.training.precision import is_quantized
from addressvlm.training.recipes import load_recipe, model_root_options, model_root_variable, parse_cfg_options

# The dtype of each release's weights: an export's default.
RELEASE_DTYPES = {"llava": "float16", "minicpmv": "bfloat16"}
# Files of a release folder that hold weights (replaced by the export's), not code or settings.
WEIGHT_FILE_ENDINGS = (".safetensors", ".bin", ".pt", ".pth", ".safetensors.index.json", ".bin.index.json")

# XTuner ProjectorModel(depth=2) -> LlavaMultiModalProjector
_PROJECTOR_NAMES = {"model.0.": "multi_modal_projector.linear_1.", "model.2.": "multi_modal_projector.linear_2."}


# A message's content as training wrote it: a string as it is; a list of parts (OpenAI's shape, which vLLM and TRL's
# VLM path send) as its texts in order, each image part as the image token and a newline ("<image>\n" + question).
_CONTENT = ("{% set content %}{% if message['content'] is string %}{{ message['content'] }}{% else %}"
            "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
            "{% elif part['type'] in ('image', 'image_url') %}{{ " + json.dumps(IMAGE_TOKEN + "\n") + " }}"
            "{% endif %}{% endfor %}{% endif %}{% endset %}")


def chat_template_from_xtuner(template) -> str:
    """A Jinja chat template producing exactly the text XTuner's template built in training: the system turn, each
    user turn followed by the assistant cue, each answer followed by its suffix and separator. Message content is
    a string, an image being the ``<image>`` token in it (``"<image>\\n" + question``, as training wrote it), or a
    list of text and image parts that renders to the same text."""
    user_before, user_after = template.INSTRUCTION.split("{input}")
    system = template.get("SYSTEM", "")
    suffix = template.get("SUFFIX", "") + template.get("SEP", "")
    quote = json.dumps
    parts = ["{{ bos_token }}{% for message in messages %}", _CONTENT]
    if system:
        system_before, system_after = system.split("{system}")
        parts.append("{% if message['role'] == 'system' %}"
                     f"{{{{ {quote(system_before)} + content + {quote(system_after)} }}}}"
                     "{% el")
    else:
        parts.append("{% ")
    parts.append(f"if message['role'] == 'user' %}}{{{{ {quote(user_before)} + content + "
                 f"{quote(user_after)} }}}}"
                 f"{{% elif message['role'] == 'assistant' %}}{{{{ content + {quote(suffix)} }}}}"
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


def export_hf(config: str | os.PathLike, checkpoint: str | os.PathLike, out_dir: str | os.PathLike,
              cfg_options: Sequence[str] | dict | None = None, dtype: str | None = None, *,
              model_root: str | os.PathLike | None = None, replace: bool = False) -> Path:
    """Write the recipe's trained model, LoRA merged, as a Hugging Face folder in ``out_dir`` (a
    ``LlavaForConditionalGeneration`` for a LLaVA recipe, the release's layout for MiniCPM-V), weights in ``dtype``
    (default: the release's), plus the recipe as ``xtuner_config.py``; return ``out_dir``. ``model_root``: a local
    release folder in place of the recipe's (``recipes.model_root_options``).

    The folder is written whole or not at all: into a staging folder beside it that then takes its place, so a run
    killed mid-way leaves no folder of empty or half-written files. An ``out_dir`` that is not empty is refused
    unless ``replace``; one that is, holds or lies inside an input (the recipe, the checkpoint, the release) always.
    """
    checkpoint = resolve_checkpoint(checkpoint)
    recipe = load_recipe(config)
    options = parse_cfg_options(cfg_options)
    if model_root:
        options = {**parse_cfg_options(model_root_options(recipe, str(model_root))), **options}
    variable = model_root_variable(recipe)
    release = ("--model-root", model_root) if model_root else \
        (f"release ({variable})", recipe.get(variable) if variable else None)
    out_dir = Path(out_dir)
    refuse_output_over_inputs(out_dir, [("--config", config), ("--checkpoint", checkpoint), release], "--out")
    writable_output(out_dir, "--out", folder=True)
    present = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    if present and not replace:
        raise ValueError(f"--out {out_dir} is not empty ({', '.join(present[:5])}{', ...' if len(present) > 5 else ''})"
                         ": give a new or empty folder, or --replace to replace it whole")
    # Frozen weights in float32 (the recipes' torch_dtype), so the merge does not round through bf16 first.
    cfg, model = build_trained_model(config, checkpoint, options, torch.float32)
    model.eval()
    if not prompts_itself(model) and is_quantized(model.llm):
        raise ValueError(f"{config} loads the LLM in 4/8 bits: merging LoRA into it would export rounded weights. "
                         "Export with the full-precision recipe of the same LoRA settings (for "
                         "stage2_pitts_qlora.py: --config recipes/stage2_pitts.py) and this checkpoint")
    with replaced_folder(out_dir, present) as staging:
        if prompts_itself(model):
            _write_minicpmv(model, staging, dtype or RELEASE_DTYPES["minicpmv"])
        else:
            _write_llava(cfg, model, staging, dtype or RELEASE_DTYPES["llava"])
        shutil.copyfile(config, staging / "xtuner_config.py")
        _permissions_as_umask_gives(staging)
    return out_dir


def _permissions_as_umask_gives(folder: Path) -> None:
    """Every file of ``folder`` readable as any other new file is (safetensors writes its files 0600, so an export
    served by another user than the one who made it could not read its weights)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)


def merge_injected_lora(module: torch.nn.Module) -> int:
    """Merge every LoRA layer injected into ``module`` (peft's ``inject_adapter_in_model``, as ``AddressMiniCPMV``
    injects them) into its base layer and put the base layer back in its place; return how many were merged."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [(name, layer) for name, layer in module.named_modules() if isinstance(layer, BaseTunerLayer)]
    for name, layer in layers:
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent), child, layer.get_base_layer())
    return len(layers)


def _write_minicpmv(model, out_dir: Path, dtype: str) -> None:
    """The release folder ``model.model_path`` with the trained weights in place of its own."""
    release = Path(model.model_path)
    merge_injected_lora(model.model)
    model.model.to(getattr(torch, dtype)).save_pretrained(out_dir, safe_serialization=True)
    # The release's own config, code, tokenizer and processor files over those save_pretrained wrote.
    for path in release.iterdir():
        if path.is_file() and not path.name.endswith(WEIGHT_FILE_ENDINGS):
            shutil.copyfile(path, out_dir / path.name)
    # The processor the engines run must slice images as training did, also where a recipe capped the slices below
    # the release's default.
    slices = model.image_settings.max_slice_nums
    config = json.loads((out_dir / "config.json").read_text())
    config["torch_dtype"] = dtype
    if isinstance(config.get("slice_config"), dict):
        config["slice_config"]["max_slice_nums"] = slices
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    processor = json.loads((out_dir / "preprocessor_config.json").read_text())
    processor["max_slice_nums"] = slices
    (out_dir / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")


def _write_llava(cfg, model, out_dir: Path, dtype: str) -> None:
    """The merged ``LlavaForConditionalGeneration``, its processor, chat template and generation config."""
    from accelerate import init_empty_weights
    from transformers import GenerationConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from xtuner.dataset.utils import get_bos_eos_token_ids
    from xtuner.registry import BUILDER

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


def _tensor_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    shapes = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "pt") as weights:
            shapes.update({name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()})
    return shapes


def transformers4_folder(trained: str | os.PathLike, stage2_export: str | os.PathLike, out_dir: str | os.PathLike,
                         *, replace: bool = False) -> Path:
    """The stage-3 model (``trained``: the folder transformers 5 saved in .venv-modern, LoRA merged; see
    ``runs/grpo.py``) as a folder this environment's transformers 4.48 loads (``eval/infer.py --hf``): its
    weights, with the config, tokenizer, processor, chat template and generation config of ``stage2_export`` (the
    folder ``export_hf`` wrote, that GRPO started from). Why not its own: transformers 5 renames config keys
    (``rope_parameters``, ``dtype``) and writes a tokenizer and processor 4.48 does not read. GRPO changes neither the
    architecture nor the vocabulary, so the stage-2 files describe the trained weights; that the tensors have the
    same names and shapes is checked (a ``ValueError`` otherwise). Written whole or not at all, as ``export_hf``."""
    trained, stage2_export, out_dir = Path(trained), Path(stage2_export), Path(out_dir)
    for folder, what in ((trained, "the stage-3 model"), (stage2_export, "the stage-2 export")):
        if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
            raise FileNotFoundError(f"{folder}: no config.json and .safetensors weights: not {what}")
    refuse_output_over_inputs(out_dir, [("the stage-3 model", trained), ("the stage-2 export", stage2_export)],
                              "the converted folder")
    writable_output(out_dir, "the converted folder", folder=True)
    present = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    if present and not replace:
        raise ValueError(f"{out_dir} is not empty: give a new or empty folder, or replace it")
    theirs, ours = _tensor_shapes(trained), _tensor_shapes(stage2_export)
    if theirs != ours:
        differing = sorted(set(theirs.items()) ^ set(ours.items()))[0][0]
        raise ValueError(f"{trained} is not the model of {stage2_export}: their tensors differ (first: {differing!r})")
    trained_config = json.loads((trained / "config.json").read_text())
    with replaced_folder(out_dir, present) as staging:
        for path in stage2_export.iterdir():
            if path.is_file() and not path.name.endswith(WEIGHT_FILE_ENDINGS) and path.name != "xtuner_config.py":
                shutil.copyfile(path, staging / path.name)
        for path in trained.iterdir():
            if path.name.endswith(WEIGHT_FILE_ENDINGS):
                shutil.copyfile(path, staging / path.name)
        config = json.loads((staging / "config.json").read_text())
        config["torch_dtype"] = trained_config.get("dtype") or trained_config["torch_dtype"]
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        _permissions_as_umask_gives(staging)
    return out_dir
