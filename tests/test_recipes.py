"""Every recipe parses; the reference recipes carry Table A1; overrides and children reach the built dicts."""
import os
import re
from pathlib import Path

import pytest
from mmengine.config import Config

from addressvlm.data.city_recipes import city_recipe_text
from addressvlm.runs.paper_tables import ablations
from addressvlm.training.recipes import local_run_options

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted((REPO / "recipes").rglob("*.py"))
REFERENCE = ["stage1_pitts", "stage2_pitts", "stage1_sf", "stage2_sf"]


def load(name: str) -> Config:
    return Config.fromfile(str(REPO / "recipes" / f"{name}.py"))


def type_name(t) -> str:
    return t if isinstance(t, str) else t.__name__


def test_recipes_exist():
    names = {p.stem for p in RECIPES}
    assert set(REFERENCE) <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_every_recipe_parses_with_explicit_work_dir(path):
    cfg = Config.fromfile(str(path))
    assert cfg.work_dir.startswith("./work_dirs/")
    assert cfg.work_dir.rstrip("/").endswith(path.stem)


@pytest.mark.parametrize("name", REFERENCE)
def test_reference_recipes_follow_table_a1(name):
    cfg = load(name)
    # Plain variables, as XTuner configs keep them.
    assert cfg.batch_size == 4
    assert cfg.accumulative_counts == 16
    assert cfg.lr == 1e-5
    assert cfg.weight_decay == 0
    assert tuple(cfg.betas) == (0.9, 0.999)
    assert cfg.warmup_ratio == 0.03
    assert cfg.max_length == 2048 - 576
    # ... and the built dicts that training reads.
    assert cfg.train_dataloader.batch_size == 4
    assert cfg.train_dataloader.sampler.per_device_batch_size == 4 * 16
    assert cfg.optim_wrapper.accumulative_counts == 16
    assert cfg.optim_wrapper.optimizer.lr == 1e-5
    assert cfg.optim_wrapper.optimizer.weight_decay == 0
    assert tuple(cfg.optim_wrapper.optimizer.betas) == (0.9, 0.999)
    assert cfg.param_scheduler[0].end == pytest.approx(0.03)
    assert cfg.param_scheduler[1].begin == pytest.approx(0.03)
    assert cfg.train_dataloader.dataset.max_length == 1472
    # Table A1's rank and dropout; where the LoRA goes, its alpha, the projector and the template are our choices
    # (docs/paper_tables.md), held here so that they change only on purpose.
    for lora in (cfg.model.llm_lora, cfg.model.visual_encoder_lora):
        assert lora.r == 128
        assert lora.lora_dropout == 0.05
        assert lora.lora_alpha == 256
    assert cfg.model.freeze_llm and cfg.model.freeze_visual_encoder  # base frozen, LoRA + projector trained
    assert cfg.model.projector_name_or_path.endswith("llava-phi-3-mini-xtuner/projector")
    assert cfg.model.llm.pretrained_model_name_or_path.endswith("llava-phi-3-mini-xtuner")
    template = cfg.train_dataloader.dataset.template_map_fn.template
    assert template.INSTRUCTION == "<|user|>\n{input}<|end|>\n<|assistant|>\n"
    # GPU recipe: AMP and nccl; CPU runs switch through addressvlm.training.recipes only.
    assert type_name(cfg.optim_wrapper.type) == "AmpOptimWrapper"
    assert cfg.env_cfg.dist_cfg.backend == "nccl"


@pytest.mark.parametrize("city,stage", [("sf", 1), ("sf", 2), ("tokyo", 1), ("tokyo", 2)])
def test_children_patch_the_built_dicts(city, stage):
    cfg = load(f"stage{stage}_{city}")
    data_file = "stage1/train.json" if stage == 1 else "vqa/train.json"
    assert cfg.train_dataloader.dataset.data_path == f"./data/{city}/{data_file}"
    assert cfg.train_dataloader.dataset.image_folder == f"./data/{city}/"
    expected_init = None if stage == 1 else f"./work_dirs/llava_phi3_mini/stage1_{city}"
    assert cfg.model.init_from_work_dir == expected_init


def test_stage_chain_of_reference_recipes():
    assert load("stage1_pitts").model.init_from_work_dir is None
    assert load("stage2_pitts").model.init_from_work_dir == load("stage1_pitts").work_dir


@pytest.mark.parametrize("stage", [1, 2])
def test_committed_sf_children_are_what_new_city_writes(stage):
    committed = (REPO / "recipes" / f"stage{stage}_sf.py").read_text()
    assert committed == city_recipe_text("sf", stage, "./data/sf")
    assert len(committed.splitlines()) <= 15


def test_city_names_must_be_module_names():
    with pytest.raises(ValueError, match="module name"):
        city_recipe_text("New York", 1, "./data/ny")


def test_local_run_options_relocate_every_model_path_and_switch_to_cpu():
    recipe = str(REPO / "recipes" / "stage2_sf.py")
    cfg = Config.fromfile(recipe)
    options = local_run_options(recipe, "/models/tiny", overrides={"optim_wrapper.optimizer.lr": 1e-3})
    from mmengine.config import DictAction
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--cfg-options", nargs="+", action=DictAction)
    cfg.merge_from_dict(parser.parse_args(["--cfg-options", *options]).cfg_options)
    text = cfg.pretty_text
    assert "llava-phi-3-mini-xtuner" not in text.replace("llava_root = './models/llava-phi-3-mini-xtuner'", "")
    assert cfg.model.visual_encoder.pretrained_model_name_or_path == "/models/tiny/visual_encoder"
    assert cfg.train_dataloader.dataset.tokenizer.pretrained_model_name_or_path == "/models/tiny"
    assert cfg.custom_hooks[0].tokenizer.pretrained_model_name_or_path == "/models/tiny"
    assert type_name(cfg.optim_wrapper.type) == "OptimWrapper"
    assert "loss_scale" not in cfg.optim_wrapper and "dtype" not in cfg.optim_wrapper
    assert cfg.optim_wrapper.optimizer.lr == 1e-3  # the caller's override wins
    assert tuple(cfg.optim_wrapper.optimizer.betas) == (0.9, 0.999)
    assert cfg.optim_wrapper.accumulative_counts == 16
    assert cfg.env_cfg.dist_cfg.backend == "gloo"


@pytest.mark.parametrize("stage", [1, 2])
def test_single_gpu_qlora_variant_keeps_table_a1s_effective_batch(stage):
    cfg = load(f"stage{stage}_pitts_qlora")
    reference = load(f"stage{stage}_pitts")
    assert cfg.train_dataloader.batch_size * cfg.optim_wrapper.accumulative_counts == 4 * 8 * 16
    assert cfg.train_dataloader.sampler.per_device_batch_size == 4 * 128
    assert cfg.model.llm.quantization_config.load_in_4bit
    assert cfg.model.llm_lora == reference.model.llm_lora
    assert cfg.model.init_from_work_dir == (None if stage == 1 else "./work_dirs/llava_phi3_mini/stage1_pitts_qlora")


def test_clean_demo_removes_only_what_the_demo_made():
    import inspect
    import subprocess

    from addressvlm.demo.pipeline import run_demo

    dry = subprocess.run(["make", "-n", "clean-demo"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    removed = [Path(p) for line in dry.splitlines() if line.startswith("rm -rf") for p in line.split()[2:]]
    demo_work = Path(inspect.signature(run_demo).parameters["work"].default)
    assert any(demo_work == p or p in demo_work.parents for p in removed)
    for path in RECIPES:
        work_dir = Path(Config.fromfile(str(path)).work_dir).relative_to(".")
        assert not any(work_dir == p or p in work_dir.parents for p in removed), f"clean-demo deletes {work_dir}"


def test_new_city_writes_into_the_checkout_it_is_run_from(tmp_path):
    """A second clone's tools/new_city.py, with the package installed from this one, writes the second clone's
    recipes/ (it used to write this clone's) and says where."""
    import shutil
    import subprocess
    import sys

    clone = tmp_path / "clone"
    (clone / "tools").mkdir(parents=True)
    shutil.copy(REPO / "tools" / "new_city.py", clone / "tools")
    shutil.copytree(REPO / "recipes", clone / "recipes")
    done = subprocess.run([sys.executable, "tools/new_city.py", "oslo", "--data-root", "./data/oslo"], cwd=clone,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (clone / "recipes" / "stage1_oslo.py").is_file() and (clone / "recipes" / "stage2_oslo.py").is_file()
    assert not (REPO / "recipes" / "stage1_oslo.py").exists()
    assert str((clone / "recipes" / "stage1_oslo.py").resolve()) in done.stdout
    again = subprocess.run([sys.executable, "tools/new_city.py", "oslo", "--data-root", "./data/oslo"], cwd=clone,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and again.stderr.strip().startswith("error: ") and "--overwrite" in again.stderr


def test_new_city_overwrite_replaces_only_its_own_recipes_that_nothing_inherits(tmp_path):
    """`new_city.py pitts --overwrite` replaced the 252-line stage1_pitts.py, the base of every recipe, with a child
    importing itself. --overwrite now replaces a recipe only when the tool wrote it and no recipe inherits from it."""
    import shutil
    import subprocess
    import sys

    from addressvlm.data.city_recipes import write_city_recipes

    recipes = tmp_path / "recipes"
    shutil.copytree(REPO / "recipes", recipes)
    before = {p: p.read_bytes() for p in recipes.rglob("*.py")}
    refused = subprocess.run([sys.executable, str(REPO / "tools" / "new_city.py"), "pitts", "--data-root",
                              "./data/pitts", "--recipes-dir", str(recipes), "--overwrite"],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith(f"error: {recipes / 'stage1_pitts.py'} is the base of ")
    assert "--overwrite never replaces a recipe other recipes inherit from" in refused.stderr
    with pytest.raises(FileExistsError, match="stage1_tokyo.py was not written by tools/new_city.py"):
        write_city_recipes("tokyo", "./data/tokyo", recipes, overwrite=True)  # edited by hand: no mark
    write_city_recipes("oslo", "./data/oslo", recipes)
    (recipes / "ablations" / "oslo_longer.py").write_text(
        "from mmengine.config import read_base\n\nwith read_base():\n    from ..stage2_oslo import *  # noqa\n")
    oslo = {p: p.read_bytes() for p in recipes.glob("stage?_oslo.py")}
    with pytest.raises(FileExistsError, match=r"stage2_oslo.py is the base of .*ablations/oslo_longer.py"):
        write_city_recipes("oslo", "./data/elsewhere", recipes, overwrite=True)
    assert {p: p.read_bytes() for p in recipes.glob("stage?_oslo.py")} == oslo  # stage 1 checked first, not written
    assert all(p.read_bytes() == text for p, text in before.items())
    # What the tool wrote and nothing inherits is replaced, as before.
    write_city_recipes("sf", "./data/sf2", recipes, overwrite=True)
    assert (recipes / "stage1_sf.py").read_text() == city_recipe_text("sf", 1, "./data/sf2")


@pytest.mark.parametrize("name,says", [
    ("../evil", "must be a valid module name"), ("tokyo;rm", "must be a valid module name"),
    ("tōkyō", "must be a valid module name"), ("a" * 300, "city name of 300 characters: at most 64")])
def test_new_city_refuses_a_name_that_cannot_name_files_in_one_line(name, says, tmp_path):
    import shutil
    import subprocess
    import sys

    recipes = shutil.copytree(REPO / "recipes", tmp_path / "recipes")
    before = sorted(recipes.rglob("*"))
    done = subprocess.run([sys.executable, str(REPO / "tools" / "new_city.py"), name, "--data-root", "./data/x",
                           "--recipes-dir", str(recipes)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"new_city.py: error: argument city: ")
    assert says in done.stderr and sorted(recipes.rglob("*")) == before


def built(spec: dict):
    """A hook as the runner builds it from the recipe's dict."""
    return spec["type"](**{key: value for key, value in spec.items() if key != "type"})


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_every_recipe_resumes_exactly_and_safely(path, monkeypatch):
    """What a resume needs, from each recipe's own hooks as the runner builds them: the checkpoints keep the optimizer
    and the LR schedule (mmengine restores them and the step from there); RNGStateHook saves the generators LoRA
    dropout draws from and puts them back, so the resumed run draws what the uninterrupted one would; ResumeLoadHook
    lifts torch's weights_only check for a resumed run only, and only until its checkpoint has loaded.
    tests/test_train_chain.py resumes the reference recipe end to end."""
    import random
    from types import SimpleNamespace

    import numpy as np
    import torch

    from addressvlm.training.recipes import load_recipe
    from addressvlm.training.xtuner_shims import RESUME_VARIABLE

    cfg = load_recipe(str(path))
    saver = built(cfg.default_hooks.checkpoint)
    assert saver.save_optimizer and saver.save_param_scheduler and saver.interval > 0
    hooks = {spec["type"].__name__: spec for spec in cfg.custom_hooks}
    rng, loader = built(hooks["RNGStateHook"]), built(hooks["ResumeLoadHook"])

    def draws():
        return random.random(), float(np.random.rand()), torch.rand(2).tolist()

    checkpoint = {}
    rng.before_save_checkpoint(None, checkpoint)
    at_save = draws()
    draws()  # the run goes on, or another process starts, before the resume
    rng.after_load_checkpoint(None, checkpoint)
    assert draws() == at_save

    monkeypatch.delenv(RESUME_VARIABLE, raising=False)
    loader.before_run(SimpleNamespace(_resume=False, _load_from=None))
    assert RESUME_VARIABLE not in os.environ  # a fresh run keeps torch's check
    loader.before_run(SimpleNamespace(_resume=True, _load_from=None))
    assert os.environ.get(RESUME_VARIABLE) == "1"
    loader.after_load_checkpoint(None, checkpoint)
    assert RESUME_VARIABLE not in os.environ  # on again for every load after the run's own checkpoint


def test_importing_the_package_leaves_torch_load_safe():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    code = ("import os, addressvlm.training.model, addressvlm.training.minicpmv; "
            "print(os.environ.get('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.stdout.strip().splitlines()[-1] == "None", done.stderr[-2000:]


def test_training_progress_follows_mmengines_iteration_lines():
    from addressvlm.training.launcher import ITERATION_LINE

    line = ("11/27 12:49:21 - mmengine - INFO - Iter(train) [ 18/120]  lr: 6.6987e-07  eta: 0:00:02  time: 0.8029  "
            "data_time: 0.0156  memory: 15440  loss: 8.4708")
    assert ITERATION_LINE.search(line).groups() == ("18", "120", "8.4708")
    assert ITERATION_LINE.search("Iter(val) [1/5] loss: 1.0") is None


@pytest.mark.parametrize("script", sorted(str(p.relative_to(REPO)) for folder, pattern in (
    ("tools", "*.py"), ("eval", "*.py"), ("datasets_prep", "*.py"), ("benchmarks", "bench_*.py"))
                                          for p in (REPO / folder).glob(pattern)))
def test_every_script_has_help(script, monkeypatch, capsys):
    """Run as ``python SCRIPT --help`` would, in this process: each subprocess paid the seconds of importing torch and
    XTuner again, about three minutes of the suite over every script."""
    import runpy
    import sys

    monkeypatch.setattr(sys, "argv", [str(REPO / script), "--help"])
    monkeypatch.syspath_prepend(str((REPO / script).parent))  # as Python puts a script's folder first
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(REPO / script), run_name="__main__")
    assert exited.value.code in (0, None) and "usage:" in capsys.readouterr().out


# The retrievers answer no address questions (recipes/retrieval/; docs/retrieval.md): their metric is R@K.
ADDRESS_RECIPES = [p for p in RECIPES if p.parent.name != "retrieval"]
HINTED_QUESTIONS = {"retrieval_hint_stage2": "vqa_hint5/val_questions.jsonl"}


@pytest.mark.parametrize("path", ADDRESS_RECIPES, ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_every_address_recipe_logs_address_metrics_to_tensorboard(path):
    """The hook's dict carries the recipe's PART 1 settings (children inherit them, and the questions path is taken
    from the dataset's image_folder, so no child patches it), and the visualizer writes scalars.json and TensorBoard."""
    cfg = Config.fromfile(str(path))
    hook = cfg.default_hooks.address_metrics
    assert type_name(hook.type) == "AddressMetricsHook"
    assert (hook.questions, hook.images, hook.interval) == (
        cfg.address_eval_questions, cfg.address_eval_images, cfg.address_eval_interval)
    # on by default; a recipe whose questions carry the retrieval hint is measured on hinted questions
    assert hook.questions == HINTED_QUESTIONS.get(path.stem, "vqa/val_questions.jsonl")
    assert hook.images >= 1 and hook.interval >= 1
    assert [type_name(b.type) for b in cfg.visualizer.vis_backends] == ["LocalVisBackend", "TensorboardIfInstalled"]


def flat(node, prefix: str = "") -> dict:
    """``{"model.llm_lora.r": 128, ...}``: every leaf of a config dict under its dotted key."""
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}
    if isinstance(node, (list, tuple)):
        return {k: v for i, value in enumerate(node) for k, v in flat(value, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): node}


@pytest.mark.parametrize("recipe", sorted(ablations()))
def test_every_ablation_recipe_changes_only_what_its_row_says(recipe):
    """Every ablation recipe (addressvlm/runs/paper_tables.py's rows describe each) reads its parent and differs from it in
    exactly the settings its row names, and its work_dir."""
    change, path = ablations()[recipe], REPO / "recipes" / recipe
    assert f"from ..{Path(change.parent).stem} import *" in path.read_text()
    child, base = flat(Config.fromfile(str(path)).to_dict()), flat(load(Path(change.parent).stem).to_dict())
    differing = {k for k in child.keys() | base.keys() if child.get(k, "absent") != base.get(k, "absent")}
    changed = {next((c for c in [*change.settings, "work_dir"] if k == c or k.startswith(c + ".")), k)
               for k in differing}
    assert changed == {*change.settings, "work_dir"}
    assert all(child[key] == value for key, value in change.settings.items())
    assert child["work_dir"] == f"./work_dirs/llava_phi3_mini/{path.stem}"


def test_every_labelled_crop_command_keeps_names_out_of_the_grafted_corner():
    """Every written command that crops a whole city with street names keeps them out of the corner its street view
    will cover, at the delta that file grafts with (0.5 unless a graft command there says otherwise): the main row's
    crops and Table 9's differ in delta alone, as the paper's rows do."""
    files = [*RECIPES, REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
             REPO / "datasets_prep" / "crop_satellite.py"]
    checked = []
    for path in files:
        text = path.read_text()
        graft = re.search(r"graft\.py [^\n]*?--delta (\S+)", text)
        delta = graft.group(1) if graft else "0.5"
        for command in re.findall(r"crop_satellite\.py +--city [^&\n]*", text):
            if "--no-labels" not in command:
                assert f"--keep-clear-for-delta {delta} " in command + " ", f"{path.relative_to(REPO)}: {command}"
                checked.append(path.name)
    assert {"stage1_pitts.py", "paper_tables.md", "stage1.md"} <= set(checked)


TWO_IMAGES = str(REPO / "recipes" / "ablations" / "table1_two_images_stage1.py")  # a read_base child recipe


def test_a_recipe_read_while_another_thread_parses_holds_built_objects():
    """mmengine turns ``ConfigDict.lazy`` on for the whole process while any thread parses a read_base recipe; a
    config from load_recipe then still reads as classes and functions, not LazyObjects (a CI run once trained with
    the optimizer type "__name__")."""
    import torch
    from mmengine.config import ConfigDict

    from addressvlm.training.dataset import multi_image_collate_fn
    from addressvlm.training.recipes import load_recipe

    cfg = load_recipe(TWO_IMAGES)
    ConfigDict.lazy = True
    try:
        optimizer, collate = cfg.optim_wrapper.optimizer.type, cfg.train_dataloader.collate_fn.type
    finally:
        ConfigDict.lazy = False
    assert optimizer is torch.optim.AdamW and collate is multi_image_collate_fn


def test_recipes_parsed_in_threads_side_by_side_give_the_serial_options():
    """The demo and paper_table train (and so parse recipes) in threads side by side."""
    from concurrent.futures import ThreadPoolExecutor

    recipes = [TWO_IMAGES, str(REPO / "recipes" / "stage1_pitts.py")] * 8
    serial = {recipe: local_run_options(recipe, "/models/tiny") for recipe in set(recipes)}
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(lambda recipe: local_run_options(recipe, "/models/tiny"), recipes))
    assert all(options == serial[recipe] for recipe, options in zip(recipes, threaded))
    assert "optim_wrapper.optimizer.type=AdamW" in serial[TWO_IMAGES]


@pytest.mark.parametrize("path", [p for p in RECIPES if "optim_wrapper = dict(" in p.read_text()],
                         ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_amp_computes_in_the_recipes_torch_dtype(path):
    """AMP's compute dtype is the recipe's ``torch_dtype`` variable, not a second literal: a V100's float16 is then
    one edit, and the MiniCPM-V recipe no longer says bfloat16 twice."""
    import ast

    tree = ast.parse(path.read_text())
    wrapper = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                   and any(isinstance(t, ast.Name) and t.id == "optim_wrapper" for t in node.targets))
    dtype = next((k.value for k in wrapper.keywords if k.arg == "dtype"), None)
    assert dtype is None or (isinstance(dtype, ast.Name) and dtype.id == "torch_dtype"), ast.unparse(dtype)
