"""Names/s of closed-set ranking: the shared prefix (addressvlm.answering.ranking) against one full forward per name, on
a tiny LLaVA-Phi3 built here (nothing downloaded), and constrained decoding beside them.

The tiny model keeps what sets the cost ratio: a 336 px CLIP with 14 px patches, so 576 image tokens precede every
question. One image's three generation questions (district, street, address) each rank ``--names`` names.

    python benchmarks/bench_rank.py                   # CPU, ~3 min on 2 shared cores (the one-by-one path)
    python benchmarks/bench_rank.py --device cuda --hidden 512 --layers 8 --names 1000
The last line is `ratio: X` (shared / one-by-one names/s); both must rank alike (asserted).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from PIL import Image

from addressvlm.answering.ranking import NameTrie, constrained_answers, rank_image_questions, rank_one_by_one
from addressvlm.core.templates import ADDRESS_QUESTION, GENERATION_PROMPT, address_answer

from timing import add_tiny_model_arguments, timed, tiny_recipe_model

WORDS = ("Ash", "Birch", "Cedar", "Elm", "Forbes", "Craig", "Murray", "Penn", "Liberty", "Maple", "Oak", "Pine",
         "Rowan", "Willow", "Negley", "Baum", "Centre", "Fifth", "Ellsworth", "Walnut")
TYPES = ("Street", "Avenue", "Way", "Boulevard", "Road")
DISTRICTS = ("Oakland", "Shadyside", "Squirrel Hill", "Bloomfield", "Lawrenceville")


def candidate_names(n: int) -> dict[str, list[str]]:
    streets = [f"{w} {t}" for t in TYPES for w in WORDS][:n]
    districts = [f"{d} {i}" if i else d for i in range(n) for d in DISTRICTS][:n]
    return {"district": districts, "street": streets,
            "address": [address_answer(s, districts[i % len(districts)]) for i, s in enumerate(streets)]}


QUESTIONS = {"district": f"Tell me the district where this image was captured. {GENERATION_PROMPT}",
             "street": f"Identify the street in this image, please. {GENERATION_PROMPT}",
             "address": ADDRESS_QUESTION}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--names", type=int, default=100, help="candidate names per question (at most 100 streets)")
    parser.add_argument("--batch-size", type=int, default=64, help="names per forward pass of the shared path")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of the shared path; the fastest counts")
    add_tiny_model_arguments(parser)
    args = parser.parse_args(argv)

    names = candidate_names(args.names)
    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_recipe_model(Path(tmp) / "tiny-llava-336",
                                  [*QUESTIONS.values(), *names["address"], *names["district"]], args.hidden,
                                  args.layers, args.device, args.dtype)
    image = Image.new("RGB", (640, 480), (60, 120, 200))
    image.paste((240, 240, 240), (100, 100, 260, 300))
    levels = list(QUESTIONS)
    questions, candidates = [QUESTIONS[level] for level in levels], [names[level] for level in levels]
    total = sum(len(c) for c in candidates)
    print(f"1 image x {len(levels)} questions x {args.names} names, 336 px (576 image tokens), batch "
          f"{args.batch_size}, {model.device} {model.dtype}")

    rank_image_questions(model, image, questions[:1], [candidates[0][:2]])  # warm-up
    shared_s, shared = min((timed(lambda: rank_image_questions(model, image, questions, candidates, "sum",
                                                               args.batch_size), model.device)
                            for _ in range(args.repeats)), key=lambda t: t[0])
    naive_s, naive = timed(lambda: [rank_one_by_one(model, image, q, c) for q, c in zip(questions, candidates)],
                           model.device)
    tries = [NameTrie(model, c) for c in candidates]
    constrained_s, constrained = min((timed(lambda: constrained_answers(model, image, questions, tries),
                                            model.device) for _ in range(args.repeats)), key=lambda t: t[0])

    fed = sum(max(len(model.answer_ids(n)) for n in c[i:i + args.batch_size]) * len(c[i:i + args.batch_size])
              for c in candidates for i in range(0, len(c), args.batch_size))
    trie_nodes = sum(_count_nodes(t.root) for t in tries)
    print(f"one by one: {total / naive_s:9.1f} names/s ({naive_s:.2f} s)")
    print(f"shared:     {total / shared_s:9.1f} names/s ({shared_s:.3f} s); candidate tokens fed: {fed} padded "
          f"(a trie would feed {trie_nodes})")
    agree = sum(a == r[0]["name"] for a, r in zip(constrained, shared))
    print(f"constrained: {len(questions) / constrained_s:.1f} questions/s ({constrained_s:.3f} s, "
          f"{shared_s / constrained_s:.1f}x faster than full ranking); its answer is the full ranking's top 1 for "
          f"{agree} of {len(questions)} questions")
    for level, a, b in zip(levels, shared, naive):
        if [r["name"] for r in a] != [r["name"] for r in b]:
            print(f"error: the shared path ranks the {level} names differently from one forward per name",
                  file=sys.stderr)
            sys.exit(1)
    print("rankings identical: yes")
    print(f"ratio: {naive_s / shared_s:.2f}")


def _count_nodes(node: dict) -> int:
    return sum(1 + _count_nodes(child) for child in node.values())


if __name__ == "__main__":
    main()
