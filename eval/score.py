"""Score predictions against test questions: the paper's Table 2 columns (rules in docs/metrics.md).

    python eval/score.py --questions data/pitts/vqa/test_questions.jsonl \
        --predictions eval_results/llava_phi3/stage2_pitts/predictions.jsonl \
        --json eval_results/llava_phi3/stage2_pitts/metrics.json --per-sample eval_results/.../per_sample.jsonl
"""
from __future__ import annotations

import argparse
import json
import sys

from addressvlm.records import DataError, write_atomic
from addressvlm.scoring import format_table, score_files, write_per_sample


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", required=True, help="test_questions.jsonl")
    parser.add_argument("--predictions", required=True, help="predictions.jsonl: {question_id, prediction} per line")
    parser.add_argument("--json", metavar="OUT", help="write the metrics, counts, per-district and per-street "
                                                       "accuracy as JSON")
    parser.add_argument("--per-sample", metavar="OUT.jsonl", help="write each question's extracted answer and 0/1")
    parser.add_argument("--allow-missing", action="store_true",
                        help="score questions without a prediction as wrong instead of stopping")
    args = parser.parse_args(argv)

    try:
        metrics, scored = score_files(args.questions, args.predictions, allow_missing=args.allow_missing)
    except (DataError, FileNotFoundError) as exc:
        sys.exit(f"error: {exc}")
    print(format_table(metrics))
    missing = sum(s.prediction is None for s in scored)
    if missing:
        print(f"{missing} question(s) had no prediction and count as wrong (--allow-missing)")
    if args.json:
        write_atomic(args.json, json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    if args.per_sample:
        write_per_sample(args.per_sample, scored)


if __name__ == "__main__":
    main()
