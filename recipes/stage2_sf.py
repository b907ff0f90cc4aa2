# AddressVLM stage 2 on SF-IAL-Base (San Francisco): recipes/stage2_pitts.py with the SF city root.
# Commands: those of recipes/stage2_pitts.py with data/sf, after recipes/stage1_sf.py.
from mmengine.config import read_base

with read_base():
    from .stage2_pitts import *  # noqa: F401,F403

# Re-assigning data_root alone would not reach the dicts the parent already built: patch them.
data_root = "./data/sf/"
train_dataloader.dataset.update(data_path=data_root + "vqa/train.json", image_folder=data_root)
model.update(init_from_work_dir="./work_dirs/llava_phi3_mini/stage1_sf")
work_dir = "./work_dirs/llava_phi3_mini/stage2_sf"
