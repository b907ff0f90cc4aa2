#!/usr/bin/env python
"""Pin the location-disjoint train/val/test split into locations.csv (its `split` column).

Run it once per city, before the stage-1 tools (which keep to the training locations) and build_vqa (which honours
the column): then no street view of a test location reaches either stage. Rows that already name a split keep it.

Example:
    python datasets_prep/split_locations.py --locations data/pitts/locations.csv --seed 0 --split 7:2:1
"""
import argparse

from addressvlm.core.records import DataError
from addressvlm.data.vqa import pin_splits, split_option


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--locations", required=True, help="the city's locations.csv (rewritten in place)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="7:2:1", type=split_option,
                        help="train:val:test ratio over locations (default 7:2:1)")
    args = parser.parse_args()
    try:
        counts = pin_splits(args.locations, args.seed, args.split)
    except DataError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"{args.locations}: " + ", ".join(f"{n} {name} locations" for name, n in counts.items()))


if __name__ == "__main__":
    main()
