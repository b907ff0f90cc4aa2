"""Table 4's variants A, B, D, E (recipes/ablations/): each stage 1 -> stage 2 chain trains through
`python -m xtuner.tools.train` on the tiny model, and stage 2 holds every part as its stage_chain declares."""
from pathlib import Path

import pytest
import torch

from addressvlm.model import LLAVA_CHAIN_PARTS
from addressvlm.runtime import train
from addressvlm.stage_chain import StageChainError, find_last_checkpoint

from conftest import build_model, local_recipe, write_colour_city

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
ABLATIONS = RECIPES / "ablations"
# Each row's stage 1: rows A and B share one (neither VE nor LLM), D has C's (LLM only), E the paper's own (both).
STAGE1_RECIPES = {"AB": ABLATIONS / "table4_AB_stage1.py", "CD": ABLATIONS / "table4_CD_stage1.py",
                  "ours": RECIPES / "stage1_pitts.py"}
STAGE1_OF_ROW = {"A": "AB", "B": "AB", "D": "CD", "E": "ours"}
# What each stage-2 checkpoint holds: A trains no CLIP LoRA; E saves its frozen one unchanged.
STAGE2_PARTS = {"A": {"llm_lora", "projector"}, "B": set(LLAVA_CHAIN_PARTS), "D": set(LLAVA_CHAIN_PARTS),
                "E": set(LLAVA_CHAIN_PARTS)}


def stage2_recipe(row: str) -> str:
    return str(ABLATIONS / f"table4_{row}_stage2.py")


def few_steps(city: Path, data_file: str) -> dict:
    """Two iterations on the 4-image city, the second at lr 1e-3, so trained tensors move visibly."""
    return {"train_dataloader.dataset.data_path": str(city / data_file),
            "train_dataloader.dataset.image_folder": str(city),
            "train_dataloader.batch_size": 2, "train_dataloader.sampler.per_device_batch_size": 2,
            "optim_wrapper.accumulative_counts": 1, "optim_wrapper.optimizer.lr": 1e-3, "train_cfg.max_epochs": 1,
            "param_scheduler.0.end": 0.5, "param_scheduler.1.begin": 0.5, "param_scheduler.1.end": 1,
            "default_hooks.checkpoint.interval": 2, "randomness.seed": 0}


def stage2_run(table4: dict, stage1: str) -> dict:
    """A stage 2 started from the work_dir of the stage 1 named ``stage1`` (a key of ``STAGE1_RECIPES``)."""
    return {**few_steps(table4["city"], "vqa/train.json"),
            "model.init_from_work_dir": str(table4["stage1"][stage1])}


def final_state(work_dir: Path) -> dict:
    return torch.load(find_last_checkpoint(work_dir), map_location="cpu", weights_only=False)["state_dict"]


def part(state: dict, name: str) -> dict:
    return {k: v for k, v in state.items() if LLAVA_CHAIN_PARTS[name](k)}


@pytest.fixture(scope="module")
def table4(tmp_path_factory, tiny_llava):
    """The three stage-1 runs, then stage 2 of rows A, B, D and E, two iterations each, once for the module. A run
    this short is mostly process start-up, so two go side by side on one thread each."""
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path_factory.mktemp("table4")
    city = write_colour_city(root / "city", n_images=4)
    with ThreadPoolExecutor(max_workers=2) as pool:
        stage1 = dict(zip(STAGE1_RECIPES, pool.map(
            lambda item: train(str(item[1]), root / f"stage1_{item[0]}", str(tiny_llava),
                               overrides=few_steps(city, "stage1/train.json"), threads=1),
            STAGE1_RECIPES.items())))
        table4 = {"city": city, "stage1": stage1, "model_root": tiny_llava}
        table4["stage2"] = dict(zip(STAGE1_OF_ROW, pool.map(
            lambda row: train(stage2_recipe(row), root / f"stage2_{row}", str(tiny_llava),
                              overrides=stage2_run(table4, STAGE1_OF_ROW[row]), threads=1),
            STAGE1_OF_ROW)))
    return table4


@pytest.mark.slow
@pytest.mark.parametrize("row", sorted(STAGE1_OF_ROW))
def test_every_row_chains_and_saves_its_parts(table4, row):
    log = (table4["stage2"][row] / "train_stdout.log").read_text()
    assert "tensors loaded and checked" in log
    saved = final_state(table4["stage2"][row])
    assert {name for name in LLAVA_CHAIN_PARTS if part(saved, name)} == STAGE2_PARTS[row]
    # Continued parts: trained on from stage 1's values, so they moved.
    before = final_state(table4["stage1"][STAGE1_OF_ROW[row]])
    assert any(not torch.equal(value, saved[key]) for key, value in part(before, "projector").items())


@pytest.mark.slow
def test_a_frozen_part_is_loaded_kept_and_gets_no_gradient(table4):
    """Row E: CLIP's LoRA from stage 1 leaves stage 2 bit for bit, the LLM's LoRA trained on beside it."""
    from xtuner.registry import BUILDER

    stage1, stage2 = final_state(table4["stage1"]["ours"]), final_state(table4["stage2"]["E"])
    for key, value in part(stage1, "visual_encoder_lora").items():
        assert torch.equal(stage2[key], value), key
    assert any(not torch.equal(value, stage2[key]) for key, value in part(stage1, "llm_lora").items())

    cfg = local_recipe(stage2_recipe("E"), table4["model_root"], stage2_run(table4, "ours"))
    model = BUILDER.build(cfg.model)
    dataset = BUILDER.build(cfg.train_dataloader.dataset)
    collate = dict(cfg.train_dataloader.collate_fn)
    batch = collate.pop("type")([dataset[0], dataset[1]], **collate)
    model.train()
    model(batch["data"], mode="loss")["loss"].backward()
    parameters = dict(model.named_parameters())
    frozen = [parameters[k] for k in part(stage1, "visual_encoder_lora")]
    assert frozen and all(not p.requires_grad and p.grad is None for p in frozen)
    trained = [p for name, p in parameters.items() if p.requires_grad]
    assert trained and all(p.grad is not None for p in trained)


@pytest.mark.slow
@pytest.mark.parametrize("row,opened", [("A", "llm_lora"), ("B", "llm_lora"), ("B", "visual_encoder_lora"),
                                        ("D", "visual_encoder_lora")])
def test_an_opened_part_starts_fresh(table4, row, opened):
    """Stage 1 did not train it: peft's fresh adapter (B = 0, the identity), while continued parts are stage 1's."""
    model = build_model(stage2_recipe(row), table4["model_root"], stage2_run(table4, STAGE1_OF_ROW[row]))
    state = model.state_dict()
    fresh = part(state, opened)
    assert fresh and all(torch.count_nonzero(v) == 0 for k, v in fresh.items() if ".lora_B." in k)
    stage1 = final_state(table4["stage1"][STAGE1_OF_ROW[row]])
    assert not part(stage1, opened)
    for key, value in part(stage1, "projector").items():
        assert torch.equal(state[key], value), key


@pytest.mark.slow
@pytest.mark.parametrize("recipe,stage1,message", [
    # Stage 1 trained CLIP's LoRA, which row D declares opened fresh.
    (stage2_recipe("D"), "ours", r"visual_encoder_lora is declared 'open' but the previous stage trained it .*"
                                 r"visual_encoder\..*lora_A"),
    # Row E carries CLIP's LoRA frozen, but this stage 1 never trained one.
    (stage2_recipe("E"), "CD", r"visual_encoder_lora \(frozen\): trained by this model but not in the checkpoint: "
                               r"\['visual_encoder\..*lora_A"),
    # The paper's stage 2 continues the LLM's LoRA, which a projector-only stage 1 did not train.
    (str(RECIPES / "stage2_pitts.py"), "AB", r"llm_lora \(continue\): trained by this model but not in the "
                                             r"checkpoint: \['llm\..*lora_A"),
    # Row A trains no CLIP LoRA and declares nothing for stage 1's.
    (stage2_recipe("A"), "ours", r"visual_encoder_lora \(continue\): in the checkpoint but not in this model: "
                                 r"\['visual_encoder\..*lora_A"),
])
def test_a_declaration_that_does_not_match_stage1_names_the_keys(table4, recipe, stage1, message):
    with pytest.raises(StageChainError, match=message):
        build_model(recipe, table4["model_root"], stage2_run(table4, stage1))


def test_a_declaration_of_unknown_parts_or_modes_is_refused():
    from addressvlm.stage_chain import chain_plan

    assert chain_plan(LLAVA_CHAIN_PARTS, None) == dict.fromkeys(LLAVA_CHAIN_PARTS, "continue")
    with pytest.raises(StageChainError, match=r"\['vision_lora'\].*'llm_lora'"):
        chain_plan(LLAVA_CHAIN_PARTS, {"vision_lora": "open"})
    with pytest.raises(StageChainError, match="'freeze'.*'frozen'"):
        chain_plan(LLAVA_CHAIN_PARTS, {"projector": "freeze"})
