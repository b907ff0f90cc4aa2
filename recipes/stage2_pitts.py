# AddressVLM stage 2 on Pitts-IAL: address localization tuning, continuing stage 1 (recipes/stage1_pitts.py).
#
# Starts from stage 1's final checkpoint, found from stage 1's work_dir (no iter_N to edit), and continues its LoRA
# adapters and projector; it refuses to start, naming the keys, if any of those tensors does not load.
# Weights: as stage 1 (./models/llava-phi-3-mini-xtuner, from xtuner/llava-phi-3-mini-xtuner). Every other setting,
# Table A1's included, is stage 1's: this file names only what differs.
# Data (docs/data.md):
#   python datasets_prep/build_vqa.py --locations data/pitts/locations.csv --out data/pitts/vqa --seed 0
# Train on 8 GPUs after stage 1:
#   NPROC_PER_NODE=8 xtuner train recipes/stage2_pitts.py --deepspeed deepspeed_zero2
# Evaluate: README.md, "Evaluation" (docs/eval.md). The paper's other rows: docs/paper_tables.md.
# Note: `xtuner train` exits 0 even when training fails; scripts should call `python -m xtuner.tools.train`.
from mmengine.config import read_base

with read_base():
    from .stage1_pitts import *  # noqa: F401,F403

# Re-assigning data_root alone would not reach the dicts stage 1 already built: patch them.
data_root = "./data/pitts/"
train_dataloader.dataset.update(data_path=data_root + "vqa/train.json", image_folder=data_root)
model.update(init_from_work_dir="./work_dirs/llava_phi3_mini/stage1_pitts")  # stage 1's final checkpoint
work_dir = "./work_dirs/llava_phi3_mini/stage2_pitts"
