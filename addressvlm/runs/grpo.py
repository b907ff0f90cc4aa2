"""Stage 3: GRPO with TRL's ``GRPOTrainer`` on the stage-2 model exported as a Hugging Face folder
(``tools/export_hf.py``), LoRA on its language model, the street-level reward (``answering/reward.py``) in the
recipe's mode; run in the modern environment (.venv-modern), started by ``tools/train_stage3.py`` through
``accelerate launch`` (README, "Stage 3: GRPO").

A recipe (``recipes/stage3/*.yaml``) is one YAML file of TRL's own fields, read by TRL's parser into
``Stage3Arguments`` (this module's: the city and the reward), ``GRPOConfig`` (training, generation, KL) and
``ModelConfig`` (the model folder and the LoRA shape). ``tools/train_stage3.py`` writes the prompts into
``<output_dir>/prompts/`` first (``PROMPTS_FOLDER``): the training split's questions in the test questions' format,
and their images padded to a square with CLIP's mean colour as training padded them (the processor centre-crops);
the merged model goes to ``<output_dir>/merged/`` (``MERGED_FOLDER``), in transformers 5's layout, and the reward
of every logged step to ``<output_dir>/reward_curve.jsonl`` (``REWARD_CURVE``).

    .venv-modern/bin/accelerate launch -m addressvlm.runs.grpo --config recipes/stage3/pitts.yaml
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from addressvlm.answering.reward import check_reward_mode, grpo_reward, reward_context
from addressvlm.core.processes import die_with_parent
from addressvlm.core.records import read_locations, read_questions, write_reward_curve
from addressvlm.geo.streets import read_street_map

PROMPTS_FOLDER = "prompts"  # questions.jsonl and images/ (each image padded, saved as <image>.png)
MERGED_FOLDER = "merged"
REWARD_CURVE = "reward_curve.jsonl"  # records.write_reward_curve
QUESTION_TYPES = ("generation", "judgment", "multiple_choice")


@dataclass
class Stage3Arguments:
    """The recipe's fields that are not TRL's: what the reward measures against and which questions prompt."""

    city: str = field(metadata={"help": "the city root: locations.csv and vqa/ (stats.json: the split stage 2 used)"})
    streets: str = field(metadata={"help": "the city's streets (GeoJSON or .osm.pbf): the reward's distances"})
    reward_mode: str = field(default="hierarchical_distance",
                             metadata={"help": "exact, hierarchical or hierarchical_distance (answering/reward.py)"})
    question_types: list[str] = field(default_factory=lambda: list(QUESTION_TYPES),
                                      metadata={"help": "the question types that prompt (generation, judgment, "
                                                        "multiple_choice)"})


def prompt_image_path(prompts: Path, image: str) -> Path:
    """Where the padded copy of the city image ``image`` (as a question names it) lies."""
    return prompts / "images" / f"{image}.png"


def grpo_dataset(prompts: Path):
    """The prompts as TRL's VLM path wants them: a conversational ``prompt`` (the question as the user's turn; TRL
    puts the image before it, as training did), the padded ``image``, and the question record as JSON in
    ``test_question`` for the reward."""
    from datasets import Dataset, Image


    questions = read_questions(prompts / "questions.jsonl")
    return Dataset.from_dict({
        "prompt": [[{"role": "user", "content": q["question"]}] for q in questions],
        "image": [str(prompt_image_path(prompts, q["image"])) for q in questions],
        "test_question": [json.dumps(q) for q in questions],
    }).cast_column("image", Image())


def reward_curve(log_history: list[dict]) -> list[dict]:
    """The logged steps of a trainer's ``state.log_history`` that carry a reward: step, mean reward, its spread
    over the step's rollouts and the KL to the reference, where logged."""
    return [{"step": entry["step"], "reward": entry["reward"],
             **{key: entry[key] for key in ("reward_std", "kl") if key in entry}}
            for entry in log_history if "reward" in entry]


def train(stage3: Stage3Arguments, config, model_config) -> Path:
    """GRPO as the recipe says; returns the folder of the merged model (written by the main process)."""
    from trl import GRPOTrainer, get_peft_config


    context = reward_context(read_locations(Path(stage3.city) / "locations.csv"), read_street_map(stage3.streets))
    out = Path(config.output_dir)
    config.model_init_kwargs = {"dtype": model_config.dtype, **(config.model_init_kwargs or {})}
    trainer = GRPOTrainer(model=model_config.model_name_or_path, reward_funcs=grpo_reward(context, stage3.reward_mode),
                          args=config, train_dataset=grpo_dataset(out / PROMPTS_FOLDER),
                          peft_config=get_peft_config(model_config))
    trainer.train()
    trainer.save_model()  # the LoRA adapter alone, in output_dir
    merged = out / MERGED_FOLDER
    if trainer.accelerator.is_main_process:
        write_reward_curve(out / REWARD_CURVE, reward_curve(trainer.state.log_history))
        trainer.accelerator.unwrap_model(trainer.model).merge_and_unload().save_pretrained(merged)
        trainer.processing_class.save_pretrained(merged)
    trainer.accelerator.wait_for_everyone()
    return merged


def parse_recipe(args: list[str] | None = None) -> tuple:
    """``(Stage3Arguments, GRPOConfig, ModelConfig)`` from ``--config RECIPE`` (and any field as ``--name value``)
    in ``args`` (default: the command line); a key of the recipe that none of them has is a ``ValueError``."""
    from trl import GRPOConfig, ModelConfig, TrlParser

    return tuple(TrlParser((Stage3Arguments, GRPOConfig, ModelConfig)).parse_args_and_config(args=args))


def main() -> None:
    die_with_parent(os.getppid())  # the launcher's end (a killed run) is this trainer's
    try:
        stage3, config, model_config = parse_recipe()
        check_reward_mode(stage3.reward_mode)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    if not model_config.use_peft:
        raise SystemExit("error: stage 3 trains LoRA on the stage-2 model: set use_peft: true in the recipe")
    train(stage3, config, model_config)


if __name__ == "__main__":
    main()
