#!/usr/bin/env python
"""Export a trained checkpoint as a Hugging Face folder with its LoRA merged (docs/serving.md): a
LlavaForConditionalGeneration for a LLaVA recipe, the release's own layout for a MiniCPM-V 2.6 recipe; for
transformers, vLLM, lmdeploy, or `eval/infer.py --hf`.

    python tools/export_hf.py --config recipes/stage2_pitts.py --checkpoint work_dirs/llava_phi3_mini/stage2_pitts \
        --out exports/llava_phi3_mini_stage2_pitts
    python tools/export_hf.py --config recipes/minicpmv26/stage2_pitts.py \
        --checkpoint work_dirs/minicpmv26/stage2_pitts --out exports/minicpmv26_stage2_pitts
--checkpoint takes an iter_N.pth file, a DeepSpeed checkpoint folder, or a work_dir (its last checkpoint).
"""
from __future__ import annotations

from typing import Sequence

from addressvlm.answering.export import export_hf
from addressvlm.training.checkpoints import CheckpointError
from addressvlm.training.stage_chain import StageChainError


# --------------------------------------------------------------------------------------------- command line
def build_parser():
    import argparse

    parser = argparse.ArgumentParser(
        description="Export a trained checkpoint as a Hugging Face folder, LoRA merged (docs/serving.md): a "
                    "LlavaForConditionalGeneration for a LLaVA recipe, the release's own layout for a MiniCPM-V 2.6 "
                    "recipe; for transformers, vLLM, lmdeploy, or eval/infer.py --hf.")
    parser.add_argument("--config", required=True, help="the XTuner recipe the checkpoint was trained with")
    parser.add_argument("--checkpoint", required=True, help="iter_N.pth, a DeepSpeed checkpoint folder, or a work_dir")
    parser.add_argument("--out", required=True,
                        help="folder to write: new or empty, written whole (never half) through a staging folder "
                             "beside it; never one of the inputs")
    parser.add_argument("--replace", action="store_true",
                        help="replace a non-empty --out (an earlier export) whole, once the new one is written")
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="recipe overrides, as given to xtuner train")
    parser.add_argument("--model-root", help="local release folder replacing the recipe's llava_root / model_root")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"],
                        help="weights' dtype (default: the release's: float16 for LLaVA-Phi3-mini, bfloat16 for "
                             "MiniCPM-V 2.6)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        out = export_hf(args.config, args.checkpoint, args.out, args.cfg_options, args.dtype,
                        model_root=args.model_root, replace=args.replace)
    except (FileNotFoundError, CheckpointError, StageChainError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"exported {args.checkpoint} -> {out}")


if __name__ == "__main__":
    main()
