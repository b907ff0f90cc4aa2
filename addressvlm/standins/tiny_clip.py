"""A tiny random CLIP, laid out like ``openai/clip-vit-large-patch14`` (model, tokenizer and image processor in one
folder), for the CLIP dual-encoder retriever's tests and demo: pointing the recipe's ``model_root`` at it changes
model paths only."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from addressvlm.releases.tokenizer import BOS, train_tokenizer

# The end token CLIP pools at. Not the shared tokenizer's <|endoftext|>: its id is 2, which transformers reads as a
# pre-2023 CLIP config and pools at the highest token id instead.
EOS = "</text>"


def make_tiny_clip(out: str | Path, corpus: Iterable[str] = (), seed: int = 0, hidden: int = 64, layers: int = 2,
                   image_size: int = 56, patch_size: int = 14, vocab: int = 512, projection_dim: int = 32) -> Path:
    """Write a tiny CLIPModel (77 text positions, as CLIP has) with a locally trained tokenizer that wraps every text
    in start and end tokens, as CLIP's does; deterministic for a seed. Returns ``out``."""
    from tokenizers.processors import TemplateProcessing
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    out = Path(out)
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(corpus, vocab)
    tokenizer.add_special_tokens({"eos_token": EOS, "pad_token": EOS})
    bos_id, eos_id = tokenizer.convert_tokens_to_ids([BOS, EOS])
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, bos_id), (EOS, eos_id)])
    tokenizer.model_max_length = 77
    tokenizer.save_pretrained(out)

    heads = max(1, hidden // 16)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                         bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                           num_attention_heads=heads, image_size=image_size, patch_size=patch_size),
        projection_dim=projection_dim,
    )
    CLIPModel(config).save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size}).save_pretrained(out)
    return out
