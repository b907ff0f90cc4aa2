# Table 4 (paper section 4.3), row E: stage 1 trains VE and LLM (recipes/stage1_pitts.py, the paper's own stage 1),
# stage 2 trains the LLM and not the VE (the projector in both stages, as in every row).
# Changes from recipes/stage2_pitts.py: CLIP's LoRA from stage 1 is carried frozen (stage_chain
# visual_encoder_lora="frozen": loaded and applied, not trained, saved unchanged with stage 2's checkpoint); the LLM's
# LoRA and the projector are continued.
#   NPROC_PER_NODE=8 xtuner train recipes/stage1_pitts.py --deepspeed deepspeed_zero2
#   NPROC_PER_NODE=8 xtuner train recipes/ablations/table4_E_stage2.py --deepspeed deepspeed_zero2
#   python eval/infer.py --config recipes/ablations/table4_E_stage2.py --checkpoint work_dirs/llava_phi3_mini/table4_E_stage2 \
#       --questions data/pitts/vqa/test_questions.jsonl --out eval_results/llava_phi3_mini/table4_E_stage2/predictions.jsonl
#   python eval/score.py --questions data/pitts/vqa/test_questions.jsonl \
#       --predictions eval_results/llava_phi3_mini/table4_E_stage2/predictions.jsonl
from mmengine.config import read_base

with read_base():
    from ..stage2_pitts import *  # noqa: F401,F403

model.stage_chain.update(visual_encoder_lora="frozen")
work_dir = "./work_dirs/llava_phi3_mini/table4_E_stage2"
