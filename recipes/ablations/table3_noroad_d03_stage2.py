# Stage 2 of Table 3 (overlap ratio delta and satellite type in stage 1), row "Satellite w/o road, delta 0.3".
# Changes from recipes/stage2_pitts.py: starts from table3_noroad_d03_stage1.py's work_dir.
# Run: python tools/paper_table.py --table 3 --city data/pitts --device gpu --gpus 8 --rows table3_noroad_d03_stage2
# By hand, and the data tools/paper_table.py does not build: docs/paper_tables.md, "By hand".
from mmengine.config import read_base

with read_base():
    from ..stage2_pitts import *  # noqa: F401,F403

model.update(init_from_work_dir="./work_dirs/llava_phi3_mini/table3_noroad_d03_stage1")
work_dir = "./work_dirs/llava_phi3_mini/table3_noroad_d03_stage2"
