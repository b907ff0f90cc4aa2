"""The command-line options that choose a model, kept apart from ``answering.loading`` so that a tool offers them
without importing torch until a model is loaded (eval/street_distribution.py draws without one)."""
from __future__ import annotations

import argparse


def add_model_arguments(parser: argparse.ArgumentParser, answering: bool = False) -> None:
    """Which model (``load_model_from_args``) and where it runs; with ``answering``, also the questions it answers,
    the folder of their images and this process's share of them (eval/infer.py, eval/rank.py)."""
    if answering:
        parser.add_argument("--questions", required=True, help="test_questions.jsonl")
        parser.add_argument("--image-folder",
                            help="folder the questions' image paths are relative to (default: the city root, i.e. "
                                 "the parent of the questions file's folder, as in "
                                 "data/<city>/vqa/test_questions.jsonl)")
    source = parser.add_argument_group("model: --config and --checkpoint, --config and --zero-shot, or --hf")
    source.add_argument("--config", help="the XTuner recipe the checkpoint was trained with")
    trained_or_not = source.add_mutually_exclusive_group()
    trained_or_not.add_argument("--checkpoint", help="iter_N.pth, a DeepSpeed checkpoint folder, or a work_dir")
    trained_or_not.add_argument("--zero-shot", action="store_true",
                                help="answer with the untuned release the recipe starts from (Table 2's zero-shot "
                                     "row), prompted as the recipe trains")
    source.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="recipe overrides, as given to xtuner train")
    source.add_argument("--model-root", help="local release folder (LLaVA-Phi3-mini or MiniCPM-V 2.6) replacing "
                                             "the recipe's llava_root / model_root")
    source.add_argument("--hf", help="a folder tools/export_hf.py wrote (LlavaForConditionalGeneration, or MiniCPM-V "
                                     "with its LoRA merged)")
    parser.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when present)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="default: bfloat16 (float16 without bf16) on GPU, float32 on CPU")
    if answering:
        parser.add_argument("--num-chunks", type=int, default=1, help="split the questions (by image) into K shares")
        parser.add_argument("--chunk-idx", type=int, default=0, help="which share this process answers")


def check_chunk(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A usage error unless --chunk-idx names one of the --num-chunks shares."""
    if not 0 <= args.chunk_idx < args.num_chunks:
        parser.error(f"--chunk-idx {args.chunk_idx} is not in 0..{args.num_chunks - 1}")
