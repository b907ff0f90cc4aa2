# Stage 2 of Table 2 (zero-shot, Baseline (stage 2 only), GeoReasoner-style stage 1, AddressVLM), row "GeoReasoner".
# Changes from recipes/stage2_pitts.py: starts from table2_georeasoner_stage1.py's work_dir.
# Run: python tools/paper_table.py --table 2 --city data/pitts --device gpu --gpus 8 --rows table2_georeasoner_stage2
# By hand, and the data tools/paper_table.py does not build: docs/paper_tables.md, "By hand".
from mmengine.config import read_base

with read_base():
    from ..stage2_pitts import *  # noqa: F401,F403

model.update(init_from_work_dir="./work_dirs/llava_phi3_mini/table2_georeasoner_stage1")
work_dir = "./work_dirs/llava_phi3_mini/table2_georeasoner_stage2"
