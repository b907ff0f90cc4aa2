#!/usr/bin/env python
"""Merge several cities' training data into one city root (the paper's Table 5 trains on Pitts + SF together).

Each --city is NAME=CITY_ROOT. The output folder becomes a city root of its own: NAME links to each city root,
vqa/ merges the cities' VQA folders (build_vqa) and stage1/train.json their stage-1 data (build_stage1; merged when
every city has it), every image path prefixed with NAME/ so it resolves under the output folder. Recipes use the
output folder as their data root (recipes/ablations/table5_pitts_sf_stage{1,2}.py). Ids already start with their
city, and must differ across cities. A rerun rewrites the same files.

Example (city roots data/pitts and data/sf):
    python datasets_prep/merge_cities.py --city pitts=data/pitts --city sf=data/sf --out data/pitts_sf
"""
import argparse
import sys

from addressvlm.core.records import DataError
from addressvlm.data.vqa import merge_city_roots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--city", action="append", required=True, metavar="NAME=CITY_ROOT",
                        help="a city root and the name its images get under the output; give two or more")
    parser.add_argument("--out", required=True, help="output folder, the merged city root")
    parser.add_argument("--stage1-json", default="stage1/train.json",
                        help="each city's stage-1 data, relative to its root (default stage1/train.json)")
    args = parser.parse_args()
    cities = []
    for spec in args.city:
        name, sep, root = spec.partition("=")
        if not sep or not name or not root:
            parser.error(f"--city {spec!r} should be NAME=CITY_ROOT")
        cities.append((name, root))
    try:
        stats = merge_city_roots(cities, args.out, args.stage1_json)
    except (DataError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    for name, counts in stats["cities"].items():
        stage1 = f", {stats['stage1'][name]} stage-1 records" if stats["stage1"] else ""
        print(f"{name}: {counts['train']} train, {counts['val']} val records, {counts['test_questions']} test "
              f"questions{stage1}")
    print(f"merged into {args.out}" + ("" if stats["stage1"] else " (no stage-1 data: stage 2 only)"))


if __name__ == "__main__":
    main()
