"""The real two-stage run: `python -m xtuner.tools.train` on the tiny model through child city recipes."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from addressvlm.training.dataset import check_llava_inputs
from addressvlm.training.stage_chain import StageChainError, find_last_checkpoint
from addressvlm.training.recipes import local_run_options
from addressvlm.training.launcher import read_losses, train

from conftest import build_model, copy_recipes, write_colour_city

REPO = Path(__file__).resolve().parent.parent

# 16 images, batch 2 -> 8 iterations per epoch, 2 epochs. A warm-up of 2 iterations (not the 0.03 x 16 < 1 iteration
# that would leave lr at lr x 1e-5 for the run) and an lr a tiny random model can learn with in 16 steps.
TINY_RUN = {
    "train_dataloader.batch_size": 2, "train_dataloader.sampler.per_device_batch_size": 2,
    "optim_wrapper.accumulative_counts": 1, "optim_wrapper.optimizer.lr": 1e-3,
    "train_cfg.max_epochs": 2, "param_scheduler.0.end": 0.25, "param_scheduler.1.begin": 0.25,
    "param_scheduler.1.end": 2, "default_hooks.logger.interval": 1, "default_hooks.checkpoint.interval": 8,
    "randomness.seed": 0,
}


def chained(state: dict) -> dict:
    return {k: v for k, v in state.items() if "lora_" in k or k.startswith("projector.")}


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_llava):
    """Stage 1 then stage 2 of a child city ("chaintown"), each trained once for the module."""
    from addressvlm.data.city_recipes import write_city_recipes

    root = tmp_path_factory.mktemp("chain")
    city = write_colour_city(root / "city")
    work = root / "work"
    recipes = write_city_recipes("chaintown", str(city), copy_recipes(root), work_root=str(work))
    stage1 = train(str(recipes[0]), work / "stage1_chaintown", str(tiny_llava), overrides=TINY_RUN)
    stage2 = train(str(recipes[1]), work / "stage2_chaintown", str(tiny_llava), overrides=TINY_RUN)
    return {"recipes": recipes, "stage1": stage1, "stage2": stage2, "model_root": tiny_llava, "city": city}


def mean(values):
    return sum(values) / len(values)


@pytest.mark.slow
def test_both_stages_learn(chain):
    for stage in ("stage1", "stage2"):
        losses = [loss for _, loss in sorted(read_losses(chain[stage]).items())]
        assert len(losses) == 16
        assert mean(losses[-3:]) < mean(losses[:3]) - 0.05, losses


@pytest.mark.slow
def test_stage2_starts_exactly_where_stage1_ended(chain):
    final = torch.load(find_last_checkpoint(chain["stage1"]), map_location="cpu", weights_only=False)["state_dict"]
    expected = chained(final)
    model = build_model(str(chain["recipes"][1]), chain["model_root"], TINY_RUN)
    got = chained(model.state_dict())
    assert set(got) == set(expected)
    assert any(".lora_A." in k for k in got) and any(k.startswith("projector.") for k in got)
    assert any("visual_encoder" in k and "lora_" in k for k in got)  # LoRA on CLIP too
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    log = (chain["stage2"] / "train_stdout.log").read_text()
    assert "tensors loaded and checked" in log


@pytest.mark.slow
def test_stage2_refuses_a_mismatched_stage1(chain):
    with pytest.raises(StageChainError, match="lora_A"):
        build_model(str(chain["recipes"][1]), chain["model_root"], {**TINY_RUN, "model.llm_lora.r": 64})


@pytest.mark.slow
def test_stage2_refuses_a_missing_stage1(chain, tmp_path):
    with pytest.raises(StageChainError, match="does not exist"):
        build_model(str(chain["recipes"][1]), chain["model_root"],
                    {**TINY_RUN, "model.init_from_work_dir": str(tmp_path / "never_trained")})


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_losses(chain, tmp_path):
    uninterrupted = read_losses(chain["stage2"])
    resumed_dir = train(str(chain["recipes"][1]), tmp_path / "resumed", str(chain["model_root"]),
                        overrides=TINY_RUN, resume=str(chain["stage2"] / "iter_8.pth"))
    resumed = read_losses(resumed_dir)
    assert sorted(resumed) == list(range(9, 17))
    for step, loss in resumed.items():
        assert loss == pytest.approx(uninterrupted[step], abs=1e-5), step


@pytest.mark.slow
def test_converted_and_merged_model_loads_and_generates(chain, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel

    recipe = str(chain["recipes"][1])
    options = local_run_options(recipe, str(chain["model_root"]))
    hf = tmp_path / "hf"
    subprocess.run([sys.executable, "-m", "xtuner.tools.model_converters.pth_to_hf", recipe,
                    str(find_last_checkpoint(chain["stage2"])), str(hf), "--fp32", "--cfg-options", *options],
                   check=True, capture_output=True)
    assert {"llm_adapter", "visual_encoder_adapter", "projector"} <= {p.name for p in hf.iterdir()}
    merged_llm, merged_clip = tmp_path / "merged_llm", tmp_path / "merged_clip"
    merge = [sys.executable, "-m", "xtuner.tools.model_converters.merge"]
    subprocess.run([*merge, str(chain["model_root"]), str(hf / "llm_adapter"), str(merged_llm)],
                   check=True, capture_output=True)
    subprocess.run([*merge, str(chain["model_root"] / "visual_encoder"), str(hf / "visual_encoder_adapter"),
                    str(merged_clip), "--is-clip"], check=True, capture_output=True)

    tokenizer = AutoTokenizer.from_pretrained(merged_llm)
    llm = AutoModelForCausalLM.from_pretrained(merged_llm)
    base = AutoModelForCausalLM.from_pretrained(chain["model_root"])
    ids = tokenizer("<|user|>\nWhat colour is this image?<|end|>\n<|assistant|>\n", return_tensors="pt").input_ids
    out = llm.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    # The merge carried the trained adapters: the merged LLM is not the base one.
    assert not torch.allclose(llm(ids).logits, base(ids).logits)
    assert CLIPVisionModel.from_pretrained(merged_clip).config.image_size == 56


def test_missing_data_file_and_image_folder_fail_with_the_path(tmp_path):
    city = write_colour_city(tmp_path / "city", n_images=4)
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        check_llava_inputs(str(city / "nowhere.json"), str(city))
    with pytest.raises(FileNotFoundError, match="no_images"):
        check_llava_inputs(str(city / "vqa" / "train.json"), str(city / "no_images"))
    (city / "images" / "002.jpg").unlink()
    with pytest.raises(ValueError, match="images/002.jpg"):
        check_llava_inputs(str(city / "vqa" / "train.json"), str(city))


def test_a_recipe_without_the_trained_projector_refuses_to_start(tiny_llava, tmp_path):
    recipe = str(REPO / "recipes" / "stage1_pitts.py")
    with pytest.raises(StageChainError, match="trained LLaVA-Phi3-mini projector"):
        build_model(recipe, tiny_llava, {"model.projector_name_or_path": None})
    with pytest.raises(StageChainError, match="not found"):
        build_model(recipe, tiny_llava, {"model.projector_name_or_path": str(tmp_path / "missing")})


def test_train_fails_loudly_on_a_missing_data_file(tiny_llava, tmp_path):
    """Through the real CLI: the exit code is checked and the message names the path."""
    recipe = str(REPO / "recipes" / "stage1_pitts.py")
    missing = tmp_path / "city" / "stage1" / "train.json"
    with pytest.raises(RuntimeError, match=str(missing)):
        train(recipe, tmp_path / "work", str(tiny_llava),
              overrides={"train_dataloader.dataset.data_path": str(missing),
                         "train_dataloader.dataset.image_folder": str(tmp_path)})
