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

from addressvlm.ranking import main

if __name__ == "__main__":
    main()
