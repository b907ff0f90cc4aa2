"""The paper's tables by name (addressvlm/paper_tables.py, tools/paper_table.py): every row names recipes that
exist and chain, every data variant a row needs is built from a city and read by its recipe's dataset, and bad
requests end in one line. Table 4 is filled end to end in test_table4_chain.py."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from addressvlm.paper_tables import RECIPES, STAGE1_VARIANTS, TABLES, check_chain, ensure_data, recipe_data, select_rows
from addressvlm.records import DataError, read_llava_json

from conftest import local_recipe

REPO = Path(__file__).resolve().parent.parent


def every_row():
    return [(key, row) for key, table in TABLES.items() for row in table.rows]


@pytest.mark.parametrize("key,row", every_row(), ids=lambda v: v if isinstance(v, str) else v.name)
def test_every_row_names_recipes_that_exist_and_chain(key, row):
    for recipe in (row.stage1, row.stage2):
        assert recipe is None or (RECIPES / recipe).is_file(), recipe
    if row.stage2:
        check_chain(row)   # its stage 2 continues the run of the stage 1 the row names


def test_every_ablation_recipe_is_a_row_of_some_table():
    named = {recipe for _, row in every_row() for recipe in (row.stage1, row.stage2) if recipe}
    beyond_the_paper = {"retrieval_hint_stage2.py"}  # docs/retrieval.md, section 6
    assert {f"ablations/{p.name}" for p in (RECIPES / "ablations").glob("*.py")
            if p.name not in beyond_the_paper} <= named


def test_a_chain_that_does_not_match_its_row_is_refused():
    from dataclasses import replace

    row = next(r for r in TABLES["4"].rows if r.name == "table4_A_stage2")
    with pytest.raises(ValueError, match="table4_A_stage2.py continues .*table4_AB_stage1.*table4_CD_stage1"):
        check_chain(replace(row, stage1="ablations/table4_CD_stage1.py"))
    with pytest.raises(SystemExit, match="no row.*nope.*table4_A_stage2"):
        select_rows(TABLES["4"], ["nope"])


@pytest.fixture(scope="module")
def variant_city(quick_demo, tmp_path_factory):
    """A copy of the quick demo's city, so the variants built here leave the shared one as it was."""
    city = tmp_path_factory.mktemp("variants") / "city"
    shutil.copytree(quick_demo.city, city)
    return city


def recipes_training_on(data_file: str) -> list[str]:
    return sorted({recipe for _, row in every_row() for recipe in (row.stage1, row.stage2)
                   if recipe and (RECIPES / recipe).is_file() and recipe_data(recipe).data_file == data_file})


# One of each kind of variant (a delta with its crops kept clear, unlabelled crops, a density): the builders
# themselves (graft variants, crops, build_vqa's fractions) are tested in their own files.
@pytest.mark.slow
@pytest.mark.parametrize("data_file", ["stage1/train_d07.json", "stage1/train_noroad_d05.json",
                                       "vqa_views12/train.json"])
def test_every_data_variant_is_built_and_read_by_its_recipes_dataset(variant_city, quick_demo, data_file):
    from xtuner.registry import BUILDER

    recipes = recipes_training_on(data_file)
    assert recipes, f"no row trains on {data_file}"
    ensure_data(variant_city, recipe_data(recipes[0]), "rule", None)
    records = read_llava_json(variant_city / data_file)
    assert records
    if data_file in STAGE1_VARIANTS:
        spec = STAGE1_VARIANTS[data_file]
        images = {Path(r["image"]).parts[1] for r in records}
        assert len(images) == 1 and images != {"grafted"}, images      # its own folder, not the main grafts
        with Image.open(variant_city / records[0]["image"]) as image:
            assert image.size == (336, 336)
        main = read_llava_json(variant_city / "stage1" / "train.json")
        assert len(records) == len(main)                                # every training street view, once
        if not spec.map_labels:
            assert "labelled" not in records[0]["conversations"][0]["value"]
    else:
        main = read_llava_json(variant_city / "vqa" / "train.json")
        assert 0 < len(records) < len(main)                             # a density below 100 %
    for recipe in recipes:
        data = recipe_data(recipe)
        cfg = local_recipe(str(data.recipe), quick_demo.model, {
            "train_dataloader.dataset.data_path": str(variant_city / data_file),
            "train_dataloader.dataset.image_folder": str(variant_city) + "/"})
        item = BUILDER.build(cfg.train_dataloader.dataset)[0]
        assert item["pixel_values"].shape[-1] == item["pixel_values"].shape[-2] and item["input_ids"]


def test_a_data_file_no_tool_here_builds_is_named_with_its_recipe(tmp_path):
    (tmp_path / "locations.csv").write_text("image\n")
    with pytest.raises(DataError, match=r"vqa_general5/train.json.*missing.*table6_general5_stage2.py"):
        ensure_data(tmp_path, recipe_data("ablations/table6_general5_stage2.py"), "rule", None)


def test_paper_table_refuses_a_folder_that_is_not_a_city(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "tools" / "paper_table.py"), "--table", "4", "--city",
                           str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and "locations.csv: not found" in done.stderr
