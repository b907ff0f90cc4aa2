#!/usr/bin/env python
"""Requests per second of an OpenAI-compatible endpoint with 1 and 8 concurrent clients (docs/serving.md).

    python tools/serve.py --demo &
    python benchmarks/bench_serve.py --base-url http://127.0.0.1:8000/v1 --model addressvlm \
        --image data/helsinki/images/<a street view>.jpg
"""
import argparse
from pathlib import Path

from addressvlm.checks.endpoint_check import client_for, requests_per_second
from addressvlm.data.label_backends import data_url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--image", required=True, help="a street view sent with every request")
    parser.add_argument("--question", default="Identify the street in this image, please.")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests", type=int, default=32, help="requests per measurement")
    parser.add_argument("--max-tokens", type=int, default=8)
    args = parser.parse_args()
    client, image = client_for(args.base_url), data_url(Path(args.image))
    requests_per_second(client, args.model, image, args.question, 1, 2, args.max_tokens)  # warm-up
    for clients in args.clients:
        rate = requests_per_second(client, args.model, image, args.question, clients, args.requests, args.max_tokens)
        print(f"{clients} client(s): {rate:.2f} requests/s")


if __name__ == "__main__":
    main()
