"""Stage 3 for real: tools/train_stage3.py runs two GRPO steps of TRL's GRPOTrainer in .venv-modern (`make test`
builds it) on the tiny LLaVA exported from a stage-2 checkpoint, over a small city's training split, and writes
the trained model back as a folder eval/infer.py --hf answers with."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from addressvlm.checks.vllm_check import MODERN_PYTHON, modern_environment
from addressvlm.core.records import read_predictions, read_questions, read_reward_curve, write_locations
from addressvlm.data.vqa import build_vqa
from addressvlm.training.image_prompts import padding_colour
from helpers import RECIPE, REPO
from synthetic_city import city_rows, write_images

pytestmark = pytest.mark.skipif(not MODERN_PYTHON.is_file(),
                                reason=f"{MODERN_PYTHON} not built (make modern-env; make test builds it)")


def write_city(root):
    """Eight one-view locations on six streets in four districts (multiple choice needs three wrong names), their
    VQA folder, and each street's line through its locations."""
    rows = city_rows(n_locations=8, views=1, n_streets=6, n_districts=4, seed=0)
    write_images(root, rows)  # 24 x 16: padding shows
    write_locations(root / "locations.csv", rows)
    build_vqa(root / "locations.csv", root / "vqa")
    lines = {}
    for row in rows:
        lines.setdefault(row.street, []).append([row.lon, row.lat])
    features = [{"type": "Feature", "properties": {"name": street},
                 "geometry": {"type": "LineString", "coordinates": sorted(points) * (2 if len(points) == 1 else 1)}}
                for street, points in lines.items()]
    (root / "streets.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return root


def train_stage3(*arguments):
    """Run as from a process where XTuner trained before (its train entry point leaves LOCAL_RANK set), which must
    not make the one trainer process wait for a rendezvous."""
    return subprocess.run([sys.executable, str(REPO / "tools" / "train_stage3.py"), *map(str, arguments)],
                          capture_output=True, text=True, cwd=REPO, timeout=600, env={**os.environ, "LOCAL_RANK": "0"})


@pytest.fixture(scope="module")
def stage3(tmp_path_factory, tiny_llava, checkpoint, options):
    """Two GRPO steps on the judgment questions, four rollouts each, sampled from "Yes" and "No" alone (every other
    token suppressed, a reply of one token), so that a group's rewards differ and the step moves the LoRA."""
    from transformers import AutoTokenizer

    from addressvlm.answering.export import export_hf

    root = tmp_path_factory.mktemp("stage3")
    export = export_hf(RECIPE, checkpoint, root / "stage2_hf", dtype="float32", model_root=tiny_llava)
    city = write_city(root / "city")
    tokenizer = AutoTokenizer.from_pretrained(export)
    replies = [tokenizer.convert_tokens_to_ids(word) for word in ("Yes", "No")]
    recipe = {
        "model_name_or_path": str(export), "dtype": "float32", "use_peft": True, "lora_r": 8, "lora_alpha": 16,
        "lora_target_modules": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
        "city": str(city), "streets": str(city / "streets.geojson"), "reward_mode": "hierarchical_distance",
        "question_types": ["judgment"], "output_dir": str(root / "run"), "max_steps": 2,
        "per_device_train_batch_size": 4, "num_generations": 4, "max_completion_length": 1, "learning_rate": 0.01,
        "beta": 0.001, "bf16": False, "use_cpu": True, "gradient_checkpointing": False, "logging_steps": 1,
        "save_strategy": "no", "report_to": "none", "seed": 0,
        "generation_kwargs": {"suppress_tokens": [i for i in range(len(tokenizer)) if i not in replies]},
    }
    config = root / "recipe.yaml"
    config.write_text(json.dumps(recipe))  # JSON is YAML
    done = train_stage3("--config", config)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return export, city, root / "run", done.stdout + done.stderr


def test_grpo_steps_move_the_lora_and_log_the_reward(stage3):
    export, _, run, output = stage3
    logged = [float(value) for value in re.findall(r"'rewards/street_reward_hierarchical_distance/mean': '([^']+)'",
                                                   output)]
    assert len(logged) == 2 and all(0 <= value <= 1 for value in logged), output[-3000:]
    # the curve beside the run holds what TRL logged, one line a step, and its picture was drawn
    curve = read_reward_curve(run / "reward_curve.jsonl")
    assert [row["step"] for row in curve] == [1, 2]
    assert [round(row["reward"], 4) for row in curve] == [round(value, 4) for value in logged]
    Image.open(run / "reward_curve.png").verify()
    assert f"reward curve -> {run / 'reward_curve.png'}" in output
    adapter = load_file(run / "adapter_model.safetensors")
    moved = [name for name, tensor in adapter.items() if "lora_B" in name and tensor.abs().max() > 0]
    assert moved and all("language_model" in name for name in moved)  # lora_B starts at zero
    before, after = load_file(export / "model.safetensors"), load_file(run / "hf" / "model.safetensors")
    assert after.keys() == before.keys()
    name = "language_model.model.layers.0.self_attn.qkv_proj.weight"
    assert not torch.equal(after[name], before[name])
    assert torch.equal(after["vision_tower.vision_model.post_layernorm.weight"],
                       before["vision_tower.vision_model.post_layernorm.weight"])  # no LoRA on CLIP


def test_prompts_are_the_training_split_padded_to_a_square(stage3):
    export, city, run, _ = stage3
    prompts = read_questions(run / "prompts" / "questions.jsonl")
    held_out = {q["image"] for name in ("test", "val")
                for q in read_questions(city / "vqa" / f"{name}_questions.jsonl")}
    assert prompts and {q["qtype"] for q in prompts} == {"judgment"}
    assert not {q["image"] for q in prompts} & held_out
    mean = json.loads((export / "preprocessor_config.json").read_text())["image_mean"]
    for q in prompts:
        padded = Image.open(run / "prompts" / "images" / f"{q['image']}.png")
        assert padded.size == (24, 24) and padded.getpixel((0, 0)) == padding_colour(mean)


def test_the_way_back_answers_the_questions(stage3, tmp_path):
    """<output_dir>/hf, from the folder transformers 5 saved, is what eval/infer.py --hf loads (transformers 4.48)."""
    _, city, run, _ = stage3
    questions = city / "vqa" / "test_questions.jsonl"
    out = tmp_path / "predictions.jsonl"
    done = subprocess.run([sys.executable, str(REPO / "eval" / "infer.py"), "--hf", str(run / "hf"), "--questions",
                           str(questions), "--out", str(out), "--max-new-tokens", "4"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    answers = read_predictions(out)
    assert answers.keys() == {q["question_id"] for q in read_questions(questions)}
    assert all(text for _, text in answers.values())


def test_the_way_back_refuses_another_model(stage3, tmp_path):
    from addressvlm.answering.export import transformers4_folder

    export, _, run, _ = stage3
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text((export / "config.json").read_text())
    weights = load_file(export / "model.safetensors")
    del weights["multi_modal_projector.linear_2.bias"]
    save_file(weights, other / "model.safetensors")
    with pytest.raises(ValueError, match=r"is not the model of .*: their tensors differ \(first: "
                                         r"'multi_modal_projector\.linear_2\.bias'\)"):
        transformers4_folder(other, export, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_recipes_are_trls_fields_and_variants_differ_by_the_reward():
    """Every recipe parses into TRL's dataclasses as the trainer parses it (on this CPU: --use_cpu, for the bf16 the
    GPU recipes ask); a reward variant is its base recipe with another reward_mode and output_dir."""
    import yaml

    recipes = sorted((REPO / "recipes" / "stage3").glob("*.yaml"))
    parse = ("import json, sys\n"
             "from addressvlm.runs.grpo import parse_recipe\n"
             "for path in sys.argv[1:]:\n"
             "    stage3, config, model = parse_recipe(['--config', path, '--use_cpu', 'true'])\n"
             "    print(json.dumps([stage3.reward_mode, config.use_vllm, config.vllm_mode, model.use_peft]))\n")
    done = subprocess.run([str(MODERN_PYTHON), "-c", parse, *map(str, recipes)], capture_output=True, text=True,
                          cwd=REPO, env=modern_environment(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    parsed = dict(zip([path.stem for path in recipes], map(json.loads, done.stdout.splitlines()), strict=True))
    for city in ("pitts", "sf", "tokyo"):
        assert parsed[city] == ["hierarchical_distance", True, "colocate", True]  # vLLM rollouts on the GPUs
    assert parsed["helsinki"] == ["hierarchical_distance", False, "colocate", True]  # plain generation on the CPU
    for base in ("pitts", "helsinki"):
        recipe = yaml.safe_load((REPO / "recipes" / "stage3" / f"{base}.yaml").read_text())
        for mode in ("exact", "hierarchical"):
            variant = yaml.safe_load((REPO / "recipes" / "stage3" / f"{base}_reward_{mode}.yaml").read_text())
            assert variant == {**recipe, "reward_mode": mode, "output_dir": f"{recipe['output_dir']}_reward_{mode}"}
            assert parsed[f"{base}_reward_{mode}"][0] == mode


def test_help_and_a_bad_recipe_in_one_line(tmp_path):
    assert train_stage3("--help").returncode == 0
    config = tmp_path / "recipe.yaml"
    config.write_text("output_dir: x\nmodel_name_or_path: y\n")
    done = train_stage3("--config", config)
    assert done.returncode == 1 and done.stderr == f"error: {config}: no city, streets\n"
