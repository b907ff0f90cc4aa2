"""Answer test questions with a trained model (docs/eval.md); predictions are appended and flushed per line.

    python eval/infer.py --config recipes/stage2_pitts.py --checkpoint work_dirs/llava_phi3_mini/stage2_pitts \
        --questions data/pitts/vqa/test_questions.jsonl \
        --out eval_results/llava_phi3_mini/stage2_pitts/predictions.jsonl
    python eval/infer.py --hf exports/stage2_pitts --questions ... --out ...
    python eval/infer.py --config recipes/stage2_pitts.py --zero-shot --questions ... --out ...   # untuned release
One process per GPU: add --num-chunks K --chunk-idx I (a distinct --out each), then eval/merge_predictions.py.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from addressvlm.answering.answering import answer_questions, chunk_questions
from addressvlm.answering.loading import image_folder_of, load_model_from_args, model_settings_of
from addressvlm.answering.model_arguments import add_model_arguments, check_chunk
from addressvlm.core.records import DataError, read_questions
from addressvlm.training.checkpoints import CheckpointError
from addressvlm.training.stage_chain import StageChainError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Answer test_questions.jsonl with a trained model (or the untuned release: --zero-shot); "
                    "predictions are appended and flushed per line, and a rerun skips answered ids.")
    parser.add_argument("--out", required=True, help="predictions.jsonl to append to (one per chunk)")
    add_model_arguments(parser, answering=True)
    parser.add_argument("--batch-size", type=int, default=18, help="rows decoded together (default 18)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
    parser.add_argument("--num-samples", type=int, default=1,
                        help="answers per question (needs --temperature > 0); all go to a 'samples' list")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--no-share-prefix", action="store_true",
                        help="prefill every question's whole prompt (slower; same greedy answers)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_chunk(parser, args)
    if args.num_samples > 1 and args.temperature == 0:
        parser.error("--num-samples > 1 needs --temperature > 0 (greedy samples are all the same)")
    try:
        every_question = read_questions(args.questions)
        if not every_question:
            raise DataError(args.questions, None, "no questions to answer")
        questions = chunk_questions(every_question, args.num_chunks, args.chunk_idx)
        model_settings = model_settings_of(args)  # the weights' identity before they are read
        model = load_model_from_args(args)
        answered = answer_questions(
            model, questions, args.out, image_folder=image_folder_of(args),
            batch_size=args.batch_size, share_prefix=not args.no_share_prefix, max_new_tokens=args.max_new_tokens,
            temperature=args.temperature, num_samples=args.num_samples, seed=args.seed,
            model_settings=model_settings)
    except (DataError, FileNotFoundError, CheckpointError, StageChainError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"answered {answered} of {len(questions)} question(s) of chunk {args.chunk_idx + 1}/{args.num_chunks} "
          f"-> {args.out}")


if __name__ == "__main__":
    main()
