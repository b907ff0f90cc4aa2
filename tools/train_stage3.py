#!/usr/bin/env python
"""Stage 3: GRPO (TRL's GRPOTrainer, in .venv-modern) on a stage-2 model that tools/export_hf.py exported, with the
street-level reward; then the trained model as a folder eval/infer.py --hf answers with (README, "Stage 3: GRPO").

    python tools/train_stage3.py --config recipes/stage3/pitts.yaml                      # one GPU (or the CPU)
    python tools/train_stage3.py --config recipes/stage3/pitts.yaml --num-processes 8    # eight GPUs of one machine
    python eval/infer.py --hf work_dirs/stage3/pitts/hf --questions data/pitts/vqa/test_questions.jsonl \
        --out eval_results/stage3/pitts/predictions.jsonl
Three steps: the prompts (the training split's questions in the test format, images padded to a square) into
<output_dir>/prompts/; `accelerate launch -m addressvlm.runs.grpo` from .venv-modern; the merged model
(<output_dir>/merged/, transformers 5's layout) as <output_dir>/hf/, which transformers 4.48 loads.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from addressvlm.runs.grpo import REWARD_CURVE
from addressvlm.runs.stage3 import convert, draw_reward_curve, launch, prepare_prompts, read_recipe


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Stage 3: GRPO (TRL, in .venv-modern) on a stage-2 model exported by tools/export_hf.py, then the "
                    "result as <output_dir>/hf for eval/infer.py --hf (README, 'Stage 3: GRPO').")
    parser.add_argument("--config", required=True, help="a stage-3 recipe: recipes/stage3/*.yaml (TRL's fields)")
    parser.add_argument("--num-processes", type=int, default=1, help="processes (GPUs) on this machine (default 1)")
    parser.add_argument("--accelerate-config", metavar="FILE",
                        help="an accelerate config file (several machines: `accelerate config` writes one per "
                             "machine); replaces --num-processes")
    steps = parser.add_mutually_exclusive_group()
    steps.add_argument("--prepare-only", action="store_true",
                       help="write the prompts and stop (to launch the trainer yourself: README, 'Stage 3: GRPO')")
    steps.add_argument("--convert-only", action="store_true",
                       help="only write <output_dir>/hf from <output_dir>/merged (after a training launched "
                            "elsewhere)")
    args = parser.parse_args(argv)
    if args.num_processes < 1:
        parser.error("--num-processes must be at least 1")
    from addressvlm.core.records import DataError

    config = Path(args.config)
    try:
        recipe = read_recipe(config)
        if not args.convert_only:
            print(f"{prepare_prompts(recipe)} prompts in {Path(recipe['output_dir'])}", flush=True)
            if args.prepare_only:
                return
            status = launch(config, args.num_processes, args.accelerate_config)
            if status:
                raise SystemExit(f"error: the GRPO trainer stopped (exit {status}); its output is above")
        print(f"stage 3 -> {convert(recipe)} (eval/infer.py --hf)")
        curve = Path(recipe["output_dir"]) / REWARD_CURVE
        if curve.is_file():  # written where this machine trained
            print(f"reward curve -> {draw_reward_curve(curve, curve.with_suffix('.png'))}")
    except (DataError, FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
