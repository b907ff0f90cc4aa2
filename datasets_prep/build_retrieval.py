"""Cross-view retrieval data (docs/retrieval.md): a satellite tile per location and the queries that retrieve it.

A city (tiles cut from its satellite raster, street views as image queries, a scene text per street view):
    python datasets_prep/build_retrieval.py --city data/helsinki                  # rule texts (a stand-in)
    python datasets_prep/build_retrieval.py --city data/pitts --backend openai \\
        --base-url http://localhost:8000/v1 --model Qwen/Qwen2-VL-7B-Instruct --concurrency 16
The published datasets, as downloaded, into the same two files under <root>/retrieval/:
    python datasets_prep/build_retrieval.py --cvg-text /data/CVG-Text --version NewYork --version NewYork-photos
    python datasets_prep/build_retrieval.py --geotext1652 /data/GeoText1652_Dataset
Writes <root>/retrieval/gallery.jsonl and queries.jsonl (a city also tiles/ and scene_texts.jsonl). Resumable:
tiles and texts already made are kept, a rerun asks only for what is missing.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from addressvlm.data.label_backends import BackendUnavailable, add_backend_arguments, backend_options
from addressvlm.core.records import DataError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--city", type=Path, help="city root (docs/design.md layout) with split locations.csv")
    source.add_argument("--cvg-text", type=Path, metavar="ROOT",
                        help="CVG-Text as published: ROOT/CVG-text/<version>/{train,test}.json, "
                             "ROOT/<version>-satellite/, ROOT/<version>-ground/")
    source.add_argument("--geotext1652", type=Path, metavar="ROOT",
                        help="GeoText-1652 as published: ROOT/train.json, ROOT/test_951_version.json, images")
    city = parser.add_argument_group("city")
    city.add_argument("--size-m", type=float, default=200.0, help="tile side in ground metres (200)")
    city.add_argument("--pixels", type=int, default=336, help="tile side in pixels (336)")
    city.add_argument("--street-labels", action="store_true",
                      help="draw street names on the tiles as stage 1 does (a text naming a street is then "
                           "matched by reading; off by default)")
    city.add_argument("--attribution", default=None, help="text written small in each tile's lower-left")
    city.add_argument("--raster", type=Path, help="GeoTIFF or XYZ tile folder (default: the city's)")
    city.add_argument("--streets", type=Path, help="streets GeoJSON or .osm.pbf (default: the city's)")
    city.add_argument("--workers", type=int, default=None, help="tile-cutting processes (default: usable cores)")
    city.add_argument("--no-texts", action="store_true", help="street-view queries only")
    city.add_argument("--city-name", help="city name given to the backend (default: the city folder's name)")
    city.add_argument("--limit", type=int, default=None, help="ask for at most this many texts in this run")
    add_backend_arguments(parser.add_argument_group("scene texts"),
                          "scene texts, one per street view: rule (the offline stand-in: the city's "
                          "view_facts.jsonl where a renderer wrote one, and OpenStreetMap cues), openai or hf (an "
                          "LVLM describing the street view)", max_tokens=300)
    public = parser.add_argument_group("CVG-Text and GeoText-1652")
    public.add_argument("--version", action="append", dest="versions", metavar="NAME",
                        help="CVG-Text: a city version (NewYork, NewYork-photos, Brisbane, Tokyo, ...); repeat it "
                             "for several (default: every folder under ROOT/CVG-text)")
    public.add_argument("--test-json", default="test_951_version.json",
                        help="GeoText-1652: the test annotation file (test_951_version.json; or test_24G_version.json)")
    return parser


def main(argv=None) -> None:
    from addressvlm.data.retrieval_data import build_city_retrieval, ingest_cvg_text, ingest_geotext1652

    parser = build_parser()
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        if args.city:
            report = build_city_retrieval(
                args.city, size_m=args.size_m, pixels=args.pixels, labels=args.street_labels,
                text_backend=args.backend, backend_options=backend_options(parser, args), texts=not args.no_texts,
                city_name=args.city_name, raster=args.raster, streets=args.streets, attribution=args.attribution,
                workers=args.workers, limit=args.limit)
        elif args.cvg_text:
            report = ingest_cvg_text(args.cvg_text, args.versions)
        else:
            report = ingest_geotext1652(args.geotext1652, test_json=args.test_json)
    except (DataError, ValueError, BackendUnavailable) as exc:
        sys.exit(f"error: {exc}")
    print(report.summary())
    print(f"done in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
