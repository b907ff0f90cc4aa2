# Table 2 (paper section 4.2), row GeoReasoner, stage 2: address localization tuning on the same VQA data as ours
# (Appendix C), continuing GeoReasoner's stage 1 (table2_georeasoner_stage1.py).
# Changes from recipes/stage2_pitts.py: starts from table2_georeasoner_stage1's work_dir.
#   python datasets_prep/split_locations.py --locations data/pitts/locations.csv --seed 0
#   python datasets_prep/make_reasoning_labels.py --city data/pitts --backend openai \
#       --base-url http://localhost:8000/v1 --model llava-hf/llava-v1.6-mistral-7b-hf --concurrency 16
#   python datasets_prep/build_vqa.py --locations data/pitts/locations.csv --out data/pitts/vqa --seed 0
#   NPROC_PER_NODE=8 xtuner train recipes/ablations/table2_georeasoner_stage1.py --deepspeed deepspeed_zero2
#   NPROC_PER_NODE=8 xtuner train recipes/ablations/table2_georeasoner_stage2.py --deepspeed deepspeed_zero2
#   python eval/infer.py --config recipes/ablations/table2_georeasoner_stage2.py \
#       --checkpoint work_dirs/llava_phi3_mini/table2_georeasoner_stage2 --questions data/pitts/vqa/test_questions.jsonl \
#       --out eval_results/llava_phi3_mini/table2_georeasoner_stage2/predictions.jsonl
#   python eval/score.py --questions data/pitts/vqa/test_questions.jsonl \
#       --predictions eval_results/llava_phi3_mini/table2_georeasoner_stage2/predictions.jsonl
from mmengine.config import read_base

with read_base():
    from ..stage2_pitts import *  # noqa: F401,F403

model.update(init_from_work_dir="./work_dirs/llava_phi3_mini/table2_georeasoner_stage1")
work_dir = "./work_dirs/llava_phi3_mini/table2_georeasoner_stage2"
