"""Alignment reasons for the stage-1 images: a hint prompt with the true address, answered by an LVLM (or rules).

    # deterministic reasons from the street data, no model:
    python datasets_prep/make_alignment_labels.py --city data/pitts --backend rule
    # any OpenAI-compatible server (vLLM, lmdeploy, SGLang, Ollama), 16 requests in flight:
    python datasets_prep/make_alignment_labels.py --city data/pitts --backend openai \
        --base-url http://localhost:8000/v1 --model llava-hf/llava-v1.6-mistral-7b-hf --concurrency 16
    # a local transformers LVLM (the paper used LLaVA-v1.6-Mistral-7B):
    python datasets_prep/make_alignment_labels.py --city data/pitts --backend hf --model llava-hf/llava-v1.6-mistral-7b-hf
Labels are appended and flushed one by one to <city>/stage1/labels.jsonl; a rerun skips what is done. Answers
that do not name the true street are rejected, counted, and kept in labels.rejected.jsonl for inspection.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from addressvlm.data.graft import CORNERS
from addressvlm.data.graft import VARIANTS
from addressvlm.data.label_backends import BackendUnavailable, add_label_arguments, backend_options
from addressvlm.data.labels import make_labels
from addressvlm.core.records import DataError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--city", type=Path, required=True, help="city root (docs/design.md layout)")
    parser.add_argument("--grafted", type=Path, help="stage-1 images (default <city>/stage1/<variant>)")
    parser.add_argument("--out", type=Path, help="labels JSONL (default <city>/stage1/labels.jsonl)")
    parser.add_argument("--crops", type=Path, help="crop folder with crops.jsonl (default <city>/stage1/crops)")
    parser.add_argument("--variant", choices=VARIANTS, default="grafted")
    parser.add_argument("--corner", choices=CORNERS, default="upper_right")
    parser.add_argument("--no-map-labels", action="store_true", help="the crops carry no street names")
    add_label_arguments(parser)
    args = parser.parse_args()
    options = backend_options(parser, args)
    try:
        report = make_labels(args.city, args.grafted or args.city / "stage1" / args.variant,
                             args.out or args.city / "stage1" / "labels.jsonl", args.backend, streets=args.streets,
                             crops_dir=args.crops, city_name=args.city_name, variant=args.variant,
                             corner=args.corner, map_labels=not args.no_map_labels, splits=args.splits,
                             backend_options=options, limit=args.limit)
    except (DataError, BackendUnavailable) as exc:
        sys.exit(f"error: {exc}")
    print(report.summary())


if __name__ == "__main__":
    main()
