"""Write the stage-1 training set (XTuner LLaVA JSON) from the alignment labels.

    python datasets_prep/build_stage1.py --city data/pitts      # -> data/pitts/stage1/train.json
One record per labelled stage-1 image: human "<image>\\n" + the question without the hint, gpt the reason.
Image paths are relative to --image-root (default: the city root, the image folder the recipes use).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from addressvlm.data.graft import parse_splits
from addressvlm.data.graft import VARIANTS
from addressvlm.data.stage1_json import build_stage1_json
from addressvlm.core.records import DataError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--city", type=Path, required=True, help="city root (docs/design.md layout)")
    parser.add_argument("--labels", type=Path, help="labels JSONL (default <city>/stage1/labels.jsonl)")
    parser.add_argument("--out", type=Path, help="output JSON (default <city>/stage1/train.json)")
    parser.add_argument("--variant", choices=VARIANTS, default="grafted", help="the input the labels were made for")
    parser.add_argument("--image-root", type=Path, help="folder image paths are relative to (default: city root)")
    parser.add_argument("--splits", default="train", type=parse_splits,
                        help="comma-separated splits, or 'all' (default train)")
    args = parser.parse_args()
    splits = args.splits
    try:
        report = build_stage1_json(args.city, args.labels, args.out, variant=args.variant,
                                   image_root=args.image_root, splits=splits)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    print(report.summary())
    print(args.out or args.city / "stage1" / "train.json")


if __name__ == "__main__":
    main()
