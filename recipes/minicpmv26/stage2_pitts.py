# AddressVLM stage 2 on Pitts-IAL with MiniCPM-V 2.6: address localization tuning, continuing
# recipes/minicpmv26/stage1_pitts.py.
#
# Starts from stage 1's final checkpoint, found from stage 1's work_dir (no iter_N to edit), and continues its LoRA
# adapters and resampler; it refuses to start, naming the keys, if any of those tensors does not load.
# Weights: as stage 1 (./models/MiniCPM-V-2_6, from openbmb/MiniCPM-V-2_6). Every other setting, Table A1's
# included, is stage 1's: this file names only what differs.
# Data (docs/data.md): the LLaVA recipes' stage-2 files, data/pitts/vqa/train.json.
# Train on 8 GPUs after stage 1:
#   NPROC_PER_NODE=8 xtuner train recipes/minicpmv26/stage2_pitts.py --deepspeed deepspeed_zero2
# Answer questions with the result (docs/minicpmv.md): build `model` from this file with
# `model.init_from_work_dir=./work_dirs/minicpmv26/stage2_pitts` and call `AddressMiniCPMV.answer(image, question)`.
# The paper's Baseline (stage 2 only): --cfg-options model.init_from_work_dir=None work_dir=work_dirs/minicpmv26/baseline_pitts
# Note: `xtuner train` exits 0 even when training fails; scripts should call `python -m xtuner.tools.train`.
from mmengine.config import read_base

with read_base():
    from .stage1_pitts import *  # noqa: F401,F403

# Re-assigning data_root alone would not reach the dicts stage 1 already built: patch them.
data_root = "./data/pitts/"
train_dataloader.dataset.update(data_path=data_root + "vqa/train.json", image_folder=data_root)
model.update(init_from_work_dir="./work_dirs/minicpmv26/stage1_pitts")  # stage 1's final checkpoint
work_dir = "./work_dirs/minicpmv26/stage2_pitts"
