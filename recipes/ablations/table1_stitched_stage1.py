# Stage 1 of Table 1 (three ways of combining the satellite and street views in stage 1), row "Two images stitched".
# Changes from recipes/stage1_pitts.py: the stage-1 JSON of the street view and the satellite crop side by side in one
# image.
# Run: python tools/paper_table.py --table 1 --city data/pitts --device gpu --gpus 8 --rows table1_stitched_stage2
# By hand, and the data tools/paper_table.py does not build: docs/paper_tables.md, "By hand".
from mmengine.config import read_base

with read_base():
    from ..stage1_pitts import *  # noqa: F401,F403

train_dataloader.dataset.update(data_path=data_root + "stage1/train_stitched.json")
work_dir = "./work_dirs/llava_phi3_mini/table1_stitched_stage1"
