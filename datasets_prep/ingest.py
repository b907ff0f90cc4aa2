#!/usr/bin/env python
"""Write a city's locations.csv (the city table of docs/design.md) from an image-address dataset as published.

The city root is the folder of --out; image paths are written relative to it (source paths are relative to
--image-root, the city root by default). Coordinates come from lat/lon columns, UTM columns, SF-XL file names or a
Pitts250k .mat file (--coords, "auto" picks the first that fits); location_id from a column, else by grouping
images with the same address within --group-tolerance-m metres.

Examples:
    # any table, its columns mapped to ours
    python datasets_prep/ingest.py --table mycity.json --out data/mycity/locations.csv \\
        --columns image=file,lat=latitude,lon=longitude,street=road,district=area
    # AddressCLIP-style addresses ("Forbes Ave & Craig St, Oakland") + coordinates from Pitts250k's .mat
    python datasets_prep/ingest.py --table pitts_ial.csv --columns image=image,address=address \\
        --coords pitts-mat --pitts-mat pitts250k_train.mat --utm-zone 17T --out data/pitts/locations.csv
    # SF-XL images: coordinates and heading from the file names
    python datasets_prep/ingest.py --table sf_ial_base.csv --columns image=path,address=address \\
        --coords sfxl-name --out data/sf/locations.csv
"""
import argparse
import sys
from collections import Counter

from addressvlm.data.ingest import COORDINATE_SOURCES, IngestOptions, ingest_table, parse_column_map
from addressvlm.core.names import collision_report
from addressvlm.core.records import DataError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", required=True, help="source table: .csv, .json (list of objects) or .jsonl")
    parser.add_argument("--out", required=True, help="the locations.csv to write; its folder is the city root")
    parser.add_argument("--columns", default="",
                        help="FIELD=COLUMN,... for fields named differently in the source (fields: image, location_id, "
                             "lat, lon, street, district, heading, cross_street, split, address, utm_e, utm_n, utm_zone)")
    parser.add_argument("--coords", choices=COORDINATE_SOURCES, default="auto", help="where coordinates come from")
    parser.add_argument("--utm-zone", default="", help="UTM zone with band letter, e.g. 17T (Pittsburgh), 10S (SF)")
    parser.add_argument("--pitts-mat", help="Pitts250k/NetVLAD specification file (dbStruct) for --coords pitts-mat")
    parser.add_argument("--pitts-which", choices=("db", "q"), default="db",
                        help="database (db) or query (q) images of the .mat file")
    parser.add_argument("--image-root", help="folder the source image paths are relative to (default: the city root)")
    parser.add_argument("--group-tolerance-m", type=float, default=1.0,
                        help="without a location_id column, images this close with the same address share a location")
    parser.add_argument("--no-check-files", action="store_true", help="skip the check that every image file exists")
    args = parser.parse_args()
    try:
        options = IngestOptions(
            columns=parse_column_map(args.columns), coords=args.coords, utm_zone=args.utm_zone,
            pitts_mat=args.pitts_mat, pitts_which=args.pitts_which, image_root=args.image_root,
            group_tolerance_m=args.group_tolerance_m, check_files=not args.no_check_files, progress=True,
        )
        rows = ingest_table(args.table, args.out, options)
    except (DataError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    for line in collision_report(rows):
        print(f"warning: {line}", file=sys.stderr)
    locations = len({r.location_id for r in rows})
    views = Counter(Counter(r.location_id for r in rows).values())
    print(f"{args.out}: {len(rows)} images, {locations} locations, {len({r.street for r in rows})} streets, "
          f"{len({r.district for r in rows})} districts; views per location: "
          + ", ".join(f"{v} x{n}" for v, n in sorted(views.items())))


if __name__ == "__main__":
    main()
