#!/usr/bin/env python
"""Write a tiny random MiniCPM-V-2_6-shaped folder in the release's layout: remote code (config.json auto_map ->
modeling_minicpmv.py; preprocessor_config.json auto_map -> image_processing_minicpmv.py), weights, a locally trained
Qwen2-style tokenizer and the generation config. The MiniCPM-V recipes take it as their model_root on a CPU, and vLLM
serves it (see docs/minicpmv.md). --hidden must be a multiple of 128 (the resampler's head width).

Example:
    python tools/make_tiny_minicpmv.py tiny_models/MiniCPM-V-2_6
    python tools/make_tiny_minicpmv.py OUT --hidden 128 --scale-resolution 56 --corpus data/pitts/streets.txt
"""
import argparse
import inspect
from pathlib import Path

from addressvlm.standins.tiny_minicpmv import write_tiny_minicpmv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="output folder (named like the release, e.g. .../MiniCPM-V-2_6)")
    sizes = {name: p.default for name, p in inspect.signature(write_tiny_minicpmv).parameters.items()
             if p.kind is inspect.Parameter.KEYWORD_ONLY}
    for name, default in sizes.items():
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=default, help=f"default {default}")
    parser.add_argument("--corpus", action="append", default=[],
                        help="text file(s) whose lines join the tokenizer's training corpus (e.g. a city's names)")
    args = parser.parse_args()
    corpus = [line for path in args.corpus for line in Path(path).read_text(encoding="utf-8").splitlines()]
    try:
        out = write_tiny_minicpmv(args.out, corpus, **{name: getattr(args, name) for name in sizes})
    except ValueError as exc:
        parser.error(str(exc))
    print(f"tiny MiniCPM-V 2.6 stand-in written to {out}")


if __name__ == "__main__":
    main()
