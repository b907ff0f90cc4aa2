"""``VisionChatModel``: the interface every answering path speaks (a LLaVA built by its recipe, an exported folder):
the language model, how an image is encoded, how a question is split around the image, and the stop tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn


_VISION_BATCH = 32


def decode_answer(tokenizer, ids: Sequence[int]) -> str:
    """An answer's text from the token ids generated (the stop token left out), as every answering path writes it."""
    return tokenizer.decode(list(ids), skip_special_tokens=True).strip()


@dataclass
class VisionChatModel:
    """What answering needs from a LLaVA-style model, whichever framework built it.

    ``encode_images`` maps preprocessed pixels ``[B, 3, H, W]`` to LLM-space image embeddings ``[B, N, hidden]``;
    ``language_model`` is a causal LM called with ``inputs_embeds`` (a Hugging Face model, bare or PEFT-wrapped).
    ``prompt_pieces(question)`` returns the token ids before and after the image for the question text (which has
    no ``<image>``); the part before must not depend on the question. ``answer_ids(answer)`` are the token ids of an
    answer as training labelled it, the template's end of turn included (scoring a name as the answer needs them).
    """

    language_model: nn.Module
    encode_images: Callable[[torch.Tensor], torch.Tensor]
    prompt_pieces: Callable[[str], tuple[list[int], list[int]]]
    preprocess_image: Callable[[object], torch.Tensor]
    tokenizer: object
    stop_token_ids: frozenset[int]
    pad_token_id: int
    device: torch.device
    dtype: torch.dtype
    answer_ids: Callable[[str], list[int]] | None = None

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.language_model.get_input_embeddings()(ids.to(self.device))

    def decode(self, ids: Sequence[int]) -> str:
        return decode_answer(self.tokenizer, ids)

    def decode_groups(self, groups: Sequence[Sequence[Sequence[int]]]) -> list[list[str]]:
        return [[self.decode(ids) for ids in group] for group in groups]


@dataclass
class ImageQuestions:
    """One image's questions: its preprocessed pixels ``[3, H, W]`` and each question's suffix token ids."""

    pixel_values: torch.Tensor
    suffixes: list[list[int]]
