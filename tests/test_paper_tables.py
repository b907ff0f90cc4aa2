"""The paper's tables by name (addressvlm/paper_tables.py, tools/paper_table.py): every row names recipes that
exist and chain, and bad requests end in one line. Table 4 is filled end to end in test_table4_chain.py; every other
row's data is built and trained in test_every_row.py."""
import subprocess
import sys
from pathlib import Path

import pytest

from addressvlm.paper_tables import RECIPES, TABLES, check_chain, ensure_data, recipe_data, select_rows
from addressvlm.records import DataError

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


def test_a_data_file_no_tool_here_builds_is_named_with_its_recipe(tmp_path):
    (tmp_path / "locations.csv").write_text("image\n")
    with pytest.raises(DataError, match=r"vqa_general5/train.json.*missing.*table6_general5_stage2.py"):
        ensure_data(tmp_path, recipe_data("ablations/table6_general5_stage2.py"), "rule", None)


def test_paper_table_refuses_a_folder_that_is_not_a_city(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "tools" / "paper_table.py"), "--table", "4", "--city",
                           str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and "locations.csv: not found" in done.stderr
