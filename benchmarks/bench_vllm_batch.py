"""Questions/s of batch answering with vLLM's offline engine (eval/infer_vllm.py, from .venv-modern) against
eval/infer.py --hf, on the same questions to a tiny LLaVA-Phi3 export built here (nothing downloaded); both tools run
as a user runs them.

The model keeps the release's image shape: a 336 px CLIP with 14 px patches, so 576 image tokens precede every
question, 9 questions per image; its width and depth are small so it runs on a CPU, its head size 32 (vLLM's CPU
attention takes no smaller one). Both tools flush each answer to the predictions file as it comes, so the file shows
each one's rate once started: answers written after the first write over the time from it to the last (start-up,
vLLM's ~20 s on a CPU, is paid once a run); the time end to end is printed beside it.

    python benchmarks/bench_vllm_batch.py                    # CPU, ~4 min on 2 shared cores
    python benchmarks/bench_vllm_batch.py --hidden 512 --layers 8 --images 2000 --data-parallel-size 8   # GPU node
The last line is `ratio: X` (vLLM's questions/s once started over eval/infer.py's); before it, how many greedy
answers are equal (at least 99%: float32 sums of two engines part only at near-ties).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from addressvlm.answering.export import export_hf
from addressvlm.checks.endpoint_check import agreement
from addressvlm.core.records import write_questions
from addressvlm.standins.tiny import make_tiny_llava
from addressvlm.training.checkpoints import build_recipe_model
from addressvlm.training.recipes import load_recipe, model_root_options

from bench_infer import QUESTIONS, street_views
from timing import RECIPE, release_shaped

REPO = Path(__file__).resolve().parent.parent
MIN_EQUAL_SHARE = 0.99


def tiny_export(root: Path, hidden: int, layers: int) -> Path:
    """The reference recipe's model over a tiny release of head size 32, untrained (its LoRA adds nothing), saved
    as training saves a checkpoint and exported by tools/export_hf.py's function."""
    model_root = make_tiny_llava(root / "tiny-llava-336", release_shaped(hidden, layers, head_size=32),
                                 corpus=QUESTIONS)
    _, model = build_recipe_model(RECIPE, model_root_options(load_recipe(str(RECIPE)), str(model_root)))
    checkpoint = root / "work" / "iter_1.pth"
    checkpoint.parent.mkdir()
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    return export_hf(RECIPE, checkpoint, root / "export", dtype="float32", model_root=model_root)


def write_city(root: Path, images: int) -> Path:
    """``images`` street views with the nine questions each; returns the questions file (in ``root/vqa``)."""
    (root / "images").mkdir(parents=True)
    questions = []
    for i, picture in enumerate(street_views(images)):
        picture.save(root / "images" / f"{i}.png")
        questions += [{"question_id": f"{i}/{j}", "image": f"images/{i}.png", "level": "street",
                       "qtype": "generation", "question": text, "answer": "Forbes Avenue", "street": "Forbes Avenue",
                       "district": "Oakland"} for j, text in enumerate(QUESTIONS)]
    path = root / "vqa" / "test_questions.jsonl"
    write_questions(path, questions)
    return path


def timed_run(tool: str, options: list[str], out: Path) -> tuple[float, float]:
    """``(questions/s once started, seconds end to end)`` of the tool writing ``out``, read off the file's growth."""
    log = out.with_suffix(".log")
    with open(log, "w") as stderr:
        process = subprocess.Popen([sys.executable, str(REPO / "eval" / tool), *options, "--out", str(out)],
                                   stdout=subprocess.DEVNULL, stderr=stderr, cwd=REPO)
        start = time.perf_counter()
        first = last = None
        while True:
            ended = process.poll() is not None
            lines = out.read_text().count("\n") if out.is_file() else 0
            now = time.perf_counter()
            if lines and first is None:
                first = (now, lines)
            if lines and (last is None or lines > last[1]):
                last = (now, lines)
            if ended:
                break
            time.sleep(0.02)
    if process.returncode != 0 or first is None or last[1] == first[1]:
        tail = log.read_text().strip().splitlines()[-1:]
        print(f"error: eval/{tool} wrote {last[1] if last else 0} answer(s), too few to time (exit "
              f"{process.returncode}): {tail}", file=sys.stderr)
        sys.exit(1)
    return (last[1] - first[1]) / (last[0] - first[0]), now - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100, help="9 questions each")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="answers are a name or a letter")
    parser.add_argument("--hidden", type=int, default=64, help="a multiple of 32")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--data-parallel-size", type=int, default=1, help="vLLM engines, one per GPU")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="both tools' (default theirs: float32 on a CPU, bfloat16 on a GPU, where more near-ties "
                             "part)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        export = tiny_export(root, args.hidden, args.layers)
        questions = write_city(root / "city", args.images)
        print(f"{args.images} images x {len(QUESTIONS)} questions, 336 px, 576 image tokens, up to "
              f"{args.max_new_tokens} new tokens, hidden {args.hidden}, {args.layers} layers, head size 32", flush=True)
        runs = {"eval/infer.py --hf": ("infer.py", []),
                "eval/infer_vllm.py": ("infer_vllm.py", ["--data-parallel-size", str(args.data_parallel_size)])}
        dtype = ["--dtype", args.dtype] if args.dtype else []
        rates, outs = {}, []
        for label, (tool, options) in runs.items():
            outs.append(root / f"{tool}.jsonl")
            rates[label], seconds = timed_run(tool, ["--hf", str(export), "--questions", str(questions),
                                                     "--max-new-tokens", str(args.max_new_tokens), *dtype, *options],
                                            outs[-1])
            print(f"{label + ':':20} {rates[label]:8.2f} questions/s once started ({seconds:.1f} s end to end)",
                  flush=True)
        equal = agreement(*outs)
    print(equal.summary())
    # Two engines' float32 sums differ in the last bits, which flips a greedy choice only where the two best tokens
    # tie that closely (the untrained model's logits often do); a broken prompt or image would change most answers.
    if equal.share < MIN_EQUAL_SHARE:
        print(f"error: fewer than {MIN_EQUAL_SHARE:.0%} of vLLM's greedy answers equal eval/infer.py's",
              file=sys.stderr)
        sys.exit(1)
    print(f"ratio: {rates['eval/infer_vllm.py'] / rates['eval/infer.py --hf']:.2f}")


if __name__ == "__main__":
    main()
