"""Export a trained checkpoint as a Hugging Face LlavaForConditionalGeneration folder (LoRA merged), for
transformers, vLLM, or `eval/infer.py --hf`.

    python tools/export_hf.py --config recipes/stage2_pitts.py --checkpoint work_dirs/llava_phi3_mini/stage2_pitts \
        --out exports/llava_phi3_mini_stage2_pitts
--checkpoint takes an iter_N.pth file, a DeepSpeed checkpoint folder, or a work_dir (its last checkpoint).
"""
from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the XTuner recipe the checkpoint was trained with")
    parser.add_argument("--checkpoint", required=True, help="iter_N.pth, a DeepSpeed checkpoint folder, or a work_dir")
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="recipe overrides, as given to xtuner train")
    parser.add_argument("--model-root", help="local LLaVA-Phi3-mini folder replacing the recipe's llava_root")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16",
                        help="weights' dtype (default float16, as the released LLaVA-Phi3-mini)")
    args = parser.parse_args(argv)
    from addressvlm.export import export_llava_hf

    options = []
    if args.model_root:
        from mmengine.config import Config

        from addressvlm.runtime import model_root_options

        options += model_root_options(Config.fromfile(args.config), args.model_root)
    out = export_llava_hf(args.config, args.checkpoint, args.out, options + list(args.cfg_options), args.dtype)
    print(f"exported {args.checkpoint} -> {out}")


if __name__ == "__main__":
    main()
