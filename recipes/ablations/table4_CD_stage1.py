# Table 4 (paper section 4.3), rows C and D, stage 1: cross-view alignment tuning with the LLM trained (LoRA) and the
# vision encoder (VE) not; the projector is trained, as in every row of the table.
# Changes from recipes/stage1_pitts.py: no LoRA on CLIP. Its checkpoint holds the LLM's LoRA and the projector.
#   NPROC_PER_NODE=8 xtuner train recipes/ablations/table4_CD_stage1.py --deepspeed deepspeed_zero2
# Then the stage 2 of row D (table4_D_stage2.py; its header has the commands).
from mmengine.config import read_base

with read_base():
    from ..stage1_pitts import *  # noqa: F401,F403

model.update(visual_encoder_lora=None)
work_dir = "./work_dirs/llava_phi3_mini/table4_CD_stage1"
