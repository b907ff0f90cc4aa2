#!/usr/bin/env python
"""AddressVLM end to end on the embedded Helsinki demo city, on CPU (what `make demo` runs).

Builds the city into data/helsinki, trains through recipes/stage{1,2}_helsinki.py into work_dirs/demo_helsinki,
and writes answers, metrics, pictures and report.md into --out. Finished steps are kept on a rerun.
"""
import argparse

from addressvlm.demo.pipeline import DemoSettings, run_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_output", help="answers, metrics, pictures, report.md")
    parser.add_argument("--city", default="data/helsinki", help="where the demo city is built (the city root)")
    parser.add_argument("--work", default="work_dirs/demo_helsinki",
                        help="parent of the demo's training work dirs (make clean-demo removes it)")
    parser.add_argument("--quick", action="store_true", help="a few steps of everything (checks the pipeline)")
    args = parser.parse_args()
    run_demo(args.out, args.city, args.work, DemoSettings.quick() if args.quick else DemoSettings())


if __name__ == "__main__":
    main()
