"""Score predictions against test questions: the paper's Table 2 columns (rules in docs/metrics.md), and optionally
top-k accuracy of ranked names (eval/rank.py), the metre-scale error of street answers and each answer's
street-level reward (addressvlm/answering/reward.py).

    python eval/score.py --questions data/pitts/vqa/test_questions.jsonl \
        --predictions eval_results/llava_phi3/stage2_pitts/predictions.jsonl \
        --json eval_results/llava_phi3/stage2_pitts/metrics.json --per-sample eval_results/.../per_sample.jsonl
    ... --ranked eval_results/llava_phi3/stage2_pitts/ranked.jsonl \
        --locations data/pitts/locations.csv --streets data/pitts/streets.geojson \
        --rewards eval_results/llava_phi3/stage2_pitts/rewards.jsonl
"""
from __future__ import annotations

import argparse
import json
import sys

from addressvlm.core.records import (DataError, refuse_output_over_inputs, writable_output, write_atomic,
                                     write_rewards)
from addressvlm.answering.scoring import (format_table, level_worded, read_ranked_names, score_files, top_k_accuracy,
                                          write_per_sample)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", required=True, help="test_questions.jsonl")
    parser.add_argument("--predictions", required=True, help="predictions.jsonl: {question_id, prediction} per line")
    parser.add_argument("--json", metavar="OUT", help="write the metrics, counts, per-district and per-street "
                                                       "accuracy as JSON")
    parser.add_argument("--per-sample", metavar="OUT.jsonl", help="write each question's extracted answer and 0/1")
    parser.add_argument("--allow-missing", action="store_true",
                        help="score questions without a prediction (or ranking) as wrong instead of stopping")
    parser.add_argument("--ranked", metavar="RANKED.jsonl",
                        help="eval/rank.py's rankings: adds district_top1/top5, street_top1/top5, address_top1")
    parser.add_argument("--locations", help="the city's locations.csv (true locations; with --streets)")
    parser.add_argument("--streets", help="the city's streets (GeoJSON or .osm.pbf; with --locations): adds the "
                                          "metre error of street generation answers (and of the top-1 ranked street)")
    parser.add_argument("--rewards", metavar="OUT.jsonl",
                        help="write each question's street-level reward, {question_id, reward} per line, as GRPO "
                             "computes it (needs --locations and --streets; docs/eval.md, 'The reward')")
    parser.add_argument("--reward-mode", default="hierarchical_distance",
                        help="the reward's mode for --rewards, as a stage-3 recipe's reward_mode: exact, hierarchical "
                             "or hierarchical_distance (default)")
    args = parser.parse_args(argv)
    if bool(args.locations) != bool(args.streets):
        parser.error("--locations and --streets go together (true locations and the streets to measure to)")
    if args.rewards and not args.streets:
        parser.error("--rewards needs --locations and --streets (the reward measures wrong streets in metres)")
    if args.rewards:
        from addressvlm.answering.reward import check_reward_mode  # like street_error: shapely and pyproj are slow

        try:
            check_reward_mode(args.reward_mode)
        except ValueError as exc:
            parser.error(f"--reward-mode: {exc}")

    inputs = [("--questions", args.questions), ("--predictions", args.predictions), ("--ranked", args.ranked),
              ("--locations", args.locations), ("--streets", args.streets)]
    try:
        for option, path in (("--json", args.json), ("--per-sample", args.per_sample), ("--rewards", args.rewards)):
            if path:  # checked now, not after the scoring: a bad path must not cost the table
                writable_output(path, option)
                refuse_output_over_inputs(path, inputs, option)
        metrics, scored = score_files(args.questions, args.predictions, allow_missing=args.allow_missing)
        extra: dict = {}
        rankings = None
        if args.ranked:
            questions, rankings = read_ranked_names(args.questions, args.ranked, args.allow_missing)
            extra.update(top_k_accuracy(questions, rankings))
        if args.streets:
            from addressvlm.answering.street_error import street_error_files

            answers = {"street": {s.question["question_id"]: s.prediction for s in scored}}
            if rankings is not None:
                answers["street_top1"] = {qid: names[0] for qid, names in rankings.items()}
            errors, _ = street_error_files(args.questions, args.locations, args.streets, answers)
            extra.update(errors)
        if args.rewards:
            from addressvlm.answering.reward import reward_files

            rewards = reward_files(args.questions, args.locations, args.streets,
                                   {s.question["question_id"]: s.prediction for s in scored}, args.reward_mode)
    except (DataError, FileNotFoundError) as exc:
        sys.exit(f"error: {exc}")
    metrics["counts"].update(extra.pop("counts", {}))
    metrics.update(extra)
    print(format_table(metrics))
    for key, value in extra.items():
        if not isinstance(value, dict):
            print(f"{level_worded(key, metrics['level_names'])}: {'-' if value is None else value}")
    missing = sum(s.prediction is None for s in scored)
    if missing:
        print(f"{missing} question(s) had no prediction and count as wrong (--allow-missing)")
    if args.json:
        write_atomic(args.json, json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    if args.per_sample:
        write_per_sample(args.per_sample, scored)
    if args.rewards:
        write_rewards(args.rewards, rewards)


if __name__ == "__main__":
    main()
