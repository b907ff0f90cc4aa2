# AddressVLM stage 2 on Pitts-IAL for ONE 24 GB GPU: recipes/stage2_pitts.py's data and chain with stage 1's 4-bit (NF4) LLM (QLoRA).
# Same LoRA, same data, same effective batch as Table A1 (4 per step x 128 accumulation = 4 x 8 GPUs x 16).
#   xtuner train recipes/stage2_pitts_qlora.py        (after recipes/stage1_pitts_qlora.py)
# Needs CUDA (bitsandbytes 4-bit kernels); on CPU it parses but does not run.
from mmengine.config import read_base

with read_base():
    from .stage1_pitts_qlora import *  # noqa: F401,F403

# Two levels deep (over stage1_pitts_qlora.py, over stage1_pitts.py), as the stage-2 ablations are: it shares the
# 4-bit settings instead of repeating them, and repeats stage2_pitts.py's data and start.
data_root = "./data/pitts/"
train_dataloader.dataset.update(data_path=data_root + "vqa/train.json", image_folder=data_root)
model.update(init_from_work_dir="./work_dirs/llava_phi3_mini/stage1_pitts_qlora")
work_dir = "./work_dirs/llava_phi3_mini/stage2_pitts_qlora"
