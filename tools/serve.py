#!/usr/bin/env python
"""Serve a trained model (docs/serving.md): an OpenAI-compatible /v1/chat/completions, /v1/locate and a page with the
city map at http://127.0.0.1:8000/.

    python tools/serve.py --demo                                   # after `make demo` (what `make serve` runs)
    python tools/serve.py --config recipes/stage2_pitts.py --checkpoint work_dirs/llava_phi3_mini/stage2_pitts \
        --city data/pitts
    python tools/serve.py --hf exports/stage2_pitts --city data/pitts --host 0.0.0.0 --port 8000
    python tools/serve.py --config recipes/minicpmv26/stage2_pitts.py --checkpoint work_dirs/minicpmv26/stage2_pitts \
        --city data/pitts
"""
from __future__ import annotations

import warnings
from typing import Sequence

from PIL import Image

from addressvlm.answering.model_arguments import add_model_arguments
from addressvlm.serving.server import CHECKOUT, DEFAULT_MAX_IMAGE_MEGAPIXELS, create_app, served_from_args


def build_parser():
    import argparse

    parser = argparse.ArgumentParser(
        description="Serve a trained model (LLaVA-Phi3-mini or MiniCPM-V 2.6, loaded as eval/infer.py loads it): an "
                    "OpenAI-compatible POST /v1/chat/completions, POST /v1/locate (district, "
                    "street, the city's top-5 names) and a page at / with the city map (docs/serving.md).")
    parser.add_argument("--demo", action="store_true",
                        help="the AddressVLM model `make demo` trained, on its city (data/helsinki of this checkout)")
    parser.add_argument("--demo-root", default=str(CHECKOUT), help="the checkout `make demo` ran in (default: this one)")
    add_model_arguments(parser)
    parser.add_argument("--city", help="the city root the model was trained on (locations.csv, streets.geojson, images)")
    parser.add_argument("--streets", help="the city's streets, when not streets.geojson or one *.osm.pbf in --city")
    parser.add_argument("--host", default="127.0.0.1",
                        help="default 127.0.0.1 (this machine only); 0.0.0.0 for all. Requests must name it (or "
                             "localhost) with the port in their Host header (against DNS rebinding); 0.0.0.0 or :: "
                             "takes any Host")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", default="addressvlm", help="the model name clients give (default addressvlm)")
    parser.add_argument("--allowed-folder",
                        help="image paths in requests must lie inside it (default: the city root); 'none' refuses paths")
    parser.add_argument("--max-upload-mb", type=float, default=20.0,
                        help="largest request body, and image file named by path (default 20 MB)")
    parser.add_argument("--max-image-megapixels", type=float, default=DEFAULT_MAX_IMAGE_MEGAPIXELS,
                        help=f"larger images are refused (413) from their header, before decoding (default "
                             f"{DEFAULT_MAX_IMAGE_MEGAPIXELS:g}: a 6000x4000 photo)")
    parser.add_argument("--max-tokens-limit", type=int, default=512,
                        help="largest max_tokens a request may ask (default 512; the prompt and max_tokens must "
                             "also fit the model's context)")
    parser.add_argument("--max-batch-rows", type=int, default=32,
                        help="greedy questions of concurrent requests decoded together (default 32; a MiniCPM-V "
                             "model answers one question at a time)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    model, city, allowed = served_from_args(args)
    app = create_app(model, city, args.served_model_name, allowed, args.max_upload_mb, args.max_tokens_limit,
                     args.max_batch_rows, args.max_image_megapixels, args.host, args.port)
    # Pillow's own bound (it raises at twice this) backs up decode_image's, which refuses from the header first
    # and so makes Pillow's warning below the bound noise.
    Image.MAX_IMAGE_PIXELS = int(args.max_image_megapixels * 1e6)
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    import uvicorn

    print(f"serving {args.served_model_name} on http://{args.host}:{args.port}/ ({len(city.gazetteer.streets)} "
          f"streets, {len(city.gazetteer.districts)} districts; image paths inside {allowed or 'nothing'})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
