"""Parameters by part and per-GPU memory of a recipe at the real releases' sizes, built on the meta device.

    python tools/estimate_memory.py recipes/stage1_pitts.py --json m.json
    python tools/estimate_memory.py recipes/minicpmv26/stage1_pitts.py --gpus 4
    python tools/estimate_memory.py --readme README.md      # regenerate the README's memory section
"""
from __future__ import annotations

import json
from pathlib import Path

from addressvlm.checks.memory import checked_readme, estimate, markdown_table, readme_block, replace_readme_block
from addressvlm.core.records import DataError, refuse_output_over_inputs, writable_output, write_atomic
from addressvlm.training.recipes import RecipeError, read_recipe


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        description="Trainable and frozen parameters by part, and per-GPU memory for plain DDP, ZeRO-2, ZeRO-3 and "
                    "QLoRA, of a recipe at the real releases' sizes (built on the meta device: no weights needed).")
    parser.add_argument("recipe", nargs="?", help="e.g. recipes/stage1_pitts.py")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs the DDP / ZeRO settings spread over (default 8)")
    parser.add_argument("--json", help="write the figures here (keys trainable_params, frozen_params, parts, memory)")
    parser.add_argument("--readme", help="rewrite the generated memory section of this README (both backbones)")
    args = parser.parse_args(argv)
    if args.gpus < 1:
        parser.error("--gpus must be at least 1")
    try:  # the outputs first: a bad path must not cost the estimate
        readme_text = checked_readme(args.readme) if args.readme else None
        if args.json:
            writable_output(args.json, "--json")
            refuse_output_over_inputs(args.json, [("recipe", args.recipe)], "--json")
    except DataError as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.readme:
        readme = Path(args.readme)
        write_atomic(readme, replace_readme_block(readme_text, readme_block(readme.resolve().parent)))
        print(f"rewrote the memory section of {readme}")
    if not args.recipe:
        if not args.readme:
            parser.error("give a recipe, or --readme")
        return

    try:
        cfg = read_recipe(args.recipe)
    except RecipeError as error:
        raise SystemExit(f"error: {error}") from None
    result = estimate(cfg, args.gpus)
    print(markdown_table(args.recipe, result))
    if args.json:
        write_atomic(args.json, json.dumps(result, indent=2) + "\n")
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
