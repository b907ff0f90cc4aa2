"""Join the per-chunk predictions of `eval/infer.py --num-chunks K` into one file, in question order.

    python eval/merge_predictions.py --questions data/pitts/vqa/test_questions.jsonl \
        --out eval_results/llava_phi3_mini/stage2_pitts/predictions.jsonl \
        eval_results/llava_phi3_mini/stage2_pitts/chunk_*.jsonl
Stops, naming file and line, on an id answered twice or not among the questions, and on unanswered questions
(unless --allow-missing).
"""
from __future__ import annotations

import argparse
import sys

from addressvlm.core.records import DataError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("chunks", nargs="+", help="the chunks' predictions files")
    parser.add_argument("--questions", required=True, help="test_questions.jsonl the chunks answered")
    parser.add_argument("--out", required=True, help="merged predictions.jsonl (written atomically)")
    parser.add_argument("--allow-missing", action="store_true", help="write what there is even if questions lack "
                                                                     "an answer")
    args = parser.parse_args(argv)
    from addressvlm.answering.answering import merge_predictions

    try:
        written = merge_predictions(args.questions, args.chunks, args.out, allow_missing=args.allow_missing)
    except (DataError, FileNotFoundError) as exc:
        sys.exit(f"error: {exc}")
    print(f"merged {written} prediction(s) from {len(args.chunks)} chunk(s) -> {args.out}")


if __name__ == "__main__":
    main()
