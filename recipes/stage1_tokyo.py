# AddressVLM stage 1 on tokyo: recipes/stage1_pitts.py with the city root ./data/tokyo/.
# Commands: those of recipes/stage1_pitts.py with this file; then recipes/stage2_tokyo.py.
# Table 8 (Tokyo 24/7, levels chome and street): the city as docs/data.md "Tokyo 24/7" makes it, its
# questions from build_vqa.py --level-names chome,street.
from mmengine.config import read_base

with read_base():
    from .stage1_pitts import *  # noqa: F401,F403

# Re-assigning data_root alone would not reach the dicts the parent already built: patch them.
data_root = "./data/tokyo/"
train_dataloader.dataset.update(data_path=data_root + "stage1/train.json", image_folder=data_root)
work_dir = "./work_dirs/llava_phi3_mini/stage1_tokyo"
