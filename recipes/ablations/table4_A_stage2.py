# Table 4 (paper section 4.3), row A: stage 1 trains neither VE nor LLM (table4_AB_stage1.py), stage 2 trains the LLM
# and not the VE (the projector in both, as in every row).
# Changes from recipes/stage2_pitts.py: starts from table4_AB_stage1's work_dir, no LoRA on CLIP, and the LLM's LoRA
# is opened fresh (stage_chain llm_lora="open": stage 1 trained none); the projector is continued.
#   NPROC_PER_NODE=8 xtuner train recipes/ablations/table4_AB_stage1.py --deepspeed deepspeed_zero2
#   NPROC_PER_NODE=8 xtuner train recipes/ablations/table4_A_stage2.py --deepspeed deepspeed_zero2
#   python eval/infer.py --config recipes/ablations/table4_A_stage2.py --checkpoint work_dirs/llava_phi3_mini/table4_A_stage2 \
#       --questions data/pitts/vqa/test_questions.jsonl --out eval_results/llava_phi3_mini/table4_A_stage2/predictions.jsonl
#   python eval/score.py --questions data/pitts/vqa/test_questions.jsonl \
#       --predictions eval_results/llava_phi3_mini/table4_A_stage2/predictions.jsonl
from mmengine.config import read_base

with read_base():
    from ..stage2_pitts import *  # noqa: F401,F403

model.update(init_from_work_dir="./work_dirs/llava_phi3_mini/table4_AB_stage1", visual_encoder_lora=None)
model.stage_chain.update(llm_lora="open")
work_dir = "./work_dirs/llava_phi3_mini/table4_A_stage2"
