#!/usr/bin/env python
"""Serve exported models with vLLM (from .venv-modern) and check that its greedy answers equal eval/infer.py's
(docs/serving.md, "vLLM").

    python tools/check_vllm.py --demo          # what `make check-vllm` runs, after `make demo`
    python tools/check_vllm.py --hf exports/stage2_pitts --questions data/pitts/vqa/test_questions.jsonl \
        --predictions R/predictions.jsonl --out R/vllm.jsonl
--demo exports the demo's two stage-2 models (stage1_stage2, stage2_only) into work_dirs/demo_helsinki/exports/,
then serves each in turn, and its stage-3 model (work_dirs/demo_helsinki/stage3/hf, a Hugging Face folder already),
and asks it the demo's test questions. Exit 1 unless every answer is equal.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from addressvlm.checks.endpoint_check import agreement, client_for, endpoint_answers
from addressvlm.checks.vllm_check import (
    CHECKOUT, MODERN_PYTHON, SERVED_MODEL_NAME, VllmError, is_cpu_build, refuse_unsupported_head_size, vllm_server)
from addressvlm.core.records import DataError, read_predictions, read_questions
from addressvlm.training.checkpoints import CheckpointError
from addressvlm.training.image_prompts import export_pad_colour
from addressvlm.training.stage_chain import StageChainError

DEMO_RUNS = ("stage1_stage2", "stage2_only")


def check_folder(folder: Path, questions_path: Path, predictions: Path, out: Path, image_folder: Path,
                 limit: int | None) -> bool:
    """Serve ``folder``, ask it the questions, print how many answers equal ``predictions``; True if all do."""
    questions = read_questions(questions_path)[:limit]
    reference = read_predictions(predictions)
    missing = [q["question_id"] for q in questions if q["question_id"] not in reference]
    if missing:
        raise DataError(predictions, None, f"{len(missing)} question(s) unanswered, first {missing[0]!r}")
    out.unlink(missing_ok=True)  # answers of an earlier export must not be taken for this one's
    with vllm_server(folder, out.with_suffix(".log")) as base_url:
        # lazy: answering.loading imports XTuner, seconds that would come before vllm_server's one-line refusals
        from addressvlm.answering.loading import is_minicpmv_folder

        # Where training padded images to a square (LLaVA), they are sent padded: vLLM's processor does not pad.
        # eval/infer.py decodes MiniCPM-V's answers with their special tokens (as the release's chat does), LLaVA's
        # without.
        endpoint_answers(client_for(base_url), SERVED_MODEL_NAME, questions, image_folder, out,
                         pad_colour=export_pad_colour(folder), keep_special_tokens=is_minicpmv_folder(folder))
    result = agreement(predictions, out)
    print(f"{folder}: {result.summary()}", flush=True)
    return result.compared == len(questions) and result.equal == result.compared


def check_demo(checkout: Path, limit: int | None) -> bool:
    from addressvlm.answering.export import export_hf
    from addressvlm.runs.engine import STAGE3, checkout_paths, stage3_folder

    paths = checkout_paths(checkout)
    questions = paths.city / "vqa" / "test_questions.jsonl"
    needed = [paths.models / "config.json", questions, stage3_folder(paths) / "model.safetensors"] \
        + [paths.out / "predictions" / f"{run}.jsonl" for run in (*DEMO_RUNS, STAGE3)] \
        + [paths.work / run / "last_checkpoint" for run in DEMO_RUNS]
    for path in needed:
        if not path.is_file():
            raise SystemExit(f"error: {path} not found: run `make demo` in {checkout} first")
    if is_cpu_build(MODERN_PYTHON):
        refuse_unsupported_head_size(paths.models)  # before minutes of exporting
    folders = {run: export_hf(paths.recipes / "stage2_helsinki.py", paths.work / run, paths.work / "exports" / run,
                              dtype="float32", model_root=paths.models, replace=True) for run in DEMO_RUNS}
    folders[STAGE3] = stage3_folder(paths)  # GRPO's model is a Hugging Face folder already
    every_equal = True
    for run, folder in folders.items():
        every_equal &= check_folder(folder, questions, paths.out / "predictions" / f"{run}.jsonl",
                                    paths.out / "predictions" / f"{run}.vllm.jsonl", paths.city, limit)
    return every_equal


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Serve exported models with vLLM (the modern environment, .venv-modern) and compare its greedy "
                    "answers with eval/infer.py's; exit 1 unless all are equal (docs/serving.md).")
    parser.add_argument("--demo", action="store_true",
                        help="the three models `make demo` trained (stage 2's exported, stage 3's as trained), on its "
                             "test questions")
    parser.add_argument("--demo-root", default=str(CHECKOUT),
                        help="the checkout `make demo` ran in (default: this one)")
    parser.add_argument("--hf", help="a folder tools/export_hf.py wrote")
    parser.add_argument("--questions", help="test_questions.jsonl (with --hf)")
    parser.add_argument("--predictions", help="eval/infer.py's predictions.jsonl for them (with --hf)")
    parser.add_argument("--out", help="vLLM's answers, a predictions file (with --hf; replaced); its log beside it")
    parser.add_argument("--image-folder", help="default: the city root (the parent of the questions' folder)")
    parser.add_argument("--limit", type=int, help="only the first N questions")
    args = parser.parse_args(argv)
    if args.demo == bool(args.hf):
        parser.error("give --demo or --hf (with --questions, --predictions and --out)")
    if args.hf and not (args.questions and args.predictions and args.out):
        parser.error("--hf needs --questions, --predictions and --out")
    try:
        if args.demo:
            every_equal = check_demo(Path(args.demo_root).resolve(), args.limit)
        else:
            questions = Path(args.questions)
            image_folder = Path(args.image_folder) if args.image_folder else questions.resolve().parent.parent
            every_equal = check_folder(Path(args.hf), questions, Path(args.predictions), Path(args.out),
                                       image_folder, args.limit)
    except (VllmError, DataError, FileNotFoundError, CheckpointError, StageChainError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    raise SystemExit(0 if every_equal else 1)


if __name__ == "__main__":
    main()
