# Table 3 (paper section 4.3), row "Satellite w/o road", delta = 0.5, stage 2: address localization tuning
# continuing table3_noroad_d05_stage1.py.
# Changes from recipes/stage2_pitts.py: starts from table3_noroad_d05_stage1's work_dir. The commands are in
# table3_noroad_d05_stage1.py.
from mmengine.config import read_base

with read_base():
    from ..stage2_pitts import *  # noqa: F401,F403

model.update(init_from_work_dir="./work_dirs/llava_phi3_mini/table3_noroad_d05_stage1")
work_dir = "./work_dirs/llava_phi3_mini/table3_noroad_d05_stage2"
