# Stage 2 of Table 3 (overlap ratio delta and satellite type in stage 1), row "Satellite, delta 0.3", and of Table 9
# (overlap ratio delta of the grafted street view), row "delta 0.3".
# Changes from recipes/stage2_pitts.py: starts from table9_d03_stage1.py's work_dir.
# Run: python tools/paper_table.py --table 3 --city data/pitts --device gpu --gpus 8 --rows table9_d03_stage2
# By hand, and the data tools/paper_table.py does not build: docs/paper_tables.md, "By hand".
from mmengine.config import read_base

with read_base():
    from ..stage2_pitts import *  # noqa: F401,F403

model.update(init_from_work_dir="./work_dirs/llava_phi3_mini/table9_d03_stage1")
work_dir = "./work_dirs/llava_phi3_mini/table9_d03_stage2"
