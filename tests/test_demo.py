"""A shortened `make demo` (a few steps of everything): every artefact exists and parses."""
import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest
from PIL import Image
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from addressvlm.checks.vllm_check import CPU_HEAD_SIZES, head_size
from addressvlm.demo.pipeline import (MODELS, PRETRAINED_LLM, RUN_NAMES, held_alone, make_demo_llm, make_model,
                                      read_targets, reading_warmup, run_demo, tiny_size, train_side_by_side,
                                      train_stage3)
from addressvlm.demo.report import learning_targets, targets_summary
from addressvlm.demo.spread import run_folder, run_one
from addressvlm.runs.engine import STAGE3, DemoSettings, Paths, answer_and_score
from addressvlm.standins.reading_warmup import (CityNames, ReadingExamples, held_out, reading_accuracy,
                                                read_warmup_result)
from addressvlm.standins.tiny import llm_differences
from addressvlm.data.graft import reserved_fraction
from addressvlm.core.records import read_locations, read_predictions, read_questions, read_reward_curve
from addressvlm.answering.scoring import METRICS


@pytest.mark.slow
def test_quick_demo_writes_every_artefact(quick_demo):
    out, city, work, report = quick_demo.out, quick_demo.city, quick_demo.work, quick_demo.report

    rows = read_locations(city / "locations.csv")
    assert {r.split for r in rows} == {"train", "val", "test"}
    test_locations = {r.location_id for r in rows if r.split == "test"}
    stage1 = json.loads((city / "stage1" / "train.json").read_text())
    assert stage1 and all(rec["id"].split("/")[1] not in test_locations for rec in stage1)  # no test leak
    # The main crops keep street names out from under the grafted street view (4:3 at delta 0.5), as Table 9's
    # other deltas' crops do, so the rows differ in delta alone.
    crop_params = json.loads((city / "stage1" / "crops" / "params.json").read_text())
    assert crop_params["reserved_box"] == list(reserved_fraction((4, 3), 0.5, "upper_right"))

    # The demo answers the test and the validation split's questions (held out alike: nothing is chosen on val).
    questions = read_questions(city / "held_out_questions.jsonl")
    assert {q["question_id"] for q in questions} == {q["question_id"] for split in ("test", "val")
                                                     for q in read_questions(city / "vqa" / f"{split}_questions.jsonl")}
    for name in MODELS:
        predictions = read_predictions(out / "predictions" / f"{name}.jsonl")
        assert set(predictions) == {q["question_id"] for q in questions}
        metrics = json.loads((out / "metrics" / f"{name}.json").read_text())
        assert set(METRICS) <= set(metrics)
        assert metrics["counts"]["A"]["total"] == sum(q["level"] != "address" for q in questions)
        assert (work / name / "last_checkpoint").is_file() or name in ("zero_shot", STAGE3)

    text = report.read_text()
    assert "| AddressVLM (stage 1 + stage 2) |" in text and "binomial" in text
    # the answer spread counts every judgment and choice question once per model
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| model | district judgment"))
    judged = sum(q["qtype"] in ("judgment", "multiple_choice") for q in questions)
    for row in lines[header + 2: header + 2 + len(MODELS)]:
        assert sum(int(n) for n in re.findall(r" (\d+)(?:,| \|)", row)) == judged, row
    assert "(c) OpenStreetMap contributors, ODbL" in text
    # the LLM was warmed up on reading before any recipe ran, and the report shows how well it reads
    reading = read_warmup_result(out / "models" / "llava-phi-3-mini-xtuner")
    assert reading["settings"]["max_steps"] == DemoSettings.quick().reading_max_steps
    assert reading["steps"] <= reading["settings"]["max_steps"]
    assert "## The tiny LLM's reading warm-up" in text and "| district/multiple choice |" in text
    assert " | ".join(f"{v:.1f}" for v in reading["accuracy"].values()) in text
    for picture in (out / "pictures").glob("*"):
        if picture.suffix in (".png", ".jpg"):
            Image.open(picture).verify()
            assert f"pictures/{picture.name}" in text
    distribution = json.loads((out / "pictures" / "street_distribution_0.json").read_text())
    assert distribution["after"]["total"] == DemoSettings.quick().street_samples
    # the zero-shot model's option letters: one count per sample, the options shuffled (docs/metrics.md)
    assert sum(distribution["before"]["positions"].values()) == DemoSettings.quick().street_samples

    # Both retrievers scored on the test street views and on their scene texts (one per view) against the test
    # split's tiles (issue 18's retrieval.json, issue 27's scene_text entries).
    retrieval = json.loads((out / "metrics" / "retrieval.json").read_text())
    test_views = [r for r in rows if r.split == "test"]
    assert set(retrieval) == {f"{name}{kind}" for name in ("lvlm_last_token", "clip_dual_encoder")
                              for kind in ("", "/scene_text")}
    for m in retrieval.values():
        assert set(m) == {"R@1", "R@5", "R@10", "gallery_size", "queries"}
        assert (m["queries"], m["gallery_size"]) == (len(test_views), len(test_locations))
        assert 0 <= m["R@1"] <= m["R@5"] <= m["R@10"] <= 100
    for kind in ("street view", "scene text"):
        assert f"| LVLM retriever (LLaVA-Phi3-mini, last token) | {kind} |" in text
    assert "## Cross-view retrieval" in text
    assert (work / "retrieval" / "clip_dual_encoder" / "last_checkpoint").is_file()

    # AddressVLM and the Baseline paired by question: the counts add up to what each model got right.
    paired = json.loads((out / "metrics" / "paired.json").read_text())
    first, second = (json.loads((out / "metrics" / f"{name}.json").read_text()) for name in ("stage1_stage2",
                                                                                             "stage2_only"))
    for key, c in paired.items():
        assert first["counts"][key]["total"] == c["questions"]
        assert first["counts"][key]["correct"] - second["counts"][key]["correct"] == c["only_first"] - c["only_second"]
    assert "exact McNemar p" in text
    # Stage 3 from AddressVLM: GRPO's model (a folder transformers 4.48 loads) answered as the others, paired with
    # AddressVLM, its reward curve drawn from the run's own log.
    assert (work / STAGE3 / "hf" / "model.safetensors").is_file()
    curve = read_reward_curve(work / STAGE3 / "reward_curve.jsonl")
    assert [row["step"] for row in curve] == [1, 2] and all(0 <= row["reward"] <= 1 for row in curve)
    paired3 = json.loads((out / "metrics" / "paired_stage3.json").read_text())
    third = json.loads((out / "metrics" / f"{STAGE3}.json").read_text())
    for key, c in paired3.items():
        assert third["counts"][key]["correct"] - first["counts"][key]["correct"] == c["only_first"] - c["only_second"]
    assert "## What stage 3 adds: GRPO with the street-level reward" in text
    assert "| AddressVLM + stage 3 (GRPO) |" in text and "only stage 3 right | only AddressVLM right" in text
    # The learning targets were checked, printed in the report, and the quick run's misses named there.
    targets = read_targets(out)
    assert len(targets) == 1 + 3 * 6 and "## Learning targets" in text
    assert all(t["target"] in text for t in targets)

    # A rerun keeps every finished step: its training and answering steps, run again as the demo runs them, train
    # and answer nothing (the whole demo again would double the suite's longest fixture).
    kept = [work / name / "last_checkpoint" for name in RUN_NAMES if name != "retrieval"] + \
        [work / STAGE3 / "hf" / "model.safetensors"] + [out / "predictions" / f"{name}.jsonl" for name in MODELS]
    stamps = [path.stat().st_mtime_ns for path in kept]
    paths, settings = Paths(out, city, work), DemoSettings.quick()
    train_side_by_side(paths, settings)
    train_stage3(paths, settings)
    assert [answer_and_score(paths, settings, name)[0] for name in MODELS] == [
        json.loads((out / "metrics" / f"{name}.json").read_text()) for name in MODELS]
    assert [path.stat().st_mtime_ns for path in kept] == stamps


def test_a_demo_with_other_settings_is_refused_in_the_first_ones_folders(quick_demo):
    stamp = (quick_demo.work / "stage1_stage2" / "last_checkpoint").stat().st_mtime
    with pytest.raises(SystemExit, match=r"city.json: the city was built with \{'seed': 0.*seed 1"):
        run_demo(quick_demo.out, quick_demo.city, quick_demo.work, replace(DemoSettings.quick(), seed=1))
    with pytest.raises(SystemExit, match="demo_settings.json: made by a demo with other settings \\(stage2_epochs"):
        run_demo(quick_demo.out, quick_demo.city, quick_demo.work, replace(DemoSettings.quick(), stage2_epochs=3))
    assert (quick_demo.work / "stage1_stage2" / "last_checkpoint").stat().st_mtime == stamp


def test_a_second_demo_into_the_same_folders_is_refused_while_the_first_runs(tmp_path):
    with held_alone([tmp_path / "out", tmp_path / "city"]):
        with pytest.raises(SystemExit, match=f"{tmp_path / 'city'}: another demo is running"):
            with held_alone([tmp_path / "city"]):
                pass
    with held_alone([tmp_path / "city"]):  # free again once the first is done
        pass


def test_missed_learning_targets_end_the_demo_loudly():
    counts = {"A_d_G": (90, 96), "A_d_J": (150, 192), "A_d_M": (28, 96), "A_s_G": (70, 96), "A_s_J": (130, 192),
              "A_s_M": (50, 96)}
    model = {"counts": {k: {"correct": c, "total": n} for k, (c, n) in counts.items()},
             **{k: 100 * c / n for k, (c, n) in counts.items()}}
    reading = {"settings": {"target": 90.0, "max_steps": 3000}, "steps": 1200, "reached_target": True}
    targets = learning_targets({"zero_shot": model, "stage1_stage2": model}, {"A_d_G": 0.3, "A_s_G": 0.1}, reading)
    assert len(targets) == 7  # the warm-up, and the tuned model's six accuracies (the zero-shot model is not held to any)
    missed = [t["target"] for t in targets if not t["met"]]
    assert missed == ["AddressVLM (stage 1 + stage 2): A_d^M above chance (p < 0.001)"]  # 28/96 against 1/4: p 0.3
    summary = targets_summary(targets)
    assert "[MISSED] AddressVLM (stage 1 + stage 2): A_d^M" in summary
    assert summary.splitlines()[-1].startswith("!!! 1 of 7 LEARNING TARGETS MISSED")
    assert targets_summary([t for t in targets if t["met"]]).splitlines()[-1] == "all 6 learning targets met"


def test_folders_of_an_older_demo_without_settings_are_refused(tmp_path):
    out = tmp_path / "out"
    (out / "models").mkdir(parents=True)  # an older demo's model, whose warm-up ran to other rules
    with pytest.raises(SystemExit, match=f"{out}: filled by an older demo that recorded no settings"):
        run_demo(out, tmp_path / "city", tmp_path / "work", DemoSettings.quick())
    assert sorted(p.name for p in out.iterdir()) == [".demo.lock", "models"]


def test_a_spread_run_refused_by_a_demo_holding_its_folders_fails_naming_its_log(tmp_path):
    city = tmp_path / "city_seed0"
    with held_alone([city]):
        with pytest.raises(SystemExit, match=r"seed0_avx2/demo.log: the demo under seed 0, code path avx2 failed \(exit 1\)"):
            run_one(tmp_path, 0, "avx2", city, quick=True)
    assert "another demo is running" in (run_folder(tmp_path, 0, "avx2") / "demo.log").read_text()


@pytest.mark.parametrize("settings", [DemoSettings(), DemoSettings.quick()], ids=["full", "quick"])
def test_the_demo_model_has_a_head_size_vllm_serves(settings):
    size = tiny_size(settings)
    assert (size.head_dim or size.hidden // size.heads) in CPU_HEAD_SIZES


def test_the_quick_demo_model_is_one_vllm_serves(quick_demo):
    assert head_size(quick_demo.model) in CPU_HEAD_SIZES


def test_the_shipped_llm_fits_the_demo_and_reads_every_question_kind():
    result = read_warmup_result(PRETRAINED_LLM)
    names = CityNames(tuple(result["names"]["streets"]), tuple(result["names"]["districts"]))
    settings = DemoSettings()
    assert llm_differences(PRETRAINED_LLM, tiny_size(settings), names, reading_warmup(settings)) == []
    assert result["reached_target"] and len(names.streets) == 16 and len(names.districts) == 6
    # On passages it never saw (drawn apart from its probe and its own held-out set), every kind is read far above
    # guessing (a quarter for choices, a half for judgments).
    tokenizer = AutoTokenizer.from_pretrained(PRETRAINED_LLM)
    examples = ReadingExamples(tokenizer, names, result["settings"]["passage_tokens"], seed=7)
    accuracy = reading_accuracy(AutoModelForCausalLM.from_pretrained(PRETRAINED_LLM),
                                held_out(examples, 100, "shipped-check"), tokenizer.pad_token_id)
    assert len(accuracy) == 7 and min(accuracy.values()) >= 70.0, accuracy


def test_the_demo_starts_from_the_shipped_llm_and_refuses_it_where_it_does_not_fit(quick_demo, tmp_path):
    settings = DemoSettings()
    paths = Paths(tmp_path / "out", quick_demo.city, tmp_path / "work")
    make_model(paths, settings)
    assert (paths.models / "model.safetensors").read_bytes() == (PRETRAINED_LLM / "model.safetensors").read_bytes()
    assert AutoConfig.from_pretrained(paths.models / "visual_encoder").hidden_size == settings.hidden
    assert json.loads((paths.models / "projector" / "config.json").read_text())["llm_hidden_size"] == settings.hidden

    for other, says in ((replace(settings, hidden=64), r"hidden_size 96 \(asked 64\)"),
                        (replace(settings, reading_max_steps=100), r"warm-up max_steps 3000 \(asked 100\)")):
        refusal = f"{PRETRAINED_LLM}: the shipped LLM does not fit .*{says}.*--warm-up-here"
        with pytest.raises(SystemExit, match=refusal):
            make_model(Paths(tmp_path / "other", quick_demo.city, tmp_path / "work"), other)
    assert not (tmp_path / "other" / "models" / "llava-phi-3-mini-xtuner" / "model.safetensors").exists()
    read = read_warmup_result(PRETRAINED_LLM)["names"]
    city = CityNames((*read["streets"], "Runeberginkatu"), tuple(read["districts"]))
    assert llm_differences(PRETRAINED_LLM, tiny_size(settings), city, reading_warmup(settings)) == [
        "its warm-up never read Runeberginkatu"]


def test_making_the_demo_llm_leaves_the_old_one_unless_the_new_one_reached_its_target(quick_demo, tmp_path):
    out = tmp_path / "llm"
    out.mkdir()
    (out / "config.json").write_text("{}")
    tool = [sys.executable, "tools/make_demo_llm.py", "--out", str(out), "--city", str(tmp_path / "city"), "--quick"]
    refused = subprocess.run(tool, capture_output=True, text=True)
    assert refused.returncode == 2 and f"--out {out}: not empty; pass --replace" in refused.stderr
    over = subprocess.run([*tool[:3], str(tmp_path / "city" / "llm"), *tool[4:], "--replace"], capture_output=True,
                          text=True)
    assert over.returncode == 2 and "--out lies inside the --city input" in over.stderr
    # What the tool runs, on a copy of the quick demo's city (its stage-1 crops made again: they record their
    # inputs' paths): 20 steps do not teach the quick model to read, so the new LLM stays beside the old one, which
    # is kept
    city = tmp_path / "city"
    shutil.copytree(quick_demo.city, city, ignore=shutil.ignore_patterns(".demo.lock", "stage1"))
    settings = replace(DemoSettings.quick(), pretrained_llm=False)
    result = make_demo_llm(Paths(tmp_path, city, tmp_path), settings, out)
    assert not result["reached_target"] and result["steps"] == settings.reading_max_steps
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
    assert (tmp_path / "llm.partial" / "model.safetensors").is_file()
