"""eval/infer.py and the answering modules on the tiny LLaVA-Phi3: prefix sharing, resume, chunks, checkpoint forms.

The fast tests use a checkpoint written here: the reference recipe's model with every trained tensor (LoRA and
projector) moved by seeded noise, so the checkpoint matters and the random tiny model answers with several tokens.
"""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from addressvlm.training.checkpoints import CheckpointError, build_recipe_model
from addressvlm.answering.answering import answer_questions, chunk_questions, merge_predictions, sample_answers
from addressvlm.answering.loading import load_xtuner_model
from addressvlm.answering.chat_model import ImageQuestions
from addressvlm.answering.prefix_cache import generate_plain, generate_shared
from addressvlm.core.records import DataError, read_predictions, read_questions, write_questions
from helpers import QUESTION_TEXTS, RECIPE, REPO, RETRAINED, write_city_questions, write_synthetic_checkpoint
from scripts import script


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    root = tmp_path_factory.mktemp("city")
    return root, write_city_questions(root)


@pytest.fixture(scope="module")
def reference(model, city, tmp_path_factory) -> Path:
    """All the city's questions answered by the default path (shared prefix, 18 rows a batch), 6 tokens each."""
    from addressvlm.core.records import read_questions

    root, questions_path = city
    out = tmp_path_factory.mktemp("reference") / "predictions.jsonl"
    answer_questions(model, read_questions(questions_path), out, root, max_new_tokens=6, progress=False)
    return out


def _answers(path: Path) -> dict:
    return {qid: prediction for qid, (_, prediction) in read_predictions(path).items()}


def _groups(model, city_root: Path, n_images: int = 3):
    prefix = model.prompt_pieces(QUESTION_TEXTS[0])[0]
    suffixes = [model.prompt_pieces(q)[1] for q in QUESTION_TEXTS]
    return prefix, [ImageQuestions(model.preprocess_image(city_root / f"images/{i}.png"), suffixes)
                    for i in range(n_images)]


@torch.inference_mode()
def test_shared_prefix_answers_equal_plain_greedy(model, city):
    prefix, groups = _groups(model, city[0])
    shared = generate_shared(model, prefix, groups, max_new_tokens=8)
    plain_batched = generate_plain(model, prefix, groups, max_new_tokens=8)
    one_by_one = [[generate_plain(model, prefix, [ImageQuestions(g.pixel_values, [s])], 8)[0][0]
                   for s in g.suffixes] for g in groups]
    assert shared == one_by_one
    assert plain_batched == one_by_one
    # Non-trivial: several tokens each, and the answers depend on the image and on the question.
    lengths = [len(ids) for g in shared for ids in g]
    assert max(lengths) == 8 and sum(lengths) >= 3 * len(lengths), lengths
    assert shared[0] != shared[1]
    assert len({tuple(ids) for ids in shared[0]}) > 1


@torch.inference_mode()
def test_rows_stopping_at_different_steps_stay_equal(model, city):
    """A token the model emits mid-answer made a stop token: rows end at different steps in one batch."""
    prefix, groups = _groups(model, city[0])
    full = generate_shared(model, prefix, groups, max_new_tokens=8)
    stop = next(ids[2] for g in full for ids in g if len(ids) > 3)  # the third token of an answer that goes on
    stopper = dataclasses.replace(model, stop_token_ids=model.stop_token_ids | {stop})
    shared = generate_shared(stopper, prefix, groups, max_new_tokens=8)
    assert shared == generate_plain(stopper, prefix, groups, max_new_tokens=8)
    expected = [[ids[:ids.index(stop)] if stop in ids else ids for ids in g] for g in full]
    assert shared == expected
    assert len({len(ids) for g in shared for ids in g}) > 1


def test_resume_skips_answered_ids_after_a_crash(model, city, reference, tmp_path):
    root, questions_path = city
    from addressvlm.core.records import read_questions

    questions = read_questions(questions_path)
    # A crash after 10 answers, in the middle of writing the 11th.
    lines = reference.read_text().splitlines(keepends=True)
    assert len(lines) == len(questions)
    resumed = tmp_path / "resumed.jsonl"
    resumed.write_text("".join(lines[:10]) + lines[10][:15])
    settings = reference.with_name(reference.name + ".settings.json")
    resumed.with_name(resumed.name + ".settings.json").write_text(settings.read_text())
    answered = answer_questions(model, questions, resumed, root, batch_size=9, max_new_tokens=6, progress=False)
    assert answered == len(questions) - 10
    assert _answers(resumed) == _answers(reference)
    assert answer_questions(model, questions, resumed, root, max_new_tokens=6, progress=False) == 0


def test_plain_path_and_batch_sizes_give_the_same_file(model, city, reference, tmp_path):
    root, questions_path = city
    from addressvlm.core.records import read_questions

    questions = read_questions(questions_path)
    for batch_size, share in ((4, True), (7, False)):
        out = tmp_path / f"{batch_size}_{share}.jsonl"
        answer_questions(model, questions, out, root, batch_size=batch_size, share_prefix=share,
                         max_new_tokens=6, progress=False)
        assert _answers(out) == _answers(reference)


def test_chunks_are_disjoint_whole_images_and_merge_complete(model, city, tmp_path):
    root, questions_path = city
    from addressvlm.core.records import read_questions

    questions = read_questions(questions_path)
    chunks = [chunk_questions(questions, 3, i) for i in range(3)]
    ids = [q["question_id"] for chunk in chunks for q in chunk]
    assert sorted(ids) == sorted(q["question_id"] for q in questions)  # disjoint and complete
    images = [{q["image"] for q in chunk} for chunk in chunks]
    assert all(a.isdisjoint(b) for i, a in enumerate(images) for b in images[i + 1:])
    paths = []
    for i, chunk in enumerate(chunks):
        paths.append(tmp_path / f"chunk{i}.jsonl")
        answer_questions(model, chunk, paths[-1], root, max_new_tokens=4, progress=False)
    merged = tmp_path / "merged.jsonl"
    script = [sys.executable, str(REPO / "eval" / "merge_predictions.py"), "--questions", str(questions_path),
              "--out", str(merged)]
    done = subprocess.run(script + [str(p) for p in paths], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    merged_ids = [json.loads(line)["question_id"] for line in merged.read_text().splitlines()]
    assert merged_ids == [q["question_id"] for q in questions]

    with pytest.raises(DataError, match="answered twice"):
        merge_predictions(questions_path, [paths[0], paths[0]], tmp_path / "x.jsonl")
    failed = subprocess.run(script + [str(paths[0]), str(paths[2])], capture_output=True, text=True)
    assert failed.returncode != 0 and "have no prediction" in failed.stderr
    assert merge_predictions(questions_path, [paths[0]], tmp_path / "part.jsonl", allow_missing=True) == \
        len(chunks[0])


def test_merging_never_writes_over_a_chunk(tmp_path):
    questions_path = write_city_questions(tmp_path / "city", images=1)
    chunk = tmp_path / "chunk0.jsonl"
    chunk.write_text("".join(json.dumps({"question_id": q["question_id"], "prediction": "Forbes Avenue"}) + "\n"
                             for q in read_questions(questions_path)))
    before = chunk.read_bytes()
    done = subprocess.run([sys.executable, str(REPO / "eval" / "merge_predictions.py"), "--questions",
                           str(questions_path), "--out", str(chunk), str(chunk)], capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr == f"error: {chunk}: --out is the chunk input itself: choose an " \
                                                   "output apart from the inputs\n"
    assert chunk.read_bytes() == before


def test_checkpoint_as_file_or_work_dir_and_missing_tensor(model, checkpoint, options, city, tmp_path):
    root = city[0]
    prefix, groups = _groups(model, root, n_images=1)
    from_dir = load_xtuner_model(RECIPE, checkpoint.parent, options)
    with torch.inference_mode():
        assert generate_shared(from_dir, prefix, groups, 6) == generate_shared(model, prefix, groups, 6)

    state = torch.load(checkpoint, weights_only=False)
    dropped = sorted(state["state_dict"])[0]
    del state["state_dict"][dropped]
    broken = tmp_path / "iter_1.pth"
    torch.save(state, broken)
    with pytest.raises(CheckpointError, match="not in the checkpoint") as error:
        load_xtuner_model(RECIPE, broken, options)
    assert dropped in str(error.value)


def test_sample_answers_is_seeded_and_diverse(model, city):
    image = city[0] / "images/0.png"
    first = sample_answers(model, image, QUESTION_TEXTS[3], n=12, temperature=0.8, max_new_tokens=5, seed=1)
    again = sample_answers(model, image, QUESTION_TEXTS[3], n=12, temperature=0.8, max_new_tokens=5, seed=1)
    assert first == again and len(first) == 12
    assert len(set(first)) > 3
    assert len(sample_answers(model, image, QUESTION_TEXTS[3], n=7, max_new_tokens=2, seed=1, batch_size=3)) == 7
    greedy = sample_answers(model, image, QUESTION_TEXTS[3], n=3, temperature=0, max_new_tokens=5)
    prefix, suffix = model.prompt_pieces(QUESTION_TEXTS[3])
    with torch.inference_mode():
        expected = generate_plain(model, prefix, [ImageQuestions(model.preprocess_image(image), [suffix])], 5)
    assert greedy == model.decode_groups(expected)[0] * 3


def test_cli_answers_like_the_api(checkpoint, tiny_llava, city, reference, tmp_path):
    root, questions_path = city
    out = tmp_path / "cli.jsonl"
    done = subprocess.run(
        [sys.executable, str(REPO / "eval" / "infer.py"), "--config", RECIPE, "--checkpoint", str(checkpoint.parent),
         "--model-root", str(tiny_llava), "--questions", str(questions_path), "--out", str(out),
         "--max-new-tokens", "6", "--num-chunks", "2", "--chunk-idx", "1"],
        capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "question/s" in done.stderr  # the progress bar's rate
    from addressvlm.core.records import read_questions

    share = chunk_questions(read_questions(questions_path), 2, 1)
    assert _answers(out) == {q["question_id"]: _answers(reference)[q["question_id"]] for q in share}


@pytest.mark.slow
def test_trained_checkpoint_answers_the_colour(tiny_llava, colour_city, tmp_path):
    """Train stage 2 on the colour city for a few steps, answer from its work_dir: the trained answers come out."""
    from conftest import COLOURS

    from addressvlm.training.launcher import train

    overrides = {"train_dataloader.batch_size": 2, "train_dataloader.sampler.per_device_batch_size": 2,
                 "optim_wrapper.accumulative_counts": 1, "optim_wrapper.optimizer.lr": 1e-3,
                 "train_cfg.max_epochs": 4, "param_scheduler.0.end": 0.25, "param_scheduler.1.begin": 0.25,
                 "param_scheduler.1.end": 4, "default_hooks.checkpoint.interval": 16, "randomness.seed": 0,
                 "model.init_from_work_dir": None,
                 "train_dataloader.dataset.data_path": str(colour_city / "vqa" / "train.json"),
                 "train_dataloader.dataset.image_folder": str(colour_city)}
    work_dir = train(RECIPE, tmp_path / "stage2", str(tiny_llava), overrides=overrides)
    names = list(COLOURS)
    questions = [{"question_id": f"colour/{i}", "image": f"images/{i:03d}.jpg", "level": "street",
                  "qtype": "generation", "question": "What colour is this image?", "answer": names[i % 4],
                  "street": "x", "district": "y"} for i in range(8)]
    questions_path = colour_city / "vqa" / "test_questions.jsonl"
    write_questions(questions_path, questions)
    out = tmp_path / "predictions.jsonl"
    done = subprocess.run(
        [sys.executable, str(REPO / "eval" / "infer.py"), "--config", RECIPE, "--checkpoint", str(work_dir),
         "--model-root", str(tiny_llava), "--questions", str(questions_path), "--out", str(out)],
        capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    predictions = read_predictions(out)
    right = sum(predictions[q["question_id"]][1] == f"The colour is {q['answer']}." for q in questions)
    assert right >= 6, predictions


def test_resume_with_other_settings_or_a_second_writer_is_refused(model, city, reference, tmp_path):
    import shutil

    from addressvlm.core.records import DataError, open_predictions, read_questions

    root, questions_path = city
    questions = read_questions(questions_path)
    out = tmp_path / "predictions.jsonl"
    lines = reference.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:5]))
    shutil.copy(reference.with_name(reference.name + ".settings.json"), out.with_name(out.name + ".settings.json"))
    with pytest.raises(DataError, match="max_new_tokens: 6 then, 9 now"):
        answer_questions(model, questions, out, root, max_new_tokens=9, progress=False)
    assert out.read_text() == "".join(lines[:5])  # nothing appended
    with open_predictions(out):
        with pytest.raises(DataError, match="another process is writing"):
            answer_questions(model, questions, out, root, max_new_tokens=6, progress=False)
    unrecorded = tmp_path / "old.jsonl"
    unrecorded.write_text("".join(lines[:5]))
    with pytest.raises(DataError, match="no old.jsonl.settings.json"):
        answer_questions(model, questions, unrecorded, root, max_new_tokens=6, progress=False)





def test_resume_after_a_retrain_into_the_same_path_is_refused(tiny_llava, options, city, tmp_path):
    """The checkpoint at the recorded path now holds other weights (a retrain: same size, new content): the resume
    is refused in one line naming the weights, instead of appending the new model's answers to the old one's."""
    main = script("eval/infer.py").main

    root, questions_path = city
    work_dir = tmp_path / "stage2"
    write_synthetic_checkpoint(work_dir, options, seed=0)
    out = tmp_path / "predictions.jsonl"
    common = ["--config", RECIPE, "--checkpoint", str(work_dir), "--model-root", str(tiny_llava), "--questions",
              str(questions_path), "--out", str(out), "--max-new-tokens", "2"]
    main([*common, "--num-chunks", "3", "--chunk-idx", "0"])
    answered = out.read_text()
    main(common)  # the same weights: the rest is answered
    assert len(_answers(out)) == len(QUESTION_TEXTS) * 3
    out.write_text(answered)
    write_synthetic_checkpoint(work_dir, options, seed=1)
    with pytest.raises(SystemExit, match=RETRAINED):
        main(common)
    assert out.read_text() == answered


def test_the_demo_keeps_answers_by_the_same_weights_identity(options, tmp_path):
    """``pipeline.drop_stale`` records and compares what eval/infer.py records (``weights_identity``): answers of
    the present weights are resumed; once the run holds other weights, even a copy older than the answers (a run
    restored with its times, which a newer-than test misses), they are dropped."""
    import os

    from addressvlm.runs.engine import Paths, drop_stale
    from addressvlm.training.checkpoints import weights_identity
    from addressvlm.core.records import open_predictions

    paths = Paths(tmp_path / "out", tmp_path / "city", tmp_path / "work")
    run = paths.work / "stage2_only"
    write_synthetic_checkpoint(run, options, seed=0)
    out = paths.out / "predictions" / "stage2_only.jsonl"
    settings = drop_stale(out, paths, "stage2_only")
    assert settings == {"weights": weights_identity(run)}
    with open_predictions(out, settings) as predictions:
        predictions.write({"question_id": "q", "prediction": "Forbes Avenue"})
    assert drop_stale(out, paths, "stage2_only") == settings and out.is_file()
    write_synthetic_checkpoint(run, options, seed=1)
    an_hour_before = out.stat().st_mtime_ns - 3600 * 10 ** 9
    for path in (run / "iter_3.pth", run / "last_checkpoint"):
        os.utime(path, ns=(an_hour_before, an_hour_before))
    drop_stale(out, paths, "stage2_only")
    assert not out.exists()


def test_zero_shot_answers_with_the_untuned_release(tiny_llava, options, city, tmp_path):
    """--zero-shot answers without a checkpoint, exactly as the recipe's model with its freshly built (identity)
    LoRA and the release's projector loaded as a checkpoint; it refuses a checkpoint beside it."""
    main = script("eval/infer.py").main
    from addressvlm.core.records import read_questions

    root, questions_path = city
    out = tmp_path / "zero_shot.jsonl"
    main(["--config", RECIPE, "--zero-shot", "--model-root", str(tiny_llava), "--questions", str(questions_path),
          "--out", str(out), "--max-new-tokens", "6"])
    _, untuned = build_recipe_model(RECIPE, options)
    work_dir = tmp_path / "untuned"
    work_dir.mkdir()
    torch.save({"meta": {}, "state_dict": untuned.state_dict()}, work_dir / "iter_0.pth")
    expected = tmp_path / "expected.jsonl"
    answer_questions(load_xtuner_model(RECIPE, work_dir, options), read_questions(questions_path), expected, root,
                     max_new_tokens=6, progress=False)
    assert _answers(out) == _answers(expected) and len(_answers(out)) == len(QUESTION_TEXTS) * 3
    settings = json.loads(out.with_name(out.name + ".settings.json").read_text())
    assert settings["config"] == RECIPE and settings["checkpoint"] is None

    common = ["--config", RECIPE, "--questions", str(questions_path), "--out", str(tmp_path / "never.jsonl")]
    with pytest.raises(SystemExit):
        main([*common, "--zero-shot", "--checkpoint", str(work_dir)])
    with pytest.raises(SystemExit, match="--zero-shot"):
        main(common)
