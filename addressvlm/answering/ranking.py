"""Closed-set answering: every name of the city's gazetteer scored as the answer to a generation question.

A name's score is the model's log-likelihood of the name as the answer (its tokens and the template's end of turn,
exactly as training labelled answers), given the image and the question in the recipe's chat template. The end of
turn is part of the score so that "Forbes" does not win over "Forbes Avenue" by being a prefix of it.

Cost: the image and the prompt prefix are encoded and prefilled once per image (``prefix_cache``'s sharing), each
question's suffix once on top of that, and the candidate names in batches over the question's cache, right-padded
(causal attention never lets a name's token see the padding after it). ``--constrained`` is the cheap alternative:
greedy decoding where each step may only continue some gazetteer name (a token trie). A model that prompts itself
(MiniCPM-V) is ranked per question: its whole prompt prefilled once, the names in batches over that cache.

Output ``ranked.jsonl`` (``addressvlm.core.records.open_ranked``): ``{"question_id", "ranking": [{"name",
"logprob"}]}``, best first; ``logprob`` is the ranking score (the sum over the answer's tokens, or their mean with
``normalisation="mean"``).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from tqdm import tqdm

from addressvlm.answering.answering import group_by_image
from addressvlm.answering.chat_model import ImageQuestions, VisionChatModel
from addressvlm.answering.loading import PerQuestionModel
from addressvlm.answering.prefix_cache import generate_shared
from addressvlm.core.records import DataError, GazetteerEntry, open_predictions, open_ranked
from addressvlm.data.gazetteer import Gazetteer, restrict_gazetteer
from addressvlm.data.retrieval_hints import read_street_view_retrievals

NORMALISATIONS = ("sum", "mean")
RANKED_LEVELS = ("district", "street", "address")


# --------------------------------------------------------------------------------------------- questions
def ranked_questions(questions: Iterable[dict]) -> list[dict]:
    """The questions closed-set answering applies to: generation at every level."""
    return [q for q in questions if q["qtype"] == "generation" and q["level"] in RANKED_LEVELS]


# --------------------------------------------------------------------------------------------- scoring
@dataclass
class _Prefilled:
    """A one-row KV cache and the logits of its last position: where a candidate answer starts."""

    cache: object
    last_logits: torch.Tensor  # [vocab]
    length: int


def _cache_rows(cache, rows: int):
    """A new cache holding ``rows`` views of a one-row cache; the forward pass concatenates onto copies, so the
    original stays as it is for the next batch."""
    from transformers import DynamicCache

    copy = DynamicCache()
    for layer, (keys, values) in enumerate(zip(cache.key_cache, cache.value_cache)):
        copy.update(keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1), layer)
    return copy


def _forward(language_model, embeds, cache, start: int, keep_all: bool):
    rows, width = embeds.shape[:2]
    positions = torch.arange(start, start + width, device=embeds.device)[None].expand(rows, -1)
    mask = torch.ones(rows, start + width, dtype=torch.long, device=embeds.device)
    out = language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, past_key_values=cache,
                         use_cache=True, num_logits_to_keep=0 if keep_all else 1)
    return out.logits, out.past_key_values


def _extend(language_model, prefilled: _Prefilled | None, embeds: torch.Tensor) -> _Prefilled:
    """Prefill ``embeds`` ``[1, L, hidden]`` after ``prefilled`` (or from the start)."""
    cache = _cache_rows(prefilled.cache, 1) if prefilled else None
    start = prefilled.length if prefilled else 0
    logits, cache = _forward(language_model, embeds, cache, start, keep_all=False)
    return _Prefilled(cache, logits[0, -1], start + embeds.shape[1])


def _answer_logprobs(language_model, embed, prefilled: _Prefilled, candidates: Sequence[Sequence[int]],
                     batch_size: int, pad_id: int) -> list[tuple[float, int]]:
    """``(sum of log-probabilities, token count)`` of each candidate's tokens following ``prefilled``, in batches
    of ``batch_size`` names over copies of its cache."""
    first = torch.log_softmax(prefilled.last_logits.float(), dim=-1)
    scores: list[tuple[float, int]] = []
    for start in range(0, len(candidates), batch_size):
        batch = candidates[start:start + batch_size]
        width = max(len(ids) for ids in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long, device=first.device)
        real = torch.zeros(len(batch), width, dtype=torch.bool, device=first.device)
        for row, name_ids in enumerate(batch):
            ids[row, :len(name_ids)] = torch.tensor(name_ids)
            real[row, :len(name_ids)] = True
        token_logprobs = first[ids[:, 0]][:, None]
        if width > 1:
            # The last token of the widest name predicts nothing that is scored: it is never fed.
            logits, _ = _forward(language_model, embed(ids[:, :-1]), _cache_rows(prefilled.cache, len(batch)),
                                 prefilled.length, keep_all=True)
            later = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
            token_logprobs = torch.cat([token_logprobs, later], dim=1)
        totals = (token_logprobs * real).sum(dim=1)
        scores += [(float(total), len(name_ids)) for total, name_ids in zip(totals.tolist(), batch)]
    return scores


def _ranking(names: Sequence[str], scores: Sequence[tuple[float, int]], normalisation: str) -> list[dict]:
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation {normalisation!r} not in {NORMALISATIONS}")
    value = [total / count if normalisation == "mean" else total for total, count in scores]
    order = sorted(range(len(names)), key=lambda i: (-value[i], names[i]))
    return [{"name": names[i], "logprob": value[i]} for i in order]


def _prompt_prefix(model: VisionChatModel, questions: Sequence[str]) -> tuple[list[int], list[list[int]]]:
    pieces = [model.prompt_pieces(q) for q in questions]
    prefix = pieces[0][0]
    if any(p != prefix for p, _ in pieces):
        raise ValueError("the chat template puts question-dependent text before the image")
    return prefix, [suffix for _, suffix in pieces]


@torch.inference_mode()
def rank_image_questions(model: VisionChatModel, image, questions: Sequence[str],
                         candidates: Sequence[Sequence[str]], normalisation: str = "sum",
                         batch_size: int = 64) -> list[list[dict]]:
    """The ranking of ``candidates[i]`` as the answer to ``questions[i]`` about ``image`` (a PIL image or a path):
    the image and prompt prefix prefilled once, each question's suffix once on that, names in batches over it."""
    prefix_ids, suffixes = _prompt_prefix(model, questions)
    pixels = model.preprocess_image(image)[None].to(model.device, model.dtype)
    prefix = torch.cat([model.embed(torch.tensor(prefix_ids))[None], model.encode_images(pixels)], dim=1)
    language_model = model.language_model
    image_prefilled = _extend(language_model, None, prefix)
    rankings = []
    for suffix, names in zip(suffixes, candidates):
        if not suffix:
            raise ValueError("a question has no tokens after the image: its answer has nothing to follow")
        question_prefilled = _extend(language_model, image_prefilled,
                                     model.embed(torch.tensor(suffix))[None])
        scores = _answer_logprobs(language_model, model.embed, question_prefilled,
                                  [model.answer_ids(name) for name in names], batch_size, model.pad_token_id)
        rankings.append(_ranking(names, scores, normalisation))
    return rankings


@torch.inference_mode()
def rank_per_question(model: PerQuestionModel, image, questions: Sequence[str],
                      candidates: Sequence[Sequence[str]], normalisation: str = "sum",
                      batch_size: int = 64) -> list[list[dict]]:
    """``rank_image_questions`` for a model that prompts itself (MiniCPM-V): each question's whole prompt, image
    included, prefilled once, its candidates in batches over that cache."""
    from PIL import Image

    wrapper = model.model
    language_model = wrapper.model.llm
    embed = language_model.get_input_embeddings()
    pad_id = wrapper.tokenizer.pad_token_id if wrapper.tokenizer.pad_token_id is not None else 0
    picture = image if isinstance(image, Image.Image) else Image.open(image)
    rankings = []
    for question, names in zip(questions, candidates):
        prefilled = _extend(language_model, None, wrapper.prompt_embeddings(picture, question))
        scores = _answer_logprobs(language_model, lambda ids: embed(ids.to(prefilled.last_logits.device)), prefilled,
                                  [wrapper.answer_ids(name) for name in names], batch_size, pad_id)
        rankings.append(_ranking(names, scores, normalisation))
    return rankings


@torch.inference_mode()
def rank_one_by_one(model: VisionChatModel, image, question: str, names: Sequence[str],
                    normalisation: str = "sum") -> list[dict]:
    """The reference way: per name, the image encoded and the whole prompt plus the name run in one forward pass,
    no cache. Slow; ``rank_image_questions`` must rank alike."""
    prefix_ids, suffix_ids = model.prompt_pieces(question)
    scores = []
    for name in names:
        pixels = model.preprocess_image(image)[None].to(model.device, model.dtype)
        answer = model.answer_ids(name)
        embeds = torch.cat([model.embed(torch.tensor(prefix_ids))[None], model.encode_images(pixels),
                            model.embed(torch.tensor(suffix_ids + answer))[None]], dim=1)
        logits = model.language_model(inputs_embeds=embeds, num_logits_to_keep=0).logits[0]
        logprobs = torch.log_softmax(logits[-len(answer) - 1:-1].float(), dim=-1)
        scores.append((float(logprobs.gather(-1, torch.tensor(answer)[:, None]).sum()), len(answer)))
    return _ranking(names, scores, normalisation)


# --------------------------------------------------------------------------------------------- constrained
class NameTrie:
    """The token ids of a set of answers as a trie; each path from the root to a stop token spells one name."""

    def __init__(self, model: VisionChatModel, names: Iterable[str]):
        self.root: dict = {}
        self.name_of: dict[tuple[int, ...], str] = {}
        self.depth = 0
        for name in names:
            ids = model.answer_ids(name)
            stops = [i for i, token in enumerate(ids) if token in model.stop_token_ids]
            if not stops:
                raise ValueError(f"the answer {name!r} encodes without a stop token: constrained decoding would "
                                 "never end it")
            ids = ids[:stops[0] + 1]
            self.name_of.setdefault(tuple(ids[:-1]), name)
            node = self.root
            for token in ids:
                node = node.setdefault(token, {})
            self.depth = max(self.depth, len(ids))


class TrieChooser:
    """A ``choose(logits)`` for ``prefix_cache``'s decoding loop: row ``i`` takes the likeliest token that
    continues some name of ``tries[i]``; a row past the end of a name repeats a stop token (the loop ignores it)."""

    def __init__(self, tries: Sequence[NameTrie], stop_token: int):
        self.nodes: list[dict | None] = [trie.root for trie in tries]
        self.stop_token = stop_token

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        chosen = []
        for row, node in enumerate(self.nodes):
            if not node:
                chosen.append(self.stop_token)
                self.nodes[row] = None
                continue
            allowed = torch.tensor(list(node), device=logits.device)
            token = int(allowed[logits[row, allowed].argmax()])
            chosen.append(token)
            self.nodes[row] = node[token]
        return torch.tensor(chosen, device=logits.device)


@torch.inference_mode()
def constrained_answers(model: VisionChatModel, image, questions: Sequence[str],
                        tries: Sequence[NameTrie]) -> list[str]:
    """Greedy answers to ``questions`` about ``image`` restricted to the names of ``tries[i]`` (one prefill of the
    image prefix, as answering does); each answer is one of those names, spelt as the gazetteer spells it."""
    prefix_ids, suffixes = _prompt_prefix(model, questions)
    group = ImageQuestions(model.preprocess_image(image), suffixes)
    chooser = TrieChooser(tries, min(model.stop_token_ids))
    ids = generate_shared(model, prefix_ids, [group], max(t.depth for t in tries), chooser)[0]
    return [trie.name_of[tuple(answer)] for trie, answer in zip(tries, ids)]


# --------------------------------------------------------------------------------------------- retrieved candidates
def retrieved_candidates(retrieved_path: str | os.PathLike, gazetteer: Gazetteer, k: int) -> dict[str, Gazetteer]:
    """``image -> gazetteer`` of each street view retrieved by eval/retrieve.py: the names of the city's gazetteer
    that its ``k`` best tiles carry (their streets, districts and street-district pairs)."""
    if k < 1:
        raise ValueError(f"--candidates-k must be at least 1, not {k}")
    return {image: restrict_gazetteer(gazetteer, (GazetteerEntry(t["street"], t["district"]) for t in top[:k]))
            for image, (top, _) in read_street_view_retrievals([retrieved_path]).items()}


def _candidate_names(candidates: dict[str, Gazetteer], retrieved_path, question: dict) -> tuple[str, ...]:
    gazetteer = candidates.get(question["image"])
    if gazetteer is None:
        raise DataError(retrieved_path, None, f"no retrieval for image {question['image']!r} (question "
                                              f"{question['question_id']!r}): retrieve the same split's queries")
    names = gazetteer.names_for(question["level"])
    if not names:
        raise DataError(retrieved_path, None, f"the tiles retrieved for {question['image']!r} name no "
                                              f"{question['level']} of the gazetteer")
    return names


# --------------------------------------------------------------------------------------------- files
def _pending_groups(questions: Sequence[dict], done: set, image_folder: Path):
    pending = [q for q in questions if q["question_id"] not in done]
    groups = group_by_image(pending)
    missing = [(qs[0]["question_id"], image) for image, qs in groups.items() if not (image_folder / image).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) missing under {image_folder}; first: question "
                                f"{missing[0][0]!r} names {missing[0][1]!r}")
    return pending, groups


def rank_questions(model: VisionChatModel, questions: Sequence[dict], gazetteer: Gazetteer,
                   out_path: str | os.PathLike, image_folder: str | os.PathLike = ".", normalisation: str = "sum",
                   batch_size: int = 64, progress: bool = True, model_settings: dict | None = None,
                   candidates: tuple[str | os.PathLike, int] | None = None) -> int:
    """Rank the gazetteer's names for each generation question not yet in ``out_path`` and append the rankings;
    return how many questions were ranked. ``candidates`` (a ``retrieved.jsonl`` and k) restricts each image's
    names to those of its k best retrieved tiles. Settings (normalisation, the gazetteer's size, the candidates,
    ``model_settings``) are recorded beside the output; a resume with others is refused."""
    rank = rank_per_question if isinstance(model, PerQuestionModel) else rank_image_questions
    image_folder = Path(image_folder)
    settings = {"normalisation": normalisation, "districts": len(gazetteer.districts),
                "streets": len(gazetteer.streets), "addresses": len(gazetteer.addresses), **(model_settings or {})}
    restricted = None
    if candidates is not None:
        retrieved_path, k = candidates
        restricted = retrieved_candidates(retrieved_path, gazetteer, k)
        settings["candidates"] = {"retrieved": str(retrieved_path), "k": k}
    with open_ranked(out_path, settings) as out:
        pending, groups = _pending_groups(ranked_questions(questions), out.done, image_folder)
        bar = tqdm(total=len(pending), unit="question", desc="ranking", disable=not progress, smoothing=0.1)
        names_scored, started = 0, time.perf_counter()
        for image, qs in groups.items():
            names = [gazetteer.names_for(q["level"]) if restricted is None else
                     _candidate_names(restricted, candidates[0], q) for q in qs]
            rankings = rank(model, image_folder / image, [q["question"] for q in qs], names, normalisation,
                            batch_size)
            for q, ranking in zip(qs, rankings):
                out.write({"question_id": q["question_id"], "ranking": ranking})
            names_scored += sum(len(c) for c in names)
            bar.update(len(qs))
            bar.set_postfix_str(f"{names_scored / (time.perf_counter() - started):.0f} names/s", refresh=False)
        bar.close()
    return len(pending)


def answer_constrained(model: VisionChatModel, questions: Sequence[dict], gazetteer: Gazetteer,
                       out_path: str | os.PathLike, image_folder: str | os.PathLike = ".", progress: bool = True,
                       model_settings: dict | None = None) -> int:
    """Greedy answers restricted to the gazetteer's names, appended to a predictions file (``eval/score.py``
    scores it as any other); return how many questions were answered."""
    if isinstance(model, PerQuestionModel):
        raise ValueError("this model prompts itself (MiniCPM-V): constrained decoding is not available for it")
    image_folder = Path(image_folder)
    tries = {level: NameTrie(model, gazetteer.names_for(level)) for level in RANKED_LEVELS
             if gazetteer.names_for(level)}
    settings = {"constrained": True, "districts": len(gazetteer.districts), "streets": len(gazetteer.streets),
                "addresses": len(gazetteer.addresses), **(model_settings or {})}
    with open_predictions(out_path, settings) as out:
        pending, groups = _pending_groups(ranked_questions(questions), out.done, image_folder)
        bar = tqdm(total=len(pending), unit="question", desc="constrained answering", disable=not progress)
        for image, qs in groups.items():
            answers = constrained_answers(model, image_folder / image, [q["question"] for q in qs],
                                          [tries[q["level"]] for q in qs])
            for q, answer in zip(qs, answers):
                out.write({"question_id": q["question_id"], "prediction": answer})
            bar.update(len(qs))
        bar.close()
    return len(pending)
