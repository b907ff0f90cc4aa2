# Stage 1 of Table 3 (overlap ratio delta and satellite type in stage 1), row "Satellite w/o road, delta 0.3".
# Changes from recipes/stage1_pitts.py: the stage-1 JSON of crops without street names, grafted with delta = 0.3.
# Run: python tools/paper_table.py --table 3 --city data/pitts --device gpu --gpus 8 --rows table3_noroad_d03_stage2
# By hand, and the data tools/paper_table.py does not build: docs/paper_tables.md, "By hand".
from mmengine.config import read_base

with read_base():
    from ..stage1_pitts import *  # noqa: F401,F403

train_dataloader.dataset.update(data_path=data_root + "stage1/train_noroad_d03.json")
work_dir = "./work_dirs/llava_phi3_mini/table3_noroad_d03_stage1"
