"""eval/score.py beyond exact match: top-k accuracy of ranked names, the metre error of street answers on a city
whose geometry fixes every distance, and the two error pictures of eval/draw_errors.py."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from pyproj import Transformer

from addressvlm.answering.error_figures import OTHER, district_confusion
from addressvlm.geo.local_frame import local_crs
from addressvlm.answering.street_error import street_error_files
from addressvlm.core.records import DataError, Location, write_locations, write_questions
from addressvlm.answering.scoring import read_ranked_names, top_k_accuracy

REPO = Path(__file__).resolve().parents[1]
ORIGIN = (60.17, 24.94)
TO_WGS84 = Transformer.from_crs(local_crs(*ORIGIN), "EPSG:4326", always_xy=True)

# Straight streets in metres east (x) and north (y) of ORIGIN. Ash Street is two ways with a gap between
# x = -100 and x = 100, so its nearest point may be the end of a way.
STREETS_M = {
    "Main Street": [[(-500, 0), (500, 0)]],
    "Harbour Road": [[(300, -500), (300, 500)]],
    "Ash Street": [[(-500, 200), (-100, 200)], [(100, 200), (500, 200)]],
}
# (true location in metres, district, generation answer, its distance in metres by construction; None: no map street)
STREET_ANSWERS = [
    ((0, 10), "Kallio", "Main St", 10.0),
    ((0, 40), "Kallio", "main street", 40.0),
    ((280, 90), "Kallio", "Harbour Road", 20.0),
    ((40, 155), "Kamppi", "Ash Street", 75.0),  # to the east way's end at (100, 200): a 45-60-75 triangle
    ((0, -200), "Kamppi", "Harbour Rd.", 300.0),
    ((0, 0), "Kamppi", "Nowhere Lane", None),
    ((-400, 0), "Punavuori", "Main Street", 0.0),
]


def lon_lat(x: float, y: float) -> tuple[float, float]:
    return TO_WGS84.transform(x, y)


def write_metric_city(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    features = [{"type": "Feature", "properties": {"name": name},
                 "geometry": {"type": "LineString", "coordinates": [lon_lat(x, y) for x, y in way]}}
                for name, ways in STREETS_M.items() for way in ways]
    (root / "streets.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    rows, questions, predictions, ranked = [], [], [], []
    for i, ((x, y), district, answer, _) in enumerate(STREET_ANSWERS):
        lon, lat = lon_lat(x, y)
        image = f"images/{i}.jpg"
        rows.append(Location(image, f"loc{i}", lat, lon, "Main Street", district))
        base = {"image": image, "street": "Main Street", "district": district, "qtype": "generation"}
        questions += [{**base, "question_id": f"m/{i}/s", "level": "street", "question": "Street?",
                       "answer": "Main Street"},
                      {**base, "question_id": f"m/{i}/d", "level": "district", "question": "District?",
                       "answer": district}]
        # District answers: their confusion is counted in test_district_confusion_counts_and_pictures.
        named_district = ["Kallio", "Kallio", "Kamppi", "Kallio", "Kamppi", "Töölö", "Punavuori"][i]
        predictions += [{"question_id": f"m/{i}/s", "prediction": answer},
                        {"question_id": f"m/{i}/d", "prediction": named_district}]
        ranked.append({"question_id": f"m/{i}/s", "ranking": [{"name": "Main Street", "logprob": -1.0},
                                                              {"name": "Ash Street", "logprob": -2.0}]})
    write_locations(root / "locations.csv", rows)
    write_questions(root / "questions.jsonl", questions)
    (root / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))
    (root / "ranked.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ranked))
    return {name: root / f for name, f in (("streets", "streets.geojson"), ("locations", "locations.csv"),
                                           ("questions", "questions.jsonl"), ("predictions", "predictions.jsonl"),
                                           ("ranked", "ranked.jsonl"))}


@pytest.fixture
def metric_city(tmp_path) -> dict[str, Path]:
    return write_metric_city(tmp_path / "city")


# ------------------------------------------------------------------------------------------ top-k
def _q(qid, level, street="Forbes Avenue", district="Oakland", qtype="generation"):
    answer = {"district": district, "street": street, "address": f"{street}, {district}"}[level]
    return {"question_id": qid, "image": f"{qid}.jpg", "level": level, "qtype": qtype, "question": "?",
            "answer": answer if qtype == "generation" else "Yes", "street": street, "district": district}


def _ranking(*names):
    return [{"name": n, "logprob": -float(i)} for i, n in enumerate(names)]


OTHERS = ["Craig Street", "Fifth Avenue", "Penn Avenue", "Liberty Avenue", "Baum Boulevard"]
RANKED_QUESTIONS = [
    (_q("d1", "district"), _ranking("Shadyside", "Oakland", "Bloomfield")),                     # position 2
    (_q("d2", "district", district="Shadyside"), _ranking("Shadyside", "Oakland")),            # position 1
    (_q("d3", "district"), _ranking("A", "B", "C", "D", "E", "Oakland")),                     # position 6
    (_q("s1", "street"), _ranking("Forbes Ave.", *OTHERS)),                                   # 1, via the normaliser
    (_q("s2", "street"), _ranking(*OTHERS[:4], "forbes avenue")),                              # position 5
    (_q("s3", "street"), None),                                                               # no ranking
    (_q("a1", "address"), _ranking("Craig Street, Oakland", "Forbes Avenue, Oakland")),       # position 2
    (_q("a2", "address"), _ranking("Oakland, Forbes Ave", "Craig Street, Oakland")),          # 1: order is free
    (_q("j1", "street", qtype="judgment"), None),                                             # never ranked
]


def _write_ranked(root: Path, entries) -> tuple[Path, Path]:
    questions, ranked = root / "questions.jsonl", root / "ranked.jsonl"
    write_questions(questions, [q for q, _ in entries])
    ranked.write_text("".join(json.dumps({"question_id": q["question_id"], "ranking": r}) + "\n"
                              for q, r in entries if r is not None))
    return questions, ranked


def test_top_k_on_known_positions(tmp_path):
    questions_path, ranked_path = _write_ranked(tmp_path, RANKED_QUESTIONS)
    with pytest.raises(DataError, match=r"questions\.jsonl:6: no ranking for question_id 's3'"):
        read_ranked_names(questions_path, ranked_path)
    questions, rankings = read_ranked_names(questions_path, ranked_path, allow_missing=True)
    metrics = top_k_accuracy(questions, rankings)
    assert {k: metrics[k] for k in ("district_top1", "district_top5", "street_top1", "street_top5",
                                    "address_top1")} == {
        "district_top1": 33.33, "district_top5": 66.67, "street_top1": 33.33, "street_top5": 66.67,
        "address_top1": 50.0}
    assert metrics["counts"]["street_top5"] == {"correct": 2, "total": 3}


def test_ranked_files_that_do_not_fit_the_questions_are_named(tmp_path):
    questions_path, ranked_path = _write_ranked(tmp_path, RANKED_QUESTIONS)
    with ranked_path.open("a") as f:
        f.write(json.dumps({"question_id": "nope", "ranking": _ranking("X")}) + "\n")
    with pytest.raises(DataError, match=r"ranked\.jsonl:8: unknown question_id 'nope'"):
        read_ranked_names(questions_path, ranked_path, allow_missing=True)
    questions_path, ranked_path = _write_ranked(tmp_path, [(_q("j1", "street", qtype="judgment"), _ranking("Yes"))])
    with pytest.raises(DataError, match=r"ranked\.jsonl:1: .*judgment question"):
        read_ranked_names(questions_path, ranked_path)


# ------------------------------------------------------------------------------------------ metres
def test_metre_error_on_constructed_geometry(metric_city):
    answers = {f"m/{i}/s": answer for i, (_, _, answer, _) in enumerate(STREET_ANSWERS)}
    metrics, errors = street_error_files(metric_city["questions"], metric_city["locations"], metric_city["streets"],
                                         {"street": answers})
    got = [e.distance_m for e in errors["street"]]
    for distance, (_, _, _, expected) in zip(got, STREET_ANSWERS):
        assert (distance is None) if expected is None else distance == pytest.approx(expected, abs=0.05)
    assert [e.street for e in errors["street"]] == ["Main Street", "Main Street", "Harbour Road", "Ash Street",
                                                    "Harbour Road", None, "Main Street"]
    # Sorted 0, 10, 20, 40, 75, 300, beyond: the median is 40; the unnamed answer is beyond every threshold.
    assert metrics["street_error_median_m"] == pytest.approx(40.0, abs=0.05)
    assert {k: metrics[f"street_within_{k}m"] for k in (25, 50, 100, 250)} == {
        25: 42.86, 50: 57.14, 100: 71.43, 250: 71.43}
    # The nearest point lies on the named street: for Ash Street, the end of its eastern way.
    ash = errors["street"][3]
    assert ash.nearest == pytest.approx(lon_lat(100, 200), abs=1e-7)


def test_a_median_answer_naming_no_street_has_no_median(metric_city):
    answers = {f"m/{i}/s": "Nowhere Lane" for i in range(4)}
    metrics, _ = street_error_files(metric_city["questions"], metric_city["locations"], metric_city["streets"],
                                    {"street": answers})
    assert metrics["street_error_median_m"] is None
    assert metrics["street_within_250m"] == 0.0
    assert metrics["street_error_counts"] == {"questions": 7, "named_map_street": 0}


def test_score_cli_adds_top_k_and_metres(metric_city, tmp_path):
    out = tmp_path / "metrics.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "eval" / "score.py"), "--questions", str(metric_city["questions"]),
         "--predictions", str(metric_city["predictions"]), "--ranked", str(metric_city["ranked"]),
         "--locations", str(metric_city["locations"]), "--streets", str(metric_city["streets"]), "--json", str(out),
         "--allow-missing"],
        capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads(out.read_text())
    assert metrics["street_top1"] == 100.0 and metrics["street_top5"] == 100.0
    assert metrics["district_top1"] == 0.0  # district questions have no ranking here (--allow-missing)
    assert metrics["street_within_25m"] == 42.86 and metrics["street_error_median_m"] == pytest.approx(40, abs=0.05)
    # Top-1 ranked: Main Street everywhere, so |y| metres (90 from Harbour Road's side); sorted 0, 0, 10, 40, 90,
    # 155, 200.
    assert metrics["street_top1_error_median_m"] == pytest.approx(40, abs=0.05)
    assert {k: metrics[f"street_top1_within_{k}m"] for k in (25, 50, 100, 250)} == {
        25: 42.86, 50: 57.14, 100: 71.43, 250: 100.0}
    assert "street_top1_within_100m: 71.43" in done.stdout


def test_score_cli_bad_input(metric_city, tmp_path):
    script = [sys.executable, str(REPO / "eval" / "score.py"), "--questions", str(metric_city["questions"]),
              "--predictions", str(metric_city["predictions"])]
    alone = subprocess.run(script + ["--streets", str(metric_city["streets"])], capture_output=True, text=True)
    assert alone.returncode != 0 and "--locations and --streets go together" in alone.stderr
    other = tmp_path / "locations.csv"
    write_locations(other, [Location("images/elsewhere.jpg", "x", *ORIGIN, "Main Street", "Kallio")])
    unknown = subprocess.run(script + ["--streets", str(metric_city["streets"]), "--locations", str(other)],
                             capture_output=True, text=True)
    assert unknown.stderr.strip().splitlines()[-1] == (
        f"error: {metric_city['questions']}:1: image 'images/0.jpg' is not in {other}: its true location is unknown")
    missing = subprocess.run(script + ["--ranked", str(tmp_path / "none.jsonl")], capture_output=True, text=True)
    assert missing.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'none.jsonl'}: file not found"


# ------------------------------------------------------------------------------------------ pictures
def test_district_confusion_counts_and_pictures(metric_city, tmp_path):
    from addressvlm.core.records import read_questions

    questions = read_questions(metric_city["questions"])
    answers = {json.loads(line)["question_id"]: json.loads(line)["prediction"]
               for line in metric_city["predictions"].read_text().splitlines()}
    confusion = district_confusion(questions, answers, ["Kallio", "Kamppi", "Punavuori"])
    assert confusion.columns == ("Kallio", "Kamppi", "Punavuori", OTHER)
    # Truth Kallio x3 answered Kallio, Kallio, Kamppi; Kamppi x3 answered Kallio, Kamppi, Töölö; Punavuori right.
    assert confusion.counts == ((2, 1, 0, 0), (1, 1, 0, 1), (0, 0, 1, 0))

    done = subprocess.run(
        [sys.executable, str(REPO / "eval" / "draw_errors.py"), "--questions", str(metric_city["questions"]),
         "--predictions", str(metric_city["predictions"]), "--locations", str(metric_city["locations"]),
         "--streets", str(metric_city["streets"]), "--out", str(tmp_path / "figures")],
        capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("district_confusion.png", "street_errors.png"):
        with Image.open(tmp_path / "figures" / name) as picture:
            assert picture.width > 300 and picture.height > 200
            assert len(picture.convert("RGB").getcolors(maxcolors=1 << 24)) > 50  # drawn, not blank
