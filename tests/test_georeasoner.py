"""Table 2's GeoReasoner row: its stage-1 data (Fig. B1's district reasoning through the label backends) on a small
generated city, and its recipes training through `python -m xtuner.tools.train` on the tiny model."""
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from addressvlm.data.labels import GEOREASONER_QUESTION, GeoReasonerTask, georeasoner_hint_prompt, label_city
from addressvlm.core.names import mentions_name
from addressvlm.core.records import read_jsonl, read_llava_json, write_locations
from addressvlm.training.launcher import train
from addressvlm.training.stage_chain import find_last_checkpoint

from conftest import build_model, few_steps
from synthetic_city import city_rows, write_images

REPO = Path(__file__).resolve().parent.parent
ABLATIONS = REPO / "recipes" / "ablations"


@pytest.fixture(scope="module")
def reasoned_city(tmp_path_factory):
    """Five locations, two views each, the last one in the test split; one view deleted and one corrupted, then the
    builder's CLI with the rule backend."""
    root = tmp_path_factory.mktemp("georeasoner") / "tinyburg"
    rows = [replace(row, split="test" if row.location_id == "000004" else "train")
            for row in city_rows(n_locations=5, views=2, n_streets=4, n_districts=2)]
    write_images(root, rows)
    write_locations(root / "locations.csv", rows)
    (root / rows[1].image).unlink()
    (root / rows[2].image).write_bytes(b"\xff\xd8\xff\xe0 not a JPEG after all")
    done = subprocess.run([sys.executable, "datasets_prep/make_reasoning_labels.py", "--city", str(root),
                           "--backend", "rule", "--city-name", "Tinyburg"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    return {"root": root, "rows": rows, "done": done}


def test_prompt_is_fig_b1s_with_the_true_district():
    hint = georeasoner_hint_prompt("North Beach", "San Francisco")
    assert hint.startswith(GEOREASONER_QUESTION + " (Hint: This image was taken in North Beach within San Francisco.")
    assert "Begin your response by confirming its location in North Beach" in hint and hint.endswith(".)")
    assert "North Beach" not in GEOREASONER_QUESTION and "neighborhood" in GEOREASONER_QUESTION


def test_builder_writes_district_reasoning_records_and_names_unusable_images(reasoned_city):
    root, rows, done = reasoned_city["root"], reasoned_city["rows"], reasoned_city["done"]
    # The two unusable street views are named with their locations.csv lines (header = line 1); the run exits 1.
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"locations.csv:3: street view {root / rows[1].image} not found" in done.stdout
    assert f"locations.csv:4: street view {root / rows[2].image} does not decode" in done.stdout
    assert "6 written" in done.stdout and "stage-1 records: 6" in done.stdout
    records = read_llava_json(root / "georeasoner" / "train.json")
    usable = [r for i, r in enumerate(rows) if i not in (1, 2) and r.split == "train"]
    assert [r["image"] for r in records] == [r.image for r in usable]  # the street views, relative to the city root
    for record, row in zip(records, usable):
        assert record["id"].startswith(f"tinyburg/{row.location_id}/")
        human, gpt = record["conversations"]
        assert human == {"from": "human", "value": "<image>\n" + GEOREASONER_QUESTION}
        assert gpt["value"].startswith(("The image is indeed captured in ", "This street view was taken in "))
        assert mentions_name(gpt["value"], row.district) and not mentions_name(gpt["value"], row.street)
    labels = {rec["image"]: rec for _, rec in read_jsonl(root / "georeasoner" / "labels.jsonl")}
    assert labels[rows[0].image]["hint_prompt"] == georeasoner_hint_prompt(rows[0].district, "Tinyburg")


def test_reasons_without_the_true_district_are_rejected_and_a_rerun_skips_what_is_done(reasoned_city, tmp_path):
    root = reasoned_city["root"]

    class Elsewhere:
        name, concurrency = "scripted", 1

        def generate(self, request):
            return "The image is indeed captured in Some Other Place."

    out = tmp_path / "labels.jsonl"
    report = label_city(GeoReasonerTask(root), root, out, Elsewhere(), progress=False)
    assert (report.written, report.rejected, len(report.missing)) == (0, 6, 2)
    assert "6 rejected (true district not named)" in report.summary()
    assert len(read_jsonl(tmp_path / "labels.rejected.jsonl")) == 6
    rerun = label_city(GeoReasonerTask(root), root, root / "georeasoner" / "labels.jsonl", "rule", progress=False)
    assert (rerun.written, rerun.already_done) == (0, 6)


@pytest.mark.slow
def test_georeasoner_recipes_train_and_chain(reasoned_city, tiny_llava, tmp_path):
    """Stage 1 trains on the builder's output; stage 2 starts from it, checked tensor by tensor."""
    root = reasoned_city["root"]
    stage1 = train(str(ABLATIONS / "table2_georeasoner_stage1.py"), tmp_path / "stage1", str(tiny_llava),
                   overrides=few_steps(root, "georeasoner/train.json"), threads=1)
    assert "Iter(train) [3/3]" in (stage1 / "train_stdout.log").read_text()
    final = torch.load(find_last_checkpoint(stage1), map_location="cpu", weights_only=False)["state_dict"]
    stage2 = build_model(str(ABLATIONS / "table2_georeasoner_stage2.py"), tiny_llava,
                         {**few_steps(root, "georeasoner/train.json"), "model.init_from_work_dir": str(stage1)})
    state = stage2.state_dict()
    assert final and all(torch.equal(state[key], value) for key, value in final.items())


def test_baseline_row_starts_from_the_release(tiny_llava):
    """Table 2's Baseline: stage 2 with no stage 1, so every LoRA adapter opens fresh (peft's B = 0)."""
    state = build_model(str(ABLATIONS / "table2_baseline_stage2.py"), tiny_llava, {}).state_dict()
    fresh = [value for key, value in state.items() if ".lora_B." in key]
    assert fresh and all(torch.count_nonzero(value) == 0 for value in fresh)
