"""Answer test questions with a trained model (docs/eval.md); predictions are appended and flushed per line.

    python eval/infer.py --config recipes/stage2_pitts.py --checkpoint work_dirs/llava_phi3_mini/stage2_pitts \
        --questions data/pitts/vqa/test_questions.jsonl \
        --out eval_results/llava_phi3_mini/stage2_pitts/predictions.jsonl
    python eval/infer.py --hf exports/stage2_pitts --questions ... --out ...
    python eval/infer.py --config recipes/stage2_pitts.py --zero-shot --questions ... --out ...   # untuned release
One process per GPU: add --num-chunks K --chunk-idx I (a distinct --out each), then eval/merge_predictions.py.
"""
from __future__ import annotations

from addressvlm.infer import main

if __name__ == "__main__":
    main()
