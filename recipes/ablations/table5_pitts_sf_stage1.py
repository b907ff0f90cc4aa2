# Stage 1 of Table 5 (one model trained on two cities (tested on this city)), row "Pitts + SF".
# Changes from recipes/stage1_pitts.py: the merged data root data/pitts_sf (its pitts/ and sf/ link to the two city
# roots: merge_cities.py).
# Run: python tools/paper_table.py --table 5 --city data/pitts --device gpu --gpus 8 --merged-city data/pitts_sf --rows table5_pitts_sf_stage2
# By hand, and the data tools/paper_table.py does not build: docs/paper_tables.md, "By hand".
from mmengine.config import read_base

with read_base():
    from ..stage1_pitts import *  # noqa: F401,F403

data_root = "./data/pitts_sf/"
train_dataloader.dataset.update(data_path=data_root + "stage1/train.json", image_folder=data_root)
work_dir = "./work_dirs/llava_phi3_mini/table5_pitts_sf_stage1"
