# Stage 2 of Table 1 (three ways of combining the satellite and street views in stage 1), row "Two images stitched".
# Changes from recipes/stage2_pitts.py: starts from table1_stitched_stage1.py's work_dir.
# Run: python tools/paper_table.py --table 1 --city data/pitts --device gpu --gpus 8 --rows table1_stitched_stage2
# By hand, and the data tools/paper_table.py does not build: docs/paper_tables.md, "By hand".
from mmengine.config import read_base

with read_base():
    from ..stage2_pitts import *  # noqa: F401,F403

model.update(init_from_work_dir="./work_dirs/llava_phi3_mini/table1_stitched_stage1")
work_dir = "./work_dirs/llava_phi3_mini/table1_stitched_stage2"
