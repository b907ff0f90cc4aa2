"""Check a recipe against the release you downloaded before training on a cluster (README, "Before the cluster").

    python tools/preflight.py recipes/stage1_pitts.py --weights ./models/llava-phi-3-mini-xtuner
    python tools/preflight.py recipes/minicpmv26/stage1_pitts.py --weights ./models/MiniCPM-V-2_6 --steps 2
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from addressvlm.checks.preflight import PreflightError, run_preflight
from addressvlm.core.records import DataError, refuse_output_over_inputs, writable_output, write_atomic


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Check a recipe against a downloaded release before training: the model builds (remote code "
                    "included), LoRA targets exist and get gradients, chat template and tokenizer agree, training "
                    "steps run on a sample of the recipe's data, and checkpoints hold what the next stage loads. "
                    "Exits 1 naming the first problem.")
    parser.add_argument("recipe", help="e.g. recipes/stage1_pitts.py")
    parser.add_argument("--weights", required=True,
                        help="the release folder the recipe's model paths should point at "
                             "(./models/llava-phi-3-mini-xtuner, ./models/MiniCPM-V-2_6)")
    parser.add_argument("--steps", type=int, default=1, help="training steps on the sample batch (default 1)")
    parser.add_argument("--samples", type=int, default=2, help="records of the recipe's data in the batch (default 2)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when present)")
    parser.add_argument("--json", help="write the figures (parameter counts, dtypes, token lengths, losses) here")
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="recipe overrides, as xtuner train takes them (after the relocation to --weights)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.samples < 1:
        parser.error("--steps and --samples must be at least 1")
    if not Path(args.recipe).is_file():
        raise SystemExit(f"error: recipe {args.recipe} not found")
    if args.json:  # checked now: a bad path must not cost the whole check
        try:
            writable_output(args.json, "--json")
            refuse_output_over_inputs(args.json, [("recipe", args.recipe), ("--weights", args.weights)], "--json")
        except DataError as exc:
            raise SystemExit(f"error: {exc}") from None
    try:
        figures = run_preflight(args.recipe, args.weights, args.steps, args.samples, args.device, args.cfg_options)
    except PreflightError as error:
        raise SystemExit(f"preflight FAILED: {error}")
    if args.json:
        write_atomic(args.json, json.dumps(figures, indent=2) + "\n")
    print(f"preflight passed: {args.recipe} with {args.weights}")


if __name__ == "__main__":
    main()
