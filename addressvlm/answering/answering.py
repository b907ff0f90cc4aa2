"""The answering loop: test questions grouped by image, split in disjoint chunks (one process per GPU), answered
in batches into ``predictions.jsonl`` one flushed line at a time (a rerun skips answered ids), and the chunks'
answers merged back in question order.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Sequence

import torch
from tqdm import tqdm

from addressvlm.answering.chat_model import ImageQuestions, VisionChatModel
from addressvlm.answering.loading import PerQuestionModel
from addressvlm.answering.prefix_cache import generate_plain, generate_shared, sampler
from addressvlm.core.records import (
    DataError, PREDICTION_KEYS, open_predictions, read_jsonl, read_questions, refuse_output_over_inputs, write_atomic,
)


def group_by_image(questions: Iterable[dict]) -> "OrderedDict[str, list[dict]]":
    groups: OrderedDict[str, list[dict]] = OrderedDict()
    for q in questions:
        groups.setdefault(q["image"], []).append(q)
    return groups


def refuse_missing_images(groups: "OrderedDict[str, list[dict]]", image_folder: Path) -> None:
    """``FileNotFoundError`` naming the first question whose image is not under ``image_folder``, before any
    answering."""
    missing = [(qs[0]["question_id"], image) for image, qs in groups.items() if not (image_folder / image).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) missing under {image_folder}; first: question "
                                f"{missing[0][0]!r} names {missing[0][1]!r}")


def chunk_questions(questions: Sequence[dict], num_chunks: int, chunk_idx: int) -> list[dict]:
    """Share ``chunk_idx`` of ``num_chunks``: whole images (in order of first appearance), contiguous and near-equal
    in image count, so the shares are disjoint and together hold every question."""
    if num_chunks < 1 or not 0 <= chunk_idx < num_chunks:
        raise ValueError(f"chunk index {chunk_idx} out of range for {num_chunks} chunks")
    images = list(group_by_image(questions).items())
    start, stop = len(images) * chunk_idx // num_chunks, len(images) * (chunk_idx + 1) // num_chunks
    return [q for _, qs in images[start:stop] for q in qs]


def _batches(groups: "OrderedDict[str, list[dict]]", batch_size: int) -> Iterable[list[tuple[str, list[dict]]]]:
    """Whole images per batch while they fit in ``batch_size`` rows; an image with more questions is split."""
    batch, rows = [], 0
    for image, qs in groups.items():
        for start in range(0, len(qs), batch_size):
            piece = qs[start:start + batch_size]
            if batch and rows + len(piece) > batch_size:
                yield batch
                batch, rows = [], 0
            batch.append((image, piece))
            rows += len(piece)
    if batch:
        yield batch


def image_question_groups(model: VisionChatModel, images_questions: Sequence[tuple[object, Sequence[str]]],
                          num_samples: int = 1) -> tuple[list[int], list[ImageQuestions]]:
    """The prompt prefix every question shares and, per image (a PIL image or a path), its pixels with each of its
    questions' suffixes ``num_samples`` times: the input of ``prefix_cache``'s generation."""
    prefixes, groups = [], []
    for image, questions in images_questions:
        pieces = [model.prompt_pieces(q) for q in questions]
        prefixes += [prefix for prefix, _ in pieces]
        suffixes = [suffix for _, suffix in pieces for _ in range(num_samples)]
        groups.append(ImageQuestions(model.preprocess_image(image), suffixes))
    if any(p != prefixes[0] for p in prefixes):
        raise ValueError("the chat template puts question-dependent text before the image")
    return prefixes[0], groups


@torch.inference_mode()
def answer_questions(model: VisionChatModel, questions: Sequence[dict], out_path: str | os.PathLike,
                     image_folder: str | os.PathLike = ".", batch_size: int = 18, share_prefix: bool = True,
                     max_new_tokens: int = 32, temperature: float = 0.0, num_samples: int = 1, seed: int = 0,
                     progress: bool = True, model_settings: dict | None = None) -> int:
    """Answer the questions not yet in ``out_path`` and append them there; return how many were answered.

    ``batch_size`` counts decoded rows (question x sample). With ``num_samples > 1`` each line also holds
    ``"samples"`` (all of them; ``"prediction"`` is the first). The generation settings and ``model_settings``
    (which model answered) are recorded beside ``out_path``; resuming with others is refused."""
    if num_samples > 1 and temperature == 0:
        raise ValueError("several samples of a greedy answer are all the same: set a temperature > 0")
    if batch_size < num_samples:
        raise ValueError(f"batch size {batch_size} is smaller than the {num_samples} samples of one question")
    generate = generate_shared if share_prefix else generate_plain
    image_folder = Path(image_folder)
    settings = {"max_new_tokens": max_new_tokens, "temperature": temperature, "num_samples": num_samples,
                "seed": seed if temperature > 0 else None, **(model_settings or {})}
    with open_predictions(out_path, settings) as out:
        pending = [q for q in questions if q["question_id"] not in out.done]
        groups = group_by_image(pending)
        refuse_missing_images(groups, image_folder)
        bar = tqdm(total=len(pending), unit="question", desc="answering", disable=not progress, smoothing=0.1)
        if isinstance(model, PerQuestionModel):
            if temperature > 0:
                raise ValueError("this model answers greedily only")
            for image, qs in groups.items():
                answers = model.answer_image(image_folder / image, [q["question"] for q in qs], max_new_tokens)
                for q, answer in zip(qs, answers):
                    out.write({"question_id": q["question_id"], "prediction": answer})
                bar.update(len(qs))
            bar.close()
            return len(pending)
        generator = torch.Generator(device=model.device).manual_seed(seed) if temperature > 0 else None
        choose = sampler(temperature, generator)
        for batch in _batches(groups, max(1, batch_size // num_samples)):
            prefix, image_groups = image_question_groups(
                model, [(image_folder / image, [q["question"] for q in qs]) for image, qs in batch], num_samples)
            asked = [q for _, qs in batch for q in qs]
            answers = [a for group in model.decode_groups(generate(model, prefix, image_groups, max_new_tokens, choose))
                       for a in group]
            for i, q in enumerate(asked):
                samples = answers[i * num_samples:(i + 1) * num_samples]
                record = {"question_id": q["question_id"], "prediction": samples[0]}
                if num_samples > 1:
                    record["samples"] = samples
                out.write(record)
            bar.update(len(asked))
        bar.close()
    return len(pending)


@torch.inference_mode()
def sample_answers(model: VisionChatModel, image, prompt: str, n: int, temperature: float = 0.8,
                   max_new_tokens: int = 32, seed: int | None = None, batch_size: int = 100) -> list[str]:
    """``n`` answers to one question about one image (a PIL image or a path), sampled at ``temperature`` from one
    shared prefix (the street-distribution tool asks 100 at 0.8)."""
    generator = None
    if temperature > 0:
        generator = torch.Generator(device=model.device)
        generator.manual_seed(seed) if seed is not None else generator.seed()
    choose = sampler(temperature, generator)
    prefix, suffix = model.prompt_pieces(prompt)
    pixels = model.preprocess_image(image)
    answers: list[str] = []
    while len(answers) < n:
        rows = min(batch_size, n - len(answers))
        group = ImageQuestions(pixels, [suffix] * rows)
        answers += model.decode_groups(generate_shared(model, prefix, [group], max_new_tokens, choose))[0]
    return answers


# --------------------------------------------------------------------------------------------- merging chunks
def merge_predictions(questions_path: str | os.PathLike, chunk_paths: Sequence[str | os.PathLike],
                      out_path: str | os.PathLike, allow_missing: bool = False) -> int:
    """Join per-chunk predictions into one file in question order; an id answered twice, an id not among the
    questions, or (unless ``allow_missing``) an unanswered question is an error. Return the lines written."""
    refuse_output_over_inputs(out_path, [("--questions", questions_path), *(("chunk", path) for path in chunk_paths)],
                              "--out")
    questions = read_questions(questions_path)
    known = {q["question_id"] for q in questions}
    found: dict[str, dict] = {}
    where: dict[str, str] = {}
    for path in chunk_paths:
        for line, rec in read_jsonl(path, PREDICTION_KEYS):
            qid = rec["question_id"]
            if not isinstance(rec["prediction"], str):
                raise DataError(path, line, "prediction must be a string")
            if qid not in known:
                raise DataError(path, line, f"question_id {qid!r} is not in {questions_path}")
            if qid in found:
                raise DataError(path, line, f"question_id {qid!r} answered twice (also at {where[qid]})")
            found[qid], where[qid] = rec, f"{path}:{line}"
    missing = [q["question_id"] for q in questions if q["question_id"] not in found]
    if missing and not allow_missing:
        raise DataError(questions_path, None, f"{len(missing)} question(s) have no prediction in the chunks, "
                        f"first {missing[:5]} (run the missing chunks, or pass --allow-missing)")
    lines = [json.dumps(found[q["question_id"]], ensure_ascii=False, sort_keys=True)
             for q in questions if q["question_id"] in found]
    write_atomic(out_path, "".join(line + "\n" for line in lines))
    return len(lines)


# --------------------------------------------------------------------------------------------- command line
