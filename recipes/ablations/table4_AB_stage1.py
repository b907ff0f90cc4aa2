# Stage 1 of Table 4 (which of the vision encoder (VE) and the LLM each stage trains), rows "A: stage 1 -, stage 2
# LLM", "B: stage 1 -, stage 2 VE + LLM".
# Changes from recipes/stage1_pitts.py: no LoRA on the LLM and none on CLIP: its checkpoint holds the projector alone.
# Run: python tools/paper_table.py --table 4 --city data/pitts --device gpu --gpus 8 --rows table4_A_stage2,table4_B_stage2
# By hand, and the data tools/paper_table.py does not build: docs/paper_tables.md, "By hand".
from mmengine.config import read_base

with read_base():
    from ..stage1_pitts import *  # noqa: F401,F403

model.update(llm_lora=None, visual_encoder_lora=None)
work_dir = "./work_dirs/llava_phi3_mini/table4_AB_stage1"
