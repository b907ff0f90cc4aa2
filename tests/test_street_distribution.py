"""addressvlm.answering.street_distribution and eval/street_distribution.py (Fig. 5): prompts, counting, sampling, the
map."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from addressvlm.geo.streets import read_street_map
from addressvlm.core.records import DataError, Location, write_locations
from addressvlm.answering.scoring import extract_choice
from addressvlm.answering.street_distribution import (TOP_COLOURS, choice_options, count_streets,
                                                      draw_street_distribution, read_sampled_answers,
                                                      sample_street_answers, street_choice_question, street_question)
from addressvlm.core.templates import GENERATION_PROMPT, STREET_TEMPLATES

REPO = Path(__file__).resolve().parents[1]
ORIGIN = (40.44, -79.99)
STEP = 0.0012  # degrees between grid streets, ~130 m


def _grid_streets() -> dict[str, list[tuple[float, float]]]:
    """Five east-west and five north-south streets; one of them in two pieces."""
    lat0, lon0 = ORIGIN
    ew = ["Forbes Avenue", "Fifth Avenue", "Craig Street", "Centre Avenue", "Baum Boulevard"]
    ns = ["Negley Avenue", "Highland Avenue", "St. Clair Street", "Murray Avenue", "Penn Avenue"]
    lines = {}
    for i, name in enumerate(ew):
        lines[name] = [(lon0, lat0 + i * STEP), (lon0 + 4 * STEP, lat0 + i * STEP)]
    for i, name in enumerate(ns):
        lines[name] = [(lon0 + i * STEP, lat0), (lon0 + i * STEP, lat0 + 4 * STEP)]
    return lines


def write_city(root: Path) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    features = [{"type": "Feature", "properties": {"name": name},
                 "geometry": {"type": "LineString", "coordinates": coords}}
                for name, coords in _grid_streets().items()]
    # Forbes Avenue continues as a second feature: all its pieces are drawn in its colour.
    features.append({"type": "Feature", "properties": {"name": "Forbes Avenue"}, "geometry": {
        "type": "LineString", "coordinates": [(ORIGIN[1] + 4 * STEP, ORIGIN[0]), (ORIGIN[1] + 5 * STEP, ORIGIN[0])]}})
    streets = root / "streets.geojson"
    streets.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    locations = root / "locations.csv"
    write_locations(locations, [
        Location("images/000_0.jpg", "000", ORIGIN[0], ORIGIN[1] + 1.5 * STEP, "Forbes Avenue", "Oakland"),
        Location("images/001_0.jpg", "001", ORIGIN[0] + 2 * STEP, ORIGIN[1] + 3 * STEP, "Craig Street", "Shadyside"),
    ])
    return streets, locations


CITY_STREETS = list(_grid_streets())


# ------------------------------------------------------------------------------------------ prompts
def test_free_form_prompt_is_a_street_generation_question():
    prompt = street_question()
    assert prompt.endswith(GENERATION_PROMPT)
    assert prompt[: -len(GENERATION_PROMPT) - 1] in STREET_TEMPLATES
    assert "<image>" not in prompt
    assert street_question(0).startswith(STREET_TEMPLATES[0])


def test_choice_prompt_over_any_number_of_streets():
    named = ["Forbes Ave", "craig street", "Craig St.", "Baum Boulevard", "Penn Avenue", "Negley Avenue"]
    options = choice_options(named, random.Random(3))
    assert sorted(options.values()) == ["Baum Boulevard", "Forbes Ave", "Negley Avenue", "Penn Avenue",
                                        "craig street"] and sorted(options) == list("ABCDE")
    assert options == choice_options(named, random.Random(3))  # the same seed, the same order
    prompt = street_choice_question(options)
    assert " ".join(f"({k}) {v}" for k, v in options.items()) + "." in prompt
    assert prompt.startswith("Which of the following street correctly represents the location shown in the image?")
    assert prompt.endswith("Please select the correct option (A/B/C/D/E).")
    assert extract_choice("(E)", options) == "E" and extract_choice("Option F", options) is None


def test_choice_options_limits():
    with pytest.raises(ValueError, match="at most 26"):
        choice_options([f"Street {i}" for i in range(27)], random.Random(0))
    with pytest.raises(ValueError, match="no street"):
        choice_options([], random.Random(0))


def test_shuffled_options_do_not_put_the_favourite_at_a():
    """The after-model's top street (listed first) lands on every letter over images; one named street is padded
    with city streets to four options."""
    letters = [next(k for k, v in choice_options(["Forbes Avenue", "Craig Street", "Penn Avenue", "Baum Boulevard"],
                                                 random.Random(f"options:0:{i}")).items() if v == "Forbes Avenue")
               for i in range(40)]
    assert set(letters) == set("ABCD") and max(letters.count(x) for x in "ABCD") < 20
    padded = choice_options(["Forbes Ave"], random.Random(1), CITY_STREETS, 4)
    assert len(padded) == 4 and "Forbes Ave" in padded.values() and "Forbes Avenue" not in padded.values()


# ------------------------------------------------------------------------------------------ counting
def test_count_free_form_answers():
    answers = (["Forbes Avenue"] * 5 + ["Forbes Ave."] * 3 + ['"forbes avenue"'] + ["Craig St"] * 4
               + ["Saint Clair St"] * 2 + ["Fifth Ave"] * 4 + ["Mars Avenue", "", "I don't know", "Forbes"])
    counts = count_streets(answers, CITY_STREETS)
    assert counts.counts == {"Forbes Avenue": 9, "Craig Street": 4, "St. Clair Street": 2, "Fifth Avenue": 4}
    assert counts.invalid == 4 and counts.total == len(answers)
    # ties broken by normalised name: craig street before fifth avenue
    assert counts.top(3) == [("Forbes Avenue", 9), ("Craig Street", 4), ("Fifth Avenue", 4)]
    assert counts.as_dict() == {"counts": {"Forbes Avenue": 9, "Craig Street": 4, "Fifth Avenue": 4,
                                           "St. Clair Street": 2}, "invalid": 4, "total": len(answers)}


def test_count_multiple_choice_answers():
    options = {"A": "Craig Street", "B": "Forbes Avenue", "C": "Penn Avenue"}
    answers = ["B", "(B)", "Option B", "B. Forbes Avenue", "C", "Penn Ave", "(A) or (B)", "D", "", "Mars Avenue"]
    counts = count_streets(answers, CITY_STREETS, options)
    assert counts.counts == {"Forbes Avenue": 4, "Penn Avenue": 2}
    assert counts.invalid == 4 and counts.total == 10
    # "Mars Avenue" names no option; "D" is no option letter; "(A) or (B)" names two
    assert counts.positions == {"A": 0, "B": 4, "C": 2, "none": 4}
    assert sum(counts.positions.values()) == counts.total and counts.as_dict()["positions"] == counts.positions


# ------------------------------------------------------------------------------------------ sampling
def test_sampling_writes_resumable_records(tmp_path):
    asked = []

    def sampler(image: str, prompt: str, n: int) -> list[str]:
        asked.append((image, prompt))
        return ["Forbes Avenue" if i % 2 else "C" for i in range(n)]

    out = tmp_path / "samples.jsonl"
    options = {"images/001_0.jpg": {"A": "Craig Street", "B": "Forbes Avenue", "C": "Penn Avenue"}}
    sample_street_answers(["images/000_0.jpg"], sampler, out, n=6)
    sample_street_answers(["images/000_0.jpg", "images/001_0.jpg"], sampler, out, n=6, options_by_image=options)
    assert [image for image, _ in asked] == ["images/000_0.jpg", "images/001_0.jpg"]  # the rerun skipped 000
    assert asked[0][1] == street_question() and "(C) Penn Avenue" in asked[1][1]
    records = read_sampled_answers(out)
    assert [r["image"] for r in records] == ["images/000_0.jpg", "images/001_0.jpg"]
    assert len(records[0]["answers"]) == 6 and "options" not in records[0]
    assert count_streets(records[1]["answers"], CITY_STREETS, records[1]["options"]).counts == {
        "Forbes Avenue": 3, "Penn Avenue": 3}

    with pytest.raises(ValueError, match="expected 6"):
        sample_street_answers(["images/002_0.jpg"], lambda image, prompt, n: ["x"], out, n=6)


def test_bad_answers_file_names_the_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"image": "a.jpg", "answers": ["x"]}\n{"image": "b.jpg", "answers": "x"}\n')
    with pytest.raises(DataError, match=r"a.jsonl:2: 'answers' must be a list"):
        read_sampled_answers(path)
    path.write_text('{"image": "a.jpg", "answers": ["x"]}\n{"image": "a.jpg", "answers": ["y"]}\n')
    with pytest.raises(DataError, match=r"a.jsonl:2: duplicate image"):
        read_sampled_answers(path)


# ------------------------------------------------------------------------------------------ the map
def _colour_pixels(png: Path, rgb_hex: str, tolerance: int = 40) -> int:
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    target = np.array([int(rgb_hex[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels - target).max(axis=-1) < tolerance).sum())


def test_draw_map_shows_top_streets_and_truth(tmp_path):
    streets, _ = write_city(tmp_path / "city")
    counts = count_streets(["Forbes Ave"] * 50 + ["Craig St"] * 30 + ["Negley Ave"] * 15 + ["Penn Ave"] * 5,
                           CITY_STREETS)
    png = tmp_path / "map.png"
    draw_street_distribution(read_street_map(streets), [("after alignment", counts)], ORIGIN[0],
                             ORIGIN[1] + 1.5 * STEP, png, title="test image")
    assert png.stat().st_size > 20_000
    width, height = Image.open(png).size
    assert width > 500 and height > 700
    for colour in TOP_COLOURS:
        assert _colour_pixels(png, colour) > 500, colour  # the street, its bar and its legend line
    assert _colour_pixels(png, "#2454c4") > 100  # the true-location star


def test_cli_draws_panels_and_writes_counts(tmp_path):
    streets, locations = write_city(tmp_path / "city")
    after, before = tmp_path / "after.jsonl", tmp_path / "before.jsonl"
    after.write_text("".join(json.dumps(r) + "\n" for r in [
        {"image": "images/000_0.jpg", "answers": ["Forbes Ave"] * 60 + ["Negley Avenue"] * 25 + ["Mars Road"] * 15},
        {"image": "images/001_0.jpg", "answers": ["Craig Street"] * 90 + ["Penn Avenue"] * 10},
    ]))
    options = {"A": "Forbes Avenue", "B": "Negley Avenue"}
    before.write_text(json.dumps({"image": "images/000_0.jpg", "answers": ["A"] * 30 + ["(B)"] * 70,
                                  "options": options}) + "\n")
    out = tmp_path / "fig5"
    run = subprocess.run([sys.executable, str(REPO / "eval" / "street_distribution.py"), "--streets", str(streets),
                          "--locations", str(locations), "--out", str(out), "--answers", f"after alignment={after}",
                          "--answers", f"before alignment={before}"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr
    report = json.loads((out / "street_counts.json").read_text())
    assert set(report) == {"images/000_0.jpg", "images/001_0.jpg"}
    first = report["images/000_0.jpg"]
    assert first["street"] == "Forbes Avenue" and first["png"] == "images__000_0.png"
    assert first["panels"]["after alignment"] == {"counts": {"Forbes Avenue": 60, "Negley Avenue": 25},
                                                  "invalid": 15, "total": 100}
    assert first["panels"]["before alignment"]["counts"] == {"Negley Avenue": 70, "Forbes Avenue": 30}
    assert first["panels"]["before alignment"]["positions"] == {"A": 30, "B": 70}
    assert list(report["images/001_0.jpg"]["panels"]) == ["after alignment"]
    two_panels = Image.open(out / "images__000_0.png").size
    one_panel = Image.open(out / "images__001_0.png").size
    assert two_panels[0] > 1.8 * one_panel[0]


def test_cli_rejects_unknown_image(tmp_path):
    streets, locations = write_city(tmp_path / "city")
    answers = tmp_path / "a.jsonl"
    answers.write_text(json.dumps({"image": "images/999_0.jpg", "answers": ["Forbes Avenue"]}) + "\n")
    run = subprocess.run([sys.executable, str(REPO / "eval" / "street_distribution.py"), "--streets", str(streets),
                          "--locations", str(locations), "--out", str(tmp_path / "o"), "--answers", str(answers)],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode != 0 and "images/999_0.jpg" in run.stderr and "a.jsonl" in run.stderr


def test_cli_samples_both_models_and_draws(tiny_llava, tmp_path):
    """One command: the checkpoint answers free-form, the recipe's release chooses among its top streets (options
    shuffled, seeded per image), then the map with the option letters chosen."""
    sys.path.insert(0, str(REPO / "tests"))
    from helpers import RECIPE, model_options, write_synthetic_checkpoint

    sys.path.insert(0, str(REPO / "eval"))
    try:
        import street_distribution as cli
    finally:
        sys.path.remove(str(REPO / "eval"))
    streets, locations = write_city(tmp_path / "city")
    for i, image in enumerate(("images/000_0.jpg", "images/001_0.jpg")):
        (tmp_path / "city" / "images").mkdir(exist_ok=True)
        Image.new("RGB", (48, 32), (60 * i, 120, 200 - 60 * i)).save(tmp_path / "city" / image)
    checkpoint = write_synthetic_checkpoint(tmp_path / "work", model_options(tiny_llava))
    first = tmp_path / "fig5"
    cli.main(["--config", RECIPE, "--checkpoint", str(checkpoint), "--model-root", str(tiny_llava),
              "--streets", str(streets), "--locations", str(locations), "--out", str(first),
              "--images", "images/000_0.jpg", "images/001_0.jpg", "--samples", "5", "--max-new-tokens", "3",
              "--device", "cpu"])
    after, before = read_sampled_answers(first / "after_alignment.jsonl"), \
        read_sampled_answers(first / "before_alignment.jsonl")
    assert [len(r["answers"]) for r in after + before] == [5, 5, 5, 5]
    for a, b in zip(after, before):  # the options: the after-model's top streets, padded, in the seeded order
        named = [name for name, _ in count_streets(a["answers"], CITY_STREETS).top(4)]
        assert b["options"] == choice_options(named, random.Random(f"options:0:{a['image']}"), CITY_STREETS, 4)
    assert (first / "images__000_0.png").is_file() and (first / "images__001_0.png").is_file()
    report = json.loads((first / "street_counts.json").read_text())
    for image in report.values():
        panel = image["panels"][cli.BEFORE_LABEL]
        assert sum(panel["positions"].values()) == panel["total"] == 5
        assert image["panels"][cli.AFTER_LABEL]["total"] == 5
