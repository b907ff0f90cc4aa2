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
import subprocess
from pathlib import Path
from typing import Sequence

# The recipe's keys this script reads besides handing the recipe to TRL.
NEEDED_KEYS = ("model_name_or_path", "output_dir", "city", "streets")


def read_recipe(path: Path) -> dict:
    import yaml

    try:
        recipe = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: a recipe is a mapping of TRL's fields (recipes/stage3/)")
    missing = [key for key in NEEDED_KEYS if key not in recipe]
    if missing:
        raise ValueError(f"{path}: no {', '.join(missing)}")
    return recipe


def prepare_prompts(recipe: dict) -> int:
    """The training split's questions of the recipe's types and their images, padded as stage 2 trained, into
    <output_dir>/prompts/; returns how many questions."""
    from PIL import Image
    from xtuner.dataset.utils import expand2square

    from addressvlm.answering.reward import check_reward_mode
    from addressvlm.core.records import write_questions
    from addressvlm.data.vqa import train_split_questions
    from addressvlm.runs.grpo import PROMPTS_FOLDER, QUESTION_TYPES, prompt_image_path
    from addressvlm.training.image_prompts import export_pad_colour

    check_reward_mode(recipe.get("reward_mode", "hierarchical_distance"))
    types = recipe.get("question_types", list(QUESTION_TYPES))
    unknown = sorted(set(types) - set(QUESTION_TYPES))
    if unknown:
        raise ValueError(f"question_types {unknown}: choose from {', '.join(QUESTION_TYPES)}")
    city, model = Path(recipe["city"]), Path(recipe["model_name_or_path"])
    if not (model / "config.json").is_file():
        raise FileNotFoundError(f"model_name_or_path {model}: no config.json (export stage 2 with tools/export_hf.py)")
    questions = [q for q in train_split_questions(city / "locations.csv", city / "vqa") if q["qtype"] in types]
    if not questions:
        raise ValueError(f"{city}: no training-split question of the types {', '.join(types)}")
    prompts = Path(recipe["output_dir"]) / PROMPTS_FOLDER
    colour = export_pad_colour(model)
    for image in sorted({q["image"] for q in questions}):
        picture = Image.open(city / image).convert("RGB")
        target = prompt_image_path(prompts, image)
        target.parent.mkdir(parents=True, exist_ok=True)
        (expand2square(picture, colour) if colour else picture).save(target)
    write_questions(prompts / "questions.jsonl", questions)
    return len(questions)


def launch(config: Path, num_processes: int, accelerate_config: str | None) -> int:
    """``accelerate launch`` of the trainer from .venv-modern; its exit status."""
    from addressvlm.checks.vllm_check import MODERN_PYTHON, modern_environment

    if not MODERN_PYTHON.is_file():
        raise FileNotFoundError(f"{MODERN_PYTHON} not found: build the modern environment first (make modern-env)")
    machines = ["--config_file", accelerate_config] if accelerate_config else \
        ["--num_processes", str(num_processes), "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no"]
    command = [str(MODERN_PYTHON), "-m", "accelerate.commands.launch", *machines,
               "-m", "addressvlm.runs.grpo", "--config", str(config)]
    return subprocess.run(command, env=modern_environment()).returncode


def convert(recipe: dict) -> Path:
    from addressvlm.answering.export import transformers4_folder
    from addressvlm.runs.grpo import MERGED_FOLDER

    out = Path(recipe["output_dir"])
    return transformers4_folder(out / MERGED_FOLDER, recipe["model_name_or_path"], out / "hf", replace=True)


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
    except (DataError, FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
