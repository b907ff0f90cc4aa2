"""Answer test questions with a trained model: an XTuner recipe plus checkpoint, or an exported Hugging Face folder;
or with the untuned release a recipe starts from (the zero-shot row of the paper's Table 2).

The XTuner path builds the model exactly as training built it (the recipe, its ``--cfg-options``, the checkpoint's
LoRA adapters and projector, every tensor checked) and prompts it exactly as training did: the dataset's chat
template around ``"<image>\\n" + question``, the image padded to a square with the processor's mean colour when the
recipe's dataset pads. The Hugging Face path reads the same things from the folder ``tools/export_hf.py`` wrote.

Answers go to ``predictions.jsonl`` one flushed line at a time; a rerun skips answered ids, and
``chunk_questions`` gives one process per GPU a disjoint share (whole images, so prefix sharing still applies).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from addressvlm.answering.chat_model import VisionChatModel
from addressvlm.core.records import file_identity
from addressvlm.training.checkpoints import build_recipe_model, build_trained_model, weights_identity
from addressvlm.training.image_prompts import image_preprocessor, image_turn, split_at_image
from addressvlm.training.minicpmv import AddressMiniCPMV
from addressvlm.training.minicpmv_dataset import encode_question
from addressvlm.training.precision import default_device_dtype, is_quantized
from addressvlm.training.recipes import load_recipe, model_root_options

def load_xtuner_model(config: str | os.PathLike, checkpoint: str | os.PathLike,
                      cfg_options: Sequence[str] | dict | None = None, device: str | None = None,
                      dtype: str | torch.dtype | None = None) -> VisionChatModel:
    """The recipe's model with ``checkpoint`` (file, DeepSpeed folder or work_dir) loaded and every tensor checked
    (``build_trained_model``: LoRA shaped as the run trained it), wrapped for answering with the recipe's chat
    template and image preprocessing."""
    cfg, model = build_trained_model(config, checkpoint, cfg_options, default_device_dtype(device, dtype)[1])
    return answering_model(cfg, model, device, dtype)


def load_release_model(config: str | os.PathLike, cfg_options: Sequence[str] | dict | None = None,
                       device: str | None = None, dtype: str | torch.dtype | None = None) -> VisionChatModel:
    """The recipe's model untuned, as training starts it: the release's weights and projector, LoRA adapters fresh
    (peft's B = 0 leaves every layer as released); prompted as the recipe trains. Table 2's zero-shot row."""
    cfg, model = build_recipe_model(config, cfg_options, default_device_dtype(device, dtype)[1])
    return answering_model(cfg, model, device, dtype)


def answering_model(cfg, model, device: str | None = None, dtype: str | torch.dtype | None = None):
    """A built recipe model ready to answer on ``device`` in ``dtype``: MiniCPM-V one question at a time, a LLaVA
    through ``wrap_xtuner_model``."""
    if prompts_itself(model):
        device, _ = default_device_dtype(device, dtype)
        return PerQuestionModel(model.to(device).eval())
    return wrap_xtuner_model(cfg, model, device, dtype)


def prompts_itself(model) -> bool:
    """MiniCPM-V (``answer(image, question)``, its remote code places the image) rather than a LLaVA and projector."""
    return not hasattr(model, "projector") and hasattr(model, "answer")


def answering_in_place(cfg, model):
    """Answering for a model as it stands, mid-training: nothing moved or cast (the optimizer holds its tensors), the
    image features in the dtype of the LLM's input embeddings; the caller chooses eval mode and autocast."""
    if prompts_itself(model):
        return PerQuestionModel(model)
    embeddings = model.llm.get_input_embeddings().weight
    return chat_model(cfg, model, embeddings.device, embeddings.dtype)


class PerQuestionModel:
    """A model that prompts itself: ``answer(image, question, max_new_tokens)`` (MiniCPM-V, whose remote code slices
    the image and places its own tokens). Answered one question at a time, greedily: no prefix sharing, no sampling."""

    def __init__(self, model):
        self.model = model

    def answer_image(self, image, questions: Sequence[str], max_new_tokens: int) -> list[str]:
        """Greedy answers to ``questions`` about ``image`` (a PIL image or a path)."""
        picture = image if isinstance(image, Image.Image) else Image.open(image)
        picture = picture.convert("RGB")
        return [self.model.answer(picture, question, max_new_tokens=max_new_tokens) for question in questions]

    def prompt_length(self, image: Image.Image, question: str) -> int:
        """Tokens of the prompt ``answer`` builds, image placeholders included (their count depends on the image's
        size: the slices)."""
        return len(encode_question(question, image.convert("RGB"), self.model.tokenizer,
                                   self.model.image_settings)["input_ids"])


def wrap_xtuner_model(cfg, model, device: str | None = None, dtype: str | torch.dtype | None = None
                      ) -> VisionChatModel:
    """An XTuner ``LLaVAModel`` moved to ``device`` and cast to ``dtype`` (default: this machine's answering dtype), in
    eval mode, with the prompt format and image preprocessing of its recipe's training dataset."""
    device, dtype = default_device_dtype(device, dtype)
    if is_quantized(model.llm):
        # bitsandbytes weights (a QLoRA recipe) are placed and typed at load and cannot be cast; the image features
        # take the dtype of the LLM's (unquantized) input embeddings instead.
        dtype = model.llm.get_input_embeddings().weight.dtype
        model.visual_encoder.to(device=device, dtype=dtype)
        model.projector.to(device=device, dtype=dtype)
    else:
        model.to(device=device, dtype=dtype)
    model.eval()
    return chat_model(cfg, model, device, dtype)


def chat_model(cfg, model, device: torch.device | str, dtype: torch.dtype) -> VisionChatModel:
    """An XTuner ``LLaVAModel`` placed on ``device`` answering in ``dtype``, prompted as its recipe's dataset trains."""
    from xtuner.dataset.utils import get_bos_eos_token_ids
    from xtuner.registry import BUILDER

    dataset = cfg.train_dataloader.dataset
    template = dataset.template_map_fn.template
    tokenizer = BUILDER.build(cfg.tokenizer)
    image_processor = BUILDER.build(cfg.image_processor)
    bos_ids, eos_ids = get_bos_eos_token_ids(tokenizer)
    stop_ids = set(eos_ids)
    for word in template.get("STOP_WORDS", []):
        stop_ids.update(tokenizer.encode(word, add_special_tokens=False))

    def prompt_pieces(question: str) -> tuple[list[int], list[int]]:
        return split_at_image(tokenizer, template.INSTRUCTION.format(input=image_turn(question), round=1), bos_ids)

    def encode_images(pixels: torch.Tensor) -> torch.Tensor:
        hidden = model.visual_encoder(pixels, output_hidden_states=True).hidden_states
        return model.projector(hidden[model.visual_select_layer][:, 1:])

    def answer_ids(answer: str) -> list[int]:
        # XTuner's template_map_fn and encode_fn: the answer and SUFFIX encoded together, EOS appended unless the
        # template's SUFFIX is its EOS.
        ids = tokenizer.encode(answer + template.get("SUFFIX", ""), add_special_tokens=False)
        return ids if template.get("SUFFIX_AS_EOS", False) else ids + list(eos_ids)

    return VisionChatModel(
        language_model=model.llm, encode_images=encode_images, prompt_pieces=prompt_pieces,
        preprocess_image=image_preprocessor(image_processor, bool(dataset.get("pad_image_to_square", False))),
        tokenizer=tokenizer, stop_token_ids=frozenset(stop_ids),
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0],
        device=device, dtype=dtype, answer_ids=answer_ids)


# --------------------------------------------------------------------------------------------- exported folders
def is_minicpmv_folder(folder: str | os.PathLike) -> bool:
    """A MiniCPM-V folder (the release, or an export of a trained one): ``MiniCPMV`` in its config's architectures."""
    config = Path(folder) / "config.json"
    return config.is_file() and "MiniCPMV" in json.loads(config.read_text()).get("architectures", [])


def load_hf_model(folder: str | os.PathLike, device: str | None = None,
                  dtype: str | torch.dtype | None = None) -> VisionChatModel | PerQuestionModel:
    """Wrap a folder ``tools/export_hf.py`` wrote. A ``LlavaForConditionalGeneration``: its chat template, processor,
    stop tokens from its generation config, and square padding where its config says ``image_aspect_ratio="pad"``.
    A MiniCPM-V folder (LoRA merged, the release's layout): its hub code, prompted as the recipes train."""
    from transformers import AutoProcessor, GenerationConfig, LlavaForConditionalGeneration

    device, dtype = default_device_dtype(device, dtype)
    if is_minicpmv_folder(folder):
        return PerQuestionModel(AddressMiniCPMV(str(folder), torch_dtype=dtype, gradient_checkpointing=False)
                                .to(device).eval())
    model = LlavaForConditionalGeneration.from_pretrained(folder, torch_dtype=dtype).to(device).eval()
    processor = AutoProcessor.from_pretrained(folder)
    tokenizer = processor.tokenizer
    stop_ids = {tokenizer.eos_token_id}
    if (Path(folder) / "generation_config.json").is_file():
        eos = GenerationConfig.from_pretrained(folder).eos_token_id
        stop_ids.update(eos if isinstance(eos, list) else [eos])
    config = model.config

    def prompt_pieces(question: str) -> tuple[list[int], list[int]]:
        text = tokenizer.apply_chat_template([{"role": "user", "content": image_turn(question)}],
                                             tokenize=False, add_generation_prompt=True)
        return split_at_image(tokenizer, text)

    def encode_images(pixels: torch.Tensor) -> torch.Tensor:
        return model.get_image_features(pixels, config.vision_feature_layer, config.vision_feature_select_strategy)

    # The chat template's text after an assistant answer (its end of turn), found by rendering a marked answer.
    marker = "\u2063ANSWER\u2063"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "?"}, {"role": "assistant", "content": marker}],
                                             tokenize=False)
    answer_end = rendered.partition(marker)[2].rstrip()

    def answer_ids(answer: str) -> list[int]:
        return tokenizer.encode(answer + answer_end, add_special_tokens=False)

    return VisionChatModel(
        language_model=model.language_model, encode_images=encode_images, prompt_pieces=prompt_pieces,
        preprocess_image=image_preprocessor(processor.image_processor,
                                            getattr(config, "image_aspect_ratio", None) == "pad"),
        tokenizer=tokenizer, stop_token_ids=frozenset(i for i in stop_ids if i is not None),
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        device=device, dtype=dtype, answer_ids=answer_ids)


# --------------------------------------------------------------------------------------------- answering
def model_settings_of(args: argparse.Namespace) -> dict:
    """Which model answered, as recorded beside an output (a resume with another is refused): the options and, for
    a checkpoint or an exported folder, its weights' identity (``records.file_identity``), so that a retrain into the
    same path is not resumed as the same model. A recipe without a checkpoint is the zero-shot model: no key of its
    own, so outputs recorded before ``--zero-shot`` still resume."""
    settings = {"config": args.config, "checkpoint": args.checkpoint, "hf": args.hf, "model_root": args.model_root,
                "cfg_options": list(args.cfg_options), "dtype": args.dtype}
    if args.checkpoint or args.hf:
        settings["weights"] = file_identity(args.hf) if args.hf else weights_identity(args.checkpoint)
    return settings


def image_folder_of(args: argparse.Namespace) -> Path:
    return Path(args.image_folder) if args.image_folder else Path(args.questions).resolve().parent.parent


def load_model_from_args(args: argparse.Namespace) -> VisionChatModel:
    if args.hf:
        if args.config or args.checkpoint or args.zero_shot:
            raise SystemExit("give either --hf or --config with --checkpoint or --zero-shot, not both")
        return load_hf_model(args.hf, args.device, args.dtype)
    if not (args.config and (args.checkpoint or args.zero_shot)):
        raise SystemExit("a model is needed: --config RECIPE --checkpoint CKPT, --config RECIPE --zero-shot, "
                         "or --hf DIR")
    options: list[str] = []
    if args.model_root:
        options += model_root_options(load_recipe(args.config), args.model_root)
    options += list(args.cfg_options)
    if args.zero_shot:
        return load_release_model(args.config, options, args.device, args.dtype)
    return load_xtuner_model(args.config, args.checkpoint, options, args.device, args.dtype)
