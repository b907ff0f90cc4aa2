# AddressVLM stage 2 on tokyo: recipes/stage1_pitts.py with the city root ./data/tokyo/,
# stage 2's data and its start from stage1_tokyo: what recipes/stage2_pitts.py changes, repeated so that this
# child stays one level deep.
# Commands: those of recipes/stage2_pitts.py with this file; after recipes/stage1_tokyo.py.
# Table 8 (Tokyo 24/7, levels chome and street): the city as docs/data.md "Tokyo 24/7" makes it, its
# questions from build_vqa.py --level-names chome,street.
from mmengine.config import read_base

with read_base():
    from .stage1_pitts import *  # noqa: F401,F403

# Re-assigning data_root alone would not reach the dicts the parent already built: patch them.
data_root = "./data/tokyo/"
train_dataloader.dataset.update(data_path=data_root + "vqa/train.json", image_folder=data_root)
model.update(init_from_work_dir="./work_dirs/llava_phi3_mini/stage1_tokyo")
work_dir = "./work_dirs/llava_phi3_mini/stage2_tokyo"
