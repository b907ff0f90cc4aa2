#!/usr/bin/env python
"""AddressVLM end to end on the embedded Helsinki demo city, on CPU (what `make demo` runs).

Builds the city into data/helsinki, trains through recipes/stage{1,2}_helsinki.py into work_dirs/demo_helsinki,
and writes answers, metrics, pictures and report.md into --out. Finished steps are kept on a rerun.
"""
import argparse
import sys
from dataclasses import replace

from addressvlm.demo.pipeline import MISSED_TARGETS_EXIT, read_targets, run_demo
from addressvlm.runs.engine import DemoSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_output", help="answers, metrics, pictures, report.md")
    parser.add_argument("--city", default="data/helsinki", help="where the demo city is built (the city root)")
    parser.add_argument("--work", default="work_dirs/demo_helsinki",
                        help="parent of the demo's training work dirs (make clean-demo removes it)")
    parser.add_argument("--seed", type=int, default=DemoSettings().seed,
                        help="seed of every seeded step: the city's locations, the splits, the tiny model's vision "
                             "tower and projector, training and sampling (a new seed needs its own --out, --city and "
                             "--work); the LLM is the shipped one, the same for every seed, unless --warm-up-here")
    parser.add_argument("--warm-up-here", action="store_true",
                        help="make the tiny LLM here and warm it up with --seed (8-15 more minutes on 2 cores) instead "
                             "of starting from the shipped addressvlm/demo/pretrained_llm")
    parser.add_argument("--quick", action="store_true",
                        help="a few steps of everything (checks the pipeline; too short to meet the learning targets, "
                             "so missing them does not fail the run)")
    args = parser.parse_args()
    settings = replace(DemoSettings.quick() if args.quick else DemoSettings(), seed=args.seed)
    if args.warm_up_here:
        settings = replace(settings, pretrained_llm=False)
    run_demo(args.out, args.city, args.work, settings)
    if not args.quick and not all(target["met"] for target in read_targets(args.out)):
        sys.exit(MISSED_TARGETS_EXIT)


if __name__ == "__main__":
    main()
