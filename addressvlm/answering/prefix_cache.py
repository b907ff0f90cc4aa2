"""Batched answering of image questions, with or without sharing the image prefix between an image's questions.

Every test image has ~9 single-turn questions whose prompts agree up to and including the image tokens:
``<s><|user|>\\n`` + 576 image embeddings, then ``\\n<question><|end|>\\n<|assistant|>\\n``. The plain path runs each
question on its own (its image encoded, its whole prompt prefilled); the shared path encodes each image once,
prefills that common prefix once, copies its KV cache along the batch to the image's questions and prefills only
their suffixes. Both end in the same decode loop, and the shared rows see exactly the keys and positions the plain
rows do, so greedy answers agree.

Layouts (``.`` a padding column, masked out of attention and given no position):
    plain   ``. . P P P I I I S S``  (left-padded whole prompts, positions 0.. from the first real token)
    shared  ``P P P I I I . . S S``  (cached prefix, then left-padded suffixes continuing the prefix's positions)
Padding is on the left of whatever is prefilled last, so every row's next token lands in the same column.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from addressvlm.answering.chat_model import ImageQuestions, VisionChatModel, _VISION_BATCH

# Images per vision-tower call in the plain path (which encodes one image per question).
def choose_greedy(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(dim=-1)


def sampler(temperature: float, generator: torch.Generator | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Sampling from ``softmax(logits / temperature)``; temperature 0 is greedy."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, not {temperature}")
    if temperature == 0:
        return choose_greedy

    def choose(logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        if generator is not None and generator.device != probs.device:
            probs = probs.to(generator.device)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(logits.device)

    return choose


def _left_pad(sequences: Sequence[torch.Tensor], width: int, model: VisionChatModel
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``[L_i, hidden]`` embeddings left-padded to ``width``; return them and their 0/1 mask."""
    hidden = sequences[0].shape[-1]
    embeds = torch.zeros(len(sequences), width, hidden, dtype=model.dtype, device=model.device)
    mask = torch.zeros(len(sequences), width, dtype=torch.long, device=model.device)
    for row, seq in enumerate(sequences):
        if len(seq):
            embeds[row, width - len(seq):] = seq
            mask[row, width - len(seq):] = 1
    return embeds, mask


def _positions(mask: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Position of each real token counting from ``start``; padding columns get ``start`` (they are masked)."""
    return start + (mask.cumsum(dim=-1) - 1).clamp(min=0)


def _step(model: VisionChatModel, embeds, mask, positions, cache):
    out = model.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                               past_key_values=cache, use_cache=True, num_logits_to_keep=1)
    return out.logits[:, -1], out.past_key_values


def _decode(model: VisionChatModel, logits: torch.Tensor, cache, mask: torch.Tensor, next_position: torch.Tensor,
            max_new_tokens: int, choose) -> list[list[int]]:
    """Generate from prefilled rows until each emits a stop token or ``max_new_tokens`` are out."""
    rows = logits.shape[0]
    answers: list[list[int]] = [[] for _ in range(rows)]
    finished = torch.zeros(rows, dtype=torch.bool, device=model.device)
    stop = torch.tensor(sorted(model.stop_token_ids), device=model.device)
    for step in range(max_new_tokens):
        tokens = choose(logits)
        stopping = torch.isin(tokens, stop) & ~finished
        for row, (token, keep) in enumerate(zip(tokens.tolist(), (~finished & ~stopping).tolist())):
            if keep:
                answers[row].append(token)
        finished |= stopping
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        tokens = tokens.masked_fill(finished, model.pad_token_id)
        mask = torch.cat([mask, torch.ones(rows, 1, dtype=mask.dtype, device=mask.device)], dim=1)
        logits, cache = _step(model, model.embed(tokens[:, None]), mask, next_position[:, None], cache)
        next_position = next_position + 1
    return answers


def generate_plain(model: VisionChatModel, prefix_ids: list[int], groups: Sequence[ImageQuestions],
                   max_new_tokens: int, choose=choose_greedy) -> list[list[list[int]]]:
    """Answer every question on its own: its image encoded and its whole prompt prefilled (all in one batch)."""
    pixels = torch.stack([g.pixel_values for g in groups for _ in g.suffixes]).to(model.device, model.dtype)
    images = torch.cat([model.encode_images(chunk) for chunk in pixels.split(_VISION_BATCH)])
    prefix = model.embed(torch.tensor(prefix_ids))
    suffixes = [s for g in groups for s in g.suffixes]
    prompts = [torch.cat([prefix, image, model.embed(torch.tensor(s, dtype=torch.long))])
               for image, s in zip(images, suffixes)]
    embeds, mask = _left_pad(prompts, max(len(p) for p in prompts), model)
    positions = _positions(mask)
    logits, cache = _step(model, embeds, mask, positions, None)
    answers = _decode(model, logits, cache, mask, positions[:, -1] + 1, max_new_tokens, choose)
    return _regroup(answers, groups)


def generate_shared(model: VisionChatModel, prefix_ids: list[int], groups: Sequence[ImageQuestions],
                    max_new_tokens: int, choose=choose_greedy) -> list[list[list[int]]]:
    """Answer each image's questions from one prefill of the image prefix, its KV cache copied along the batch."""
    pixels = torch.stack([g.pixel_values for g in groups]).to(model.device, model.dtype)
    images = model.encode_images(pixels)
    prefix = model.embed(torch.tensor(prefix_ids))[None].expand(len(groups), -1, -1)
    prefix_embeds = torch.cat([prefix, images], dim=1)
    prefix_len = prefix_embeds.shape[1]
    prefix_mask = torch.ones(len(groups), prefix_len, dtype=torch.long, device=model.device)
    prefix_positions = torch.arange(prefix_len, device=model.device)[None].expand(len(groups), -1)
    _, cache = _step(model, prefix_embeds, prefix_mask, prefix_positions, None)

    owner = torch.tensor([i for i, g in enumerate(groups) for _ in g.suffixes], device=model.device)
    cache.batch_select_indices(owner)  # one copy of its image's prefix per question
    suffixes = [model.embed(torch.tensor(s, dtype=torch.long)) for g in groups for s in g.suffixes]
    if any(len(s) == 0 for s in suffixes):
        raise ValueError("a question has no tokens after the image: its first answer token has nothing to follow")
    embeds, suffix_mask = _left_pad(suffixes, max(len(s) for s in suffixes), model)
    mask = torch.cat([prefix_mask[owner], suffix_mask], dim=1)
    positions = _positions(suffix_mask, prefix_len)
    logits, cache = _step(model, embeds, mask, positions, cache)
    answers = _decode(model, logits, cache, mask, positions[:, -1] + 1, max_new_tokens, choose)
    return _regroup(answers, groups)


def _regroup(answers: list[list[int]], groups: Sequence[ImageQuestions]) -> list[list[list[int]]]:
    out, start = [], 0
    for g in groups:
        out.append(answers[start:start + len(g.suffixes)])
        start += len(g.suffixes)
    return out
