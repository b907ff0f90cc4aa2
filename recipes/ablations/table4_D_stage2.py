# Table 4 (paper section 4.3), row D: stage 1 trains the LLM and not the VE (table4_CD_stage1.py), stage 2 trains
# both (the projector in both stages, as in every row).
# Changes from recipes/stage2_pitts.py: starts from table4_CD_stage1's work_dir, and CLIP's LoRA is opened fresh
# (stage_chain visual_encoder_lora="open": stage 1 trained none); the LLM's LoRA and the projector are continued.
#   NPROC_PER_NODE=8 xtuner train recipes/ablations/table4_CD_stage1.py --deepspeed deepspeed_zero2
#   NPROC_PER_NODE=8 xtuner train recipes/ablations/table4_D_stage2.py --deepspeed deepspeed_zero2
#   python eval/infer.py --config recipes/ablations/table4_D_stage2.py --checkpoint work_dirs/llava_phi3_mini/table4_D_stage2 \
#       --questions data/pitts/vqa/test_questions.jsonl --out eval_results/llava_phi3_mini/table4_D_stage2/predictions.jsonl
#   python eval/score.py --questions data/pitts/vqa/test_questions.jsonl \
#       --predictions eval_results/llava_phi3_mini/table4_D_stage2/predictions.jsonl
from mmengine.config import read_base

with read_base():
    from ..stage2_pitts import *  # noqa: F401,F403

model.update(init_from_work_dir="./work_dirs/llava_phi3_mini/table4_CD_stage1")
model.stage_chain.update(visual_encoder_lora="open")
work_dir = "./work_dirs/llava_phi3_mini/table4_D_stage2"
