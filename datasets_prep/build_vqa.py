#!/usr/bin/env python
"""Build a city's stage-2 VQA data: train.json and val.json (XTuner LLaVA JSON, multi-turn per image),
test_questions.jsonl (nine single-turn questions per test image), val_questions.jsonl (the same for the validation
images: the metrics logged while training) and stats.json (Table B2's rows).

Splits are by location_id (7:2:1 by default, a `split` column is honoured); image paths stay relative to the city
root (the folder of --locations). Same input and seed give byte-identical files. docs/data.md explains the format.

Examples:
    python datasets_prep/build_vqa.py --locations data/pitts/locations.csv --out data/pitts/vqa --seed 0
    # Fig. 7 density ablation: half the views of a quarter of the training locations
    python datasets_prep/build_vqa.py --locations data/pitts/locations.csv --out data/pitts/vqa_v50_l25 \\
        --view-fraction 0.5 --location-fraction 0.25
    # Table C6's count for the same run: 13 of each location's 24 views (the text's 50 % keeps 12)
    python datasets_prep/build_vqa.py --locations data/pitts/locations.csv --out data/pitts/vqa_views13of24 \\
        --view-fraction 13/24
    # Tokyo (Table 8): the district level is the chome; recorded in data/tokyo/levels.json for later builds,
    # scoring and serving
    python datasets_prep/build_vqa.py --locations data/tokyo/locations.csv --out data/tokyo/vqa --level-names chome,street
    # Retrieved names as a hint after every question (docs/retrieval.md, section 6): eval/retrieve.py's
    # retrieved.jsonl of the train, val and test street views
    python datasets_prep/build_vqa.py --locations data/pitts/locations.csv --out data/pitts/vqa_hint5 \
        --hints eval_results/retrieval/lvlm_pitts/{train,val,test}/retrieved.jsonl --hint-k 5
"""
import argparse
import sys

from addressvlm.core.records import LEVEL_NAMES_FILE, DataError
from addressvlm.core.templates import parse_level_names
from addressvlm.data.vqa import DISTRACTOR_MODES, MAX_ROUNDS, TURN_ORDERS, build_vqa, fraction_option, split_option


def _level_names(text: str) -> dict[str, str]:
    try:
        return parse_level_names(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--locations", required=True, help="the city's locations.csv")
    parser.add_argument("--out", required=True, help="output folder (e.g. data/<city>/vqa)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="7:2:1", type=split_option,
                        help="train:val:test ratio over locations (default 7:2:1)")
    parser.add_argument("--rounds", type=int, default=MAX_ROUNDS,
                        help="question rounds per training image: 1-6 take that many of the six district/street "
                             "questions, types balanced over the file; 7 (default) adds the address question")
    parser.add_argument("--distractors", choices=DISTRACTOR_MODES, default="nearest",
                        help="wrong options and judgment negatives: geographically nearest other names (default) "
                             "or uniformly random ones")
    parser.add_argument("--view-fraction", type=fraction_option, default=1.0,
                        help="keep this share of each training location's views: 0.5, or a ratio such as 13/24 "
                             "(Table C6's View-13/24: 13 of a location's 24 views)")
    parser.add_argument("--location-fraction", type=fraction_option, default=1.0,
                        help="keep this share of training locations: 0.25 or 1/4")
    parser.add_argument("--city", help="city name in ids (default: the city root's folder name)")
    parser.add_argument("--single-turn", action="store_true",
                        help="one training record per round (the test questions' format) instead of one "
                             "multi-turn conversation per image: for small models trained from scratch")
    parser.add_argument("--turn-order", choices=TURN_ORDERS, default="shuffled",
                        help="shuffled (default): every question type opens some conversations, as each test "
                             "question is asked first (our test format; the paper gives none); generation-first: "
                             "names are asked before a judgment or choice can give them away")
    parser.add_argument("--level-names", type=_level_names, metavar="DISTRICT_WORD,STREET_WORD",
                        help="what the questions call the district and street levels, e.g. chome,street for Tokyo; "
                             f"recorded in the city root's {LEVEL_NAMES_FILE} (default: the words recorded there, "
                             "else district,street)")
    parser.add_argument("--hints", nargs="+", metavar="RETRIEVED_JSONL",
                        help="eval/retrieve.py retrieved.jsonl files covering every train, val and test street view: "
                             "the street and district names of each image's --hint-k best tiles follow each of its "
                             "questions (training hints thinned to the validation images' candidate recall)")
    parser.add_argument("--hint-k", type=int, help="retrieved tiles whose names are the hint (5)")
    args = parser.parse_args()
    if args.hint_k is not None and not args.hints:
        parser.error("--hint-k needs --hints")
    if args.hint_k is not None and args.hint_k < 1:
        parser.error("--hint-k must be at least 1")
    try:
        stats = build_vqa(args.locations, args.out, seed=args.seed, split=args.split, rounds=args.rounds,
                          distractors=args.distractors, view_fraction=args.view_fraction,
                          location_fraction=args.location_fraction, city=args.city, progress=True,
                          single_turn=args.single_turn, turn_order=args.turn_order, level_names=args.level_names,
                          hints=args.hints, hint_k=args.hint_k or 5)
    except (DataError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    for name, s in stats["splits"].items():
        print(f"{name:5s}: {s['locations']} locations, {s['images']} images, {s['questions']} questions, "
              f"{s['streets']} streets, {s['districts']} districts")
    for name, levels in stats.get("hints", {}).get("candidate_recall", {}).items():
        print(f"{name:5s} hints: " + ", ".join(f"true {level} among the candidates {r['hinted']}% (retrieved "
                                              f"{r['retrieved']}%)" for level, r in levels.items()))
    if "level_names" in stats:
        print(f"levels called {stats['level_names']['district']!r} and {stats['level_names']['street']!r}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
