"""The pictures beside metrics.json: a per-district confusion matrix of district generation answers, and a map of
street errors (each true location joined to the nearest point of the street the model named, coloured by distance).

    python eval/draw_errors.py --questions data/pitts/vqa/test_questions.jsonl \
        --predictions eval_results/llava_phi3/stage2_pitts/predictions.jsonl \
        --locations data/pitts/locations.csv --streets data/pitts/streets.geojson
Writes district_confusion.png and street_errors.png into --out (default: the predictions' folder, where
eval/score.py's --json usually goes).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from addressvlm.answering.error_figures import district_confusion, draw_district_confusion, draw_street_errors
from addressvlm.data.gazetteer import build_gazetteer
from addressvlm.answering.street_error import street_errors
from addressvlm.geo.streets import read_street_map
from addressvlm.core.records import DataError, read_locations, read_numbered_questions
from addressvlm.answering.scoring import score_files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", required=True, help="test_questions.jsonl")
    parser.add_argument("--predictions", required=True, help="predictions.jsonl (eval/infer.py or rank.py --constrained)")
    parser.add_argument("--locations", required=True, help="the city's locations.csv (true locations, districts)")
    parser.add_argument("--streets", required=True, help="the city's streets (GeoJSON or .osm.pbf)")
    parser.add_argument("--out", help="folder for the two PNGs (default: the predictions' folder)")
    parser.add_argument("--allow-missing", action="store_true", help="questions without a prediction count wrong")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.predictions).parent
    try:
        _, scored = score_files(args.questions, args.predictions, allow_missing=args.allow_missing)
        locations = read_locations(args.locations)
        street_map = read_street_map(args.streets)
        answers = {s.question["question_id"]: s.prediction for s in scored}
        errors = street_errors(read_numbered_questions(args.questions), args.questions, answers, locations,
                               args.locations, street_map)
        confusion = district_confusion((s.question for s in scored), answers, build_gazetteer(locations).districts)
    except (DataError, FileNotFoundError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    draw_district_confusion(confusion, out / "district_confusion.png")
    draw_street_errors(street_map, errors, out / "street_errors.png")
    print(f"wrote {out / 'district_confusion.png'} and {out / 'street_errors.png'} "
          f"({sum(map(sum, confusion.counts))} district and {len(errors)} street answers)")


if __name__ == "__main__":
    main()
