"""The run engine at the demo's scale on a CPU: the settings (the tiny model's size, epochs, batch, LoRA rank), the
folders, and the steps that train a recipe (recorded beside its run), load what it trained and answer and score the
held-out questions. Used by the demo (``demo/pipeline.py``), the paper's tables (``runs/paper_tables.py``) and
``tools/serve.py --demo``.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from addressvlm.answering.answering import answer_questions
from addressvlm.answering.loading import load_hf_model, load_release_model, load_xtuner_model
from addressvlm.answering.scoring import score, score_each
from addressvlm.core.records import (
    file_identity, read_llava_json, read_predictions, read_questions, read_settings, write_atomic, write_questions,
    write_run_record,
)
from addressvlm.training.checkpoints import weights_identity
from addressvlm.training.launcher import finished_run, run_inputs, train
from addressvlm.training.recipes import format_option, load_recipe, model_root_options


@dataclass(frozen=True)
class RetrievalSettings:
    """Each retriever's demo run, on the training split's street views and their scene texts together: the tiny
    LLaVA after its warm-up (projector trained too: the tiny model's is random) and a tiny random CLIP (56 px: the
    roof and pavement colours it matches are coarse, and a step costs a quarter of one at 112 px). CLIP takes 480
    steps: at 240, once the texts doubled its pairs, a seed's texts found too few places (docs/retrieval.md, the
    spread over seeds and code paths)."""
    lvlm_iters: int = 80
    lvlm_batch: int = 16
    lvlm_lr: float = 2e-3
    clip_iters: int = 480
    clip_batch: int = 8
    clip_lr: float = 5e-4
    clip_image_size: int = 56
    candidates_k: int = 5       # the retrieved tiles whose names restrict AddressVLM's closed-set ranking
    # Whose tiles: the CLIP dual encoder's. Since both retrievers share their steps with scene texts, the LVLM
    # retriever's 80 steps no longer find a street view's tile among its top 5 often enough to help the ranking
    # (docs/experiments.md, "Stage 1 at 16 x 1e-3").
    candidates_retriever: str = "clip_dual_encoder"

    @classmethod
    def quick(cls) -> "RetrievalSettings":
        return cls(lvlm_iters=4, lvlm_batch=4, clip_iters=4, clip_batch=4, clip_image_size=56)


@dataclass(frozen=True)
class DemoSettings:
    seed: int = 0
    locations: int = 240
    views: int = 4
    image_size: int = 112          # the tiny CLIP's input side (8 x 8 patches of 14 px)
    # 96 wide rather than 128: every step costs about two thirds, and the warm-up learns to choose among options
    # better (docs/experiments.md, "Twelve minutes").
    hidden: int = 96
    layers: int = 4
    # Stage 2 in batches of 8 at 2e-3 rather than 16 at 1e-3: twice the updates for the same epochs and about the
    # same time, which is what street judgment and choice were short of (docs/experiments.md, "Street judgment and
    # choice"). Stage 1 keeps 16 at 1e-3: at 8 and 2e-3 its model started stage 2 worse than the release did.
    batch_size: int = 8
    lr: float = 2e-3
    stage1_batch_size: int = 16
    stage1_lr: float = 1e-3
    # Table A1's rank 128 is wider than this model and costs as much as the frozen layers it adapts; rank 32 trained
    # a stage-2 epoch of the 128-wide model in about three quarters of the time.
    lora_rank: int = 32
    # Start from the warmed-up tiny LLM the repository ships (addressvlm/demo/pretrained_llm), as a user starts from
    # a released LVLM: the same weights on every machine and for every seed. False warms one up here (8-15 minutes on
    # 2 cores), following --seed. The warm-up is a stand-in for pre-training, not part of the method, and the length
    # of its plateau before choosing is learned depends on the seed and the CPU's kernels (docs/experiments.md,
    # "A released tiny LLM").
    pretrained_llm: bool = True
    # The cap on the tiny LLM's reading warm-up, its stand-in for language pre-training: it stops as soon as every
    # question kind reaches its target (addressvlm/standins/reading_warmup.py).
    reading_max_steps: int = 3000
    # Its data-parallel workers, one thread each (ReadingWarmup.processes).
    reading_processes: int = 2
    # One stage-1 epoch, not two: the tiny model cannot read the map's names (its reasons' loss stays near 4), and a
    # second epoch only pulled its adapters further from answering, so that AddressVLM's stage 2 fitted less than the
    # Baseline's and one run's street judgment fell to guessing (docs/experiments.md, "One stage-1 epoch").
    stage1_epochs: int = 1
    stage2_epochs: int = 8
    # Stage 3: GRPO steps from AddressVLM (recipes/stage3/helsinki.yaml: one question a step, eight rollouts); the
    # demo's time budget allows this many, a small share of the training split's questions.
    stage3_steps: int = 100
    # The paper's multi-turn conversations, in shuffled turn order. Single-turn records match the test format but,
    # in the minutes a CPU has, teach the tiny model less (docs/experiments.md, "Turn order").
    single_turn: bool = False
    warmup_iters: int = 10
    crop_metres: float = 240.0
    street_samples: int = 100      # Fig. 5: 100 answers at temperature 0.8
    street_images: int = 2
    # Threads of the answering steps, which run alone, and of each training run, two of which train side by side
    # (train_side_by_side). Fixed counts keep the figures independent of the machine's core count.
    threads: int = 2
    threads_per_run: int = 1
    # The two cross-view retrievers (addressvlm/demo/retrieval.py), trained beside stage 1.
    retrieval: RetrievalSettings = field(default_factory=RetrievalSettings)

    @classmethod
    def quick(cls) -> "DemoSettings":
        """A few steps of everything: for the test that checks every artefact."""
        return cls(locations=24, views=2, image_size=56, hidden=64, layers=2, batch_size=8, stage1_batch_size=8,
                   pretrained_llm=False, reading_max_steps=20, reading_processes=1, stage3_steps=2, stage1_epochs=1, stage2_epochs=1, warmup_iters=2,
                   street_samples=6, street_images=1, retrieval=RetrievalSettings.quick())


@dataclass
class Paths:
    out: Path
    city: Path
    work: Path
    recipes: Path = Path(__file__).resolve().parents[2] / "recipes"
    models: Path = field(init=False)

    def __post_init__(self):
        self.models = self.out / "models" / "llava-phi-3-mini-xtuner"


def checkout_paths(checkout: Path) -> Paths:
    """Where ``make demo`` run in ``checkout`` keeps its outputs, city and training runs."""
    return Paths(checkout / "demo_output", checkout / "data" / "helsinki", checkout / "work_dirs" / "demo_helsinki",
                 recipes=checkout / "recipes")


def held_out_questions(paths: Paths) -> Path:
    """The questions the demo answers and scores: the test split's and the validation split's together. Nothing in
    the demo is chosen on the validation split, so both are held out, and three times the test split's questions
    let differences of a few points be told from noise (docs/experiments.md, "Evidence that holds")."""
    vqa = paths.city / "vqa"
    sources = [vqa / "test_questions.jsonl", vqa / "val_questions.jsonl"]
    held_out = paths.city / "held_out_questions.jsonl"  # beside vqa/, which build_vqa owns whole
    if not held_out.is_file() or any(src.stat().st_mtime > held_out.stat().st_mtime for src in sources):
        write_questions(held_out, [q for src in sources for q in read_questions(src)])
    return held_out


def lora_overrides(s: DemoSettings, recipe: str | Path) -> dict:
    """The demo's LoRA size for each adapter ``recipe`` declares, for training and for loading what was trained
    (lora_alpha = 2 x rank, as the recipes)."""
    model = load_recipe(str(recipe)).model
    return {f"model.{adapter}.{key}": value for adapter in ("llm_lora", "visual_encoder_lora") if model.get(adapter)
            for key, value in (("r", s.lora_rank), ("lora_alpha", 2 * s.lora_rank))}


def run_overrides(paths: Paths, s: DemoSettings, recipe: str | Path, data_file: str, epochs: int,
                  n_records: int, stage2: bool = True) -> dict:
    batch_size, lr = (s.batch_size, s.lr) if stage2 else (s.stage1_batch_size, s.stage1_lr)
    iters_per_epoch = max(1, -(-n_records // batch_size))
    warmup_epochs = min(0.5 * epochs, s.warmup_iters / iters_per_epoch)
    return {
        **lora_overrides(s, recipe),
        "train_dataloader.dataset.data_path": str(paths.city / data_file),
        "train_dataloader.dataset.image_folder": str(paths.city) + "/",
        "train_dataloader.batch_size": batch_size,
        "train_dataloader.sampler.per_device_batch_size": batch_size,
        "optim_wrapper.accumulative_counts": 1,
        "optim_wrapper.optimizer.lr": lr,
        "train_cfg.max_epochs": epochs,
        "param_scheduler.0.end": warmup_epochs,
        "param_scheduler.1.begin": warmup_epochs,
        "param_scheduler.1.end": epochs,
        "default_hooks.logger.interval": 10,
        "default_hooks.checkpoint.interval": 10 ** 9,  # the final checkpoint only
        "default_hooks.checkpoint.max_keep_ckpts": 1,
        "randomness.seed": s.seed,
        # Activation checkpointing trades compute for GPU memory; a tiny model on CPU has memory to spare.
        "model.use_activation_checkpointing": False,
    }


# The overrides that name files: a run's record holds what they name by identity instead (launcher.run_inputs).
PATH_OVERRIDES = ("train_dataloader.dataset.data_path", "train_dataloader.dataset.image_folder",
                  "model.init_from_work_dir")


def planned_run(paths: Paths, s: DemoSettings, recipe: Path, data_file: str, epochs: int, init_from: Path | None,
                image_folder: Path | None = None, stage2: bool = True) -> tuple[dict, dict]:
    """``(overrides, settings)`` of a run of ``recipe`` at the demo's scale on ``paths.city``'s ``data_file``: what
    training gets, and what is recorded beside the run (the recipe, its overrides but paths, the model folder's
    identity, and what it trains on: ``launcher.run_inputs``). A stage 2 starts from ``init_from`` (None: from the
    release, as the Baseline)."""
    overrides = run_overrides(paths, s, recipe, data_file, epochs, len(read_llava_json(paths.city / data_file)),
                              stage2)
    if image_folder is not None:
        overrides["train_dataloader.dataset.image_folder"] = str(image_folder) + "/"
    if stage2:
        overrides["model.init_from_work_dir"] = str(init_from) if init_from else None
    settings = {"recipe": str(recipe), "overrides": {k: v for k, v in overrides.items() if k not in PATH_OVERRIDES},
                "model": file_identity(paths.models),
                **run_inputs(paths.city, data_file, overrides["train_dataloader.dataset.image_folder"],
                             init_from if stage2 else None)}
    return overrides, settings


def train_recipe(paths: Paths, s: DemoSettings, recipe: Path, name: str, data_file: str, epochs: int,
                 init_from: Path | None, threads: int, bar_row: int = 0, image_folder: Path | None = None,
                 stage2: bool = True) -> Path:
    """Train ``recipe`` as ``planned_run`` plans it into ``paths.work / name`` and record its settings and time
    beside it; a run that finished before with the same settings is kept, one trained otherwise is refused
    (``launcher.finished_run``)."""
    work_dir = paths.work / name
    overrides, settings = planned_run(paths, s, recipe, data_file, epochs, init_from, image_folder, stage2)
    if finished_run(work_dir, settings) is not None:
        return work_dir
    started = time.perf_counter()
    train(str(recipe), work_dir, str(paths.models), overrides=overrides, progress=True, name=name, threads=threads,
          bar_row=bar_row)
    write_run_record(work_dir, settings, time.perf_counter() - started)
    return work_dir


# The stage-3 run's name: GRPO's model, a Hugging Face folder in ``paths.work / STAGE3 / "hf"``.
STAGE3 = "stage3"


def stage3_folder(paths: Paths) -> Path:
    return paths.work / STAGE3 / "hf"


def load_model(paths: Paths, s: DemoSettings, name: str, recipe: Path | None = None):
    """The model trained into ``paths.work / name`` (``zero_shot``: the untuned release; ``STAGE3``: GRPO's
    folder), built by ``recipe`` (default: the demo's stage-2 recipe)."""
    if name == STAGE3:
        return load_hf_model(stage3_folder(paths))
    recipe = str(recipe or paths.recipes / "stage2_helsinki.py")
    options = model_root_options(load_recipe(recipe), str(paths.models)) + [
        format_option(key, value) for key, value in lora_overrides(s, recipe).items()]
    if name == "zero_shot":
        return load_release_model(recipe, options)
    return load_xtuner_model(recipe, paths.work / name, options)


def weights_settings(paths: Paths, name: str) -> dict:
    """Which weights answer as ``name``, as recorded beside its answers: the identity of its run's checkpoint
    (``infer.weights_identity``, as eval/infer.py records it); nothing for the untuned release."""
    if name == STAGE3:
        return {"weights": file_identity(stage3_folder(paths) / "model.safetensors")}
    return {} if name == "zero_shot" else {"weights": weights_identity(paths.work / name)}


def drop_stale(output: Path, paths: Paths, name: str) -> dict:
    """Remove ``output`` unless the present weights of ``name`` wrote it (no settings beside it, or other weights
    recorded there), so that only what this model started is resumed; return the settings to record."""
    model = weights_settings(paths, name)
    recorded = read_settings(output) if output.exists() else None
    if output.exists() and (recorded is None or recorded.get("weights") != model.get("weights")):
        output.unlink()
    return model


def answer_and_score(paths: Paths, s: DemoSettings, name: str, recipe: Path | None = None) -> tuple[dict, list]:
    """Answer the test questions with one model (``load_model``'s) and score them: (metrics, each question's
    scored answer, ``scoring.score_each``'s)."""
    questions = read_questions(held_out_questions(paths))
    predictions_path = paths.out / "predictions" / f"{name}.jsonl"
    model_settings = drop_stale(predictions_path, paths, name)
    answer_questions(load_model(paths, s, name, recipe), questions, predictions_path, image_folder=paths.city,
                     model_settings=model_settings)
    predictions = {qid: text for qid, (_, text) in read_predictions(predictions_path).items()}
    metrics = score(questions, predictions)
    write_atomic(paths.out / "metrics" / f"{name}.json", json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    return metrics, score_each(questions, predictions)
