"""Questions/s of the plain and the image-prefix-sharing paths on a tiny LLaVA-Phi3 built here (nothing downloaded).

The tiny model keeps the real release's shape where it sets the cost ratio: a 336 px CLIP with 14 px patches, so
576 image tokens precede every question, and ~9 questions per image; widths and depths are small so it runs on CPU.
It is the reference recipe's model (LoRA on LLM and CLIP, projector) built over the tiny weights.

    python benchmarks/bench_infer.py                   # CPU, ~1 min
    python benchmarks/bench_infer.py --device cuda --hidden 512 --layers 8 --images 16
The last line is `ratio: X` (shared / plain questions/s); both paths must give the same greedy answers.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

from addressvlm.answering.chat_model import ImageQuestions
from addressvlm.answering.prefix_cache import generate_plain, generate_shared

from timing import add_tiny_model_arguments, timed, tiny_recipe_model

QUESTIONS = [
    "Tell me the district where this image was captured. Answer the question using a single word or phrase.",
    "Is this image taken in Oakland? Answer the question using a single word or phrase, Yes or No.",
    "Is this image taken in Shadyside? Answer the question using a single word or phrase, Yes or No.",
    "Which of the following district correctly represents the location shown in the image? (A) Oakland "
    "(B) Shadyside (C) Bloomfield (D) Squirrel Hill North. Please select the correct option (A/B/C/D).",
    "Identify the street in this image, please. Answer the question using a single word or phrase.",
    "Is this image taken on Forbes Avenue? Answer the question using a single word or phrase, Yes or No.",
    "Is this image taken on Craig Street? Answer the question using a single word or phrase, Yes or No.",
    "Which of the following street correctly represents the location shown in the image? (A) Fifth Avenue "
    "(B) Forbes Avenue (C) Craig Street (D) Bellefield Avenue. Please select the correct option (A/B/C/D).",
    "Where was this street view captured? Tell me the street and the district.",
]


def street_views(count: int) -> list[Image.Image]:
    """``count`` distinct 640 x 480 pictures (not square: the padding is part of the work)."""
    pictures = []
    for i in range(count):
        picture = Image.new("RGB", (640, 480), (30 * i % 256, 120, 200 - 20 * i % 200))
        picture.paste((240, 240, 240), (40 * i, 100, 40 * i + 120, 300))
        pictures.append(picture)
    return pictures


def timed_pass(model, groups, prefix, generate, args) -> tuple[float, list]:
    per_batch = max(1, args.batch_size // len(QUESTIONS))

    def every_batch() -> list:
        return [answer for i in range(0, len(groups), per_batch)
                for answer in generate(model, prefix, groups[i:i + per_batch], args.max_new_tokens)]

    return timed(every_batch, model.device)


@torch.inference_mode()
def compare(model, groups, prefix, args) -> tuple[float, float, list, list]:
    """Plain and shared passes, alternated ``args.repeats`` times (the machine may be shared); the fastest of each."""
    times = {generate_plain: [], generate_shared: []}
    answers = {}
    for generate in times:
        generate(model, prefix, groups[:1], args.max_new_tokens)  # warm-up
    for _ in range(args.repeats):
        for generate in times:
            seconds, answers[generate] = timed_pass(model, groups, prefix, generate, args)
            times[generate].append(seconds)
    return (min(times[generate_plain]), min(times[generate_shared]), answers[generate_plain],
            answers[generate_shared])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=18, help="rows decoded together (whole images)")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="answers are a name or a letter")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per path; the fastest counts")
    add_tiny_model_arguments(parser)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_recipe_model(Path(tmp) / "tiny-llava-336", QUESTIONS, args.hidden, args.layers, args.device,
                                  args.dtype)
    pieces = [model.prompt_pieces(q) for q in QUESTIONS]
    prefix = pieces[0][0]
    groups = [ImageQuestions(model.preprocess_image(picture), [s for _, s in pieces])
              for picture in street_views(args.images)]
    questions = args.images * len(QUESTIONS)
    print(f"{args.images} images x {len(QUESTIONS)} questions, {groups[0].pixel_values.shape[-1]} px, "
          f"prefix {len(prefix)} + image tokens, up to {args.max_new_tokens} new tokens, batch {args.batch_size}, "
          f"{model.device} {model.dtype}")
    plain_s, shared_s, plain, shared = compare(model, groups, prefix, args)
    print(f"plain:  {questions / plain_s:8.2f} questions/s ({plain_s:.2f} s)")
    print(f"shared: {questions / shared_s:8.2f} questions/s ({shared_s:.2f} s)")
    if plain != shared:
        print("error: the shared path's greedy answers differ from the plain path's", file=sys.stderr)
        sys.exit(1)
    print("greedy answers identical: yes")
    print(f"ratio: {plain_s / shared_s:.2f}")


if __name__ == "__main__":
    main()
