"""GeoReasoner's stage-1 data (Table 2's GeoReasoner row): district-level reasoning about each street view.

Each training street view, alone, goes to an LVLM with the prompt of the paper's Fig. B1: the question plus a hint
naming its district and city, asking it to confirm the district and argue from the district's architecture and
streetscape. The answer becomes the gpt turn of a record whose human turn is the question without the hint:

    # any OpenAI-compatible server (vLLM, lmdeploy, SGLang, Ollama); the paper used LLaVA-v1.6-Mistral-7B:
    python datasets_prep/make_reasoning_labels.py --city data/pitts --backend openai \
        --base-url http://localhost:8000/v1 --model llava-hf/llava-v1.6-mistral-7b-hf --concurrency 16
    # no model (deterministic district-level reasons from the street data; not the paper's labels):
    python datasets_prep/make_reasoning_labels.py --city data/pitts --backend rule
Writes <out>/labels.jsonl (appended and flushed one by one; a rerun skips what is done; answers that do not name the
true district are rejected and kept in labels.rejected.jsonl) and then <out>/train.json, the stage-1 LLaVA JSON
that recipes/ablations/table2_georeasoner_stage1.py trains on (image paths relative to the city root). A street
view that is missing or does not decode is skipped and reported with its line in locations.csv, and the run exits 1
(the JSON holds the others). docs/stage1.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from addressvlm.data.label_backends import BackendUnavailable, add_label_arguments, backend_options
from addressvlm.data.labels import GeoReasonerTask, label_city
from addressvlm.data.stage1_json import build_stage1_json
from addressvlm.core.records import DataError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--city", type=Path, required=True, help="city root (docs/design.md layout)")
    parser.add_argument("--out-dir", type=Path, help="labels and train.json go here (default <city>/georeasoner)")
    add_label_arguments(parser)
    args = parser.parse_args()
    options = backend_options(parser, args)
    out_dir = args.out_dir or args.city / "georeasoner"
    task = GeoReasonerTask(args.city)
    try:
        report = label_city(task, args.city, out_dir / "labels.jsonl", args.backend, streets=args.streets,
                            city_name=args.city_name, splits=args.splits, backend_options=options, limit=args.limit)
        print(report.summary())
        built = build_stage1_json(args.city, out_dir / "labels.jsonl", out_dir / "train.json", variant=task.variant,
                                  splits=args.splits)
    except (DataError, BackendUnavailable) as exc:
        sys.exit(f"error: {exc}")
    print(built.summary())
    print(out_dir / "train.json")
    if report.missing:
        sys.exit(1)


if __name__ == "__main__":
    main()
