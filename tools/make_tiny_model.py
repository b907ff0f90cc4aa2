#!/usr/bin/env python
"""Write a tiny random LLaVA-Phi3-mini-shaped model set (same layout as xtuner/llava-phi-3-mini-xtuner).

Example:
    python tools/make_tiny_model.py tiny_models/llava-phi-3-mini-xtuner
    python tools/make_tiny_model.py OUT --hidden 128 --layers 4 --image-size 112 --corpus data/helsinki/locations.csv
"""
import argparse
from pathlib import Path

from addressvlm.tiny import TinySize, make_tiny_llava


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="output folder (LLM + tokenizer at the root, visual_encoder/, projector/)")
    defaults = TinySize()
    for field, value in vars(defaults).items():
        parser.add_argument("--" + field.replace("_", "-"), type=type(value), default=value, help=f"default {value}")
    parser.add_argument("--corpus", action="append", default=[],
                        help="text file(s) whose lines join the tokenizer's training corpus (e.g. a city's names)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    size = TinySize(**{f: getattr(args, f) for f in vars(defaults)})
    corpus = [line for path in args.corpus for line in Path(path).read_text(encoding="utf-8").splitlines()]
    out = make_tiny_llava(args.out, size, corpus, seed=args.seed)
    print(f"tiny LLaVA-Phi3-mini written to {out}")


if __name__ == "__main__":
    main()
