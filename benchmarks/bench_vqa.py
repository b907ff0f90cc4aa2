#!/usr/bin/env python
"""Time build_vqa on a generated city of Pitts-VQA's size (8,208 locations x 24 views = 196,992 images, 194
streets, 19 districts) and print images/s and questions/s. The target is <= 60 s on one core.

The city table is generated (no image files: building the VQA data never opens images).

Example:
    taskset -c 0 python benchmarks/bench_vqa.py
    python benchmarks/bench_vqa.py --locations 1000 --views 12 --distractors random
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

from addressvlm.core.records import write_locations
from addressvlm.data.vqa import DISTRACTOR_MODES, build_vqa

# The generator is shared with the tests, so the benchmarked city is the kind the tests check.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from synthetic_city import city_rows  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--locations", type=int, default=8208)
    parser.add_argument("--views", type=int, default=24)
    parser.add_argument("--streets", type=int, default=194)
    parser.add_argument("--districts", type=int, default=19)
    parser.add_argument("--distractors", choices=DISTRACTOR_MODES, default="nearest")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--keep", help="build into this folder and keep it (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        rows = city_rows(n_locations=args.locations, views=args.views, n_streets=args.streets,
                         n_districts=args.districts, spacing_m=60.0)
        write_locations(root / "city" / "locations.csv", rows)
        start = time.perf_counter()
        stats = build_vqa(root / "city" / "locations.csv", root / "city" / "vqa", distractors=args.distractors,
                          rounds=args.rounds)
        seconds = time.perf_counter() - start
    images = sum(s["images"] for s in stats["splits"].values())
    questions = sum(s["questions"] for s in stats["splits"].values())
    print(f"{images} images, {questions} questions in {seconds:.1f} s: "
          f"{images / seconds:,.0f} images/s, {questions / seconds:,.0f} questions/s")


if __name__ == "__main__":
    main()
