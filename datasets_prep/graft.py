"""Graft street views onto their satellite crops (I_s = M*I_sa + (1-M)*I_st), or build Table 1's other inputs.

Single pair:
    python datasets_prep/graft.py --satellite S.png --street-view V.jpg --out O.jpg --delta 0.5 --size 336
A whole city (every street view of locations.csv with its location's crop; the train split of a table with pinned splits):
    python datasets_prep/graft.py --city data/pitts            # -> data/pitts/stage1/grafted/
    python datasets_prep/graft.py --city data/pitts --delta 0.3 --out-dir data/pitts/stage1/grafted_d0.3
    python datasets_prep/graft.py --city data/pitts --variant stitched   # -> data/pitts/stage1/stitched/
A manifest (JSONL lines {"satellite", "street_view", "out"}, paths relative to the manifest):
    python datasets_prep/graft.py --manifest pairs.jsonl --out-dir OUT
Batch runs skip outputs that exist, and list every input they could not read.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from addressvlm.data.graft import (CORNERS, JPEG_QUALITY, VARIANTS, GraftError, city_pairs, graft_batch, graft_file,
                                   parse_splits)
from addressvlm.core.records import DataError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--satellite", type=Path, help="single pair: the satellite crop")
    mode.add_argument("--city", type=Path, help="city root (docs/design.md layout) to graft every street view of")
    mode.add_argument("--manifest", type=Path, help="JSONL manifest of pairs")
    parser.add_argument("--street-view", type=Path, help="single pair: the street-view image")
    parser.add_argument("--out", type=Path, help="single pair: output image (.jpg)")
    parser.add_argument("--out-dir", type=Path, help="batch output folder (city default: <city>/stage1/<variant>)")
    parser.add_argument("--crops", type=Path, help="city mode: crop folder (default <city>/stage1/crops)")
    parser.add_argument("--splits", default="train", type=parse_splits,
                        help="city mode: comma-separated splits to graft when locations.csv has a split column, "
                             "or 'all' (default train: test views must not reach stage 1)")
    parser.add_argument("--delta", type=float, default=0.5, help="street-view longer side / output side (0.5)")
    parser.add_argument("--size", type=int, default=336, help="output side in pixels (336)")
    parser.add_argument("--corner", choices=CORNERS, default="upper_right")
    parser.add_argument("--variant", choices=VARIANTS, default="grafted",
                        help="grafted (the paper's), stitched, or separate (two images per pair)")
    parser.add_argument("--quality", type=int, default=JPEG_QUALITY, help="JPEG quality of outputs")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: usable cores)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when any input could not be read")
    args = parser.parse_args()

    if args.satellite:
        if not (args.street_view and args.out):
            parser.error("a single pair needs --satellite, --street-view and --out")
        try:
            for f in graft_file(args.satellite, args.street_view, args.out, args.delta, args.size, args.corner,
                                args.variant, args.quality):
                print(f)
        except (GraftError, ValueError) as exc:
            sys.exit(f"error: {exc}")
        return

    try:
        if args.city:
            crops = args.crops or args.city / "stage1" / "crops"
            pairs = city_pairs(args.city, crops, args.splits)
            out_dir = args.out_dir or args.city / "stage1" / args.variant
        else:
            if not args.out_dir:
                parser.error("--manifest needs --out-dir")
            pairs, out_dir = args.manifest, args.out_dir
        report = graft_batch(pairs, out_dir, args.delta, args.size, args.workers, variant=args.variant,
                             corner=args.corner, quality=args.quality)
    except (DataError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    print(report.summary())
    if report.failed and args.strict:
        sys.exit(1)


if __name__ == "__main__":
    main()
