# Stage 2 of Table 4 (which of the vision encoder (VE) and the LLM each stage trains), row "C: stage 1 LLM, stage 2
# LLM".
# Changes from recipes/stage2_pitts.py: starts from table4_CD_stage1.py's work_dir; no LoRA on CLIP; the LLM's LoRA
# and the projector are continued.
# Run: python tools/paper_table.py --table 4 --city data/pitts --device gpu --gpus 8 --rows table4_C_stage2
# By hand, and the data tools/paper_table.py does not build: docs/paper_tables.md, "By hand".
from mmengine.config import read_base

with read_base():
    from ..stage2_pitts import *  # noqa: F401,F403

model.update(init_from_work_dir="./work_dirs/llava_phi3_mini/table4_CD_stage1", visual_encoder_lora=None)
work_dir = "./work_dirs/llava_phi3_mini/table4_C_stage2"
