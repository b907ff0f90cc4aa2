"""Fig. 5: which city streets a model names for a street view, drawn on the city's road map.

One command samples and draws (Appendix D.1): --config and --checkpoint name the model *after* cross-view alignment
tuning (the stage-1 model), which answers the free-form street question --samples times at --temperature; the
untuned release that recipe starts from is the model *before* it, and chooses among the after-model's top four
streets, shuffled per image (seeded). Samples go to OUT/after_alignment.jsonl and OUT/before_alignment.jsonl
(a rerun skips images done), then the maps are drawn with both panels:

    python eval/street_distribution.py --config recipes/stage1_pitts.py \
        --checkpoint work_dirs/llava_phi3_mini/stage1_pitts --streets data/pitts/streets.geojson \
        --locations data/pitts/locations.csv --out eval_results/fig5 --num-images 2

Drawing only: one or more JSONL files of sampled answers, one record per test image,
`{"image", "answers": [100 replies], "options"?: {"A": street, ...}}` (written by
addressvlm.answering.street_distribution.sample_street_answers; records with "options" hold multiple-choice replies,
Appendix D.1). Each file is a panel, e.g. the model after and before cross-view alignment tuning. Output per image:
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
from addressvlm.answering.model_arguments import add_model_arguments
from addressvlm.core.records import DataError, read_locations, write_atomic
from addressvlm.answering.street_distribution import (SAMPLES_PER_IMAGE, SAMPLING_TEMPERATURE, count_streets,
                                                      draw_street_distribution, pick_test_images, read_sampled_answers)

AFTER_LABEL = "after alignment (stage-1 model, free-form)"
BEFORE_LABEL = "before alignment (zero-shot release, multiple choice)"


def _panel_arg(text: str) -> tuple[str, Path]:
    """``LABEL=PATH`` or a plain ``PATH`` (an existing file whose name holds "=" stays a plain path)."""
    label, sep, path = text.partition("=")
    if not sep or not label or Path(text).is_file():
        return Path(text).stem, Path(text)
    return label, Path(path)


def png_name(image: str) -> str:
    """A flat file name for an image path of the city table (``000/12_yaw0.jpg`` -> ``000__12_yaw0.png``)."""
    return Path(image).with_suffix("").as_posix().replace("/", "__") + ".png"


def _sample(args: argparse.Namespace, city_streets: list[str]) -> list[tuple[str, Path]]:
    """Both models' samples for ``args.images``: the checkpoint after alignment, the recipe's release before it."""
    from addressvlm.training.checkpoints import CheckpointError
    from addressvlm.answering.loading import load_model_from_args
    from addressvlm.training.stage_chain import StageChainError
    from addressvlm.answering.street_distribution import model_sampler, sample_before_and_after

    folder = args.image_folder or Path(args.locations).resolve().parent
    try:
        tuned = load_model_from_args(args)
        untuned = load_model_from_args(argparse.Namespace(**{**vars(args), "checkpoint": None, "zero_shot": True}))
    except (CheckpointError, StageChainError) as exc:
        raise SystemExit(f"error: {exc}") from None
    after, before = sample_before_and_after(
        args.images, model_sampler(tuned, folder, args.temperature, args.seed, args.max_new_tokens),
        model_sampler(untuned, folder, args.temperature, args.seed, args.max_new_tokens), city_streets, args.out,
        args.samples, args.seed)
    return [(AFTER_LABEL, after), (BEFORE_LABEL, before)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", action="append", type=_panel_arg, metavar="[LABEL=]PATH",
                        help="draw only: sampled answers JSONL; repeat for side-by-side panels (label defaults to "
                             "the file name)")
    parser.add_argument("--streets", required=True, help="the city's streets.geojson (or .osm.pbf)")
    parser.add_argument("--locations", required=True, help="the city's locations.csv (true location of each image)")
    parser.add_argument("--out", required=True, help="output folder for the PNGs and street_counts.json")
    parser.add_argument("--images", nargs="+", help="only these images (as locations.csv names them)")
    parser.add_argument("--top", type=int, default=3, choices=(1, 2, 3), help="streets to highlight (default 3)")
    sampling = parser.add_argument_group("sampling (with --config and --checkpoint, the after-alignment model)")
    sampling.add_argument("--num-images", type=int, default=2,
                          help="without --images: this many test views spread over the test split (default 2)")
    sampling.add_argument("--samples", type=int, default=SAMPLES_PER_IMAGE, help="answers per image (default 100)")
    sampling.add_argument("--temperature", type=float, default=SAMPLING_TEMPERATURE, help="default 0.8")
    sampling.add_argument("--seed", type=int, default=0, help="sampling and option-order seed")
    sampling.add_argument("--max-new-tokens", type=int, default=32, help="longest answer in tokens (default 32, as "
                                                                          "eval/infer.py)")
    sampling.add_argument("--image-folder", help="folder the images are relative to (default: the city root, the "
                                                 "folder of --locations)")
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    if bool(args.answers) == bool(args.config):
        parser.error("give --answers files to draw, or --config with --checkpoint to sample and draw")
    if args.config and not args.checkpoint:
        parser.error("sampling needs --checkpoint (the after-alignment model); the before model is the recipe's "
                     "release")
    if args.samples < 1 or args.temperature <= 0:
        parser.error("--samples must be >= 1 and --temperature > 0")

    try:
        street_map = read_street_map(args.streets)
        rows = read_locations(args.locations)
        locations = {row.image: row for row in rows}
        if args.config:
            args.images = args.images or [r.image for r in pick_test_images(rows, args.num_images)]
            unknown = [image for image in args.images if image not in locations]
            if unknown:
                raise DataError(args.locations, None, f"image {unknown[0]!r} is not in the city table")
            args.answers = _sample(args, sorted({s.name for s in street_map.streets}))
        panels = [(label, path, {rec["image"]: rec for rec in read_sampled_answers(path)})
                  for label, path in args.answers]
        for label, path, records in panels:
            unknown = [image for image in records if image not in locations]
            if unknown:
                raise DataError(path, None, f"image {unknown[0]!r} is not in {args.locations}")
    except (DataError, FileNotFoundError, ValueError) as exc:
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
