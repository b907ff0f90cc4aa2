"""Stage 3 from the XTuner environment: a recipe's prompts written, TRL's GRPO trainer launched in .venv-modern
(``addressvlm/runs/grpo.py``), and its merged model turned into a folder transformers 4.48 loads
(``tools/train_stage3.py``; README, "Stage 3: GRPO").
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from addressvlm.answering.reward import check_reward_mode
from addressvlm.checks.vllm_check import MODERN_PYTHON, modern_environment
from addressvlm.core.processes import die_with_parent
from addressvlm.core.records import read_reward_curve, write_questions
from addressvlm.data.vqa import train_split_questions
from addressvlm.runs.grpo import MERGED_FOLDER, PROMPTS_FOLDER, QUESTION_TYPES, prompt_image_path

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

    # lazy: it imports torch and XTuner (seconds): tools/train_stage3.py refuses a bad recipe before
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


def launch(config: Path, num_processes: int = 1, accelerate_config: str | None = None,
           overrides: dict | None = None) -> int:
    """``accelerate launch`` of the trainer from .venv-modern, each of ``overrides`` given as ``--name value`` over
    the recipe's; its exit status."""
    if not MODERN_PYTHON.is_file():
        raise FileNotFoundError(f"{MODERN_PYTHON} not found: build the modern environment first (make modern-env)")
    machines = ["--config_file", accelerate_config] if accelerate_config else \
        ["--num_processes", str(num_processes), "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no"]
    command = [str(MODERN_PYTHON), "-m", "accelerate.commands.launch", *machines,
               "-m", "addressvlm.runs.grpo", "--config", str(config),
               *(part for name, value in (overrides or {}).items() for part in (f"--{name}", str(value)))]
    parent = os.getpid()
    # The launcher dies with this process, and the trainer with the launcher (grpo.main): a killed demo leaves no
    # trainer writing on into the run it would start again.
    return subprocess.run(command, env=modern_environment(), preexec_fn=lambda: die_with_parent(parent)).returncode


def convert(recipe: dict) -> Path:
    # lazy: it imports torch and XTuner (seconds): tools/train_stage3.py refuses a bad recipe before
    from addressvlm.answering.export import transformers4_folder

    out = Path(recipe["output_dir"])
    return transformers4_folder(out / MERGED_FOLDER, recipe["model_name_or_path"], out / "hf", replace=True)


def draw_reward_curve(curve: Path, picture: Path) -> Path:
    """The mean reward of each logged GRPO step of ``curve`` (``reward_curve.jsonl``), with its spread over the
    step's rollouts, drawn into ``picture``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_reward_curve(curve)
    steps = [row["step"] for row in rows]
    reward = [row["reward"] for row in rows]
    spread = [row.get("reward_std", 0.0) for row in rows]
    figure, axes = plt.subplots(figsize=(6, 3.2))
    axes.fill_between(steps, [r - d for r, d in zip(reward, spread)], [r + d for r, d in zip(reward, spread)],
                      alpha=0.2, label="spread over the rollouts")
    axes.plot(steps, reward, marker="o", label="mean reward")
    axes.set_xlabel("GRPO step")
    axes.set_ylabel("street-level reward")
    axes.set_ylim(-0.05, 1.05)
    axes.set_title("Stage 3: reward of the rollouts")
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    picture.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(picture, dpi=120)
    plt.close(figure)
    return picture
