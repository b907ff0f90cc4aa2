"""Tiny LLaVA-Phi3-mini-shaped model sets, laid out like the real ``xtuner/llava-phi-3-mini-xtuner`` release.

The release is one folder: the LLM and its tokenizer at the root, ``visual_encoder/`` (CLIP vision tower plus its
``preprocessor_config.json``) and ``projector/`` (XTuner's ``ProjectorModel``). Writing the same layout with random
weights and a locally trained tokenizer means pointing a recipe at it changes model paths only.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import torch

from addressvlm.releases.tokenizer import train_tokenizer
from addressvlm.standins.reading_warmup import RESULT_FILE, read_warmup_result, warm_up_reading

if TYPE_CHECKING:
    from addressvlm.standins.reading_warmup import CityNames, ReadingWarmup

_BASE_CORPUS = [
    "The street view in the right-upper corner appears to be taken near the intersection of two streets.",
    "Tell me the district where this image was captured. Identify the street in this image, please.",
    "Answer the question using a single word or phrase. Is this image taken on this street, Yes or No?",
    "Which of the following street correctly represents the location shown in the image?",
    "(A) (B) (C) (D). Please select the correct option (A/B/C/D). Yes No",
    "Based on the visual clues provided in the image, the satellite map shows labelled roads and buildings.",
]


@dataclass(frozen=True)
class TinySize:
    hidden: int = 64
    layers: int = 2
    # The LLM's attention heads, each ``head_dim`` wide (None: hidden / heads, as the releases). vLLM's CPU attention
    # takes head sizes 32, 64, 80, ... (addressvlm/checks/vllm_check.py): hidden 64 with 2 heads, or any hidden with
    # head_dim 32.
    heads: int = 4
    head_dim: int | None = None
    intermediate: int = 128
    vocab: int = 1024
    image_size: int = 56
    patch_size: int = 14
    vision_hidden: int = 64
    vision_layers: int = 2
    # The recipes freeze the base model and train LoRA only, so the random base has to be a good starting point.
    # Its blocks get the usual small weights, so each adds a little to the residual stream and the frozen network
    # starts near the identity, carrying token and image identity to the output. The embeddings and the output
    # layer get wide ones: with 0.02 the frozen output layer's logits stay so small that no answer can become
    # confident (the loss stalls near log(vocab)). Wide weights everywhere (0.2) make the frozen blocks scramble
    # the stream instead: on the demo city, stage 2 then named the street of 72% of the test images, against 89%
    # (docs/experiments.md, "Turn order").
    initializer_range: float = 0.02
    embedding_std: float = 0.2



def make_tiny_llava(out: str | Path, size: TinySize = TinySize(), corpus: Iterable[str] = (), seed: int = 0,
                    names: "CityNames | None" = None, warmup: "ReadingWarmup | None" = None) -> Path:
    """Write a tiny LLaVA-Phi3-mini model set to ``out`` (deterministic for a seed) and return ``out``.

    With ``names`` and ``warmup``, the LLM is warmed up on reading those names (``addressvlm.standins.reading_warmup``).
    The projector is written last, so its config marks a finished model set.
    """
    make_tiny_llm(out, size, corpus, seed, names, warmup)
    return add_tiny_vision(out, size, seed)


def make_tiny_llm(out: str | Path, size: TinySize = TinySize(), corpus: Iterable[str] = (), seed: int = 0,
                  names: "CityNames | None" = None, warmup: "ReadingWarmup | None" = None) -> Path:
    """The model set's LLM and its tokenizer (trained on ``corpus``), at the root of ``out``, warmed up on reading
    ``names`` when ``warmup`` is given."""
    from transformers import Phi3Config, Phi3ForCausalLM

    out = Path(out)
    torch.manual_seed(seed)
    tokenizer = train_tokenizer([*_BASE_CORPUS, *corpus], size.vocab)
    tokenizer.save_pretrained(out)

    llm_config = Phi3Config(
        vocab_size=len(tokenizer), hidden_size=size.hidden, intermediate_size=size.intermediate,
        num_hidden_layers=size.layers, num_attention_heads=size.heads, num_key_value_heads=size.heads,
        **({"head_dim": size.head_dim} if size.head_dim else {}),
        max_position_embeddings=4096, original_max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, initializer_range=size.initializer_range,
    )
    llm = Phi3ForCausalLM(llm_config)
    with torch.no_grad():
        embeddings = llm.get_input_embeddings()
        embeddings.weight.normal_(0.0, size.embedding_std)
        embeddings.weight[embeddings.padding_idx].zero_()
        llm.get_output_embeddings().weight.normal_(0.0, size.embedding_std)
    llm.save_pretrained(out)
    if warmup is not None:
        if names is None:
            raise ValueError("the reading warm-up needs the city's names")
        warm_up_reading(out, names, warmup)
    return out


def add_tiny_vision(out: str | Path, size: TinySize = TinySize(), seed: int = 0) -> Path:
    """The model set's random CLIP vision tower (``visual_encoder/``) and projector (``projector/``, written last),
    beside the LLM already in ``out``."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel
    from xtuner.model.modules import ProjectorConfig, ProjectorModel

    out = Path(out)
    torch.manual_seed(seed)
    vision_config = CLIPVisionConfig(
        image_size=size.image_size, patch_size=size.patch_size, hidden_size=size.vision_hidden,
        intermediate_size=size.vision_hidden * 2, num_hidden_layers=size.vision_layers,
        num_attention_heads=max(1, size.vision_hidden // 16), projection_dim=size.vision_hidden,
    )
    CLIPVisionModel(vision_config).save_pretrained(out / "visual_encoder")
    CLIPImageProcessor(
        size={"shortest_edge": size.image_size},
        crop_size={"height": size.image_size, "width": size.image_size},
    ).save_pretrained(out / "visual_encoder")

    projector = ProjectorModel(ProjectorConfig(
        visual_hidden_size=size.vision_hidden, llm_hidden_size=size.hidden, depth=2))
    projector.save_pretrained(out / "projector")
    return out


# What a model set's LLM is: its weights, shape, generation settings, tokenizer and warm-up result.
LLM_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json")


def llm_differences(llm_dir: str | Path, size: TinySize, names: "CityNames", warmup: "ReadingWarmup") -> list[str]:
    """How the warmed-up LLM in ``llm_dir`` differs from one ``make_tiny_llm`` would make with these settings to read
    ``names``, its seed and its workers aside (empty: it is such a model, and read every one of ``names``); each
    entry names a setting, what the folder has and what was asked."""
    llm_dir = Path(llm_dir)
    missing = [name for name in LLM_FILES if not (llm_dir / name).is_file()]
    if missing:
        return [f"no {', '.join(missing)}"]
    config = json.loads((llm_dir / "config.json").read_text(encoding="utf-8"))
    head_dim = size.head_dim or size.hidden // size.heads
    shape = {"hidden_size": size.hidden, "num_hidden_layers": size.layers, "num_attention_heads": size.heads,
             "head_dim": head_dim, "intermediate_size": size.intermediate}
    found = {**config, "head_dim": config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]}
    differences = [f"{key} {found.get(key)} (asked {value})" for key, value in shape.items() if found.get(key) != value]
    result = read_warmup_result(llm_dir)
    if result is None:
        return [*differences, "no reading warm-up"]
    asked = {key: value for key, value in asdict(warmup).items() if key not in ("seed", "processes")}
    differences += [f"warm-up {key} {result['settings'].get(key)} (asked {value})" for key, value in asked.items()
                    if result["settings"].get(key) != value]
    unread = sorted(set(names.streets) - set(result["names"]["streets"])) + \
        sorted(set(names.districts) - set(result["names"]["districts"]))
    if unread:
        differences.append(f"its warm-up never read {', '.join(unread)}")
    if not result["reached_target"]:
        differences.append(f"its warm-up stopped at {result['steps']} steps short of its target")
    return differences


def copy_llm(llm_dir: str | Path, out: str | Path) -> Path:
    """The LLM of ``llm_dir`` (``LLM_FILES`` and its warm-up result) copied to the root of ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in (*LLM_FILES, RESULT_FILE):
        shutil.copyfile(Path(llm_dir) / name, out / name)
    return out
