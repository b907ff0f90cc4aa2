# Stage 2 of Table 4 (which of the vision encoder (VE) and the LLM each stage trains), row "E: stage 1 VE + LLM, stage
# 2 LLM".
# Changes from recipes/stage2_pitts.py: CLIP's LoRA from stage 1 carried frozen (stage_chain
# visual_encoder_lora="frozen": loaded and applied, not trained, saved unchanged with stage 2's checkpoint); the LLM's
# LoRA and the projector are continued.
# Run: python tools/paper_table.py --table 4 --city data/pitts --device gpu --gpus 8 --rows table4_E_stage2
# By hand, and the data tools/paper_table.py does not build: docs/paper_tables.md, "By hand".
from mmengine.config import read_base

with read_base():
    from ..stage2_pitts import *  # noqa: F401,F403

model.stage_chain.update(visual_encoder_lora="frozen")
work_dir = "./work_dirs/llava_phi3_mini/table4_E_stage2"
