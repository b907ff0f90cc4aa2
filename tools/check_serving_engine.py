#!/usr/bin/env python
"""Do a serving engine's greedy answers equal eval/infer.py's? (docs/serving.md)

    python tools/check_serving_engine.py --base-url http://127.0.0.1:8000/v1 --model addressvlm \
        --questions data/helsinki/vqa/test_questions.jsonl --predictions demo_output/predictions/stage1_stage2.jsonl \
        --out demo_output/predictions/stage1_stage2.endpoint.jsonl
Works with vLLM, lmdeploy and tools/serve.py alike; exit 1 when fewer than --min-agreement of the answers agree.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from addressvlm.checks.endpoint_check import agreement, client_for, endpoint_answers
from addressvlm.core.records import DataError, read_predictions, read_questions


# --------------------------------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Ask an OpenAI-compatible endpoint (vLLM, lmdeploy, tools/serve.py) the test questions greedily "
                    "and compare its answers with eval/infer.py's predictions.jsonl. Exit 1 below --min-agreement.")
    parser.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--model", required=True, help="the served model name")
    parser.add_argument("--questions", required=True, help="test_questions.jsonl")
    parser.add_argument("--predictions", required=True, help="eval/infer.py's predictions.jsonl for these questions")
    parser.add_argument("--out", required=True, help="the endpoint's answers (a predictions file; a rerun resumes)")
    parser.add_argument("--image-folder", help="default: the city root (the parent of the questions' folder)")
    parser.add_argument("--max-tokens", type=int, default=32, help="as eval/infer.py's --max-new-tokens (32)")
    parser.add_argument("--limit", type=int, help="only the first N questions")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--pad-to-square", metavar="R,G,B",
                        help="pad images to a square with this colour before sending, as training did, for engines "
                             "that do not (vLLM, lmdeploy): the CLIP mean 122,116,104 for LLaVA-Phi3-mini")
    parser.add_argument("--min-agreement", type=float, default=1.0, help="share of equal answers needed (default 1)")
    args = parser.parse_args(argv)
    image_folder = Path(args.image_folder) if args.image_folder else Path(args.questions).resolve().parent.parent
    pad_colour = tuple(int(v) for v in args.pad_to_square.split(",")) if args.pad_to_square else None
    if pad_colour is not None and len(pad_colour) != 3:
        parser.error("--pad-to-square takes three numbers: R,G,B")
    try:
        questions = read_questions(args.questions)[:args.limit]
        reference = read_predictions(args.predictions)
        missing = [q["question_id"] for q in questions if q["question_id"] not in reference]
        if missing:
            raise DataError(args.predictions, None, f"{len(missing)} question(s) unanswered, first {missing[0]!r}")
        endpoint_answers(client_for(args.base_url), args.model, questions, image_folder, Path(args.out),
                         args.max_tokens, args.concurrency, pad_colour)
        result = agreement(args.predictions, args.out)
    except (DataError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(result.summary())
    raise SystemExit(0 if result.share >= args.min_agreement else 1)


if __name__ == "__main__":
    main()
