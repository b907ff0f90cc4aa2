"""Fig. 5: which city streets a model names for a street view, drawn on the city's road map.

Input: one or more JSONL files of sampled answers, one record per test image,
`{"image", "answers": [100 replies], "options"?: {"A": street, ...}}` (written by
addressvlm.street_distribution.sample_street_answers; records with "options" hold multiple-choice replies, Appendix D.1).
Each file is a panel, e.g. the model after and before cross-view alignment tuning. Output per image:
OUT/<image>.png, and OUT/street_counts.json with every panel's counts.

    python eval/street_distribution.py --streets data/pitts/streets.geojson \
        --locations data/pitts/locations.csv --out eval_results/fig5 \
        --answers "after alignment=eval_results/stage2/street_samples.jsonl" \
        --answers "before alignment=eval_results/zero_shot/street_samples.jsonl"
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from addressvlm.geo.streets import read_street_map
from addressvlm.records import DataError, read_locations, write_atomic
from addressvlm.street_distribution import count_streets, draw_street_distribution, read_sampled_answers


def _panel_arg(text: str) -> tuple[str, Path]:
    """``LABEL=PATH`` or a plain ``PATH`` (an existing file whose name holds "=" stays a plain path)."""
    label, sep, path = text.partition("=")
    if not sep or not label or Path(text).is_file():
        return Path(text).stem, Path(text)
    return label, Path(path)


def png_name(image: str) -> str:
    """A flat file name for an image path of the city table (``000/12_yaw0.jpg`` -> ``000__12_yaw0.png``)."""
    return Path(image).with_suffix("").as_posix().replace("/", "__") + ".png"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", action="append", required=True, type=_panel_arg, metavar="[LABEL=]PATH",
                        help="sampled answers JSONL; repeat for side-by-side panels (label defaults to the file name)")
    parser.add_argument("--streets", required=True, help="the city's streets.geojson (or .osm.pbf)")
    parser.add_argument("--locations", required=True, help="the city's locations.csv (true location of each image)")
    parser.add_argument("--out", required=True, help="output folder for the PNGs and street_counts.json")
    parser.add_argument("--images", nargs="+", help="only these images (as locations.csv names them)")
    parser.add_argument("--top", type=int, default=3, choices=(1, 2, 3), help="streets to highlight (default 3)")
    args = parser.parse_args(argv)

    try:
        street_map = read_street_map(args.streets)
        locations = {row.image: row for row in read_locations(args.locations)}
        panels = [(label, path, {rec["image"]: rec for rec in read_sampled_answers(path)})
                  for label, path in args.answers]
        for label, path, records in panels:
            unknown = [image for image in records if image not in locations]
            if unknown:
                raise DataError(path, None, f"image {unknown[0]!r} is not in {args.locations}")
    except (DataError, FileNotFoundError) as exc:
        sys.exit(f"error: {exc}")

    images = args.images or list(dict.fromkeys(image for _, _, records in panels for image in records))
    city_streets = sorted({s.name for s in street_map.streets})
    out, report = Path(args.out), {}
    for image in images:
        if image not in locations:
            sys.exit(f"error: image {image!r} is not in {args.locations}")
        truth = locations[image]
        counted = [(label, count_streets(records[image]["answers"], city_streets, records[image].get("options")))
                   for label, _, records in panels if image in records]
        if not counted:
            sys.exit(f"error: no answers for image {image!r} in any --answers file")
        draw_street_distribution(street_map, counted, truth.lat, truth.lon, out / png_name(image), top_k=args.top,
                                 title=f"{image}: true address {truth.street}, {truth.district}")
        report[image] = {"png": png_name(image), "street": truth.street, "district": truth.district,
                         "lat": truth.lat, "lon": truth.lon,
                         "panels": {label: counts.as_dict() for label, counts in counted}}
        print(f"{image}: " + "; ".join(f"{label}: " + ", ".join(f"{name} {n}" for name, n in counts.top(args.top))
                                        for label, counts in counted))
    write_atomic(out / "street_counts.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {len(report)} map(s) and street_counts.json to {out}")


if __name__ == "__main__":
    main()
