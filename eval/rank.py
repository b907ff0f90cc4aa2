"""Closed-set answering (docs/eval.md): every gazetteer name ranked as the answer to each generation question.

    python eval/rank.py --config recipes/stage2_pitts.py --checkpoint work_dirs/llava_phi3_mini/stage2_pitts \
        --questions data/pitts/vqa/test_questions.jsonl \
        --out eval_results/llava_phi3_mini/stage2_pitts/ranked.jsonl
    python eval/rank.py ... --constrained --out .../predictions_constrained.jsonl   # greedy within the names
    python eval/rank.py ... --candidates eval_results/retrieval/<model>/retrieved.jsonl --candidates-k 5
Names: the districts, streets and (street, district) pairs of locations.csv, plus --gazetteer FILE. One process per
GPU: --num-chunks K --chunk-idx I, a distinct --out each. A rerun skips the questions already ranked. --candidates:
each image's names restricted to those of its K best retrieved satellite tiles (docs/retrieval.md).
"""
from __future__ import annotations

import argparse
from typing import Sequence

from addressvlm.answering.answering import chunk_questions
from addressvlm.answering.loading import image_folder_of, load_model_from_args, model_settings_of
from addressvlm.answering.model_arguments import add_model_arguments, check_chunk
from addressvlm.answering.ranking import NORMALISATIONS, answer_constrained, rank_questions, ranked_questions
from addressvlm.core.records import DataError, read_gazetteer, read_locations, read_questions
from addressvlm.data.gazetteer import build_gazetteer
from addressvlm.training.checkpoints import CheckpointError
from addressvlm.training.stage_chain import StageChainError


# --------------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Closed-set answering: rank every gazetteer name as the answer to each generation question "
                    "(ranked.jsonl, best first), or with --constrained answer greedily within the names "
                    "(predictions.jsonl). Appended per question; a rerun skips finished ids.")
    parser.add_argument("--out", required=True, help="ranked.jsonl (or predictions.jsonl with --constrained)")
    add_model_arguments(parser, answering=True)
    parser.add_argument("--locations", help="the city's locations.csv (default: locations.csv in the city root)")
    parser.add_argument("--gazetteer", help="a CSV with street and district columns: names ranked besides the city's")
    parser.add_argument("--normalisation", choices=NORMALISATIONS, default="sum",
                        help="sum (default): the log-probability of the whole answer; mean: per answer token")
    parser.add_argument("--batch-size", type=int, default=64, help="candidate names per forward pass (default 64)")
    parser.add_argument("--constrained", action="store_true",
                        help="greedy decoding restricted to the gazetteer's names (a token trie) instead of ranking")
    parser.add_argument("--candidates", metavar="RETRIEVED_JSONL",
                        help="eval/retrieve.py's retrieved.jsonl: rank, per image, only the streets, districts and "
                             "addresses of its best retrieved satellite tiles (docs/retrieval.md)")
    parser.add_argument("--candidates-k", type=int, default=5, help="tiles whose names are candidates (5)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_chunk(parser, args)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.candidates and args.constrained:
        parser.error("--candidates restricts ranking; --constrained decoding does not take it")
    if args.candidates_k < 1:
        parser.error("--candidates-k must be at least 1")
    image_folder = image_folder_of(args)
    try:
        questions = ranked_questions(read_questions(args.questions))
        if not questions:
            raise DataError(args.questions, None, "no generation questions to answer")
        locations = read_locations(args.locations or image_folder / "locations.csv")
        gazetteer = build_gazetteer(locations, read_gazetteer(args.gazetteer) if args.gazetteer else ())
        questions = chunk_questions(questions, args.num_chunks, args.chunk_idx)
        model_settings = model_settings_of(args)  # the weights' identity before they are read
        model = load_model_from_args(args)
        if args.constrained:
            done = answer_constrained(model, questions, gazetteer, args.out, image_folder,
                                      model_settings=model_settings)
        else:
            done = rank_questions(model, questions, gazetteer, args.out, image_folder, args.normalisation,
                                  args.batch_size, model_settings=model_settings,
                                  candidates=(args.candidates, args.candidates_k) if args.candidates else None)
    except (DataError, FileNotFoundError, CheckpointError, StageChainError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"{'answered' if args.constrained else 'ranked'} {done} of {len(questions)} generation question(s) of "
          f"chunk {args.chunk_idx + 1}/{args.num_chunks} ({len(gazetteer.districts)} districts, "
          f"{len(gazetteer.streets)} streets, {len(gazetteer.addresses)} addresses) -> {args.out}")


if __name__ == "__main__":
    main()
