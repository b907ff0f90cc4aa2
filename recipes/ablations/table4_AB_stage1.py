# Table 4 (paper section 4.3), rows A and B, stage 1: cross-view alignment tuning with neither the vision encoder (VE)
# nor the LLM trained; only the projector is, as in every row of the table.
# Changes from recipes/stage1_pitts.py: no LoRA on the LLM and none on CLIP. Its checkpoint holds the projector alone,
# which table4_A_stage2.py and table4_B_stage2.py continue.
#   NPROC_PER_NODE=8 xtuner train recipes/ablations/table4_AB_stage1.py --deepspeed deepspeed_zero2
# Then the stage 2 of row A or B (their headers have the commands).
from mmengine.config import read_base

with read_base():
    from ..stage1_pitts import *  # noqa: F401,F403

model.update(llm_lora=None, visual_encoder_lora=None)
work_dir = "./work_dirs/llava_phi3_mini/table4_AB_stage1"
