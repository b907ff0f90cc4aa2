# Stage 1 of Table 4 (which of the vision encoder (VE) and the LLM each stage trains), rows "C: stage 1 LLM, stage 2
# LLM", "D: stage 1 LLM, stage 2 VE + LLM".
# Changes from recipes/stage1_pitts.py: no LoRA on CLIP: its checkpoint holds the LLM's LoRA and the projector.
# Run: python tools/paper_table.py --table 4 --city data/pitts --device gpu --gpus 8 --rows table4_C_stage2,table4_D_stage2
# By hand, and the data tools/paper_table.py does not build: docs/paper_tables.md, "By hand".
from mmengine.config import read_base

with read_base():
    from ..stage1_pitts import *  # noqa: F401,F403

model.update(visual_encoder_lora=None)
work_dir = "./work_dirs/llava_phi3_mini/table4_CD_stage1"
