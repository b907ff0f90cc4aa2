"""Address metrics while training: `python -m xtuner.tools.train` on the tiny model with the hook every 4
iterations; the logged A_d/A_s/A_sd equal eval's answers and scores from the checkpoint of the same iteration."""
import json
from pathlib import Path

import pytest
import torch

from addressvlm.answering.hooks import eval_mode, sample_images
from addressvlm.answering.answering import answer_questions
from addressvlm.answering.loading import load_xtuner_model
from addressvlm.core.records import Location, read_predictions, read_questions, write_questions
from addressvlm.training.recipes import local_run_options
from addressvlm.training.launcher import read_losses, train
from addressvlm.answering.scoring import score
from addressvlm.data.vqa import Distractors, single_turn_questions

from conftest import COLOURS, write_colour_city

REPO = Path(__file__).resolve().parent.parent
RECIPE = str(REPO / "recipes" / "stage1_pitts.py")
# 16 images, batch 2: 8 iterations; metrics and checkpoints every 4, on 3 of the 4 validation images.
INTERVAL, IMAGES = 4, 3


def write_val_questions(city: Path) -> Path:
    """Nine questions for each of four colour images, the district being the colour (as build_vqa writes them)."""
    rows = [Location(image=f"images/{i:03d}.jpg", location_id=f"v{i}", lat=0.0, lon=0.0,
                     street=f"{colour.title()} Street", district=colour.title())
            for i, colour in enumerate(COLOURS)]
    distractors = Distractors(rows, "random")
    path = city / "vqa" / "val_questions.jsonl"
    write_questions(path, [q for row in rows for q in single_turn_questions(row, f"colour/{row.location_id}/0",
                                                                            distractors, seed=0)])
    return path


def run_overrides(city: Path, **more) -> dict:
    return {"train_dataloader.dataset.data_path": str(city / "stage1" / "train.json"),
            "train_dataloader.dataset.image_folder": str(city),
            "train_dataloader.batch_size": 2, "train_dataloader.sampler.per_device_batch_size": 2,
            "optim_wrapper.accumulative_counts": 1, "optim_wrapper.optimizer.lr": 1e-3,
            "param_scheduler.0.end": 0.25, "param_scheduler.1.begin": 0.25,
            "default_hooks.logger.interval": 1, "default_hooks.checkpoint.interval": INTERVAL,
            "default_hooks.checkpoint.max_keep_ckpts": -1, "randomness.seed": 0, **more}


def scalar_records(work_dir: Path) -> list[dict]:
    (scalars,) = work_dir.glob("*/vis_data/scalars.json")
    return [json.loads(line) for line in scalars.read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llava):
    root = tmp_path_factory.mktemp("metrics")
    city = write_colour_city(root / "city")
    questions = write_val_questions(city)
    on = train(RECIPE, root / "on", str(tiny_llava), overrides=run_overrides(
        city, **{"default_hooks.address_metrics.interval": INTERVAL, "default_hooks.address_metrics.images": IMAGES,
                 "default_hooks.address_metrics.max_new_tokens": 8}))
    off = train(RECIPE, root / "off", str(tiny_llava), overrides=run_overrides(
        city, **{"default_hooks.address_metrics.interval": 0}))
    return {"on": on, "off": off, "city": city, "questions": questions, "model_root": tiny_llava}


@pytest.mark.slow
def test_logged_metrics_equal_eval_of_the_checkpoint(runs, tmp_path):
    logged = {r["step"]: r for r in scalar_records(runs["on"]) if "address/A_d" in r}
    assert sorted(logged) == [4, 8]
    sample = sample_images(read_questions(runs["questions"]), IMAGES, seed=0)
    assert len(sample) == 9 * IMAGES
    options = local_run_options(RECIPE, str(runs["model_root"]), overrides=run_overrides(runs["city"]))
    for step, record in logged.items():
        model = load_xtuner_model(RECIPE, runs["on"] / f"iter_{step}.pth", options)
        out = tmp_path / f"iter_{step}.jsonl"
        answer_questions(model, sample, out, image_folder=runs["city"], max_new_tokens=8, progress=False)
        metrics = score(sample, {qid: p for qid, (_, p) in read_predictions(out).items()})
        for name in ("A_d", "A_s", "A_sd"):
            assert record[f"address/{name}"] == metrics[name], (step, name)
        assert record["address/seconds"] > 0
        # The hook's own answers are kept beside the run's logs, and are eval's answers.
        (kept,) = runs["on"].glob(f"*/address_metrics/iter_{step}.rank0.jsonl")
        assert read_predictions(kept) == read_predictions(out)


@pytest.mark.slow
def test_the_hook_leaves_training_as_it_was(runs):
    """Train mode and the random generators restored: with the hook on, every loss equals the run without it (LoRA
    dropout would change them if a module stayed in eval mode or a draw were spent)."""
    on, off = read_losses(runs["on"]), read_losses(runs["off"])
    assert sorted(on) == list(range(1, 9))
    for step, loss in off.items():
        assert on[step] == pytest.approx(loss, abs=1e-6), step


@pytest.mark.slow
def test_switched_off_it_logs_nothing(runs):
    assert not any(key.startswith("address/") for r in scalar_records(runs["off"]) for key in r)
    assert not list(runs["off"].glob("*/address_metrics"))


@pytest.mark.slow
def test_tensorboard_gets_the_scalars(runs):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed here (requirements.txt pins it): "
                                              "only the TensorBoard event file is unchecked")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = runs["on"].glob("*/vis_data/events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    assert {"address/A_d", "address/A_s", "address/A_sd", "loss"} <= set(accumulator.Tags()["scalars"])
    assert [e.step for e in accumulator.Scalars("address/A_d")] == [4, 8]


def test_eval_mode_restores_each_modules_mode():
    model = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Sequential(torch.nn.Dropout(0.5)))
    model.train()
    model[1].eval()  # a frozen part kept in eval mode while the rest trains
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == [True, True, False, False]


def test_the_sample_is_whole_images_fixed_by_the_seed(tmp_path):
    questions = read_questions(write_val_questions(write_colour_city(tmp_path / "city", n_images=4)))
    sample = sample_images(questions, 2, seed=0)
    assert sample == sample_images(questions, 2, seed=0)
    assert len({q["image"] for q in sample}) == 2 and len(sample) == 18
    assert [q for q in questions if q in sample] == sample  # file order
    assert sample_images(questions, 10, seed=0) == questions
