# Table 1 (paper section 3.2), row "stitched": street view and satellite crop side by side in one image, stage 2:
# address localization tuning continuing table1_stitched_stage1.py.
# Changes from recipes/stage2_pitts.py: starts from table1_stitched_stage1's work_dir. The commands are in
# table1_stitched_stage1.py.
from mmengine.config import read_base

with read_base():
    from ..stage2_pitts import *  # noqa: F401,F403

model.update(init_from_work_dir="./work_dirs/llava_phi3_mini/table1_stitched_stage1")
work_dir = "./work_dirs/llava_phi3_mini/table1_stitched_stage2"
