# AddressVLM stage 1 on SF-IAL-Base (San Francisco): recipes/stage1_pitts.py with the SF city root.
# Commands: those of recipes/stage1_pitts.py with data/sf; then recipes/stage2_sf.py.
from mmengine.config import read_base

with read_base():
    from .stage1_pitts import *  # noqa: F401,F403

# Re-assigning data_root alone would not reach the dataset dict the parent already built: patch it.
data_root = "./data/sf/"
train_dataloader.dataset.update(data_path=data_root + "stage1/train.json", image_folder=data_root)
work_dir = "./work_dirs/llava_phi3_mini/stage1_sf"
