#!/usr/bin/env python
"""Write a tiny random LLaVA-Phi3-mini-shaped model set (same layout as xtuner/llava-phi-3-mini-xtuner).

With --names, the LLM is then warmed up on reading that city's street and district names in the stage-2 question
forms, standing in for the language pre-training a real LVLM arrives with (addressvlm/standins/reading_warmup.py).

Example:
    python tools/make_tiny_model.py tiny_models/llava-phi-3-mini-xtuner
    python tools/make_tiny_model.py OUT --hidden 128 --layers 4 --image-size 112 --names data/helsinki/locations.csv
    python tools/make_tiny_model.py OUT --hidden 64 --heads 2     # head size 32, which vLLM's CPU attention takes
"""
import argparse
from pathlib import Path

from addressvlm.standins.reading_warmup import ReadingWarmup, names_from_locations
from addressvlm.standins.tiny import TinySize, make_tiny_llava


def add_fields(parser: argparse.ArgumentParser, defaults, prefix: str = "") -> None:
    for field, value in vars(defaults).items():
        parser.add_argument(f"--{prefix}{field.replace('_', '-')}", dest=prefix.replace("-", "_") + field,
                            type=type(value), default=value, help=f"default {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="output folder (LLM + tokenizer at the root, visual_encoder/, projector/)")
    add_fields(parser, TinySize())
    parser.add_argument("--corpus", action="append", default=[],
                        help="text file(s) whose lines join the tokenizer's training corpus (e.g. a city's questions)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--names", action="append", default=[], metavar="LOCATIONS_CSV",
                        help="city table(s) whose streets and districts the LLM is warmed up on reading")
    add_fields(parser, ReadingWarmup(), prefix="warmup-")
    args = parser.parse_args()
    size = TinySize(**{f: getattr(args, f) for f in vars(TinySize())})
    warmup = ReadingWarmup(**{f: getattr(args, "warmup_" + f) for f in vars(ReadingWarmup())})
    corpus = [line for path in args.corpus for line in Path(path).read_text(encoding="utf-8").splitlines()]
    names = names_from_locations(args.names) if args.names else None
    out = make_tiny_llava(args.out, size, corpus, seed=args.seed, names=names,
                          warmup=warmup if names and warmup.max_steps > 0 else None)
    print(f"tiny LLaVA-Phi3-mini written to {out}")


if __name__ == "__main__":
    main()
