"""A shortened `make demo` (a few steps of everything): every artefact exists and parses."""
import json
import re

import pytest
from PIL import Image

from addressvlm.demo.pipeline import MODELS, DemoSettings, run_demo
from addressvlm.standins.reading_warmup import read_warmup_result
from addressvlm.records import read_locations, read_predictions, read_questions
from addressvlm.scoring import METRICS


@pytest.mark.slow
def test_quick_demo_writes_every_artefact(quick_demo):
    out, city, work, report = quick_demo.out, quick_demo.city, quick_demo.work, quick_demo.report

    rows = read_locations(city / "locations.csv")
    assert {r.split for r in rows} == {"train", "val", "test"}
    test_locations = {r.location_id for r in rows if r.split == "test"}
    stage1 = json.loads((city / "stage1" / "train.json").read_text())
    assert stage1 and all(rec["id"].split("/")[1] not in test_locations for rec in stage1)  # no test leak

    questions = read_questions(city / "vqa" / "test_questions.jsonl")
    for name in MODELS:
        predictions = read_predictions(out / "predictions" / f"{name}.jsonl")
        assert set(predictions) == {q["question_id"] for q in questions}
        metrics = json.loads((out / "metrics" / f"{name}.json").read_text())
        assert set(METRICS) <= set(metrics)
        assert metrics["counts"]["A"]["total"] == sum(q["level"] != "address" for q in questions)
        assert (work / name / "last_checkpoint").is_file() or name == "zero_shot"

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
    assert reading["settings"]["steps"] == DemoSettings.quick().reading_steps
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

    # Both retrievers scored on the test street views against the test split's tiles (issue 18's retrieval.json).
    retrieval = json.loads((out / "metrics" / "retrieval.json").read_text())
    test_views = [r for r in rows if r.split == "test"]
    assert set(retrieval) == {"lvlm_last_token", "clip_dual_encoder"}
    for m in retrieval.values():
        assert set(m) == {"R@1", "R@5", "R@10", "gallery_size", "queries"}
        assert (m["queries"], m["gallery_size"]) == (len(test_views), len(test_locations))
        assert 0 <= m["R@1"] <= m["R@5"] <= m["R@10"] <= 100
    assert "## Cross-view retrieval" in text and "| LVLM retriever (LLaVA-Phi3-mini, last token) | street view |" in text
    assert (work / "retrieval" / "clip_dual_encoder" / "last_checkpoint").is_file()

    # A rerun keeps every finished step: nothing is trained or answered again.
    stamp = (work / "stage1_stage2" / "last_checkpoint").stat().st_mtime
    run_demo(out, city, work, DemoSettings.quick())
    assert (work / "stage1_stage2" / "last_checkpoint").stat().st_mtime == stamp
