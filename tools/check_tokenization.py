"""Tokenize a recipe's data with a real tokenizer and check training and answering agree (docs/real_models.md).

    python tools/check_tokenization.py data/pitts/stage1/train.json data/pitts/vqa/train.json \
        --recipe recipes/stage1_pitts.py --tokenizer ./models/llava-phi-3-mini-xtuner
"""
from __future__ import annotations

from pathlib import Path

from addressvlm.checks.token_check import SHIPPED_PHI3_TOKENIZER, check_records, load_tokenizer
from addressvlm.core.records import DataError, read_llava_json
from addressvlm.training.recipes import load_recipe


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        description="Tokenize a LLaVA recipe's data with a real tokenizer: answering prompts must equal the start of "
                    "the training sequences, labels must be exactly the answers; reports the longest records "
                    "against max_length. Exits 1 on a mismatch.")
    parser.add_argument("data", nargs="+", help="LLaVA JSON files (stage1/train.json, vqa/train.json)")
    parser.add_argument("--recipe", default="recipes/stage1_pitts.py", help="its prompt template and max_length")
    parser.add_argument("--tokenizer", default=str(SHIPPED_PHI3_TOKENIZER),
                        help="tokenizer folder (default: the Phi-3 tokenizer shipped for the tests, converted from "
                             "llama.cpp's ggml-vocab-phi-3.gguf)")
    args = parser.parse_args(argv)
    missing = [p for p in (args.recipe, *args.data) if not Path(p).is_file()]
    if missing:
        raise SystemExit(f"error: {missing[0]} not found")
    cfg = load_recipe(args.recipe)
    dataset = cfg.train_dataloader.dataset
    template = dataset.template_map_fn.template
    tokenizer = load_tokenizer(args.tokenizer)
    image_tokens = 576  # CLIP ViT-L/14 at 336 px
    failed = False
    for path in args.data:
        try:
            records = read_llava_json(path)
        except DataError as error:
            raise SystemExit(f"error: {error}")
        report = check_records(records, tokenizer, template, dataset.max_length, image_tokens, progress=True)
        print(f"{path}: {report.records} records; longest {report.longest[0]} tokens ({report.longest[1]}, "
              f"image included) against {dataset.max_length} + {image_tokens}; {len(report.over_max_length)} over "
              f"max_length (truncated in training); prompt mismatches {len(report.prompt_mismatches)}, label "
              f"mismatches {len(report.label_mismatches)}")
        for kind, ids in (("prompt", report.prompt_mismatches), ("label", report.label_mismatches)):
            if ids:
                print(f"  {kind} mismatch, first ids: {ids[:5]}")
        failed |= not report.ok
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
