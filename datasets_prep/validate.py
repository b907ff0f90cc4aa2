#!/usr/bin/env python
"""Decode every image of a city table in parallel and list the ones that are missing or do not decode; warn of
street or district names written in several spellings.

Exit status 1 when any image is unreadable, so a pipeline stops before training on a broken city.

Example:
    python datasets_prep/validate.py --locations data/pitts/locations.csv --workers 8 --report unreadable.txt
"""
import argparse
import os
import sys
from pathlib import Path

from addressvlm.data.ingest import find_unreadable
from addressvlm.core.names import collision_report
from addressvlm.core.records import DataError, read_locations, write_atomic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--locations", required=True, help="the city's locations.csv (images relative to its folder)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding processes")
    parser.add_argument("--report", help="also write the unreadable images here, one 'image<TAB>reason' per line")
    args = parser.parse_args()
    try:
        rows = read_locations(args.locations)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    for line in collision_report(rows):
        print(f"warning: {line}", file=sys.stderr)
    bad = find_unreadable(Path(args.locations).parent, [r.image for r in rows], workers=args.workers)
    lines = [f"{image}\t{reason}" for image, reason in bad]
    if args.report:
        write_atomic(args.report, "".join(line + "\n" for line in lines))
    for line in lines:
        print(line)
    print(f"{len(rows) - len(bad)} of {len(rows)} images decode; {len(bad)} unreadable", file=sys.stderr)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
