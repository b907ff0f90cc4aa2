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
from addressvlm.export import main

if __name__ == "__main__":
    main()
