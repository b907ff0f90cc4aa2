"""Satellite crops around street-view locations, with street names drawn along the roads (or none).

One location, for inspection:
    python datasets_prep/crop_satellite.py --raster data/pitts/satellite.tif --streets data/pitts/streets.geojson \
        --lat 40.4406 --lon -79.9959 --size-m 200 --pixels 336 --out crop.png
A whole city (one crop per location_id of locations.csv; resumable, idempotent), the main stage-1 crops: no street
name under the corner a delta-0.5 graft covers (each Table 9 variant keeps its own delta's corner clear):
    python datasets_prep/crop_satellite.py --city data/pitts --size-m 200 --pixels 336 --keep-clear-for-delta 0.5
    python datasets_prep/crop_satellite.py --city data/pitts --no-labels --out-dir data/pitts/stage1/crops_noroad
The raster is a GeoTIFF in any CRS or an XYZ tile folder {z}/{x}/{y}.png|jpg (city default: satellite.tif, else
tiles/); streets are GeoJSON lines with a "name" or an .osm.pbf (city default: streets.geojson).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from addressvlm.geo.crop import crop_city, render_crop
from addressvlm.geo.raster import RasterError, open_raster
from addressvlm.geo.streets import read_street_map
from addressvlm.data.graft import CORNERS, reserved_fraction
from addressvlm.core.records import DataError, refuse_output_over_inputs, writable_output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--city", type=Path, help="city root (docs/design.md layout): crop every location")
    mode.add_argument("--lat", type=float, help="single crop: latitude (WGS84)")
    parser.add_argument("--lon", type=float, help="single crop: longitude (WGS84)")
    parser.add_argument("--out", type=Path, help="single crop: output image")
    parser.add_argument("--out-dir", type=Path, help="city mode output (default <city>/stage1/crops)")
    parser.add_argument("--raster", type=Path, help="GeoTIFF or XYZ tile folder")
    parser.add_argument("--streets", type=Path, help="streets GeoJSON or .osm.pbf")
    parser.add_argument("--size-m", type=float, default=200.0, help="crop side in ground metres (200)")
    parser.add_argument("--pixels", type=int, default=336, help="crop side in pixels (336)")
    parser.add_argument("--jitter-m", type=float, default=0.0,
                        help="city mode: move each crop's centre up to this many metres off its location (0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the jitter")
    parser.add_argument("--no-labels", action="store_true", help="no street names (the 'Satellite w/o road' ablation)")
    parser.add_argument("--font-px", type=int, default=None, help="label font size (default pixels/28)")
    parser.add_argument("--keep-clear-for-delta", type=float, default=None, metavar="DELTA",
                        help="keep names out of the corner a 4:3 street view grafted with this delta will cover")
    parser.add_argument("--corner", choices=CORNERS, default="upper_right", help="with --keep-clear-for-delta")
    parser.add_argument("--workers", type=int, default=None, help="city mode: processes (default: usable cores)")
    parser.add_argument("--attribution", default=None,
                        help='text written small in the lower-left, e.g. "(c) OpenStreetMap contributors, ODbL"')
    args = parser.parse_args()
    labels = not args.no_labels
    reserved = reserved_fraction((4, 3), args.keep_clear_for_delta, args.corner) \
        if args.keep_clear_for_delta else None

    try:
        if args.city:
            report = crop_city(args.city, args.out_dir or args.city / "stage1" / "crops", args.size_m, args.pixels,
                               args.jitter_m, labels, args.seed, raster=args.raster, streets=args.streets,
                               font_px=args.font_px, reserved_box=reserved, attribution=args.attribution,
                               workers=args.workers)
            print(report.summary())
            return
        if args.lon is None or not args.out or not args.raster or (labels and not args.streets):
            parser.error("a single crop needs --lat, --lon, --raster, --out and --streets (or --no-labels)")
        writable_output(args.out, "--out")
        refuse_output_over_inputs(args.out, [("--raster", args.raster), ("--streets", args.streets)], "--out")
        raster = open_raster(args.raster)
        try:
            image, drawn = render_crop(raster, read_street_map(args.streets) if labels else None, args.lat, args.lon,
                                args.size_m, args.pixels, labels, args.font_px, reserved, args.attribution)
        finally:
            raster.close()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        image.save(args.out)
        print(args.out)
        print("street names drawn:", ", ".join(drawn) or "none")
    except (RasterError, DataError) as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
