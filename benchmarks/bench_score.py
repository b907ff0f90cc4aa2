"""Time eval/score.py's path on generated questions and predictions (target: 200K predictions in <= 5 s).

Writes a test set of the docs/design.md shape (9 single-turn questions per image) and predictions in the forms models
produce (right and wrong, abbreviated, quoted, lettered, chatty), then times reading, scoring and the JSON
report. The last line is `scored N predictions in S s, C s CPU (R predictions/s)`.

    python benchmarks/bench_score.py --n 200000
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from addressvlm.core.records import write_atomic, write_questions
from addressvlm.answering.scoring import format_table, score_files

_STREET_BASES = ["Forbes", "Craig", "Murray", "Penn", "Liberty", "Negley", "Highland", "Centre", "Baum", "Ellsworth",
                 "Walnut", "Shady", "Fifth", "Butler", "Carson", "Smithfield", "Grant", "Wood", "Market", "Stanwix"]
_STREET_TYPES = [("Avenue", "Ave"), ("Street", "St"), ("Boulevard", "Blvd"), ("Road", "Rd"), ("Way", "Way")]
_DISTRICTS = ["Oakland", "Shadyside", "Squirrel Hill", "Bloomfield", "Lawrenceville", "Strip District", "Downtown",
              "South Side", "East Liberty", "Friendship", "Garfield", "Polish Hill", "Hill District", "Uptown",
              "North Shore", "Point Breeze", "Highland Park", "Morningside", "Greenfield"]


def _street_spellings(rng: random.Random) -> tuple[list[str], dict[str, str]]:
    streets, abbreviated = [], {}
    for base in _STREET_BASES:
        for full, short in rng.sample(_STREET_TYPES, 3):
            streets.append(f"{base} {full}")
            abbreviated[f"{base} {full}"] = f"{base} {short}."
    return streets, abbreviated


def _reply(rng: random.Random, qtype: str, answer: str, wrong: str, spellings: dict[str, str]) -> str:
    right = rng.random() < 0.8
    if qtype == "judgment":
        word = answer if right else ("No" if answer == "Yes" else "Yes")
        return rng.choice([word, f"{word}.", f"{word}, it is.", f"{word}, it is not"])
    if qtype == "multiple_choice":
        letter = answer if right else wrong
        return rng.choice([letter, f"({letter})", f"{letter}.", f"Option {letter}", f"The answer is {letter}."])
    name = answer if right else wrong
    return rng.choice([name, f'"{name}"', f"The {name}", spellings.get(name, name), f"{name.upper()}."])


def generate(n: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``n`` questions (9 per image, the last image cut short) and one prediction for each."""
    rng = random.Random(seed)
    streets, spellings = _street_spellings(rng)
    questions, predictions = [], []
    for image_index in range(n // 9 + 1):
        image = f"pitts/{image_index:06d}/0"
        street, district = rng.choice(streets), rng.choice(_DISTRICTS)
        truth = {"street": street, "district": district}
        for level, names in (("district", _DISTRICTS), ("street", streets)):
            other = rng.choice([x for x in names if x != truth[level]])
            choices = rng.sample([x for x in names if x != truth[level]], 3) + [truth[level]]
            rng.shuffle(choices)
            options = dict(zip("ABCD", choices))
            letter = "ABCD"[choices.index(truth[level])]
            asked = [("generation", truth[level], other, None), ("judgment", "Yes", "", None),
                     ("judgment", "No", "", None),
                     ("multiple_choice", letter, next(k for k in "ABCD" if k != letter), options)]
            for qtype, answer, wrong, opts in asked:
                q = {"question_id": f"{image}/{level}/{qtype}/{answer}", "image": image, "level": level,
                     "qtype": qtype, "question": f"<{level} {qtype} question>", "answer": answer, **truth}
                if opts:
                    q["options"] = opts
                questions.append(q)
                predictions.append({"question_id": q["question_id"],
                                    "prediction": _reply(rng, qtype, answer, wrong, spellings)})
        questions.append({"question_id": f"{image}/address", "image": image, "level": "address",
                          "qtype": "generation", "question": "<address question>",
                          "answer": f"{street}, {district}", **truth})
        predictions.append({"question_id": f"{image}/address",
                            "prediction": rng.choice([f"{street}, {district}", f"{spellings[street]}, {district}",
                                                      f"{district}, {street}", f"{rng.choice(streets)}, {district}"])})
    return questions[:n], predictions[:n]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="number of questions and predictions")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    questions, predictions = generate(args.n, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_questions(tmp / "test_questions.jsonl", questions)
        write_atomic(tmp / "predictions.jsonl", "".join(json.dumps(p) + "\n" for p in predictions))
        start, start_cpu = time.perf_counter(), time.process_time()
        metrics, _ = score_files(tmp / "test_questions.jsonl", tmp / "predictions.jsonl")
        table = format_table(metrics)
        write_atomic(tmp / "metrics.json", json.dumps(metrics, indent=2))
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    print(table)
    # CPU time as well: on a shared machine the wall time also counts other jobs' turns on the cores.
    print(f"scored {len(predictions)} predictions in {seconds:.2f} s, {cpu_seconds:.2f} s CPU "
          f"({len(predictions) / seconds:.0f} predictions/s)")


if __name__ == "__main__":
    main()
