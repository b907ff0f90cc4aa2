# Table 2 (paper section 4.2), row Baseline: address localization tuning only, on the released LLaVA-Phi3-mini
# (no stage 1), for both AddressVLM and GeoReasoner (section 4.2, "Baselines").
# Changes from recipes/stage2_pitts.py: no init_from_work_dir, so training starts from the release itself and
# opens the LoRA adapters fresh (stage_chain applies only to a stage started from another).
#   python datasets_prep/build_vqa.py --locations data/pitts/locations.csv --out data/pitts/vqa --seed 0
#   NPROC_PER_NODE=8 xtuner train recipes/ablations/table2_baseline_stage2.py --deepspeed deepspeed_zero2
#   python eval/infer.py --config recipes/ablations/table2_baseline_stage2.py \
#       --checkpoint work_dirs/llava_phi3_mini/table2_baseline_stage2 --questions data/pitts/vqa/test_questions.jsonl \
#       --out eval_results/llava_phi3_mini/table2_baseline_stage2/predictions.jsonl
#   python eval/score.py --questions data/pitts/vqa/test_questions.jsonl \
#       --predictions eval_results/llava_phi3_mini/table2_baseline_stage2/predictions.jsonl
from mmengine.config import read_base

with read_base():
    from ..stage2_pitts import *  # noqa: F401,F403

model.update(init_from_work_dir=None)
work_dir = "./work_dirs/llava_phi3_mini/table2_baseline_stage2"
