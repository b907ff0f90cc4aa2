# Stage 2 of Table 5 (one model trained on two cities (tested on this city)), row "Pitts + SF".
# Changes from recipes/stage2_pitts.py: starts from table5_pitts_sf_stage1.py's work_dir; the merged data root
# data/pitts_sf.
# Run: python tools/paper_table.py --table 5 --city data/pitts --device gpu --gpus 8 --merged-city data/pitts_sf --rows table5_pitts_sf_stage2
# By hand, and the data tools/paper_table.py does not build: docs/paper_tables.md, "By hand".
from mmengine.config import read_base

with read_base():
    from ..stage2_pitts import *  # noqa: F401,F403

data_root = "./data/pitts_sf/"
train_dataloader.dataset.update(data_path=data_root + "vqa/train.json", image_folder=data_root)
model.update(init_from_work_dir="./work_dirs/llava_phi3_mini/table5_pitts_sf_stage1")
work_dir = "./work_dirs/llava_phi3_mini/table5_pitts_sf_stage2"
