"""tools/check_vllm.py with vLLM's CPU build from .venv-modern (`make test` builds it first): tiny exported models of
head size 32 served for real (a LLaVA folder; a MiniCPM-V folder in the release's layout, its own code run by vLLM)
give eval/infer.py's greedy answers; a head size vLLM's CPU attention lacks is refused in one line before any server
starts."""
import subprocess
import sys

import pytest

from addressvlm.answering.answering import answer_questions
from addressvlm.answering.export import export_hf
from addressvlm.answering.loading import load_xtuner_model
from addressvlm.checks.vllm_check import MODERN_PYTHON
from addressvlm.core.records import read_predictions, read_questions
from addressvlm.standins.tiny import TinySize, make_tiny_llava
from helpers import RECIPE, REPO, model_options, write_city_questions, write_synthetic_checkpoint

pytestmark = pytest.mark.skipif(not MODERN_PYTHON.is_file(),
                                reason=f"{MODERN_PYTHON} not built (make modern-env; make test builds it)")


def check_vllm(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "check_vllm.py"), *map(str, arguments)],
                          capture_output=True, text=True, cwd=REPO, timeout=900)


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
    questions = write_city_questions(root / "city", images=2)
    reference = root / "infer.jsonl"
    answer_questions(load_xtuner_model(RECIPE, checkpoint, options), read_questions(questions), reference,
                     root / "city", progress=False)
    return export, questions, reference


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
    questions = write_city_questions(root / "city", images=2)
    reference = root / "infer.jsonl"
    answer_questions(load_xtuner_model(recipe, checkpoint, options), read_questions(questions), reference,
                     root / "city", progress=False)
    return export, questions, reference


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
