#!/usr/bin/env python
"""Merge several cities' stage-2 VQA folders into one (the paper's Table 5 trains on Pitts + SF together).

Each --city is PREFIX=VQA_DIR: PREFIX is that city root's path relative to the image folder the merged data is
used with, and is prepended to its image paths. Ids already start with the city name.

Example (city roots data/pitts and data/sf, image folder data/):
    python datasets_prep/merge_cities.py --city pitts=data/pitts/vqa --city sf=data/sf/vqa --out data/pitts_sf/vqa
"""
import argparse
import sys

from addressvlm.records import DataError
from addressvlm.vqa import merge_cities


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--city", action="append", required=True, metavar="PREFIX=VQA_DIR",
                        help="a city's VQA folder and its image prefix; give two or more")
    parser.add_argument("--out", required=True, help="output folder for the merged files")
    args = parser.parse_args()
    cities = []
    for spec in args.city:
        prefix, sep, folder = spec.partition("=")
        if not sep or not prefix or not folder:
            parser.error(f"--city {spec!r} should be PREFIX=VQA_DIR")
        cities.append((prefix, folder))
    try:
        stats = merge_cities(cities, args.out)
    except (DataError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    for prefix, counts in stats["cities"].items():
        print(f"{prefix}: {counts['train']} train, {counts['val']} val records, {counts['test_questions']} test questions")
    print(f"merged into {args.out}")


if __name__ == "__main__":
    main()
