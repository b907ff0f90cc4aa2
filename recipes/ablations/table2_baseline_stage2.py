# Stage 2 of Table 2 (zero-shot, Baseline (stage 2 only), GeoReasoner-style stage 1, AddressVLM), row "Baseline", and
# of Table 8 (with and without stage 1 (the paper's Tokyo rows; run on any city)), row "AddressVLM w/o stage1".
# Changes from recipes/stage2_pitts.py: no init_from_work_dir: training starts from the release itself and opens the
# LoRA adapters fresh (stage_chain applies only to a stage started from another).
# Run: python tools/paper_table.py --table 2 --city data/pitts --device gpu --gpus 8 --rows table2_baseline_stage2
# By hand, and the data tools/paper_table.py does not build: docs/paper_tables.md, "By hand".
from mmengine.config import read_base

with read_base():
    from ..stage2_pitts import *  # noqa: F401,F403

model.update(init_from_work_dir=None)
work_dir = "./work_dirs/llava_phi3_mini/table2_baseline_stage2"
