"""The street-level reward (addressvlm/answering/reward.py) on a constructed geometry whose every distance is fixed,
and eval/score.py --rewards, which writes the same values."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from shapely.geometry import LineString

from addressvlm.answering.reward import (DISTRICT_WEIGHT, NEAR_WEIGHT, STREET_WEIGHT, TAU_M, grpo_reward, reward,
                                         reward_context)
from addressvlm.core.records import (DataError, Location, read_locations, read_questions, read_rewards, write_locations,
                                     write_rewards)
from addressvlm.geo.streets import Street, StreetMap, read_street_map
from test_score_beyond_exact import lon_lat, metric_city  # noqa: F401 (the metric city fixture)

REPO = Path(__file__).resolve().parents[1]

# The true place is (0, 0), on Main Street in Kallio. Every other street runs east-west, y metres north of it:
# (name, y, district it runs in; None: on the map but in no row of the city table, so outside the gazetteer).
STREETS = [
    ("Main Street", 0, "Kallio"),
    ("Near Lane", 30, "Kallio"),
    ("Far Road", 500, "Kallio"),
    ("Border Street", 30, "Kamppi"),
    ("Ghost Street", 10, None),
]
NEAR = NEAR_WEIGHT * math.exp(-30 / TAU_M)  # the street credit of a wrong street 30 m away
FAR = NEAR_WEIGHT * math.exp(-500 / TAU_M)


@pytest.fixture(scope="module")
def context():
    street_map = StreetMap([Street(name, LineString([lon_lat(-1000, y), lon_lat(1000, y)]))
                            for name, y, _ in STREETS])
    rows = [Location("truth.jpg", "truth", *reversed(lon_lat(0, 0)), "Main Street", "Kallio")]
    rows += [Location(f"{i}.jpg", f"loc{i}", *reversed(lon_lat(0, y)), name, district)
             for i, (name, y, district) in enumerate(STREETS) if district]
    rows.append(Location("paper.jpg", "paper", *reversed(lon_lat(0, 2000)), "Paper Street", "Kallio"))  # no line
    return reward_context(rows, street_map)


def question(level, qtype="generation", answer=None, **extra):
    truth = {"district": "Kallio", "street": "Main Street", "address": "Main Street, Kallio"}
    return {"question_id": f"{level}/{qtype}", "image": "truth.jpg", "level": level, "qtype": qtype,
            "question": "?", "answer": answer or truth[level], "street": "Main Street", "district": "Kallio", **extra}


def test_the_exact_street_scores_highest(context):
    q = question("street")
    replies = ["Main Street", "main st.", "Near Lane", "Far Road", "Border Street", "Ghost Street", "Paper Street",
               "Kallio", ""]
    got = {reply: reward(q, reply, context) for reply in replies}
    assert got["Main Street"] == got["main st."] == 1.0
    assert max(value for reply, value in got.items() if reply not in ("Main Street", "main st.")) < 1.0


def test_a_nearer_wrong_street_earns_more(context):
    q = question("street")
    near, far = reward(q, "Near Lane", context), reward(q, "Far Road", context)
    assert near == pytest.approx(DISTRICT_WEIGHT + STREET_WEIGHT * NEAR, abs=1e-4)  # 30 m
    assert far == pytest.approx(DISTRICT_WEIGHT + STREET_WEIGHT * FAR, abs=1e-4)  # 500 m
    assert near > far + 0.1


def test_the_right_district_outranks_a_nearer_street_in_another(context):
    # Far Road (Kallio, 500 m) against Border Street (Kamppi, 30 m): the district tier comes first.
    q = question("street")
    assert reward(q, "Far Road", context) > reward(q, "Border Street", context)
    assert reward(q, "Border Street", context) == pytest.approx(STREET_WEIGHT * NEAR, abs=1e-4)
    # A gazetteer street of the true district the map has no line for: the district only.
    assert reward(q, "Paper Street", context) == pytest.approx(DISTRICT_WEIGHT)


def test_a_name_outside_the_gazetteer_earns_nothing(context):
    # Ghost Street lies 10 m from the true place on the map, but no row of the city table names it.
    assert reward(question("street"), "Ghost Street", context) == 0.0
    assert reward(question("district"), "Ghostville", context) == 0.0
    assert reward(question("address"), "Ghost Street, Ghostville", context) == 0.0


def test_judgment_choice_and_district_are_exact(context):
    options = {"A": "Near Lane", "B": "Main Street", "C": "Far Road", "D": "Border Street"}
    choice = question("street", "multiple_choice", answer="B", options=options)
    assert [reward(choice, reply, context) for reply in ("B", "(b)", "Near Lane", "A", "A or B")] == [1, 1, 0, 0, 0]
    judgment = question("street", "judgment", answer="Yes")
    assert [reward(judgment, reply, context) for reply in ("Yes, it is.", "No", "Main Street", None)] == [1, 0, 0, 0]
    district = question("district")
    assert [reward(district, reply, context) for reply in ("kallio", "Kamppi", None)] == [1, 0, 0]


def test_the_address_by_its_parts(context):
    q = question("address")
    got = {reply: reward(q, reply, context) for reply in (
        "Main Street, Kallio", "Kallio, Main St", "Main Street, Kallio, Helsinki", "Main Street, Kamppi",
        "Near Lane, Kallio", "Near Lane, Kamppi", "Ghost Street, Kallio", "Kallio", "Far Road, Kamppi")}
    assert got["Main Street, Kallio"] == got["Kallio, Main St"] == got["Main Street, Kallio, Helsinki"] == 1.0
    assert got["Main Street, Kamppi"] == pytest.approx(STREET_WEIGHT)
    assert got["Near Lane, Kallio"] == pytest.approx(DISTRICT_WEIGHT + STREET_WEIGHT * NEAR, abs=1e-4)
    assert got["Near Lane, Kamppi"] == pytest.approx(STREET_WEIGHT * NEAR, abs=1e-4)
    assert got["Ghost Street, Kallio"] == got["Kallio"] == pytest.approx(DISTRICT_WEIGHT)
    assert got["Far Road, Kamppi"] == pytest.approx(STREET_WEIGHT * FAR, abs=1e-4)
    assert got["Near Lane, Kallio"] > got["Kallio"] > got["Near Lane, Kamppi"] > got["Far Road, Kamppi"]


def test_reward_modes_drop_the_distance_then_the_hierarchy(context):
    """The recipes' reward variants: ``hierarchical`` keeps the district tier but gives a wrong street nothing
    however near; ``exact`` gives 1 or 0 as the accuracy counts."""
    street, address = question("street"), question("address")
    replies = [(street, "Main Street"), (street, "Near Lane"), (street, "Far Road"), (street, "Border Street"),
               (address, "Near Lane, Kallio"), (address, "Main Street, Kamppi"), (address, "Kallio")]
    got = {mode: [reward(q, reply, context, mode) for q, reply in replies]
           for mode in ("hierarchical_distance", "hierarchical", "exact")}
    assert got["hierarchical_distance"] == [reward(q, reply, context) for q, reply in replies]  # the default
    assert got["hierarchical"] == pytest.approx([1, DISTRICT_WEIGHT, DISTRICT_WEIGHT, 0, DISTRICT_WEIGHT,
                                                 STREET_WEIGHT, DISTRICT_WEIGHT])
    assert got["exact"] == [1, 0, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="reward mode 'distance': choose one of exact, hierarchical, "
                                         "hierarchical_distance"):
        reward(street, "Main Street", context, "distance")


def test_grpo_reward_is_the_reward_on_trls_arguments(context):
    """What GRPOTrainer calls: conversational completions and the dataset's columns, one reward each."""
    street = question("street")
    completions = [[{"role": "assistant", "content": "Near Lane"}],
                   [{"role": "assistant", "content": [{"type": "text", "text": "Main "}, {"type": "text",
                                                                                          "text": "Street"}]}]]
    function = grpo_reward(context, "hierarchical_distance")
    got = function(prompts=[[], []], completions=completions, completion_ids=[[], []],
                   test_question=[json.dumps(street)] * 2, image=[None, None], trainer_state=None)
    assert got == [reward(street, "Near Lane", context), 1.0]
    assert function.__name__ == "street_reward_hierarchical_distance"


def _score(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "eval" / "score.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_score_cli_writes_the_functions_rewards(metric_city, tmp_path):
    # The metric city's table names only Main Street: two more rows put its other streets in the gazetteer.
    rows = read_locations(metric_city["locations"])
    write_locations(metric_city["locations"], rows + [
        Location("images/harbour.jpg", "harbour", *reversed(lon_lat(300, 400)), "Harbour Road", "Kallio"),
        Location("images/ash.jpg", "ash", *reversed(lon_lat(400, 200)), "Ash Street", "Kamppi")])
    out = tmp_path / "rewards.jsonl"
    done = _score("--questions", metric_city["questions"], "--predictions", metric_city["predictions"],
                  "--locations", metric_city["locations"], "--streets", metric_city["streets"], "--rewards", out)
    assert done.returncode == 0, done.stderr[-2000:]
    questions = read_questions(metric_city["questions"])
    predictions = {json.loads(line)["question_id"]: json.loads(line)["prediction"]
                   for line in metric_city["predictions"].read_text().splitlines()}
    context = reward_context(read_locations(metric_city["locations"]), read_street_map(metric_city["streets"]))
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["question_id"] for r in written] == [q["question_id"] for q in questions]
    assert read_rewards(out) == {q["question_id"]: reward(q, predictions[q["question_id"]], context)
                                 for q in questions}
    # Harbour Road 20 m off in the right district, Ash Street 75 m off in the right one, Harbour Rd. 300 m off in
    # another: each a near credit.
    assert len(set(read_rewards(out).values()) - {0.0, 1.0}) == 3
    # Another of the function's modes, as a reward-variant recipe trains with it.
    exact = tmp_path / "exact.jsonl"
    done = _score("--questions", metric_city["questions"], "--predictions", metric_city["predictions"],
                  "--locations", metric_city["locations"], "--streets", metric_city["streets"], "--rewards", exact,
                  "--reward-mode", "exact")
    assert done.returncode == 0, done.stderr[-2000:]
    assert read_rewards(exact) == {q["question_id"]: reward(q, predictions[q["question_id"]], context, "exact")
                                   for q in questions} != read_rewards(out)


def test_score_cli_refuses_bad_reward_outputs(metric_city):
    base = ["--questions", metric_city["questions"], "--predictions", metric_city["predictions"]]
    alone = _score(*base, "--rewards", metric_city["questions"].parent / "r.jsonl")
    assert alone.returncode == 2 and "--rewards needs --locations and --streets" in alone.stderr
    mode = _score(*base, "--locations", metric_city["locations"], "--streets", metric_city["streets"],
                  "--rewards", metric_city["questions"].parent / "r.jsonl", "--reward-mode", "metres")
    assert mode.returncode == 2 and mode.stderr.strip().endswith(
        "--reward-mode: reward mode 'metres': choose one of exact, hierarchical, hierarchical_distance")
    over = _score(*base, "--locations", metric_city["locations"], "--streets", metric_city["streets"],
                  "--rewards", metric_city["predictions"])
    assert over.returncode == 1 and over.stderr.strip() == (
        f"error: {metric_city['predictions']}: --rewards is the --predictions input itself: choose an output apart "
        "from the inputs")


def test_rewards_file_schema(tmp_path):
    path = tmp_path / "rewards.jsonl"
    write_rewards(path, [{"question_id": "a", "reward": 0.25}, {"question_id": "b", "reward": 1.0}])
    assert read_rewards(path) == {"a": 0.25, "b": 1.0}
    with pytest.raises(DataError, match=r"rewards.jsonl:1: reward 1.5 is not a number in \[0, 1\]"):
        write_rewards(path, [{"question_id": "a", "reward": 1.5}])
    path.write_text('{"question_id": "a", "reward": 0.5}\n{"question_id": "a", "reward": 0.5}\n')
    with pytest.raises(DataError, match="rewards.jsonl:2: duplicate question_id 'a'"):
        read_rewards(path)


def test_reward_curve_file_schema(tmp_path):
    from addressvlm.core.records import read_reward_curve, write_reward_curve
    from addressvlm.runs.grpo import reward_curve

    # TRL's log entries: the training steps' (with a reward) become the curve, the final summary does not
    logged = [{"step": 5, "reward": 0.4, "reward_std": 0.2, "kl": 0.001, "loss": 0.0, "epoch": 0.1},
              {"step": 10, "reward": 0.5, "epoch": 0.2}, {"step": 10, "train_runtime": 12.5, "epoch": 0.2}]
    path = tmp_path / "reward_curve.jsonl"
    write_reward_curve(path, reward_curve(logged))
    assert read_reward_curve(path) == [{"step": 5, "reward": 0.4, "reward_std": 0.2, "kl": 0.001},
                                       {"step": 10, "reward": 0.5}]
    with pytest.raises(DataError, match="reward_curve.jsonl:1: unknown key\\(s\\) loss"):
        write_reward_curve(path, [{"step": 1, "reward": 0.5, "loss": 0.1}])
    path.write_text('{"step": 0, "reward": 0.5}\n')
    with pytest.raises(DataError, match="reward_curve.jsonl:1: step 0 is not a positive whole number"):
        read_reward_curve(path)
    path.write_text('{"step": 1, "reward": NaN}\n')
    with pytest.raises(DataError, match="reward_curve.jsonl:1: reward nan is not a number"):
        read_reward_curve(path)
