"""Stage-2 VQA building on small generated cities: splits, training conversations, test questions, variants."""
import json
import math
import random
import re
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from addressvlm.core import templates
from addressvlm.core.records import (DataError, read_llava_json, read_locations, read_questions, write_llava_json,
                                     write_locations)
from addressvlm.data.vqa import ROUND_CYCLE, Distractors, build_vqa, merge_cities, mix_general, subsample

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_city import city_rows, make_city  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
QUESTION_ID = re.compile(r"^(?P<city>[^/]+)/(?P<loc>[^/]+)/(?P<view>[^/]+)/(?P<level>district|street|address)_"
                         r"(?P<qtype>generation|judgment|multiple_choice)(?P<yn>_yes|_no)?$")
CITY_KW = dict(n_locations=60, views=4, n_streets=10, n_districts=5)


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    return make_city(tmp_path_factory.mktemp("cities") / "tinyburg", **CITY_KW)


@pytest.fixture(scope="module")
def built(city):
    out = city.parent / "vqa"
    stats = build_vqa(city, out, seed=3)
    return out, stats


def _location_of(record_id: str) -> str:
    return record_id.split("/")[1]


def test_outputs_and_stats(built, city):
    out, stats = built
    assert stats == json.loads((out / "stats.json").read_text())
    rows = read_locations(city)
    splits = stats["splits"]
    assert sum(s["images"] for s in splits.values()) == len(rows)
    assert [splits[s]["locations"] for s in ("train", "val", "test")] == [42, 12, 6]  # 7:2:1 of 60
    assert splits["train"]["questions"] == 7 * splits["train"]["images"]
    assert splits["test"]["questions"] == 9 * splits["test"]["images"]


def test_no_location_in_two_splits(built, city):
    out, _ = built
    train = {_location_of(r["id"]) for r in read_llava_json(out / "train.json")}
    val = {_location_of(r["id"]) for r in read_llava_json(out / "val.json")}
    test = {_location_of(q["question_id"]) for q in read_questions(out / "test_questions.jsonl")}
    assert not (train & val or train & test or val & test)
    assert train | val | test == {r.location_id for r in read_locations(city)}
    # The validation questions ask about exactly the validation images, nine each, in the test questions' format.
    val_questions = read_questions(out / "val_questions.jsonl")
    assert {q["image"] for q in val_questions} == {r["image"] for r in read_llava_json(out / "val.json")}
    assert len(val_questions) == 9 * len({q["image"] for q in val_questions})


def test_image_paths_are_relative_to_the_city_root(built, city):
    out, _ = built
    for record in read_llava_json(out / "train.json"):
        assert (city.parent / record["image"]).is_file()


def test_training_conversations(built):
    out, _ = built
    records = read_llava_json(out / "train.json")
    counts, openers = Counter(), Counter()
    for record in records:
        humans = [t["value"] for t in record["conversations"][0::2]]
        answers = [t["value"] for t in record["conversations"][1::2]]
        assert humans[0].startswith("<image>\n") and not any("<image>" in h for h in humans[1:])
        assert len(humans) == 7
        kinds = [_kind(h.removeprefix("<image>\n")) for h in humans]
        counts.update(kinds)
        openers[kinds[0]] += 1
        assert answers[kinds.index(("address", "generation"))].count(", ") >= 1
        for (level, qtype), answer in zip(kinds, answers):
            assert answer in (("Yes", "No") if qtype == "judgment" else ("A", "B", "C", "D")) or qtype == "generation"
    per_pair = {counts[pair] for pair in ROUND_CYCLE}
    assert per_pair == {len(records)}  # the six level x type questions 1:1:1, one each per image
    # shuffled turns: every kind of question opens some conversations, as every test question is asked first
    assert set(openers) == {*ROUND_CYCLE, ("address", "generation")}


def test_generation_first_asks_names_before_they_are_given_away(city, tmp_path):
    build_vqa(city, tmp_path / "vqa", seed=0, turn_order="generation-first")
    for record in read_llava_json(tmp_path / "vqa" / "train.json"):
        kinds = [_kind(t["value"].removeprefix("<image>\n")) for t in record["conversations"][0::2]]
        for level in templates.LEVELS:
            positions = {qtype: kinds.index((level, qtype)) for qtype in templates.QTYPES}
            assert positions["generation"] < min(positions["judgment"], positions["multiple_choice"])
    with pytest.raises(ValueError, match="turn_order"):
        build_vqa(city, tmp_path / "bad", seed=0, turn_order="random")


def _kind(question: str) -> tuple[str, str]:
    if question == templates.ADDRESS_QUESTION:
        return "address", "generation"
    level = next(lv for lv in templates.LEVELS if any(question.startswith(t + " ") for t in templates.TEMPLATES[lv]))
    if question.endswith(templates.GENERATION_PROMPT):
        return level, "generation"
    if question.endswith(", Yes or No?"):
        return level, "judgment"
    assert question.endswith("Please select the correct option (A/B/C/D).")
    return level, "multiple_choice"


def test_test_questions_schema_ids_and_texts(built):
    out, _ = built
    questions = read_questions(out / "test_questions.jsonl")  # runs records.check_question on every line
    per_image = Counter(q["image"] for q in questions)
    assert set(per_image.values()) == {9}
    for q in questions:
        m = QUESTION_ID.match(q["question_id"])
        assert m and m["city"] == "tinyburg" and m["level"] == q["level"] and m["qtype"] == q["qtype"]
        assert Path(q["image"]).stem == m["view"]
        assert "<image>" not in q["question"]
        assert _kind(q["question"]) == (q["level"], q["qtype"])
        if q["qtype"] == "judgment":
            assert m["yn"] == f"_{q['answer'].lower()}"
            asked = q["question"].rsplit(" on " if q["level"] == "street" else " in ", 1)[1].removesuffix(", Yes or No?")
            assert (asked == q[q["level"]]) == (q["answer"] == "Yes")
        if q["level"] == "address":
            assert q["answer"] == f"{q['street']}, {q['district']}"
        elif q["qtype"] == "generation":
            assert q["answer"] == q[q["level"]]


def test_yes_and_no_balanced_per_level(built):
    out, _ = built
    judgments = Counter((q["level"], q["answer"]) for q in read_questions(out / "test_questions.jsonl")
                        if q["qtype"] == "judgment")
    assert judgments[("street", "Yes")] == judgments[("street", "No")] == judgments[("district", "No")] > 0


def test_multiple_choice_answer_once_among_four_distinct_options(built):
    out, _ = built
    letters = Counter()
    for q in read_questions(out / "test_questions.jsonl"):
        if q["qtype"] != "multiple_choice":
            continue
        options = q["options"]
        assert len(set(options.values())) == 4
        assert list(options.values()).count(q[q["level"]]) == 1
        assert options[q["answer"]] == q[q["level"]]
        assert all(f"({k}) {v}" in q["question"] for k, v in options.items())
        letters[q["answer"]] += 1
    assert set(letters) == {"A", "B", "C", "D"}
    n = sum(letters.values())  # 48 questions: each letter well inside a uniform draw's range
    assert all(abs(c - n / 4) < 4 * math.sqrt(n * 3 / 16) for c in letters.values())


def _nearest_other_streets(rows, row, k=3):
    """Brute force: the k streets (not the row's own nor its cross street) closest to the row's location."""
    centre = {}
    for r in rows:
        centre.setdefault(r.location_id, (r.lat, r.lon))
    kx = math.cos(math.radians(row.lat))
    here = centre[row.location_id]
    excluded = {row.street} | ({row.cross_street} if row.cross_street else set())
    nearest = {}
    for r in rows:
        if r.street not in excluded:
            there = centre[r.location_id]
            d = math.hypot(here[0] - there[0], (here[1] - there[1]) * kx)
            nearest[r.street] = min(d, nearest.get(r.street, d))
    return sorted(nearest, key=nearest.get)[:k]


def test_nearest_distractors_in_test_questions_are_the_closest_other_streets(built, city):
    out, _ = built
    rows = read_locations(city)
    by_image = {r.image: r for r in rows}
    for q in read_questions(out / "test_questions.jsonl"):
        if q["qtype"] == "multiple_choice" and q["level"] == "street":
            row = by_image[q["image"]]
            wrong = [v for v in q["options"].values() if v != row.street]
            assert sorted(wrong) == sorted(_nearest_other_streets(rows, row))


def test_a_cross_street_is_never_a_wrong_answer(city):
    rows = read_locations(city)
    nearest, uniform = Distractors(rows, "nearest"), Distractors(rows, "random")
    corners = [r for r in rows if r.cross_street]
    assert corners
    for row in corners:
        picked = nearest.pick("street", row, random.Random(0))
        assert row.cross_street not in picked and sorted(picked) == sorted(_nearest_other_streets(rows, row))
        for seed in range(20):
            assert row.cross_street not in uniform.pick("street", row, random.Random(seed))


def test_random_distractors_and_fewer_rounds_keep_types_balanced(city, tmp_path):
    stats = build_vqa(city, tmp_path, seed=1, rounds=3, distractors="random")
    records = read_llava_json(tmp_path / "train.json")
    for record in records:
        kinds = [_kind(t["value"].removeprefix("<image>\n")) for t in record["conversations"][0::2]]
        assert sorted(q for _, q in kinds) == sorted(templates.QTYPES)  # one of each type per image
    by_type = stats["splits"]["train"]["questions_by_type"]
    assert by_type["generation"] == by_type["judgment"] == by_type["multiple_choice"] == len(records)
    by_level = stats["splits"]["train"]["questions_by_level"]
    assert abs(by_level["district"] - by_level["street"]) <= 3 and by_level["address"] == 0
    for q in read_questions(tmp_path / "test_questions.jsonl"):
        if q["qtype"] == "multiple_choice":
            assert len(set(q["options"].values())) == 4


def test_deterministic_for_a_seed_and_different_across_seeds(built, city, tmp_path):
    out, _ = built
    build_vqa(city, tmp_path / "again", seed=3)
    build_vqa(city, tmp_path / "other", seed=4)
    for name in ("train.json", "val.json", "test_questions.jsonl", "val_questions.jsonl", "stats.json"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes()
    assert (tmp_path / "other" / "train.json").read_bytes() != (out / "train.json").read_bytes()


def test_split_column_is_honoured_and_conflicts_fail_with_line(city, tmp_path):
    rows = read_locations(city)
    forced = {rows[0].location_id: "test", rows[4].location_id: "val"}
    marked = [replace(r, split=forced.get(r.location_id, "")) for r in rows]
    write_locations(tmp_path / "c" / "locations.csv", marked)
    build_vqa(tmp_path / "c" / "locations.csv", tmp_path / "c" / "vqa")
    test_locations = {q["question_id"].split("/")[1] for q in read_questions(tmp_path / "c" / "vqa" / "test_questions.jsonl")}
    val_locations = {_location_of(r["id"]) for r in read_llava_json(tmp_path / "c" / "vqa" / "val.json")}
    assert rows[0].location_id in test_locations and rows[4].location_id in val_locations
    marked[1] = replace(marked[1], split="train")  # a second view of location 0, in another split
    write_locations(tmp_path / "d" / "locations.csv", marked)
    with pytest.raises(DataError, match=r"locations\.csv:3: location '000000' is in split 'train' here but in 'test'"):
        build_vqa(tmp_path / "d" / "locations.csv", tmp_path / "d" / "vqa")


@pytest.mark.parametrize("mutate,message", [
    (lambda rows: [replace(rows[0], location_id="a/b")] + rows[1:], r":2: location_id 'a/b' contains '/'"),
    (lambda rows: [replace(r, district=f"D{sorted({x.location_id for x in rows}).index(r.location_id) % 3}")
                   for r in rows], "3 distinct district name"),
])
def test_bad_tables_fail_clearly(city, tmp_path, mutate, message):
    write_locations(tmp_path / "locations.csv", mutate(read_locations(city)))
    with pytest.raises(DataError, match=message):
        build_vqa(tmp_path / "locations.csv", tmp_path / "vqa")


def test_malformed_row_fails_with_file_and_line(city, tmp_path):
    lines = city.read_text().splitlines()
    fields = lines[5].split(",")
    fields[2] = "north"  # the latitude of the image on line 6
    lines[5] = ",".join(fields)
    (tmp_path / "locations.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"locations\.csv:6: bad value"):
        build_vqa(tmp_path / "locations.csv", tmp_path / "vqa")


def test_view_and_location_fractions_are_nested_and_leave_val_and_test_alone(city, tmp_path):
    kept = {}
    for f in (1.0, 0.5, 0.25):
        stats = build_vqa(city, tmp_path / f"v{f}", seed=3, view_fraction=f, location_fraction=f)
        kept[f] = {r["image"] for r in read_llava_json(tmp_path / f"v{f}" / "train.json")}
        assert stats["splits"]["train"]["locations"] == math.ceil(42 * f)
        assert stats["splits"]["train"]["images"] == math.ceil(42 * f) * math.ceil(4 * f)
    assert kept[0.25] < kept[0.5] < kept[1.0]
    for name in ("val.json", "test_questions.jsonl", "val_questions.jsonl"):
        assert (tmp_path / "v0.25" / name).read_bytes() == (tmp_path / "v1.0" / name).read_bytes()
    rows = read_locations(city)
    assert subsample(rows, 0, view_fraction=0.5) == subsample(rows, 0, view_fraction=0.5)
    with pytest.raises(ValueError, match="view_fraction"):
        subsample(rows, 0, view_fraction=0.0)


def test_view_fraction_takes_table_c6s_counts(tmp_path):
    """Fig. 7's text keeps 50 / 25 / 12.5 % of a location's views; Table C6 names the runs View-13/24, 7/24, 4/24.
    --view-fraction takes either: 13/24 keeps 13 of each location's 24 views where 0.5 keeps 12; a share that is
    neither is a usage error naming the option."""
    table = make_city(tmp_path / "pitts24", images=False, n_locations=10, views=24, n_streets=6, n_districts=5)
    for share, views in (("0.5", 12), ("13/24", 13), ("7/24", 7), ("4/24", 4), ("0.125", 3)):
        done = subprocess.run([sys.executable, str(REPO / "datasets_prep/build_vqa.py"), "--locations", str(table),
                               "--out", str(tmp_path / share.replace("/", "of")), "--view-fraction", share],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        kept = Counter(r["id"].split("/")[1] for r in read_llava_json(tmp_path / share.replace("/", "of") / "train.json"))
        assert set(kept.values()) == {views}, share
    done = subprocess.run([sys.executable, str(REPO / "datasets_prep/build_vqa.py"), "--locations", str(table),
                           "--out", str(tmp_path / "bad"), "--view-fraction", "half"], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "build_vqa.py: error: argument --view-fraction: 'half' should be a share like 0.5 or a ratio like 13/24")


def test_merge_cities_prefixes_images(built, tmp_path):
    out, stats = built
    other_rows = city_rows(n_locations=20, views=2, n_streets=6, n_districts=4, seed=9, origin=(37.77, -122.42))
    write_locations(tmp_path / "sf" / "locations.csv", other_rows)
    build_vqa(tmp_path / "sf" / "locations.csv", tmp_path / "sf" / "vqa")
    merged = merge_cities([("tinyburg", out), ("sf", tmp_path / "sf" / "vqa")], tmp_path / "both")
    train = read_llava_json(tmp_path / "both" / "train.json")
    assert len(train) == merged["cities"]["tinyburg"]["train"] + merged["cities"]["sf"]["train"]
    assert {r["image"].split("/")[0] for r in train} == {"tinyburg", "sf"}
    assert all(r["id"].split("/")[0] == r["image"].split("/")[0] for r in train)
    questions = read_questions(tmp_path / "both" / "test_questions.jsonl")
    assert len(questions) == 9 * (stats["splits"]["test"]["images"]) + merged["cities"]["sf"]["test_questions"]
    val_questions = read_questions(tmp_path / "both" / "val_questions.jsonl")
    assert len(val_questions) == 9 * stats["splits"]["val"]["images"] + merged["cities"]["sf"]["val_questions"]
    assert {q["image"].split("/")[0] for q in val_questions} == {"tinyburg", "sf"}
    with pytest.raises(ValueError, match="appear in two cities"):
        merge_cities([("a", out), ("b", out)], tmp_path / "dup")


def test_mix_general_per_address_record(built, tmp_path):
    """Table 6's "5:1" is general:address: 5 general records per address record, refused when the general file is
    too small (as llava_v1_5_mix665k is for Pitts-IAL); a fraction gives fewer general than address records."""
    out, stats = built
    general = [{"id": f"g{i}", "image": f"coco/{i}.jpg",
                "conversations": [{"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "A cat."}]}
               for i in range(300)]
    general += [{"id": "text", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}]
    write_llava_json(tmp_path / "general.json", general)
    n_address = stats["splits"]["train"]["images"]
    result = mix_general(out / "train.json", tmp_path / "general.json", tmp_path / "mix.json", general_per_address=1,
                         seed=0, address_prefix="tinyburg", general_prefix="llava")
    mixed = read_llava_json(tmp_path / "mix.json")
    assert result["general_records"] == n_address == sum(not r["id"].startswith("tinyburg/") for r in mixed)
    assert len(mixed) == 2 * n_address
    assert all(r["image"].startswith("tinyburg/" if r["id"].startswith("tinyburg/") else "llava/coco/")
               for r in mixed if "image" in r)
    mix_general(out / "train.json", tmp_path / "general.json", tmp_path / "mix2.json", general_per_address=1,
                seed=0, address_prefix="tinyburg", general_prefix="llava")
    assert (tmp_path / "mix.json").read_bytes() == (tmp_path / "mix2.json").read_bytes()
    fewer = mix_general(out / "train.json", tmp_path / "general.json", tmp_path / "mix3.json", general_per_address=0.2)
    assert fewer["general_records"] == round(n_address / 5)
    with pytest.raises(ValueError, match=f"needs {5 * n_address} general records for the {n_address} address "
                                         r"records, but .* has 301 \(at most 1\.79 per address record"):
        mix_general(out / "train.json", tmp_path / "general.json", tmp_path / "mix4.json", general_per_address=5)


def test_mix_general_refuses_to_write_over_an_input(built, tmp_path):
    """`--out` naming `--address` (or `--general`) used to overwrite it without a word."""
    out, _ = built
    inputs = {flag: tmp_path / f"{flag[2:]}.json" for flag in ("--address", "--general")}
    for path in inputs.values():
        path.write_bytes((out / "train.json").read_bytes())
    for flag, path in inputs.items():
        run = subprocess.run([sys.executable, str(REPO / "datasets_prep/mix_general.py"),
                              *(a for pair in inputs.items() for a in map(str, pair)), "--out", str(path),
                              "--general-per-address", "0.5"], capture_output=True, text=True)
        assert run.returncode == 1
        assert run.stderr == f"error: {path}: --out is the {flag} input itself: choose an output apart from the " \
                             "inputs\n"
    assert all(path.read_bytes() == (out / "train.json").read_bytes() for path in inputs.values())


def test_build_vqa_refuses_an_output_over_its_table(tmp_path):
    table = make_city(tmp_path / "city", **CITY_KW)
    hints = tmp_path / "retrieved.jsonl"
    with pytest.raises(DataError, match="--out holds the --locations input"):
        build_vqa(table, table.parent)
    with pytest.raises(DataError, match="--out is the --hints input itself"):
        build_vqa(table, hints, hints=[hints])


def test_cli_build_and_bench(city, tmp_path):
    run = subprocess.run([sys.executable, str(REPO / "datasets_prep/build_vqa.py"), "--locations", str(city),
                          "--out", str(tmp_path / "vqa"), "--seed", "3"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "test : 6 locations, 24 images, 216 questions" in run.stdout
    run = subprocess.run([sys.executable, str(REPO / "benchmarks/bench_vqa.py"), "--locations", "60", "--views", "2",
                          "--streets", "8", "--districts", "4"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert re.search(r"120 images, \d+ questions in [\d.]+ s: [\d,]+ images/s, [\d,]+ questions/s", run.stdout)


@pytest.mark.parametrize("script", ["datasets_prep/ingest", "datasets_prep/validate", "datasets_prep/build_vqa",
                                    "datasets_prep/mix_general", "datasets_prep/merge_cities", "benchmarks/bench_vqa"])
def test_scripts_have_help(script):
    run = subprocess.run([sys.executable, str(REPO / f"{script}.py"), "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "usage:" in run.stdout


def test_single_turn_writes_each_round_as_its_own_record(tmp_path):
    from addressvlm.core.records import read_llava_json
    from addressvlm.data.vqa import build_vqa

    table = make_city(tmp_path / "city")
    multi = build_vqa(table, tmp_path / "multi", seed=0)
    single = build_vqa(table, tmp_path / "single", seed=0, single_turn=True)
    conversations = read_llava_json(tmp_path / "multi" / "train.json")
    records = read_llava_json(tmp_path / "single" / "train.json")
    assert len(records) == sum(len(r["conversations"]) // 2 for r in conversations)
    assert single["splits"]["train"]["questions"] == multi["splits"]["train"]["questions"]
    pairs = [(t[0]["value"].removeprefix("<image>\n"), t[1]["value"])
             for r in conversations for t in zip(r["conversations"][::2], r["conversations"][1::2])]
    assert [(r["conversations"][0]["value"].removeprefix("<image>\n"), r["conversations"][1]["value"]) for r in records] == pairs
    assert all(len(r["conversations"]) == 2 and r["conversations"][0]["value"].startswith("<image>\n") for r in records)
    assert len({r["id"] for r in records}) == len(records)


def test_pinning_splits_keeps_the_users_own_columns(tmp_path):
    import csv

    from addressvlm.data.vqa import pin_splits

    header = ["image", "notes", "location_id", "lat", "lon", "street", "district", "source_id"]
    lines = [header] + [[f"img/{i}.jpg", f"note {i}, with a comma", f"loc{i // 2}", "40.44", "-79.99",
                         f"Street {i // 2 % 5}", f"District {i // 2 % 4}", f"src-{i}"] for i in range(40)]
    table = tmp_path / "locations.csv"
    with open(table, "w", newline="") as f:
        csv.writer(f).writerows(lines)
    pin_splits(table, seed=0)
    with open(table, newline="") as f:
        rewritten = list(csv.DictReader(f))
    assert [c for c in rewritten[0] if c in ("notes", "source_id")] == ["notes", "source_id"]
    assert [(r["notes"], r["source_id"]) for r in rewritten] == [(row[1], row[7]) for row in lines[1:]]
    assert {r["split"] for r in rewritten} == {"train", "val", "test"}


@pytest.mark.parametrize("tool", ["split_locations.py", "build_vqa.py"])
def test_a_split_that_is_not_three_ratios_is_a_usage_error(tool, tmp_path):
    table = tmp_path / "locations.csv"
    table.write_text("image,location_id,lat,lon,street,district\nimg/0.jpg,loc0,40.44,-79.99,Forbes Avenue,Oakland\n")
    before = table.read_text()
    for split, says in (("7:2", "three non-negative numbers"), ("0:0:0", "not all 0"), ("a:b:c", "three numbers"),
                        ("inf:1:1", "three non-negative numbers")):
        out = ["--out", str(tmp_path / "vqa")] if tool == "build_vqa.py" else []
        done = subprocess.run([sys.executable, str(REPO / "datasets_prep" / tool), "--locations", str(table),
                               "--split", split, *out], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith(f"{tool}: error: argument --split: split {split!r}")
        assert says in done.stderr
    assert table.read_text() == before and not (tmp_path / "vqa").exists()


def test_a_run_killed_mid_way_leaves_the_old_output_whole(city, tmp_path, monkeypatch):
    """A rerun with another seed that dies after writing train.json must not leave train.json of the new run beside
    val.json / test_questions.jsonl of the old one (test locations of one run would be training data of the other)."""
    import addressvlm.data.vqa as vqa

    out = tmp_path / "vqa"
    build_vqa(city, out, seed=0)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vqa, "write_questions", killed)
    with pytest.raises(KeyboardInterrupt):
        build_vqa(city, out, seed=1)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vqa"]  # no staging folder left behind
    monkeypatch.undo()
    build_vqa(city, out, seed=1)
    assert json.loads((out / "stats.json").read_text())["seed"] == 1
    assert (out / "train.json").read_bytes() != before["train.json"]


def test_vqa_output_folder_with_foreign_files_is_refused(city, tmp_path):
    out = tmp_path / "vqa"
    out.mkdir()
    (out / "my_notes.txt").write_text("mine")
    with pytest.raises(DataError, match="my_notes.txt"):
        build_vqa(city, out, seed=0)
    assert (out / "my_notes.txt").read_text() == "mine"


def test_views_differing_only_by_extension_get_distinct_ids_and_grafts():
    from addressvlm.data.graft import grafted_name
    from addressvlm.core.records import Location
    from addressvlm.data.vqa import view_names

    rows = [Location(image=image, location_id="loc1", lat=0.0, lon=0.0, street="Ash Street", district="Hill")
            for image in ("img/x.jpg", "img/x.png", "img/x.jpeg", "other/x.jpg", "img/y.jpg")]
    names = view_names(rows)
    assert len(set(names.values())) == len(rows)
    assert names["img/y.jpg"] == "y"  # a stem of its own stays short
    assert all("/" not in name for name in names.values())
    assert len({grafted_name(r.image) for r in rows}) == len(rows)
    assert grafted_name("img/y.jpg") == "img/y.jpg" and grafted_name("img/x.png") == "img/x.png.jpg"
