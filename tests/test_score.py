"""eval/score.py and addressvlm.answering.scoring: extraction on hand-written replies, the metric arithmetic, every
error."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from addressvlm.core.records import DataError, write_questions
from addressvlm.answering.scoring import (METRICS, ScoredQuestion, aggregate, binomial_p_value, chance_accuracy,
                                          extract_address, extract_choice, extract_judgment, format_table, is_correct,
                                          normalize_name, score, score_files)

REPO = Path(__file__).resolve().parents[1]
OPTIONS = {"A": "Forbes Avenue", "B": "Craig Street", "C": "South Forbes Avenue", "D": "Fifth Avenue"}


def _question(qid="img/0", level="street", qtype="generation", answer="Forbes Avenue", street="Forbes Avenue",
              district="Oakland", options=None):
    q = {"question_id": qid, "image": "img/0.jpg", "level": level, "qtype": qtype, "question": "?", "answer": answer,
         "street": street, "district": district}
    if options:
        q["options"] = options
    return q


def _generation_right(prediction: str, answer: str) -> bool:
    q = _question(answer=answer)
    return is_correct(q, normalize_name(prediction))


# ------------------------------------------------------------------------------------------ generation
@pytest.mark.parametrize("prediction, answer", [
    ("Forbes Ave", "Forbes Avenue"),
    ("Forbes Ave.", "Forbes Avenue"),
    ("Craig St", "Craig Street"),
    ("craig st.", "Craig Street"),
    ("Penn Blvd", "Penn Boulevard"),
    ("Boulevard of the Allies", "Blvd of the Allies"),
    ("Baum Rd", "Baum Road"), ("Negley Dr", "Negley Drive"), ("Hill Ln", "Hill Lane"), ("Market Sq", "Market Square"),
    ("Ohio River Pkwy", "Ohio River Parkway"), ("Route 28 Hwy", "Route 28 Highway"), ("Oak Ter", "Oak Terrace"),
    ("Ross Pl", "Ross Place"), ("Allegheny Ct", "Allegheny Court"),
    ('"Forbes Avenue"', "Forbes Avenue"),
    ("'Forbes Avenue'", "Forbes Avenue"),
    ("\u201cForbes Avenue\u201d", "Forbes Avenue"),
    ("\u2018Forbes Avenue.\u2019", "Forbes Avenue"),
    ("The Strip District", "Strip District"),
    ("the strip district", "Strip District"),
    ("Strip District", "The Strip District"),
    ("  FORBES \n  avenue  ", "Forbes Avenue"),
    ("Forbes Avenue.", "Forbes Avenue"),
    ("Forbes Avenue!", "Forbes Avenue"),
    ("\uff26orbes Avenue", "Forbes Avenue"),          # full-width F, folded by NFKC
    ("St. Clair St.", "Saint Clair Street"),
    ("5th Ave", "Fifth Avenue"),
    ("N Negley Ave", "North Negley Avenue"),
    ("Mt. Washington", "Mount Washington"),
    ("Stra\u00dfe", "STRASSE"),                        # case-folding, not lower()
])
def test_generation_right(prediction, answer):
    assert _generation_right(prediction, answer)


@pytest.mark.parametrize("prediction, answer", [
    ("South Forbes Avenue", "Forbes Avenue"),
    ("Forbes Avenue and Craig Street", "Forbes Avenue"),
    ("The street is Forbes Avenue", "Forbes Avenue"),  # a generation answer is the whole phrase
    ("Forbes", "Forbes Avenue"),
    ("Forbes Street", "Forbes Avenue"),
    ("", "Forbes Avenue"),
    ("   ", "Forbes Avenue"),
    ('""', "Forbes Avenue"),
])
def test_generation_wrong(prediction, answer):
    assert not _generation_right(prediction, answer)


def test_normalised_form():
    assert normalize_name("  'The Forbes Ave.'  ") == "forbes avenue"
    assert normalize_name("St Clair St") == "saint clair street"
    assert normalize_name("The") == "the"  # a name that is only "the" keeps it


# ------------------------------------------------------------------------------------------ judgment
@pytest.mark.parametrize("prediction, extracted", [
    ("Yes", "Yes"), ("yes.", "Yes"), ("YES", "Yes"), ("No", "No"), ("No, it is not", "No"),
    ("No, it is not.", "No"), ("Yes, it was taken on Forbes Avenue.", "Yes"),
    ("I think yes, not no", "Yes"), ("Well... no.", "No"),
    ("Not really", None), ("Nope", None), ("Yesterday", None), ("", None), ("I cannot tell.", None),
])
def test_judgment_extraction(prediction, extracted):
    assert extract_judgment(prediction) == extracted


def test_judgment_metric():
    no_question = _question(qtype="judgment", answer="No")
    assert is_correct(no_question, extract_judgment("No, it is not"))
    assert not is_correct(no_question, extract_judgment("Yes"))
    assert not is_correct(no_question, extract_judgment(""))


# ------------------------------------------------------------------------------------------ multiple choice
@pytest.mark.parametrize("prediction, letter", [
    ("B", "B"), ("(B)", "B"), ("B.", "B"), ("B)", "B"), ("Option B", "B"), ("option (b)", "B"), ("b", "B"),
    ("(b)", "B"), ("B. Craig Street", "B"), ("(B) Craig Street", "B"), ("The answer is B.", "B"),
    ("Answer: B", "B"), ("  D  ", "D"),
    ("Craig Street", "B"), ("Craig St.", "B"), ("craig street", "B"), ("It is Craig St, I think.", "B"),
    ("South Forbes Ave", "C"),                     # not also "Forbes Avenue": that one lies inside it
    ("The photo shows Forbes Avenue.", "A"),
])
def test_choice_parsed(prediction, letter):
    assert extract_choice(prediction, OPTIONS) == letter


@pytest.mark.parametrize("prediction", [
    "(A) or (B)", "Option A, Option B", "A and B", "Forbes Avenue or Craig Street", "", "I don't know",
    "E", "(E)", "a street", "Penn Avenue",
])
def test_choice_none_or_several_is_wrong(prediction):
    assert extract_choice(prediction, OPTIONS) is None
    assert not is_correct(_question(qtype="multiple_choice", answer="B", options=OPTIONS),
                          extract_choice(prediction, OPTIONS))


# ------------------------------------------------------------------------------------------ address
@pytest.mark.parametrize("prediction, right", [
    ("Forbes Avenue, Oakland", True),
    ("Forbes Ave., oakland", True),
    ("Oakland, Forbes Avenue", True),
    ("Forbes Avenue, Oakland, Pittsburgh", True),
    ("Forbes Avenue; Oakland", True),
    ("Forbes Avenue\nOakland", True),
    ("Forbes Avenue", False),
    ("Oakland", False),
    ("Forbes Avenue Oakland", False),            # no separator: the parts cannot be told apart
    ("South Forbes Avenue, Oakland", False),
    ("Forbes Avenue, Shadyside", False),
    ("Craig Street, Oakland", False),
    ("", False),
])
def test_address(prediction, right):
    q = _question(level="address", answer="Forbes Avenue, Oakland")
    assert is_correct(q, extract_address(prediction)) is right


def test_address_needs_two_different_parts():
    q = _question(level="address", street="Oakland", district="Oakland", answer="Oakland, Oakland")
    assert not is_correct(q, extract_address("Oakland"))
    assert is_correct(q, extract_address("Oakland, Oakland"))


# ------------------------------------------------------------------------------------------ metrics
def _scored(level, qtype, correct, total):
    q = _question(level=level, qtype=qtype)
    return [ScoredQuestion(q, "x", "x", i < correct) for i in range(total)]


def test_table2_mean_arithmetic():
    """Table 2 (Pitts, AddressVLM) per-type accuracies on a 1:2:1 test set give the micro-averages docs/design.md
    quotes: (88.73 + 2 x 93.54 + 95.16) / 4 = 92.74 (the paper prints 92.70)."""
    n = 10_000
    scored = (_scored("district", "generation", 8873, n) + _scored("district", "judgment", 18708, 2 * n)
              + _scored("district", "multiple_choice", 9516, n) + _scored("street", "generation", 7251, n)
              + _scored("street", "judgment", 18340, 2 * n) + _scored("street", "multiple_choice", 9398, n)
              + _scored("address", "generation", 6960, n))
    m = aggregate(scored)
    assert (m["A_d_G"], m["A_d_J"], m["A_d_M"]) == (88.73, 93.54, 95.16)
    assert (m["A_s_G"], m["A_s_J"], m["A_s_M"]) == (72.51, 91.70, 93.98)
    assert m["A_d"] == round((88.73 + 2 * 93.54 + 95.16) / 4, 2) == 92.74
    assert m["A_s"] == round((72.51 + 2 * 91.70 + 93.98) / 4, 2) == 87.47
    assert m["A"] == round((37097 + 34989) / 80000 * 100, 2) == 90.11
    assert m["A_sd"] == 69.60
    assert m["counts"]["A_d"] == {"correct": 37097, "total": 40000}
    assert m["counts"]["A"] == {"correct": 72086, "total": 80000}


def _small_test_set():
    questions = [
        _question("1/d/g", "district", "generation", "Oakland"),
        _question("1/d/jy", "district", "judgment", "Yes"),
        _question("1/d/jn", "district", "judgment", "No"),
        _question("1/d/m", "district", "multiple_choice", "A", options=dict(OPTIONS, A="Oakland")),
        _question("1/s/g", "street", "generation", "Forbes Avenue"),
        _question("1/s/jy", "street", "judgment", "Yes"),
        _question("1/s/jn", "street", "judgment", "No"),
        _question("1/s/m", "street", "multiple_choice", "A", options=OPTIONS),
        _question("1/a", "address", "generation", "Forbes Avenue, Oakland"),
        _question("2/s/g", "street", "generation", "Craig Street", street="Craig Street", district="Shadyside"),
        _question("2/d/g", "district", "generation", "Shadyside", street="Craig Street", district="Shadyside"),
    ]
    predictions = {"1/d/g": "oakland.", "1/d/jy": "Yes", "1/d/jn": "Yes, it is", "1/d/m": "(A)",
                   "1/s/g": "Forbes Ave", "1/s/jy": "No", "1/s/jn": "No, it is not", "1/s/m": "Option C",
                   "1/a": "Forbes Ave, Oakland", "2/s/g": "Craig St", "2/d/g": "Oakland"}
    return questions, predictions


def test_score_small_set():
    questions, predictions = _small_test_set()
    m = score(questions, predictions)
    assert set(METRICS) <= set(m)
    assert m["A_d_G"] == 50.0 and m["A_d_J"] == 50.0 and m["A_d_M"] == 100.0
    assert m["A_d"] == 60.0  # 3 of 5
    assert m["A_s_G"] == 100.0 and m["A_s_J"] == 50.0 and m["A_s_M"] == 0.0
    assert m["A_s"] == 60.0
    assert m["A"] == 60.0 and m["A_sd"] == 100.0
    assert m["per_district"] == {"Oakland": {"accuracy": 75.0, "correct": 3, "total": 4},
                                 "Shadyside": {"accuracy": 0.0, "correct": 0, "total": 1}}
    assert m["per_street"]["Craig Street"] == {"accuracy": 100.0, "correct": 1, "total": 1}
    assert m["per_street"]["Forbes Avenue"] == {"accuracy": 50.0, "correct": 2, "total": 4}


def test_score_missing_and_unknown():
    questions, predictions = _small_test_set()
    del predictions["1/a"]
    with pytest.raises(ValueError, match="1/a"):
        score(questions, predictions)
    m = score(questions, predictions, allow_missing=True)
    assert m["A_sd"] == 0.0 and m["counts"]["A_sd"] == {"correct": 0, "total": 1}
    with pytest.raises(ValueError, match="nope"):
        score(questions, dict(predictions, nope="Yes"), allow_missing=True)


def test_empty_columns_print_as_dash():
    m = score([_question("1", "street", "judgment", "Yes")], {"1": "yes"})
    assert m["A_sd"] is None and m["A_s_J"] == 100.0
    table = format_table(m)
    assert "A_sd" in table and "-" in table.splitlines()[1] and "1/1" in table


def test_chance_and_binomial():
    assert chance_accuracy("judgment") == 0.5
    assert chance_accuracy("multiple_choice") == 0.25
    assert chance_accuracy("generation") is None
    with pytest.raises(ValueError):
        chance_accuracy("essay")
    assert binomial_p_value(60, 100, 0.5) == pytest.approx(0.028444, abs=1e-5)
    assert binomial_p_value(50, 100, 0.5) > 0.5
    assert binomial_p_value(100, 100, 0.25) < 1e-50


# ------------------------------------------------------------------------------------------ files and CLI
def _write(tmp_path, questions, prediction_lines):
    qpath, ppath = tmp_path / "test_questions.jsonl", tmp_path / "predictions.jsonl"
    write_questions(qpath, questions)
    ppath.write_text("".join(line + "\n" for line in prediction_lines), encoding="utf-8")
    return qpath, ppath


def _lines(predictions: dict) -> list[str]:
    return [json.dumps({"question_id": k, "prediction": v}) for k, v in predictions.items()]


def _run_cli(*args):
    return subprocess.run([sys.executable, str(REPO / "eval" / "score.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)


def test_cli_report_json_and_per_sample(tmp_path):
    questions, predictions = _small_test_set()
    qpath, ppath = _write(tmp_path, questions, _lines(predictions))
    out = _run_cli("--questions", qpath, "--predictions", ppath, "--json", tmp_path / "m.json",
                   "--per-sample", tmp_path / "s.jsonl")
    assert out.returncode == 0, out.stderr
    for header in ("A_d^G", "A_d^J", "A_d^M", "mean A_d", "A_s^G", "A_s^J", "A_s^M", "mean A_s", "mean A", "A_sd"):
        assert header in out.stdout
    assert "3/5" in out.stdout and "6/10" in out.stdout
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics == json.loads(json.dumps(score(questions, predictions)))
    assert [metrics[k] for k in METRICS] == [50.0, 50.0, 100.0, 60.0, 100.0, 50.0, 0.0, 60.0, 60.0, 100.0]
    samples = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [s["question_id"] for s in samples] == [q["question_id"] for q in questions]
    by_id = {s["question_id"]: s for s in samples}
    assert by_id["1/s/m"]["extracted"] == "C" and by_id["1/s/m"]["correct"] == 0
    assert by_id["1/s/g"]["extracted"] == "forbes avenue" and by_id["1/s/g"]["correct"] == 1
    assert by_id["1/a"]["extracted"] == ["forbes avenue", "oakland"]


@pytest.mark.parametrize("case, bad_lines, where, message", [
    ("malformed line", ['{"question_id": "1/d/jy", "prediction": "Yes"'], "predictions.jsonl:2", "invalid JSON"),
    ("missing key", ['{"question_id": "1/d/jy"}'], "predictions.jsonl:2", "missing key"),
    ("not a string", ['{"question_id": "1/d/jy", "prediction": 1}'], "predictions.jsonl:2", "must be a string"),
    ("unknown id", ['{"question_id": "9/x", "prediction": "Yes"}'], "predictions.jsonl:2", "unknown question_id '9/x'"),
    ("duplicate id", ['{"question_id": "1/d/g", "prediction": "Yes"}'], "predictions.jsonl:2",
     "duplicate question_id '1/d/g' (first on line 1)"),
])
def test_bad_predictions_name_file_and_line(tmp_path, case, bad_lines, where, message):
    questions, predictions = _small_test_set()
    lines = _lines(predictions)
    del lines[1]  # 1/d/jy: the bad line takes its place
    qpath, ppath = _write(tmp_path, questions, lines[:1] + bad_lines + lines[1:])
    with pytest.raises(DataError) as err:
        score_files(qpath, ppath, allow_missing=True)
    assert where in str(err.value) and message in str(err.value)
    out = _run_cli("--questions", qpath, "--predictions", ppath, "--allow-missing")
    assert out.returncode != 0 and where in out.stderr and message in out.stderr


def test_missing_prediction_names_question_line(tmp_path):
    questions, predictions = _small_test_set()
    del predictions["1/s/g"]
    qpath, ppath = _write(tmp_path, questions, _lines(predictions))
    with pytest.raises(DataError) as err:
        score_files(qpath, ppath)
    assert "test_questions.jsonl:5" in str(err.value) and "'1/s/g'" in str(err.value)
    out = _run_cli("--questions", qpath, "--predictions", ppath)
    assert out.returncode != 0 and "test_questions.jsonl:5" in out.stderr and "--allow-missing" in out.stderr

    out = _run_cli("--questions", qpath, "--predictions", ppath, "--allow-missing", "--json", tmp_path / "m.json")
    assert out.returncode == 0, out.stderr
    assert "1 question(s) had no prediction" in out.stdout
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["counts"]["A_s_G"] == {"correct": 1, "total": 2}


def test_unwritable_outputs_are_refused_before_scoring(tmp_path):
    """`--json` naming a folder or an unwritable place ended in a traceback after the table; `--per-sample` naming
    the predictions would overwrite them. Each is one line, before anything is printed or written."""
    questions, predictions = _small_test_set()
    qpath, ppath = _write(tmp_path, questions, _lines(predictions))
    before = ppath.read_bytes()
    (tmp_path / "afile").write_text("")
    for option, path, message in (
            ("--json", tmp_path, f"{tmp_path}: --json is a folder: give a file name"),
            ("--json", tmp_path / "afile" / "m.json", f"--json cannot be made: {tmp_path / 'afile'} is a file"),
            ("--json", "/sys/m.json", "/sys/m.json: --json cannot be written: /sys refuses new files"),
            ("--per-sample", ppath, f"{ppath}: --per-sample is the --predictions input itself")):
        out = _run_cli("--questions", qpath, "--predictions", ppath, option, path)
        assert out.returncode == 1 and out.stdout == "", out.stdout
        assert out.stderr.startswith("error: ") and message in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert ppath.read_bytes() == before


def test_cli_help():
    out = _run_cli("--help")
    assert out.returncode == 0 and "--allow-missing" in out.stdout and "--per-sample" in out.stdout


def test_bench_script_runs_small():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_score.py"), "--n", "2000"],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("scored 2000 predictions in ")


def test_gold_answers_score_100_even_with_separators_in_names():
    """Every question type, answered with its own gold answer, scores exactly 100, also for names that contain the
    address answer's separator (a comma): such a name used to be split in two and A_sd fell to 90."""
    from addressvlm.core.records import Location
    from addressvlm.answering.scoring import score
    from addressvlm.data.vqa import Distractors, single_turn_questions

    streets = ["Main Street, North", "Ash Street", "Elm Road", "Oak Lane, East", "Pine Way"]
    districts = ["Old Town, Upper", "Harbour", "Hill", "Park, West"]
    rows = [Location(image=f"img/{i}.jpg", location_id=f"loc{i}", lat=0.0, lon=0.0, street=streets[i % 5],
                     district=districts[i % 4]) for i in range(20)]
    distractors = Distractors(rows, "random")
    questions = [q for i, row in enumerate(rows) for q in single_turn_questions(row, f"img/{i}", distractors, seed=0)]
    metrics = score(questions, {q["question_id"]: q["answer"] for q in questions})
    accuracies = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    assert accuracies and all(v == 100 for v in accuracies.values()), accuracies
    assert metrics["A_sd"] == 100


def test_mcnemar_exact_p_is_the_two_sided_binomial_of_the_discordant_questions():
    from addressvlm.answering.scoring import mcnemar_exact_p

    assert mcnemar_exact_p(10, 0) == pytest.approx(2 * 0.5 ** 10)
    assert mcnemar_exact_p(0, 10) == mcnemar_exact_p(10, 0)
    assert mcnemar_exact_p(3, 3) == 1.0 and mcnemar_exact_p(0, 0) == 1.0
    # 15 against 5: P(X <= 5) for X ~ Bin(20, 1/2), doubled
    assert mcnemar_exact_p(15, 5) == pytest.approx(2 * sum(math.comb(20, k) for k in range(6)) / 2 ** 20)


def test_paired_comparison_counts_the_questions_only_one_model_got_right():
    from addressvlm.answering.scoring import paired_comparison

    questions = [{"question_id": f"q{i}", "level": "district", "qtype": "judgment", "answer": "Yes",
                  "question": "Is this image taken in Kamppi, Yes or No?", "image": f"{i}.jpg"} for i in range(6)]
    first = {"q0": "Yes", "q1": "Yes", "q2": "Yes", "q3": "No", "q4": "No", "q5": "Yes"}
    second = {"q0": "Yes", "q1": "No", "q2": "No", "q3": "Yes", "q4": "No", "q5": "Yes"}
    compared = paired_comparison(questions, first, second)
    assert compared["A_d_J"] == {"questions": 6, "only_first": 2, "only_second": 1, "mcnemar_p": 1.0}
    assert compared["A_s_J"]["questions"] == 0
