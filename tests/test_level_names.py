"""A city's own words for its levels (Table 8, Tokyo: chome and street): carried from build_vqa.py into every
question, recorded beside the city, and used by scoring, its reports and serving; the paper's words by default."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from addressvlm.core import templates
from addressvlm.geo.streets import StreetMap
from addressvlm.core.records import (DataError, question_level_names, read_level_names, read_llava_json,
                                     read_locations, read_questions)
from addressvlm.answering.scoring import format_table, score
from addressvlm.serving.server import ServedCity
from addressvlm.data.vqa import build_vqa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_city import make_city  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CITY_KW = dict(n_locations=20, views=2, n_streets=8, n_districts=4)
TOKYO = {"district": "chome", "street": "street"}


@pytest.fixture(scope="module")
def default_and_tokyo(tmp_path_factory):
    """The same city built twice: with the paper's words (no flag) and, through the command line, as Tokyo."""
    root = tmp_path_factory.mktemp("levels")
    paper = make_city(root / "paper" / "city", images=False, **CITY_KW)
    build_vqa(paper, paper.parent / "vqa", seed=1)
    tokyo = make_city(root / "tokyo" / "city", images=False, **CITY_KW)
    subprocess.run([sys.executable, str(REPO / "datasets_prep/build_vqa.py"), "--locations", str(tokyo), "--out",
                    str(tokyo.parent / "vqa"), "--seed", "1", "--level-names", "chome,street"],
                   check=True, capture_output=True, text=True)
    return paper.parent, tokyo.parent


def _texts(vqa: Path) -> list[tuple[str, str]]:
    """(level, question) of every test question and every training turn (the training turn's level is unknown)."""
    out = [(q["level"], q["question"]) for q in read_questions(vqa / "test_questions.jsonl")]
    out += [("train", turn["value"]) for record in read_llava_json(vqa / "train.json")
            for turn in record["conversations"] if turn["from"] == "human"]
    return out


def test_default_build_asks_table_b4_and_b5_verbatim(default_and_tokyo):
    paper, _ = default_and_tokyo
    questions = read_questions(paper / "vqa" / "test_questions.jsonl")
    assert not (paper / "levels.json").exists()
    assert "level_names" not in json.loads((paper / "vqa" / "stats.json").read_text())
    for q in questions:
        assert "level_name" not in q
        if q["level"] == "address":
            assert q["question"] == templates.ADDRESS_QUESTION == (
                "What is the address where this image was taken? "
                "Answer with the street name and the district name, separated by a comma.")
            continue
        assert any(q["question"].startswith(t + " ") for t in templates.TEMPLATES[q["level"]]), q["question"]
        if q["qtype"] == "multiple_choice":
            assert f"Which of the following {q['level']} correctly represents" in q["question"]
    # Naming a level by its own key is the paper's text, for every phrasing and question type.
    options = dict(zip(templates.OPTION_LETTERS, "PQRS"))
    for level in templates.LEVELS:
        for i in range(10):
            for qtype, extra in (("generation", {}), ("judgment", {"name": "X"}), ("multiple_choice",
                                                                                  {"options": options})):
                assert templates.level_question(level, qtype, i, word=level, **extra) == \
                    templates.level_question(level, qtype, i, **extra)


def test_chome_is_said_in_every_question_type_and_nothing_else_changes(default_and_tokyo):
    paper, tokyo = default_and_tokyo
    assert read_level_names(tokyo) == TOKYO
    assert json.loads((tokyo / "vqa" / "stats.json").read_text())["level_names"] == TOKYO
    texts = _texts(tokyo / "vqa")
    assert texts and not any("district" in text for _, text in texts)
    questions = read_questions(tokyo / "vqa" / "test_questions.jsonl")
    kinds = {(q["level"], q["qtype"]) for q in questions if "chome" in q["question"]}
    assert kinds == {("district", "generation"), ("district", "judgment"), ("district", "multiple_choice"),
                     ("address", "generation")}
    for q in questions:
        assert q.get("level_name") == {"district": "chome", "street": None, "address": None}[q["level"]]
        if q["qtype"] == "multiple_choice" and q["level"] == "district":
            assert "Which of the following chome correctly represents" in q["question"]
    assert "In which chome was this photo taken?" == templates.level_template("district", 2, "chome")
    assert "What chome does the photo fall under?" == templates.level_template("district", 5, "chome")
    # Same draws: only the words differ, so ids, answers and options are the paper build's.
    strip = lambda q: {k: v for k, v in q.items() if k not in ("question", "level_name")}  # noqa: E731
    assert [strip(q) for q in questions] == [strip(q) for q in read_questions(paper / "vqa" / "test_questions.jsonl")]
    # A later build without the flag keeps the city's recorded words.
    again = build_vqa(tokyo / "locations.csv", tokyo / "vqa_again", seed=1)
    assert again["level_names"] == TOKYO
    assert (tokyo / "vqa_again" / "test_questions.jsonl").read_bytes() == \
        (tokyo / "vqa" / "test_questions.jsonl").read_bytes()


def test_scores_and_reports_use_the_level_word(default_and_tokyo, capsys):
    _, tokyo = default_and_tokyo
    questions_path = tokyo / "vqa" / "test_questions.jsonl"
    questions = read_questions(questions_path)
    predictions = {q["question_id"]: q["answer"] for q in questions}
    metrics = score(questions, predictions)
    assert metrics["level_names"] == TOKYO and metrics["A_d"] == 100.0
    table = format_table(metrics)
    assert "A_chome^G" in table and "mean A_chome" in table and "A_s^G" in table and "A_d" not in table
    predictions_path = tokyo / "predictions.jsonl"
    predictions_path.write_text("".join(json.dumps({"question_id": k, "prediction": v}) + "\n"
                                        for k, v in predictions.items()))
    sys.path.insert(0, str(REPO / "eval"))
    try:
        import score as score_cli
    finally:
        sys.path.remove(str(REPO / "eval"))
    score_cli.main(["--questions", str(questions_path), "--predictions", str(predictions_path),
                    "--json", str(tokyo / "metrics.json")])
    assert "mean A_chome" in capsys.readouterr().out
    written = json.loads((tokyo / "metrics.json").read_text())
    assert written["level_names"] == TOKYO and written["A_d"] == 100.0  # metric keys stay the paper's
    # The paper's city keeps the paper's headers.
    paper_questions = [{k: v for k, v in q.items() if k != "level_name"} for q in questions]
    assert "mean A_d" in format_table(score(paper_questions, predictions))


def test_served_city_asks_in_its_words(default_and_tokyo):
    paper, tokyo = default_and_tokyo
    for root, word in ((paper, "district"), (tokyo, "chome")):
        city = ServedCity(read_locations(root / "locations.csv"), StreetMap([]), root, read_level_names(root))
        district_question, street_question = city.locate_questions()
        assert district_question == templates.level_question("district", "generation", 0, word=word)
        assert word in district_question and "street" in street_question


def test_merged_cities_with_different_words_name_both():
    questions = [{"level": "district", "level_name": "chome"}, {"level": "district"}, {"level": "street"},
                 {"level": "address"}]
    assert question_level_names(questions) == {"district": "district (chome/district)", "street": "street"}


@pytest.mark.parametrize("text", ["chome", "chome,street,block", "Chome,street", "chome,chome", "ch0me,street"])
def test_bad_level_names_fail_clearly(text, tmp_path):
    with pytest.raises(ValueError, match="level names"):
        templates.parse_level_names(text)
    (tmp_path / "levels.json").write_text('{"district": "chome"}')
    with pytest.raises(DataError, match="levels.json"):
        read_level_names(tmp_path)


def test_tokyo_247_route_chome_table_and_netvlad_mat_in_zone_54s(tmp_path):
    """docs/data.md's Tokyo route: an address table with a chome column, coordinates from a tokyo247.mat laid out
    like NetVLAD's (dbStruct, UTM zone 54S), twelve views of a place grouped into one location."""
    import numpy as np
    from scipy.io import savemat

    from addressvlm.data.ingest import IngestOptions, ingest_table

    places = [(f"Street {chr(65 + p % 5)}", f"Chome {p % 4 + 1}", 380000.0 + 40 * p, 3946000.0 + 25 * p)
              for p in range(8)]
    images = [f"03814/03814{p:04d}_{view * 30:03d}.jpg" for p in range(8) for view in range(12)]
    cells = np.empty((len(images), 1), dtype=object)
    cells[:, 0] = images
    utm = np.array([[places[i // 12][2] for i in range(len(images))], [places[i // 12][3] for i in range(len(images))]])
    savemat(tmp_path / "tokyo247.mat", {"dbStruct": {"whichSet": "test", "dbImageFns": cells, "utmDb": utm,
                                                      "qImageFns": cells[:1], "utmQ": utm[:, :1]}})
    table = tmp_path / "tokyo_addresses.csv"
    table.write_text("image,street,chome\n" + "".join(f"{image},{places[i // 12][0]},{places[i // 12][1]}\n"
                                                       for i, image in enumerate(images)))
    rows = ingest_table(table, tmp_path / "tokyo" / "locations.csv", IngestOptions(
        columns={"district": "chome"}, coords="pitts-mat", pitts_mat=str(tmp_path / "tokyo247.mat"),
        utm_zone="54S", check_files=False))
    assert len({r.location_id for r in rows}) == 8 and len(rows) == 96
    assert all(35.6 < r.lat < 35.7 and 139.6 < r.lon < 139.7 for r in rows)  # central Tokyo
    assert {r.district for r in rows} == {"Chome 1", "Chome 2", "Chome 3", "Chome 4"}
