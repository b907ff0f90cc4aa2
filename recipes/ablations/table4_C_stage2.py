# Table 4 (paper section 4.3), row C: stage 1 trains the LLM and not the VE (table4_CD_stage1.py), stage 2 trains
# the LLM and not the VE (the projector in both stages, as in every row).
# Changes from recipes/stage2_pitts.py: starts from table4_CD_stage1's work_dir and puts no LoRA on CLIP; the LLM's
# LoRA and the projector are continued.
#   NPROC_PER_NODE=8 xtuner train recipes/ablations/table4_CD_stage1.py --deepspeed deepspeed_zero2
#   NPROC_PER_NODE=8 xtuner train recipes/ablations/table4_C_stage2.py --deepspeed deepspeed_zero2
#   python eval/infer.py --config recipes/ablations/table4_C_stage2.py --checkpoint work_dirs/llava_phi3_mini/table4_C_stage2 \
#       --questions data/pitts/vqa/test_questions.jsonl --out eval_results/llava_phi3_mini/table4_C_stage2/predictions.jsonl
#   python eval/score.py --questions data/pitts/vqa/test_questions.jsonl \
#       --predictions eval_results/llava_phi3_mini/table4_C_stage2/predictions.jsonl
# Or the whole table: python tools/paper_table.py --table 4 --city data/pitts --device gpu --gpus 8
from mmengine.config import read_base

with read_base():
    from ..stage2_pitts import *  # noqa: F401,F403

model.update(init_from_work_dir="./work_dirs/llava_phi3_mini/table4_CD_stage1", visual_encoder_lora=None)
work_dir = "./work_dirs/llava_phi3_mini/table4_C_stage2"
