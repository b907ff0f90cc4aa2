"""Answer test questions with vLLM's offline engine, one engine per GPU (docs/serving.md, "Batch answering with
vLLM"): the greedy answers of eval/infer.py --hf, into the same predictions.jsonl (eval/score.py scores it),
appended and flushed per line; a rerun skips answered ids.

    python eval/infer_vllm.py --hf exports/stage2_pitts --questions data/pitts/vqa/test_questions.jsonl \
        --out eval_results/llava_phi3_mini/stage2_pitts/predictions.jsonl --data-parallel-size 8
Run it with the XTuner environment's python, as eval/infer.py: it starts vLLM from .venv-modern (make modern-env),
whose engines log beside --out (<out>.vllm-<i>.log).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from addressvlm.checks.vllm_check import MODERN_PYTHON


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Answer test_questions.jsonl with vLLM's offline engine from .venv-modern, one engine per GPU: "
                    "eval/infer.py --hf's greedy answers, into the same predictions.jsonl (appended and flushed per "
                    "line; a rerun skips answered ids). Run it with the XTuner environment's python.")
    parser.add_argument("--hf", required=True, help="a LLaVA folder tools/export_hf.py wrote")
    parser.add_argument("--questions", required=True, help="test_questions.jsonl")
    parser.add_argument("--image-folder",
                        help="folder the questions' image paths are relative to (default: the city root, i.e. the "
                             "parent of the questions file's folder)")
    parser.add_argument("--out", required=True, help="predictions.jsonl to append to")
    parser.add_argument("--data-parallel-size", type=int, default=1,
                        help="engines, one per GPU (the first N of CUDA_VISIBLE_DEVICES); 1 on vLLM's CPU build")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="questions handed to an engine at a time, whole images (default 256); their answers "
                             "are written as the engine returns them")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="default: bfloat16 on GPU, float32 on vLLM's CPU build (eval/infer.py's)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if Path(sys.prefix).resolve() == MODERN_PYTHON.parent.parent.resolve():
        raise SystemExit(f"error: {MODERN_PYTHON} runs vLLM, not this tool: run eval/infer_vllm.py with the XTuner "
                         "environment's python (.venv/bin/python), which starts vLLM from .venv-modern itself")
    # Imported once the environment is known to be XTuner's (the modern one lacks XTuner).
    from addressvlm.answering.loading import image_folder_of
    from addressvlm.runs.vllm_batch import answer_with_vllm
    from addressvlm.checks.vllm_check import VllmError
    from addressvlm.core.records import DataError, read_questions

    try:
        questions = read_questions(args.questions)
        if not questions:
            raise DataError(args.questions, None, "no questions to answer")
        answered = answer_with_vllm(args.hf, questions, args.out, image_folder_of(args),
                                    max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                    data_parallel_size=args.data_parallel_size, dtype=args.dtype)
    except (VllmError, DataError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"answered {answered} of {len(questions)} question(s) with vLLM -> {args.out}")


if __name__ == "__main__":
    main()
