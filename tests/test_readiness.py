"""First contact with the real releases: dtypes, adapters that get gradients, hub code that imports, clear errors."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from addressvlm.checks.preflight import PreflightError, run_preflight
from addressvlm.training.precision import dtype_census
from addressvlm.training.recipes import load_recipe, local_run_options, model_root_options, parse_cfg_options
from scripts import script

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted((REPO / "recipes").rglob("*.py"))
LLAVA = str(REPO / "recipes" / "stage1_pitts.py")
MINICPMV = str(REPO / "recipes" / "minicpmv26" / "stage1_pitts.py")


def quiet(_line: str) -> None:
    pass


def build(recipe: str, options: list[str]):
    from xtuner.registry import BUILDER

    cfg = load_recipe(recipe)
    cfg.merge_from_dict(parse_cfg_options(options))
    return BUILDER.build(cfg.model)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_every_recipe_states_the_dtype_it_loads_and_computes_in(path):
    cfg = load_recipe(str(path))
    if path.stem.startswith("clip_"):
        # The CLIP dual encoder fine-tunes every weight: fp32 weights, bf16 AMP compute, nothing frozen to halve.
        assert "torch_dtype" not in cfg.model and cfg.optim_wrapper.dtype == "bfloat16"
        return
    assert cfg.model.torch_dtype == "bfloat16"
    assert cfg.optim_wrapper.dtype == cfg.model.torch_dtype  # AMP computes in the frozen weights' dtype
    assert "model.torch_dtype=float32" in local_run_options(str(path))  # the one CPU switch


def test_llava_frozen_weights_half_trained_tensors_fp32(tiny_llava):
    on_gpu = build(LLAVA, model_root_options(load_recipe(LLAVA), str(tiny_llava)))
    census = dtype_census(on_gpu)
    # No fp32 frozen weight (peft's k-bit preparation used to upcast every one), and no half trained tensor.
    assert set(census["frozen"]) == {"bfloat16"}
    assert set(census["trainable"]) == {"float32"}
    assert {n for n, p in on_gpu.named_parameters() if p.requires_grad and "projector" in n}  # projector trained
    on_cpu = build(LLAVA, local_run_options(LLAVA, str(tiny_llava)))
    assert set(dtype_census(on_cpu)["frozen"]) == {"float32"}


def test_minicpmv_frozen_weights_half_trained_tensors_fp32(tiny_minicpmv):
    census = dtype_census(build(MINICPMV, model_root_options(load_recipe(MINICPMV), str(tiny_minicpmv))))
    assert set(census["frozen"]) == {"bfloat16"} and set(census["trainable"]) == {"float32"}


def test_vision_lora_stops_at_the_layer_the_llm_reads(tiny_llava):
    model = build(LLAVA, local_run_options(LLAVA, str(tiny_llava)))
    layers = model.visual_encoder.config.num_hidden_layers
    with_lora = {int(n.split(".layers.")[1].split(".")[0]) for n, _ in model.visual_encoder.named_parameters()
                 if "lora_" in n}
    assert with_lora == set(range(layers - 1))  # hidden_states[-2]: the last layer's output is never read


def test_preflight_passes_in_mixed_precision_on_both_backbones(tiny_llava, tiny_minicpmv):
    # bf16 frozen weights, fp32 trained tensors, bf16 autocast: the GPU recipes' layout, run on the CPU.
    for recipe, weights in ((LLAVA, tiny_llava), (MINICPMV, tiny_minicpmv)):
        figures = run_preflight(recipe, str(weights), steps=2, cfg_options=["model.torch_dtype=bfloat16"],
                                report=quiet)
        assert set(figures["dtypes"]["frozen"]) == {"bfloat16"}
        assert set(figures["dtypes"]["trainable"]) == {"float32"}
        assert len(figures["losses"]) == 2 and all(torch.isfinite(torch.tensor(figures["losses"])))
        assert figures["trainable_params"] > 0 and figures["frozen_params"] > 0


def test_preflight_json_is_checked_before_the_check(tiny_llava, tmp_path, capsys):
    """`--json` naming a folder or an unwritable place failed only after the whole preflight had run; naming the
    recipe would have overwritten it. One line now, before any work."""
    main = script("tools/preflight.py").main

    recipe = shutil.copy(LLAVA, tmp_path / "stage1_pitts.py")
    for out, message in ((tmp_path, f"{tmp_path}: --json is a folder: give a file name"),
                         ("/sys/preflight.json", "/sys/preflight.json: --json cannot be written: /sys refuses new"),
                         (recipe, f"{recipe}: --json is the recipe input itself")):
        with pytest.raises(SystemExit) as refused:
            main([str(recipe), "--weights", str(tiny_llava), "--json", str(out)])
        assert str(refused.value).startswith("error: ") and message in str(refused.value)
        assert "\n" not in str(refused.value) and capsys.readouterr().out == ""
    assert Path(recipe).read_bytes() == Path(LLAVA).read_bytes()


def test_preflight_names_dead_adapters(tiny_llava):
    every_layer = ["model.visual_encoder_lora.target_modules=[q_proj,k_proj,v_proj,out_proj,fc1,fc2]"]
    with pytest.raises(PreflightError, match="get no gradient.*layers\\.1\\."):
        run_preflight(LLAVA, str(tiny_llava), cfg_options=every_layer, report=quiet)


def test_preflight_names_missing_lora_targets(tiny_llava):
    with pytest.raises(PreflightError, match="a LoRA target does not exist.*nope_proj"):
        run_preflight(LLAVA, str(tiny_llava), cfg_options=["model.llm_lora.target_modules=[nope_proj]"], report=quiet)


def test_preflight_names_a_missing_projector(tiny_llava, tmp_path):
    release = shutil.copytree(tiny_llava, tmp_path / "llava-phi-3-mini-xtuner")
    shutil.rmtree(release / "projector")
    with pytest.raises(PreflightError, match="projector folder .*projector not found"):
        run_preflight(LLAVA, str(release), report=quiet)


def test_preflight_names_remote_code_that_does_not_import(tiny_minicpmv, tmp_path):
    release = shutil.copytree(tiny_minicpmv, tmp_path / "MiniCPM-V-2_6")
    resampler = release / "resampler.py"
    # A file of the release that the stand-in does not ship.
    resampler.write_text(resampler.read_text() + "\nfrom .tokenization_minicpmv_fast import MiniCPMVTokenizerFast\n")
    with pytest.raises(PreflightError, match="the model does not build.*tokenization_minicpmv_fast"):
        run_preflight(MINICPMV, str(release), report=quiet)


def test_the_stand_in_meets_the_release_import_failure(tiny_minicpmv):
    """A fresh process (the test process has the module cached): the hub code alone fails as the release does under
    our torch, the model class loads it, and torch.nn.functional is as before afterwards."""
    script = f"""
import torch.nn.functional as F
from transformers import AutoModel
try:
    AutoModel.from_pretrained({str(tiny_minicpmv)!r}, trust_remote_code=True)
    print("plain load: ok")
except NameError as error:
    print("plain load:", error)
from addressvlm.training.minicpmv import AddressMiniCPMV
model = AddressMiniCPMV({str(tiny_minicpmv)!r}, torch_dtype="float32")
print("wrapper:", type(model.model).__name__, "List" in dir(F))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "plain load: name 'List' is not defined" in done.stdout
    assert "wrapper: MiniCPMV False" in done.stdout


@pytest.mark.parametrize("recipe,folder", [(LLAVA, "./models/llava-phi-3-mini-xtuner"),
                                           (MINICPMV, "./models/MiniCPM-V-2_6")])
def test_training_without_weights_stops_with_one_line(recipe, folder, tmp_path):
    done = subprocess.run([sys.executable, "-m", "xtuner.tools.train", recipe, "--work-dir", str(tmp_path / "w")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: model folder ") and folder in last and "download" in last


def test_training_without_data_stops_with_one_line(tiny_llava, tmp_path):
    options = local_run_options(LLAVA, str(tiny_llava))  # weights there; ./data/pitts/stage1/train.json is not
    done = subprocess.run([sys.executable, "-m", "xtuner.tools.train", LLAVA, "--work-dir", str(tmp_path / "w"),
                           "--cfg-options", *options], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training data file ./data/pitts/stage1/train.json not found")


def test_xtuner_maps_a_small_file_in_this_process_and_a_city_in_32():
    """XTuner's LLaVA dataset tokenizes with 32 processes whatever the file's size; the shim sizes the pool, and
    maps a file of up to 1000 records without one (None: datasets forks a pool for num_proc=1)."""
    import xtuner.dataset.llava as llava
    from datasets import Dataset, DatasetDict

    from addressvlm.training.xtuner_shims import map_processes_for_size

    assert getattr(llava.process_hf_dataset, "sized_for_records", False)  # applied on import of the package
    asked = []
    sized = map_processes_for_size(lambda dataset, map_num_proc=32, **kwargs: asked.append(map_num_proc))
    for records, processes in ((34, None), (1000, None), (1001, 2), (100_000, 32)):
        sized(dataset=DatasetDict({"train": Dataset.from_dict({"id": list(range(records))})}))
        assert asked.pop() == processes, records


def test_a_config_is_formatted_once_per_text():
    """mmengine's pretty_text runs yapf on each call; the shim keeps the result of a text it has formatted."""
    import mmengine.config.config as mmengine_config
    from mmengine.config import Config

    import addressvlm.training.xtuner_shims  # noqa: F401  (what the recipes' classes import)

    assert getattr(mmengine_config.FormatCode, "formats_once", False)
    cfg = Config.fromfile(LLAVA)
    first = cfg.pretty_text
    cfg.merge_from_dict({"optim_wrapper.optimizer.lr": 1e-3})
    changed = cfg.pretty_text
    assert first != changed and "lr=0.001" in changed and cfg.pretty_text == changed


def not_a_training_recipe(kind: str, folder: Path) -> tuple[str, str]:
    """``(path, message)``: a file preflight and estimate_memory cannot use, and what they say about it."""
    if kind == "retrieval recipe":
        path = str(REPO / "recipes" / "retrieval" / "clip_pitts.py")
        return path, f"{path} is a retrieval recipe (CLIPDualEncoder): this tool takes the stage-1/stage-2 recipes"
    if kind == "python file":
        (folder / "notes.py").write_text("steps = 3\n")
        return str(folder / "notes.py"), f"{folder / 'notes.py'} is not an XTuner recipe: it defines no model"
    (folder / "figures.json").write_text('{"model": {"type": "x"}}\n')
    return str(folder / "figures.json"), f"{folder / 'figures.json'} is not an XTuner recipe (a .py config"


@pytest.mark.parametrize("kind", ["retrieval recipe", "python file", "json"])
def test_preflight_and_estimate_memory_name_a_file_that_is_not_a_training_recipe(kind, tiny_llava, tmp_path):
    import re

    estimate_memory = script("tools/estimate_memory.py").main
    preflight = script("tools/preflight.py").main

    path, message = not_a_training_recipe(kind, tmp_path)
    with pytest.raises(SystemExit, match=f"^preflight FAILED: {re.escape(message)}[^\n]*$"):
        preflight([path, "--weights", str(tiny_llava), "--device", "cpu"])
    with pytest.raises(SystemExit, match=f"^error: {re.escape(message)}[^\n]*$"):
        estimate_memory([path])


def test_preflight_names_a_release_without_its_tokenizer(tiny_llava, tmp_path):
    release = shutil.copytree(tiny_llava, tmp_path / "llava-phi-3-mini-xtuner")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (release / name).unlink()
    with pytest.raises(PreflightError, match=f"^no tokenizer loads from {release}: its files .* are missing"):
        run_preflight(LLAVA, str(release), report=quiet)
