"""The paper's tables by name (addressvlm/runs/paper_tables.py, tools/paper_table.py): every row names recipes that
exist and chain, and bad requests end in one line. Table 4 is filled end to end in test_table4_chain.py; every other
row's data is built and trained in test_every_row.py."""
import subprocess
import sys
from pathlib import Path

import pytest

from addressvlm.runs.paper_tables import (RECIPES, TABLES, ablations, check_chain, ensure_data, recipe_data,
                                          select_rows, stale_from_rows)
from addressvlm.core.records import DataError

REPO = Path(__file__).resolve().parent.parent


def every_row():
    return [(key, row) for key, table in TABLES.items() for row in table.rows]


@pytest.mark.parametrize("key,row", every_row(), ids=lambda v: v if isinstance(v, str) else v.name)
def test_every_row_names_recipes_that_exist_and_chain(key, row):
    for recipe in (row.stage1, row.stage2):
        assert recipe is None or (RECIPES / recipe).is_file(), recipe
    if row.stage2:
        check_chain(row)   # its stage 2 continues the run of the stage 1 the row names


def test_every_ablation_recipe_is_described_by_a_row():
    assert {f"ablations/{p.name}" for p in (RECIPES / "ablations").glob("*.py")} == set(ablations())


def test_recipe_headers_and_docs_rows_are_what_the_rows_write():
    """The ablation recipes' headers and docs/paper_tables.md's rows are written from addressvlm/runs/paper_tables.py
    (tools/write_paper_rows.py); a hand edit to either, or a row changed without rewriting them, fails here."""
    assert [str(path.relative_to(REPO)) for path in stale_from_rows()] == []


def test_write_paper_rows_check_names_a_hand_edited_header(tmp_path):
    """--check lists a file whose text the rows would change and exits 1; a clean checkout exits 0."""
    import shutil

    clone = tmp_path / "clone"
    for folder in ("addressvlm", "recipes", "docs", "tools"):
        shutil.copytree(REPO / folder, clone / folder)
    recipe = clone / "recipes" / "ablations" / "table9_d07_stage2.py"
    check = [sys.executable, str(clone / "tools" / "write_paper_rows.py"), "--check"]
    assert subprocess.run(check, capture_output=True, text=True, cwd=clone).returncode == 0
    recipe.write_text("# Changes from recipes/stage2_pitts.py: delta 0.9\n" + recipe.read_text())
    done = subprocess.run(check, capture_output=True, text=True, cwd=clone)
    # The tool's own lines only: deepspeed, imported with the training modules, logs its accelerator on stdout.
    listed = [line for line in done.stdout.splitlines() if line.startswith(("differs: ", "rewrote: "))]
    assert (done.returncode, listed) == (1, ["differs: recipes/ablations/table9_d07_stage2.py"]), done.stderr
    subprocess.run(check[:-1], capture_output=True, text=True, cwd=clone, check=True)
    assert recipe.read_text() == (REPO / "recipes" / "ablations" / "table9_d07_stage2.py").read_text()


def test_a_chain_that_does_not_match_its_row_is_refused():
    from dataclasses import replace

    row = next(r for r in TABLES["4"].rows if r.name == "table4_A_stage2")
    with pytest.raises(ValueError, match="table4_A_stage2.py continues .*table4_AB_stage1.*table4_CD_stage1"):
        check_chain(replace(row, stage1="ablations/table4_CD_stage1.py"))
    with pytest.raises(SystemExit, match="no row.*nope.*table4_A_stage2"):
        select_rows(TABLES["4"], ["nope"])


def test_a_data_file_no_tool_here_builds_is_named_with_its_recipe(tmp_path):
    (tmp_path / "locations.csv").write_text("image\n")
    with pytest.raises(DataError, match=r"vqa_general5/train.json: missing: .*table6_general5_stage2.py trains on it, "
                                        r'and docs/paper_tables.md \("By hand"\) names the commands'):
        ensure_data(tmp_path, recipe_data("ablations/table6_general5_stage2.py"), "rule", None)


def test_paper_table_refuses_a_folder_that_is_not_a_city(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "tools" / "paper_table.py"), "--table", "4", "--city",
                           str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and "locations.csv: not found" in done.stderr


def run_paper_table(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "paper_table.py"), *args], capture_output=True,
                          text=True, timeout=300)


def test_the_label_backend_is_checked_before_any_work(tmp_path):
    """--label-backend openai without --model, or with a --base-url where no server listens: one line, before
    the tiny model, crops or grafts are made (they took minutes before the TypeError or the silent retries)."""
    from helpers import closed_port_url

    (tmp_path / "city").mkdir()
    (tmp_path / "city" / "locations.csv").write_text("image\n")
    common = ["--table", "9", "--city", str(tmp_path / "city"), "--out", str(tmp_path / "out"), "--work",
              str(tmp_path / "work"), "--label-backend", "openai"]
    no_model = run_paper_table(*common)
    assert no_model.returncode == 2 and "Traceback" not in no_model.stderr
    assert no_model.stderr.strip().splitlines()[-1].endswith("--label-backend openai: the openai label backend "
                                                             "needs a model (--model)")
    url = closed_port_url()
    unreachable = run_paper_table(*common, "--model", "m", "--base-url", url)
    assert unreachable.returncode == 2 and "Traceback" not in unreachable.stderr
    assert unreachable.stderr.strip().splitlines() == [
        f"error: --label-backend openai: no OpenAI-compatible server answers at {url}/ ([Errno 111] Connection "
        "refused): start it, or give the right --base-url"]
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()


def test_default_folders_of_two_cities_of_one_name_differ(tmp_path):
    from addressvlm.runs.paper_tables import default_folder

    here, there = tmp_path / "a" / "helsinki", tmp_path / "b" / "helsinki"
    assert default_folder(here).startswith("helsinki-") and default_folder(there).startswith("helsinki-")
    assert default_folder(here) != default_folder(there)
    assert default_folder(here) == default_folder(tmp_path / "b" / ".." / "a" / "helsinki")  # by resolved path
    assert default_folder(here, quick=True) == default_folder(here) + "_quick"


def test_a_run_is_reused_only_when_trained_with_the_same_settings(tmp_path, tiny_llava):
    """A finished run whose record shows other settings (the quick scale, other data) or no record is refused
    before any work, naming what changed; one with the same settings is reused with the seconds it took then."""
    from addressvlm.runs.engine import DemoSettings
    from addressvlm.runs.paper_tables import BASELINE, DemoScale, fill_table, run_name
    from addressvlm.core.records import read_llava_json, settings_path, write_llava_json, write_run_record
    from conftest import write_colour_city

    city = write_colour_city(tmp_path / "city")
    out, work = tmp_path / "out", tmp_path / "work"
    quick = DemoScale(city, out, work, DemoSettings.quick(), tiny_llava)
    work_dir, settings = quick.plan(BASELINE, None, True, city)
    assert work_dir == work / run_name(BASELINE)
    work_dir.mkdir(parents=True)
    (work_dir / "last_checkpoint").write_text(str(work_dir / "iter_2.pth"))  # a run that finished
    write_run_record(work_dir, settings, 42.0)
    assert quick.train(BASELINE, None, True, 0, city) == 42.0  # the same settings: reused, not trained

    full = DemoScale(city, out, work, DemoSettings(), tiny_llava)
    with pytest.raises(DataError, match=r"trained with other settings \(.*overrides\.train_cfg\.max_epochs: 1 then, "
                                        r"8 now.*\): give another --work, or delete it"):
        fill_table(TABLES["8"], city, out, full, rows=[run_name(BASELINE)])
    assert not out.exists()  # refused before any work

    records = read_llava_json(city / "vqa" / "train.json")
    write_llava_json(city / "vqa" / "train.json", records[:-1])
    with pytest.raises(DataError, match=r"data: '[0-9a-f]{16}' then, '[0-9a-f]{16}' now"):
        quick.train(BASELINE, None, True, 0, city)
    settings_path(work_dir).unlink()
    with pytest.raises(DataError, match=f"a finished run without {run_name(BASELINE)}.settings.json"):
        quick.train(BASELINE, None, True, 0, city)


def test_steps_an_earlier_run_did_show_their_time_then():
    from addressvlm.runs.paper_tables import render_table

    table = TABLES["8"]
    results = {row.name: {} for row in table.rows}
    text = render_table(table, list(table.rows), results, {"data": 3.0, "train stage1_pitts": 0.01,
                                                           "train stage2_pitts": 95.4}, Path("c"),
                        {"train stage1_pitts": 612.0})
    assert "| train stage1_pitts | reused (trained in 612 s) |" in text and "| train stage2_pitts | 95 |" in text
