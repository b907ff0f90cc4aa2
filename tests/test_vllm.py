"""tools/check_vllm.py and eval/infer_vllm.py with vLLM's CPU build from .venv-modern (`make test` builds it first):
tiny exported models of head size 32, served for real (a LLaVA folder; a MiniCPM-V folder in the release's layout,
its own code run by vLLM) or answering in vLLM's offline engine, give eval/infer.py's greedy answers; a head size
vLLM's CPU attention lacks is refused in one line before any server starts."""
import json
import subprocess
import sys

import pytest

from addressvlm.answering.answering import answer_questions
from addressvlm.answering.export import export_hf
from addressvlm.answering.loading import load_xtuner_model
from addressvlm.checks.vllm_check import MODERN_PYTHON, modern_environment
from addressvlm.core.records import read_predictions, read_questions, write_questions
from addressvlm.standins.tiny import TinySize, make_tiny_llava
from helpers import RECIPE, REPO, model_options, write_city_questions, write_synthetic_checkpoint
from scripts import script

pytestmark = pytest.mark.skipif(not MODERN_PYTHON.is_file(),
                                reason=f"{MODERN_PYTHON} not built (make modern-env; make test builds it)")


def check_vllm(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "check_vllm.py"), *map(str, arguments)],
                          capture_output=True, text=True, cwd=REPO, timeout=900)


def questions_and_answers(root, recipe, checkpoint, options):
    """Two pictures' questions in a city under ``root`` and the XTuner path's greedy answers to them (eval/infer.py's):
    (questions file, predictions file)."""
    questions = write_city_questions(root / "city", images=2)
    reference = root / "infer.jsonl"
    answer_questions(load_xtuner_model(recipe, checkpoint, options), read_questions(questions), reference,
                     root / "city", progress=False)
    return questions, reference


@pytest.fixture(scope="module")
def head_size_32(tmp_path_factory):
    """A tiny LLaVA of head size 32 (hidden 64, 2 heads), a checkpoint whose trained tensors are moved by seeded
    noise, its export, two pictures' questions and the XTuner path's greedy answers to them (eval/infer.py's)."""
    root = tmp_path_factory.mktemp("vllm")
    model = make_tiny_llava(root / "model", TinySize(hidden=64, heads=2), corpus=["The colour is red."])
    options = model_options(model)
    checkpoint = write_synthetic_checkpoint(root / "work", options, seed=1)
    export = root / "hf"
    done = subprocess.run([sys.executable, str(REPO / "tools" / "export_hf.py"), "--config", RECIPE,
                           "--checkpoint", str(checkpoint), "--model-root", str(model), "--out", str(export),
                           "--dtype", "float32"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return (export, *questions_and_answers(root, RECIPE, checkpoint, options))


def test_vllm_answers_as_eval_infer(head_size_32, tmp_path):
    export, questions, reference = head_size_32
    out = tmp_path / "vllm.jsonl"
    done = check_vllm("--hf", export, "--questions", questions, "--predictions", reference, "--out", out)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "18 of 18 greedy answers equal" in done.stdout
    answers = {text for _, text in read_predictions(out).values()}
    assert len(answers) > 3 and all(len(a) > 3 for a in answers)  # answers that tell the questions apart


@pytest.fixture(scope="module")
def minicpmv_export(tiny_minicpmv_checkpoint, tiny_minicpmv, tmp_path_factory):
    """The tiny MiniCPM-V stand-in (heads 128 / 4 = 32 wide) with a stage-2 checkpoint whose LoRA and resampler are
    moved by seeded noise, its export (the release's layout), two pictures' questions (sliced 2 x 2) and the XTuner
    path's greedy answers to them (eval/infer.py's)."""
    recipe, checkpoint, options = tiny_minicpmv_checkpoint
    root = tmp_path_factory.mktemp("vllm_minicpmv")
    # tools/export_hf.py's function, in this process: a second one would spend half a minute importing.
    export = export_hf(recipe, checkpoint, root / "hf", dtype="float32", model_root=tiny_minicpmv)
    return (export, *questions_and_answers(root, recipe, checkpoint, options))


def test_vllm_answers_minicpmv_as_eval_infer(minicpmv_export, tmp_path):
    """vLLM's own MiniCPM-V (its NaViT SigLIP, resampler and Qwen2) on the export, with the folder's image processor
    code slicing the pictures and writing their placeholders: every answer, special tokens included, is
    eval/infer.py's."""
    export, questions, reference = minicpmv_export
    out = tmp_path / "vllm.jsonl"
    done = check_vllm("--hf", export, "--questions", questions, "--predictions", reference, "--out", out)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "18 of 18 greedy answers equal" in done.stdout
    answers = [text for _, text in read_predictions(out).values()]
    assert len(set(answers)) > 12  # answers that tell the pictures and questions apart


def test_unsupported_head_size_refused_in_one_line(head_size_32, tiny_llava, tmp_path):
    """The tests' tiny LLaVA (hidden 64, 4 heads: head size 16), refused before vLLM starts."""
    _, questions, reference = head_size_32
    done = check_vllm("--hf", tiny_llava, "--questions", questions, "--predictions", reference,
                      "--out", tmp_path / "vllm.jsonl")
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: {tiny_llava}: attention head size 16") and done.stderr.count("\n") == 1
    assert not (tmp_path / "vllm.log").exists()


def test_batch_answers_as_eval_infer_resumably(head_size_32, tmp_path, capsys):
    """eval/infer_vllm.py: an interrupted run (the first image's questions) resumed by a rerun, whose answers are
    eval/infer.py --hf's byte for byte and score alike; a rerun with nothing left starts no engine and writes
    nothing; other settings, or a second engine on the CPU build, are refused in one line."""
    export, questions, _ = head_size_32
    every = read_questions(questions)
    reference = tmp_path / "infer.jsonl"
    script("eval/infer.py").main(["--hf", str(export), "--questions", str(questions), "--out", str(reference)])
    first_image = tmp_path / "first_image.jsonl"
    write_questions(first_image, [q for q in every if q["image"] == every[0]["image"]])
    out = tmp_path / "vllm.jsonl"

    def infer_vllm(asked, *options):
        script("eval/infer_vllm.py").main(["--hf", str(export), "--questions", str(asked), "--image-folder",
                                           str(questions.parent.parent), "--out", str(out), *options])
        return capsys.readouterr().out

    assert "answered 9 of 9" in infer_vllm(first_image)
    assert "answered 9 of 18" in infer_vllm(questions)
    answers = {qid: text for qid, (_, text) in read_predictions(out).items()}
    assert answers == {qid: text for qid, (_, text) in read_predictions(reference).items()}
    assert len(set(answers.values())) > 3

    written = out.read_bytes()
    assert "answered 0 of 18" in infer_vllm(questions) and out.read_bytes() == written
    for options, message in [(["--max-new-tokens", "16"], f"{out}: holds records made with other settings "
                                                          "(max_new_tokens: 32 then, 16 now)"),
                             (["--data-parallel-size", "2"], "--data-parallel-size 2: vLLM's CPU build")]:
        with pytest.raises(SystemExit) as refused:
            infer_vllm(questions, *options)
        assert str(refused.value).startswith(f"error: {message}") and "\n" not in str(refused.value)
    assert out.read_bytes() == written

    # Half the questions' truths are the reference's answers, so that the figures compared are not all zero.
    scored = tmp_path / "scored_questions.jsonl"
    write_questions(scored, [{**q, "answer": answers[q["question_id"]]} if i % 2 else q for i, q in enumerate(every)])
    figures = []
    for predictions in (reference, out):
        script("eval/score.py").main(["--questions", str(scored), "--predictions", str(predictions),
                                      "--json", str(predictions.with_suffix(".metrics.json"))])
        figures.append(json.loads(predictions.with_suffix(".metrics.json").read_text()))
    assert figures[0] == figures[1] and figures[0]["A_s_G"] == 50.0


def test_batch_answering_refused_from_the_modern_environment(head_size_32, tmp_path):
    export, questions, _ = head_size_32
    done = subprocess.run([str(MODERN_PYTHON), str(REPO / "eval" / "infer_vllm.py"), "--hf", str(export),
                           "--questions", str(questions), "--out", str(tmp_path / "vllm.jsonl")],
                          capture_output=True, text=True, cwd=REPO, env=modern_environment(), timeout=120)
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: {MODERN_PYTHON} runs vLLM, not this tool") and done.stderr.count("\n") == 1
    assert not (tmp_path / "vllm.jsonl").exists()
