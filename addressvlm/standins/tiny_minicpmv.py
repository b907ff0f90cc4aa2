"""Write a tiny stand-in folder for ``openbmb/MiniCPM-V-2_6`` in the release's layout: its remote code
(``addressvlm/training/minicpmv_code/``: config, model, NaViT SigLIP, resampler, image processor), a config whose
``auto_map`` names it, random weights, a Qwen2-style tokenizer, the processor settings whose ``auto_map`` names the image
processor, and a generation config; what vLLM's ``MiniCPMV`` needs to serve it, at sizes its CPU build takes."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Iterable

import torch
from transformers import GenerationConfig
from transformers.dynamic_module_utils import get_class_from_dynamic_module

from addressvlm.training.remote_code import hub_code_names

HUB_CODE_DIR = Path(__file__).resolve().parents[1] / "training" / "minicpmv_code"
REMOTE_CODE_FILES = ("configuration_minicpm.py", "modeling_minicpmv.py", "modeling_navit_siglip.py", "resampler.py",
                     "image_processing_minicpmv.py")
# The release's resampler has one attention head per this many channels of the LLM.
RESAMPLER_HEAD_WIDTH = 128

# MiniCPM-V 2.6's token strings: the chat tokens of Qwen2, and the image/slice markers its processor writes.
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]
IMAGE_TOKENS = ["<unk>", "<image>", "</image>", "<slice>", "</slice>", "<image_id>", "</image_id>"]
PAD = "<|endoftext|>"
# Qwen2's chat template (as in the release's tokenizer_config.json): a default system turn, then im_start/im_end turns.
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)



TINY_CORPUS = [
    "The street view in the right-upper corner appears to be taken near the intersection of two streets.",
    "Tell me the district where this image was captured. Identify the street in this image, please.",
    "Answer the question using a single word or phrase. Is this image taken on this street, Yes or No?",
    "Which of the following street correctly represents the location shown in the image?",
    "(A) (B) (C) (D). Please select the correct option (A/B/C/D). Yes No",
    "You are a helpful assistant. user assistant system 0 1 2 3 4 5 6 7 8 9",
]


def train_qwen2_style_tokenizer(corpus: Iterable[str], vocab_size: int):
    """A byte-level BPE whose chat, image and slice markers are single special tokens, with Qwen2's chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [PAD, *CHAT_TOKENS, *IMAGE_TOKENS]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(corpus), trainer=trainer)
    # <|im_start|> is also the bos token, which encoding never adds: vLLM's MiniCPM-V processor reads its id.
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token=PAD, unk_token="<unk>",
        additional_special_tokens=[t for t in specials if t not in (PAD, "<|im_end|>", "<unk>")],
        model_max_length=8192, padding_side="right")
    tokenizer.chat_template = QWEN2_CHAT_TEMPLATE
    return tokenizer


def write_tiny_minicpmv(out: str | Path, corpus: Iterable[str] = (), *, hidden: int = 128, layers: int = 2,
                        heads: int = 4, kv_heads: int = 2, vision_hidden: int = 32, vision_layers: int = 2,
                        patch_size: int = 14, scale_resolution: int = 28, query_num: int = 8,
                        max_slice_nums: int = 9, vocab: int = 1024, seed: int = 0) -> Path:
    """Write a tiny random MiniCPM-V-2_6-shaped folder (remote code, config with ``auto_map``, weights, tokenizer,
    ``preprocessor_config.json``, ``generation_config.json``) to ``out`` and return ``out``. Deterministic for a seed.

    The defaults are what vLLM's CPU build serves: LLM heads 128 / 4 = 32 wide (a size its attention takes), one
    resampler head. ``ValueError`` when ``hidden`` is not a multiple of 128 (the resampler would have no head, or heads
    that do not divide it)."""
    if hidden % RESAMPLER_HEAD_WIDTH:
        raise ValueError(f"hidden {hidden}: MiniCPM-V's resampler has one head per {RESAMPLER_HEAD_WIDTH} channels, so "
                         f"hidden must be a multiple of {RESAMPLER_HEAD_WIDTH}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = train_qwen2_style_tokenizer([*TINY_CORPUS, *corpus], vocab)
    tokenizer.save_pretrained(out)

    for name in REMOTE_CODE_FILES:
        shutil.copyfile(HUB_CODE_DIR / name, out / name)
    # Built from the copied files, through transformers' remote-code loader, as the release's classes are.
    config_class = get_class_from_dynamic_module("configuration_minicpm.MiniCPMVConfig", str(out))
    with hub_code_names():
        model_class = get_class_from_dynamic_module("modeling_minicpmv.MiniCPMV", str(out))
    config = config_class(
        vision_config=dict(hidden_size=vision_hidden, intermediate_size=vision_hidden * 2,
                           num_hidden_layers=vision_layers, num_attention_heads=max(1, vision_hidden // 16),
                           image_size=scale_resolution, patch_size=patch_size),
        query_num=query_num, patch_size=patch_size, image_size=scale_resolution,
        slice_config={"patch_size": patch_size, "max_slice_nums": max_slice_nums, "scale_resolution": scale_resolution},
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=8192,
        tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        # Frozen random weights at the usual 0.02 leave lm_head's logits within about +-1 of each other, which no LoRA
        # on the attention can overcome: wider weights let the tiny model answer confidently once trained. 0.2 was
        # tuned at hidden 64; scaled by sqrt(64 / hidden), lm_head's logits and the attention scores keep that scale
        # at any width.
        initializer_range=0.2 * math.sqrt(64 / hidden),
        bos_token_id=None,
        auto_map={"AutoConfig": "configuration_minicpm.MiniCPMVConfig",
                  "AutoModel": "modeling_minicpmv.MiniCPMV",
                  "AutoModelForCausalLM": "modeling_minicpmv.MiniCPMV"},
    )
    model_class(config).save_pretrained(out, safe_serialization=True)
    # save_pretrained records the loader's module names; the folder must point at its local files instead.
    config_path = out / "config.json"
    saved = json.loads(config_path.read_text())
    saved["auto_map"] = config.auto_map
    saved["architectures"] = ["MiniCPMV"]
    config_path.write_text(json.dumps(saved, indent=2) + "\n")
    # The model's generate stops at <|im_end|> and at <|endoftext|> (its terminators, as the release's chat does); an
    # engine stops where the generation config tells it.
    GenerationConfig(eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id],
                     pad_token_id=tokenizer.pad_token_id).save_pretrained(out)
    # The release's processor settings (image_processing_minicpmv.py reads the same keys); engines load the image
    # processor through auto_map and pair it with the tokenizer in a processor of the class named.
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "MiniCPMVImageProcessor", "processor_class": "MiniCPMVProcessor",
        "auto_map": {"AutoImageProcessor": "image_processing_minicpmv.MiniCPMVImageProcessor"},
        "max_slice_nums": max_slice_nums, "scale_resolution": scale_resolution, "patch_size": patch_size,
        "use_image_id": True, "image_feature_size": query_num, "slice_mode": True,
        "im_start": "<image>", "im_end": "</image>", "slice_start": "<slice>", "slice_end": "</slice>",
        "unk": "<unk>", "im_id_start": "<image_id>", "im_id_end": "</image_id>",
        "norm_mean": [0.5, 0.5, 0.5], "norm_std": [0.5, 0.5, 0.5], "version": 2.6,
    }, indent=2) + "\n")
    return out
