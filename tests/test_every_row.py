"""Every row of the paper's tables that no other test trains runs by its recipe name on the (quick) demo city: its
data variant built as tools/paper_table.py builds it, one iteration through XTuner's train entry point, each stage 2
continuing the stage 1 its row names. Tables 4 and 1's "separate" row train in test_table4_chain and
test_table1_two_images, Table 2's GeoReasoner in test_georeasoner, the paper's own recipes in the demo.

The runs share this process (``launcher.train(..., in_process=True)``: XTuner's train entry point with the same
`--cfg-options` a CPU run gets). Twenty fresh interpreters would cost more than the twenty iterations."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from addressvlm.runs.engine import lora_overrides
from addressvlm.runs.paper_tables import (DEMO_RUNS, MAIN_STAGE1, STAGE1_VARIANTS, TABLES, VQA_DENSITIES, check_chain,
                                          city_of, city_roots, ensure_data, recipe_data, run_name)
from addressvlm.core.records import read_llava_json, write_llava_json
from addressvlm.training.launcher import read_losses, train

from conftest import few_steps

TRAINED_ELSEWHERE = {"ablations/table1_two_images_stage1.py", "ablations/table1_two_images_stage2.py",
                     "ablations/table2_georeasoner_stage1.py", "ablations/table2_georeasoner_stage2.py"}
# Each row once (Table 3 shares Table 9's delta-0.3 row); the Baseline trains in the demo.
ROWS = list({row.stage2: row for table in TABLES.values() if table.key != "4" for row in table.rows
             if row.stage2 and row.stage2.startswith("ablations/") and row.stage2 not in TRAINED_ELSEWHERE
             and run_name(row.stage2) not in DEMO_RUNS}.values())


def second_city(city: Path, root: Path) -> Path:
    """The demo city again under another name (ids start with the city's folder), for Table 5's two-city merge."""
    from addressvlm.data.stage1_json import build_stage1_json
    from addressvlm.data.vqa import build_vqa

    other = root / "sf"
    shutil.copytree(city, other, symlinks=True)
    build_vqa(other / "locations.csv", other / "vqa", seed=1)
    build_stage1_json(other)
    return other


def general_data(city: Path) -> Path:
    """A small stand-in for llava_v1_5_mix665k beside the city (data/llava/ as the recipes' headers lay it out):
    general questions on pictures of its own, enough records for Table 6's 5:1 mix."""
    from PIL import Image

    llava = city.parent / "llava"
    (llava / "images").mkdir(parents=True)
    for i, colour in enumerate(("red", "green", "blue")):
        Image.new("RGB", (64, 48), colour).save(llava / "images" / f"{i}.jpg")
    address = read_llava_json(city / "vqa" / "train.json")
    records = [{"id": f"general/{i}", "image": f"images/{i % 3}.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour fills this picture?"},
        {"from": "gpt", "value": ("red", "green", "blue")[i % 3]}]} for i in range(5 * len(address))]
    write_llava_json(llava / "llava_v1_5_mix665k.json", records)
    return llava / "llava_v1_5_mix665k.json"


@pytest.fixture(scope="module")
def cities(quick_demo, tmp_path_factory):
    """A copy of the quick demo's city (the variants built here leave the shared one as it was), Table 5's merge of
    it with a second copy, and Table 6's mixes."""
    from addressvlm.data.vqa import merge_city_roots, mix_general

    root = tmp_path_factory.mktemp("rows")
    city = root / "pitts"
    shutil.copytree(quick_demo.city, city, symlinks=True)
    merged = root / "pitts_sf"
    merge_city_roots([("pitts", city), ("sf", second_city(city, root))], merged)
    general = general_data(city)
    for per_address in (5, 1):
        mix_general(city / "vqa" / "train.json", general, city / f"vqa_general{per_address}" / "train.json",
                    per_address, address_prefix=city.name, general_prefix="llava")
    return city_roots(city, merged)


def check_variant(city: Path, data_file: str) -> None:
    """A stage-1 variant: its own image folder of 336 px images, every training street view once, the unlabelled
    crops' question naming no labels; a density: fewer records than the full VQA data."""
    from PIL import Image

    records = read_llava_json(city / data_file)
    if data_file in STAGE1_VARIANTS:
        images = {Path(r["image"] if isinstance(r["image"], str) else r["image"][0]).parts[1] for r in records}
        assert len(images) == 1 and images != {"grafted"}, images
        first = records[0]["image"]
        with Image.open(city / (first if isinstance(first, str) else first[0])) as image:
            assert image.size == (336, 336)
        assert len(records) == len(read_llava_json(city / "stage1" / "train.json"))
        if not STAGE1_VARIANTS[data_file].map_labels:
            assert "labelled" not in records[0]["conversations"][0]["value"]
    elif data_file in VQA_DENSITIES:
        assert 0 < len(records) < len(read_llava_json(city / "vqa" / "train.json"))


def one_iteration(quick_demo, recipe: str, data_city: Path, continues: Path | None, is_stage2: bool) -> dict:
    data = recipe_data(recipe)
    overrides = {**few_steps(data_city, data.data_file), **lora_overrides(quick_demo.settings, data.recipe),
                 "train_dataloader.dataset.image_folder": str((data_city / data.image_folder).resolve()) + "/",
                 "train_cfg.max_epochs": None, "train_cfg.max_iters": 1, "default_hooks.checkpoint.interval": 1,
                 "default_hooks.logger.interval": 1, "model.use_activation_checkpointing": False}
    if is_stage2:
        overrides["model.init_from_work_dir"] = str(continues) if continues else None
    return overrides


def test_every_untested_row_is_listed():
    names = {row.name for row in ROWS}
    assert len(ROWS) == 14 and {"table1_stitched_stage2", "table5_pitts_sf_stage2", "table6_general5_stage2",
                                "fig7_locations25_stage2", "table9_d07_stage2", "table3_noroad_d03_stage2"} <= names


@pytest.mark.slow
def test_every_row_trains_by_its_recipe_name_and_chains(quick_demo, cities, tmp_path):
    work = tmp_path / "work"
    runs = {MAIN_STAGE1: quick_demo.work / DEMO_RUNS[run_name(MAIN_STAGE1)]}   # the demo's own stage 1
    for row in ROWS:
        check_chain(row)
        for recipe, is_stage2 in ((row.stage1, False), (row.stage2, True)):
            if recipe in runs:
                continue
            data = recipe_data(recipe)
            data_city = city_of(data, cities)
            ensure_data(data_city, data, "rule", None)
            check_variant(data_city, data.data_file)
            overrides = one_iteration(quick_demo, recipe, data_city, runs.get(row.stage1), is_stage2)
            runs[recipe] = train(str(data.recipe), work / run_name(recipe), str(quick_demo.model), overrides=overrides,
                                 in_process=True)
            losses = read_losses(runs[recipe])
            assert list(losses) == [1] and 0 < losses[1] < 50, (recipe, losses)
            dumped = (runs[recipe] / data.recipe.name).read_text()      # the config the run saved
            assert str(data_city / data.data_file) in dumped, recipe
            if is_stage2 and row.stage1:
                assert str(runs[row.stage1]) in dumped, (recipe, row.stage1)
    assert len(runs) == 1 + 14 + 6  # the demo's stage 1, the 14 rows' stage 2, their 6 own stage 1
