"""addressvlm.answering.ranking and eval/rank.py on the tiny LLaVA-Phi3: closed-set ranking equals one full forward per
name, resume and chunks, constrained decoding within the gazetteer, the gazetteer and ranked-file checks."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from addressvlm.answering.answering import chunk_questions
from addressvlm.data.gazetteer import build_gazetteer
from addressvlm.answering.ranking import (NameTrie, constrained_answers, rank_image_questions, rank_one_by_one,
                                          rank_questions)
from addressvlm.core.records import (DataError, GazetteerEntry, Location, read_gazetteer, read_predictions,
                                     read_ranked, read_questions, write_gazetteer, write_locations, write_questions)
from addressvlm.core.templates import ADDRESS_QUESTION, address_answer
from helpers import RECIPE, RETRAINED, model_options, write_synthetic_checkpoint
from scripts import script

REPO = Path(__file__).resolve().parent.parent
PLACES = [("Forbes Avenue", "Oakland"), ("Craig Street", "Oakland"), ("Fifth Avenue", "Shadyside"),
          ("Penn Avenue", "Bloomfield"), ("Liberty Avenue", "Bloomfield"), ("Forbes Ave.", "Oakland")]
STREET_Q = "Identify the street in this image, please. Answer the question using a single word or phrase."
DISTRICT_Q = "Which district is depicted in the photo? Answer the question using a single word or phrase."


def write_ranked_city(root: Path, images: int = 4) -> Path:
    """A city table and per image a district, a street and an address generation question plus a judgment (which
    ranking skips)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows, questions = [], []
    for i in range(images):
        street, district = PLACES[i % len(PLACES)]
        image = f"images/{i}.png"
        picture = Image.new("RGB", (64, 40), (40 + 50 * i, 200 - 40 * i, 90))
        picture.paste((250, 250, 250), (8 * i, 0, 8 * i + 16, 20))
        picture.save(root / image)
        rows.append(Location(image, f"loc{i}", 40.44 + 0.001 * i, -79.99, street, district))
        base = {"image": image, "street": street, "district": district}
        questions += [
            {**base, "question_id": f"c/{i}/d", "level": "district", "qtype": "generation", "question": DISTRICT_Q,
             "answer": district},
            {**base, "question_id": f"c/{i}/s", "level": "street", "qtype": "generation", "question": STREET_Q,
             "answer": street},
            {**base, "question_id": f"c/{i}/j", "level": "street", "qtype": "judgment",
             "question": f"Is this image taken on {street}, Yes or No?", "answer": "Yes"},
            {**base, "question_id": f"c/{i}/a", "level": "address", "qtype": "generation",
             "question": ADDRESS_QUESTION, "answer": address_answer(street, district)},
        ]
    write_locations(root / "locations.csv", rows)
    write_questions(root / "vqa" / "test_questions.jsonl", questions)
    return root / "vqa" / "test_questions.jsonl"


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    root = tmp_path_factory.mktemp("city")
    return root, write_ranked_city(root)


@pytest.fixture(scope="module")
def gazetteer(city):
    from addressvlm.core.records import read_locations

    return build_gazetteer(read_locations(city[0] / "locations.csv"))


@pytest.fixture(scope="module")
def reference(model, city, gazetteer, tmp_path_factory) -> Path:
    root, questions_path = city
    out = tmp_path_factory.mktemp("reference") / "ranked.jsonl"
    rank_questions(model, read_questions(questions_path), gazetteer, out, root, batch_size=3, progress=False)
    return out


# ------------------------------------------------------------------------------------------ candidates
def test_gazetteer_names_once_each_and_addresses_as_gold_answers(tmp_path):
    rows = [Location(f"i{i}.jpg", f"l{i}", 40.0, -79.0, s, d) for i, (s, d) in enumerate(PLACES)]
    extra = tmp_path / "gazetteer.csv"
    write_gazetteer(extra, [GazetteerEntry("Baum Boulevard", "Shadyside"), GazetteerEntry("", "Hill District"),
                            GazetteerEntry("forbes avenue", "")])
    gazetteer = build_gazetteer(rows, read_gazetteer(extra))
    assert gazetteer.districts == ("Oakland", "Shadyside", "Bloomfield", "Hill District")
    # "Forbes Ave." and "forbes avenue" are Forbes Avenue (one normaliser): the city table's spelling is kept.
    assert gazetteer.streets == ("Forbes Avenue", "Craig Street", "Fifth Avenue", "Penn Avenue", "Liberty Avenue",
                                 "Baum Boulevard")
    assert gazetteer.addresses == tuple(address_answer(s, d) for s, d in PLACES[:5]) + (
        address_answer("Baum Boulevard", "Shadyside"),)


# ------------------------------------------------------------------------------------------ ranking
@torch.inference_mode()
def test_shared_prefix_ranking_equals_one_forward_per_name(model, city, gazetteer):
    root = city[0]
    questions = [DISTRICT_Q, STREET_Q, ADDRESS_QUESTION]
    candidates = [gazetteer.districts, gazetteer.streets, gazetteer.addresses]
    for image in ("images/0.png", "images/1.png"):
        for normalisation in ("sum", "mean"):
            # Batches of 2: several batches per question, names of different lengths padded together.
            shared = rank_image_questions(model, root / image, questions, candidates, normalisation, batch_size=2)
            for question, names, ranking in zip(questions, candidates, shared):
                brute = rank_one_by_one(model, root / image, question, names, normalisation)
                assert [r["name"] for r in ranking] == [r["name"] for r in brute]
                assert [r["logprob"] for r in ranking] == pytest.approx([r["logprob"] for r in brute], abs=1e-4)
    # Not trivial: the scores spread, and they depend on the image and on the question.
    first = rank_image_questions(model, root / "images/0.png", [STREET_Q, DISTRICT_Q], [gazetteer.streets] * 2)
    other = rank_image_questions(model, root / "images/2.png", [STREET_Q], [gazetteer.streets])
    scores = [r["logprob"] for r in first[0]]
    assert scores[0] - scores[-1] > 1.0
    assert first[0] != first[1] and first[0] != other[0]


def test_sum_and_mean_rank_by_what_they_say(model, city, gazetteer):
    image = city[0] / "images/0.png"
    total = rank_image_questions(model, image, [STREET_Q], [gazetteer.streets], "sum")[0]
    mean = rank_image_questions(model, image, [STREET_Q], [gazetteer.streets], "mean")[0]
    counts = {name: len(model.answer_ids(name)) for name in gazetteer.streets}
    by_name = {r["name"]: r["logprob"] for r in total}
    assert {r["name"]: r["logprob"] for r in mean} == pytest.approx(
        {name: by_name[name] / counts[name] for name in counts})
    assert [r["logprob"] for r in mean] == sorted((r["logprob"] for r in mean), reverse=True)


def test_ranked_file_resumes_after_a_crash_and_chunks_complete(model, city, gazetteer, reference, tmp_path):
    root, questions_path = city
    questions = read_questions(questions_path)
    ranked = read_ranked(reference)
    generation = [q["question_id"] for q in questions if q["qtype"] == "generation"]
    assert sorted(ranked) == sorted(generation)  # judgments are not ranked
    for qid, (_, ranking) in ranked.items():
        level = next(q["level"] for q in questions if q["question_id"] == qid)
        assert sorted(r["name"] for r in ranking) == sorted(gazetteer.names_for(level))

    lines = reference.read_text().splitlines(keepends=True)
    resumed = tmp_path / "resumed.jsonl"
    resumed.write_text("".join(lines[:5]) + lines[5][:40])
    resumed.with_name("resumed.jsonl.settings.json").write_text(
        reference.with_name("ranked.jsonl.settings.json").read_text())
    assert rank_questions(model, questions, gazetteer, resumed, root, batch_size=5, progress=False) == \
        len(generation) - 5
    assert read_ranked(resumed).keys() == ranked.keys()
    for qid, (_, ranking) in read_ranked(resumed).items():
        assert [r["name"] for r in ranking] == [r["name"] for r in ranked[qid][1]]
    with pytest.raises(DataError, match="normalisation: 'sum' then, 'mean' now"):
        rank_questions(model, questions, gazetteer, resumed, root, normalisation="mean", progress=False)

    chunks = [chunk_questions([q for q in questions if q["qtype"] == "generation"], 2, i) for i in range(2)]
    images = [{q["image"] for q in chunk} for chunk in chunks]
    assert images[0].isdisjoint(images[1]) and all(images)


def test_cli_ranks_a_chunk_like_the_api(checkpoint, tiny_llava, city, reference, tmp_path):
    root, questions_path = city
    out = tmp_path / "cli_ranked.jsonl"
    done = subprocess.run(
        [sys.executable, str(REPO / "eval" / "rank.py"), "--config", RECIPE, "--checkpoint", str(checkpoint.parent),
         "--model-root", str(tiny_llava), "--questions", str(questions_path), "--out", str(out),
         "--num-chunks", "2", "--chunk-idx", "1"],
        capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "names/s" in done.stderr
    expected = read_ranked(reference)
    share = chunk_questions([q for q in read_questions(questions_path) if q["qtype"] == "generation"], 2, 1)
    got = read_ranked(out)
    assert sorted(got) == sorted(q["question_id"] for q in share)
    for qid, (_, ranking) in got.items():
        assert [r["name"] for r in ranking] == [r["name"] for r in expected[qid][1]]


def test_a_resume_after_a_retrain_into_the_same_path_is_refused(tiny_llava, city, tmp_path):
    main = script("eval/rank.py").main

    root, questions_path = city
    work_dir = tmp_path / "stage2"
    write_synthetic_checkpoint(work_dir, model_options(tiny_llava), seed=0)
    out = tmp_path / "ranked.jsonl"
    common = ["--config", RECIPE, "--checkpoint", str(work_dir), "--model-root", str(tiny_llava), "--questions",
              str(questions_path), "--out", str(out)]
    main([*common, "--num-chunks", "2", "--chunk-idx", "0"])
    ranked = out.read_text()
    write_synthetic_checkpoint(work_dir, model_options(tiny_llava), seed=1)
    with pytest.raises(SystemExit, match=RETRAINED):
        main(common)
    assert out.read_text() == ranked


# ------------------------------------------------------------------------------------------ retrieved candidates
def write_retrieved_for(root: Path, path: Path) -> None:
    """A retrieved.jsonl (eval/retrieve.py's) for the city's images: image i's best tiles are places i, i+1, i+2."""
    from addressvlm.core.records import read_locations, write_retrieved

    rows = read_locations(root / "locations.csv")
    write_retrieved(path, [{
        "query_id": f"c/{i}", "kind": "image", "image": row.image, "tile": row.location_id, "rank": 1, "metres": 0.0,
        "top": [{"tile": other.location_id, "score": 1.0 - 0.1 * j, "street": other.street,
                 "district": other.district} for j, other in enumerate(rows[i:] + rows[:i])]}
        for i, row in enumerate(rows)])


def test_retrieved_candidates_restrict_the_ranking(model, city, gazetteer, reference, tmp_path):
    main = script("eval/rank.py").main

    root, questions_path = city
    retrieved = tmp_path / "retrieved.jsonl"
    write_retrieved_for(root, retrieved)
    out = tmp_path / "ranked.jsonl"
    questions = {q["question_id"]: q for q in read_questions(questions_path)}
    assert rank_questions(model, list(questions.values()), gazetteer, out, root, batch_size=8, progress=False,
                          candidates=(retrieved, 2)) == 12
    expected = {  # image i: the names of places i and i+1 (PLACES), spelt as the gazetteer spells them
        "images/0.png": {"street": {"Forbes Avenue", "Craig Street"}, "district": {"Oakland"},
                         "address": {"Forbes Avenue, Oakland", "Craig Street, Oakland"}},
        "images/2.png": {"street": {"Fifth Avenue", "Penn Avenue"}, "district": {"Shadyside", "Bloomfield"},
                         "address": {"Fifth Avenue, Shadyside", "Penn Avenue, Bloomfield"}},
        "images/3.png": {"street": {"Penn Avenue", "Forbes Avenue"}, "district": {"Bloomfield", "Oakland"},
                         "address": {"Penn Avenue, Bloomfield", "Forbes Avenue, Oakland"}},
    }
    full = read_ranked(reference)
    ranked = read_ranked(out)
    assert sorted(ranked) == sorted(full)
    for qid, (_, ranking) in ranked.items():
        q = questions[qid]
        names = {r["name"] for r in ranking}
        if q["image"] in expected:
            assert names == expected[q["image"]][q["level"]]
        assert names < set(gazetteer.names_for(q["level"]))  # a name outside the candidates is never ranked
        # Restricting changes which names compete, not their scores.
        scores = {r["name"]: r["logprob"] for r in full[qid][1]}
        assert {r["name"]: r["logprob"] for r in ranking} == pytest.approx({n: scores[n] for n in names}, abs=1e-4)
    # An image the retrieval did not cover is named, not ranked against every name.
    partial = tmp_path / "partial.jsonl"
    partial.write_text("".join(retrieved.read_text().splitlines(keepends=True)[1:]))
    with pytest.raises(DataError, match=r"partial\.jsonl: no retrieval for image 'images/0.png'"):
        rank_questions(model, list(questions.values()), gazetteer, tmp_path / "other.jsonl", root,
                       progress=False, candidates=(partial, 2))
    # A resume with other candidates is refused; the command line takes --candidates for ranking only.
    with pytest.raises(DataError, match="candidates"):
        rank_questions(model, list(questions.values()), gazetteer, out, root, progress=False,
                       candidates=(retrieved, 3))
    with pytest.raises(SystemExit):
        main(["--questions", str(questions_path), "--out", str(out), "--hf", "x", "--constrained",
              "--candidates", str(retrieved)])


# ------------------------------------------------------------------------------------------ constrained
def test_constrained_answers_are_gazetteer_names(model, city, gazetteer, tmp_path):
    root, questions_path = city
    from addressvlm.answering.ranking import answer_constrained

    out = tmp_path / "constrained.jsonl"
    questions = read_questions(questions_path)
    answered = answer_constrained(model, questions, gazetteer, out, root, progress=False)
    predictions = read_predictions(out)
    assert answered == len(predictions) == sum(q["qtype"] == "generation" for q in questions)
    for q in questions:
        if q["qtype"] == "generation":
            assert predictions[q["question_id"]][1] in gazetteer.names_for(q["level"])
    # Unconstrained, the same random model names none of them: the constraint does the work.
    from addressvlm.answering.answering import answer_questions

    free = tmp_path / "free.jsonl"
    answer_questions(model, [q for q in questions if q["qtype"] == "generation"], free, root, max_new_tokens=8,
                     progress=False)
    every_name = set(gazetteer.districts + gazetteer.streets + gazetteer.addresses)
    assert not any(text in every_name for _, text in read_predictions(free).values())
    # Each step takes the likeliest allowed token: with one name the answer is that name whatever the model says.
    one = NameTrie(model, ["Liberty Avenue"])
    assert constrained_answers(model, root / "images/0.png", [STREET_Q, DISTRICT_Q], [one, one]) == \
        ["Liberty Avenue"] * 2


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("line, message", [
    ({"question_id": "q", "ranking": []}, "non-empty list"),
    ({"question_id": "q", "ranking": [{"name": "A"}]}, "needs a number 'logprob'"),
    ({"question_id": "q", "ranking": [{"name": "A", "logprob": -2.0}, {"name": "B", "logprob": -1.0}]},
     "best first"),
    ({"question_id": "q", "ranking": [{"name": "A", "logprob": -1.0}, {"name": "A", "logprob": -2.0}]}, "twice"),
    ({"question_id": "q"}, "missing key"),
])
def test_malformed_ranked_lines_are_named(tmp_path, line, message):
    path = tmp_path / "ranked.jsonl"
    path.write_text(json.dumps({"question_id": "ok", "ranking": [{"name": "A", "logprob": 0}]}) + "\n"
                    + json.dumps(line) + "\n")
    with pytest.raises(DataError, match=rf"ranked\.jsonl:2: .*{message}"):
        read_ranked(path)


def test_gazetteer_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "gazetteer.csv"
    bad.write_text("name,district\nBaum Boulevard,Shadyside\n")
    with pytest.raises(DataError, match=r"gazetteer\.csv:1: missing column\(s\) street"):
        read_gazetteer(bad)
    bad.write_text("street,district\nBaum Boulevard,Shadyside\n,\n")
    with pytest.raises(DataError, match=r"gazetteer\.csv:3: names neither"):
        read_gazetteer(bad)


def test_cli_bad_input_is_one_line(city, tmp_path):
    root, questions_path = city
    script = [sys.executable, str(REPO / "eval" / "rank.py"), "--questions", str(questions_path),
              "--out", str(tmp_path / "r.jsonl"), "--hf", str(tmp_path / "no_model")]
    missing = subprocess.run(script + ["--locations", str(tmp_path / "nowhere.csv")], capture_output=True, text=True)
    assert missing.returncode != 0
    # Library import warnings may precede it; the error is the one last line, no traceback.
    assert missing.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'nowhere.csv'}: city table not found"
    assert "Traceback" not in missing.stderr
    gazetteer = tmp_path / "g.csv"
    gazetteer.write_text("street\nBaum Boulevard\n")
    wrong = subprocess.run(script + ["--gazetteer", str(gazetteer)], capture_output=True, text=True)
    assert wrong.stderr.strip().splitlines()[-1] == f"error: {gazetteer}:1: missing column(s) district; header is street"


# ------------------------------------------------------------------------------------------ MiniCPM-V
@torch.inference_mode()
def test_minicpmv_ranks_per_question_as_one_forward_per_name(tiny_minicpmv, city, gazetteer, tmp_path):
    from addressvlm.answering.loading import PerQuestionModel
    from addressvlm.training.minicpmv import AddressMiniCPMV

    wrapper = AddressMiniCPMV(str(tiny_minicpmv), torch_dtype="float32", gradient_checkpointing=False).eval()
    model = PerQuestionModel(wrapper)
    root, questions_path = city
    out = tmp_path / "ranked.jsonl"
    questions = [q for q in read_questions(questions_path) if q["image"] == "images/1.png"]
    assert rank_questions(model, questions, gazetteer, out, root, batch_size=2, progress=False) == 3
    image = Image.open(root / "images/1.png").convert("RGB")
    llm = wrapper.model.llm
    for qid, (_, ranking) in read_ranked(out).items():
        q = next(q for q in questions if q["question_id"] == qid)
        prompt = wrapper.prompt_embeddings(image, q["question"])
        expected = {}
        for name in gazetteer.names_for(q["level"]):
            answer = wrapper.answer_ids(name)
            embeds = torch.cat([prompt, llm.get_input_embeddings()(torch.tensor(answer))[None]], dim=1)
            logprobs = torch.log_softmax(llm(inputs_embeds=embeds).logits[0, -len(answer) - 1:-1], dim=-1)
            expected[name] = float(logprobs.gather(-1, torch.tensor(answer)[:, None]).sum())
        assert [r["name"] for r in ranking] == sorted(expected, key=lambda n: (-expected[n], n))
        assert {r["name"]: r["logprob"] for r in ranking} == pytest.approx(expected, abs=1e-4)
    assert wrapper.answer_ids("Oakland")[-1] == wrapper.tokenizer.convert_tokens_to_ids("<|im_end|>")
