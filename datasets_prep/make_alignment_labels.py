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

from addressvlm.graft import CORNERS, parse_splits
from addressvlm.labels import VARIANTS, make_labels
from addressvlm.records import DataError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--city", type=Path, required=True, help="city root (docs/design.md layout)")
    parser.add_argument("--grafted", type=Path, help="stage-1 images (default <city>/stage1/<variant>)")
    parser.add_argument("--out", type=Path, help="labels JSONL (default <city>/stage1/labels.jsonl)")
    parser.add_argument("--backend", choices=("rule", "openai", "hf"), default="rule",
                        help="rule (default): reasons from the street data, the CPU demo's stand-in, which the paper's "
                             "section 3.2 rejects; openai or hf: an LVLM writes them, as the paper does")
    parser.add_argument("--streets", type=Path, help="streets GeoJSON or .osm.pbf (default: the city's)")
    parser.add_argument("--crops", type=Path, help="crop folder with crops.jsonl (default <city>/stage1/crops)")
    parser.add_argument("--city-name", help="city name used in prompts (default: the city folder's name)")
    parser.add_argument("--variant", choices=VARIANTS, default="grafted")
    parser.add_argument("--corner", choices=CORNERS, default="upper_right")
    parser.add_argument("--no-map-labels", action="store_true", help="the crops carry no street names")
    parser.add_argument("--splits", default="train", type=parse_splits,
                        help="comma-separated splits, or 'all' (default train)")
    parser.add_argument("--limit", type=int, default=None, help="label at most this many images in this run")
    parser.add_argument("--model", help="openai: served model name; hf: model path or hub id")
    parser.add_argument("--base-url", help="openai: server URL, e.g. http://localhost:8000/v1")
    parser.add_argument("--api-key", help="openai: key (default $OPENAI_API_KEY, else 'EMPTY')")
    parser.add_argument("--concurrency", type=int, default=8, help="openai: requests in flight (8)")
    parser.add_argument("--max-retries", type=int, default=6, help="openai: retries on 429/5xx/timeouts (6)")
    parser.add_argument("--backoff", type=float, default=1.0, help="openai: first retry delay in seconds (1.0)")
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--max-tokens", type=int, default=400)
    parser.add_argument("--device", help="hf: torch device (default cuda if available)")
    parser.add_argument("--dtype", default="auto", help="hf: torch dtype name or auto")
    args = parser.parse_args()

    options = {}
    if args.backend == "openai":
        if not args.model:
            parser.error("--backend openai needs --model")
        options = dict(model=args.model, base_url=args.base_url, api_key=args.api_key, concurrency=args.concurrency,
                       max_retries=args.max_retries, backoff_s=args.backoff, temperature=args.temperature,
                       max_tokens=args.max_tokens)
    elif args.backend == "hf":
        if not args.model:
            parser.error("--backend hf needs --model")
        options = dict(model=args.model, device=args.device, dtype=args.dtype, max_new_tokens=args.max_tokens,
                       temperature=args.temperature)
    splits = args.splits
    try:
        report = make_labels(args.city, args.grafted or args.city / "stage1" / args.variant,
                             args.out or args.city / "stage1" / "labels.jsonl", args.backend, streets=args.streets,
                             crops_dir=args.crops, city_name=args.city_name, variant=args.variant,
                             corner=args.corner, map_labels=not args.no_map_labels, splits=splits,
                             backend_options=options, limit=args.limit)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    print(report.summary())


if __name__ == "__main__":
    main()
