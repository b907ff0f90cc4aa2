"""Shared fixtures: tiny model sets in the releases' layouts and a tiny city of LLaVA conversations; tests write only
under their tmp paths (a copy of recipes/ where they need child recipes)."""
import os
from pathlib import Path

import pytest
from PIL import Image

# Tests never reach a hub: a path that is not local must fail, not download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent

# The files that take longest (seconds on the 2-core machine, make test of 2026-12-07), started first: pytest-xdist
# hands whole files to its two workers in collection order (make test: --no-loadscope-reorder), and a long file
# handed out last left one worker alone for its whole run. The first needs the quick demo, whose build it then
# carries; the other files follow in their own order, the short ones filling the end.
LONGEST_FILES = ["test_table4_chain.py",    # 158, of which the quick demo ~100
                 "test_vllm.py",            # 140: three vLLM servers
                 "test_reading_warmup.py",  # 134: a warm-up until every kind reads
                 "test_train_chain.py",     # 86
                 "test_infer.py",           # 80
                 "test_export.py",          # 54
                 "test_paper_tables.py",    # 48
                 "test_minicpmv.py",        # 45
                 "test_every_row.py",       # 44
                 "test_ranking.py",         # 36
                 "test_grpo.py",            # 35
                 "test_readiness.py"]       # 34


def pytest_collection_modifyitems(items):
    renamed = [name for name in LONGEST_FILES if not (REPO / "tests" / name).is_file()]
    if renamed:
        raise pytest.UsageError(f"tests/conftest.py: LONGEST_FILES names no such file: {', '.join(renamed)}")
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FILES)))


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (30, 60, 220), "yellow": (230, 220, 40)}


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory) -> Path:
    """A tiny random model in the layout of xtuner/llava-phi-3-mini-xtuner (LLM, visual_encoder/, projector/)."""
    from addressvlm.standins.tiny import make_tiny_llava

    return make_tiny_llava(tmp_path_factory.mktemp("models") / "llava-phi-3-mini-xtuner",
                           corpus=[f"The colour is {c}." for c in COLOURS])


@pytest.fixture(scope="session")
def tiny_minicpmv(tmp_path_factory) -> Path:
    """A tiny random model in the layout of openbmb/MiniCPM-V-2_6, its code loaded as remote code."""
    from addressvlm.standins.tiny_minicpmv import write_tiny_minicpmv

    return write_tiny_minicpmv(tmp_path_factory.mktemp("models") / "MiniCPM-V-2_6",
                               corpus=[f"The colour is {c}." for c in COLOURS])


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory, worker_id):
    """A shortened `make demo` (DemoSettings.quick()), once per test run: its city, tiny model and runs serve every
    test that needs a whole city (the demo's own test, the paper tables). Under pytest-xdist the first worker that
    needs it builds it in the run's shared temporary folder while the others wait, then they read it: it took two
    minutes a worker (tests read it; only tests/test_demo.py, one worker's file, runs demo steps on it)."""
    import fcntl
    from types import SimpleNamespace

    from addressvlm.runs.engine import DemoSettings
    from addressvlm.demo.pipeline import run_demo

    shared = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    root = shared / "quick_demo"
    out, city, work = root / "out", root / "city", root / "work"
    with open(shared / "quick_demo.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "built").is_file():
            run_demo(out, city, work, DemoSettings.quick())
            (root / "built").touch()
    return SimpleNamespace(out=out, city=city, work=work, report=out / "report.md", settings=DemoSettings.quick(),
                           model=out / "models" / "llava-phi-3-mini-xtuner")


@pytest.fixture(scope="module")
def options(tiny_llava) -> list[str]:
    """The reference recipe's (``helpers.RECIPE``) model paths moved to the tiny LLaVA."""
    from helpers import model_options

    return model_options(tiny_llava)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, options) -> Path:
    """A stage-2 checkpoint of the tiny LLaVA whose trained tensors are moved by seeded noise, so it matters."""
    from helpers import write_synthetic_checkpoint

    return write_synthetic_checkpoint(tmp_path_factory.mktemp("work") / "stage2", options)


@pytest.fixture(scope="module")
def model(checkpoint, options):
    from addressvlm.answering.loading import load_xtuner_model
    from helpers import RECIPE

    return load_xtuner_model(RECIPE, checkpoint, options)


@pytest.fixture(scope="session")
def tiny_minicpmv_checkpoint(tmp_path_factory, tiny_minicpmv) -> tuple[str, Path, list[str]]:
    """``(recipe, checkpoint, options)``: a MiniCPM-V stage-2 checkpoint of the tiny stand-in whose LoRA and
    resampler tensors are all moved off their initial values (``helpers.write_synthetic_checkpoint``)."""
    from helpers import model_options, write_synthetic_checkpoint

    recipe = str(REPO / "recipes" / "minicpmv26" / "stage2_pitts.py")
    options = model_options(tiny_minicpmv, recipe)
    checkpoint = write_synthetic_checkpoint(tmp_path_factory.mktemp("work") / "minicpmv_stage2", options, seed=2,
                                            recipe=recipe)
    return recipe, checkpoint, options


def few_steps(city: Path, data_file: str) -> dict:
    """Overrides for a run of a few iterations on a tiny city, the later ones at lr 1e-3, so trained tensors move
    visibly."""
    return {"train_dataloader.dataset.data_path": str(city / data_file),
            "train_dataloader.dataset.image_folder": str(city),
            "train_dataloader.batch_size": 2, "train_dataloader.sampler.per_device_batch_size": 2,
            "optim_wrapper.accumulative_counts": 1, "optim_wrapper.optimizer.lr": 1e-3, "train_cfg.max_epochs": 1,
            "param_scheduler.0.end": 0.5, "param_scheduler.1.begin": 0.5, "param_scheduler.1.end": 1,
            "default_hooks.checkpoint.interval": 2, "randomness.seed": 0}


def write_colour_city(root: Path, n_images: int = 16) -> Path:
    """A city root whose stage-1 and stage-2 JSONs ask the colour of plain images: learnable in a few steps."""
    names = list(COLOURS)
    records = []
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        colour = names[i % len(names)]
        image = f"images/{i:03d}.jpg"
        Image.new("RGB", (64, 48), COLOURS[colour]).save(root / image)
        records.append({"id": f"colour/{i}", "image": image, "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is this image?"},
            {"from": "gpt", "value": f"The colour is {colour}."}]})
    from addressvlm.core.records import write_llava_json

    write_llava_json(root / "stage1" / "train.json", records)
    write_llava_json(root / "vqa" / "train.json", records)
    return root


@pytest.fixture
def colour_city(tmp_path) -> Path:
    return write_colour_city(tmp_path / "colour_city")


def copy_recipes(into: Path) -> Path:
    """A copy of recipes/ to write child recipes beside (their read_base imports are relative), so tests never
    write into the repository."""
    import shutil

    return Path(shutil.copytree(REPO / "recipes", into / "recipes"))


def local_recipe(recipe: str, model_root: Path, overrides: dict):
    """The recipe's config as a CPU run here reads it: model paths moved to ``model_root``, then ``overrides``."""
    import argparse

    from mmengine.config import DictAction

    from addressvlm.training.recipes import load_recipe, local_run_options

    cfg = load_recipe(recipe)
    parser = argparse.ArgumentParser()
    parser.add_argument("--cfg-options", nargs="+", action=DictAction)
    options = local_run_options(recipe, str(model_root), overrides=overrides)
    cfg.merge_from_dict(parser.parse_args(["--cfg-options", *options]).cfg_options)
    return cfg


def build_model(recipe: str, model_root: Path, overrides: dict):
    """The recipe's model as a CPU run here builds it (``init_from_work_dir`` included: the stage chain runs)."""
    from xtuner.registry import BUILDER

    return BUILDER.build(local_recipe(recipe, model_root, overrides).model)
