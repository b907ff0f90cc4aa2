# Stage 1 of Table 2 (zero-shot, Baseline (stage 2 only), GeoReasoner-style stage 1, AddressVLM), row "GeoReasoner".
# Changes from recipes/stage1_pitts.py: GeoReasoner's reasoning tuning (Appendix C) in place of cross-view alignment:
# street views alone, answered with district-level reasoning (Fig. B1's prompt); the trained parts are stage 1's own,
# so the row differs from ours in data only.
# Run: python tools/paper_table.py --table 2 --city data/pitts --device gpu --gpus 8 --rows table2_georeasoner_stage2
# By hand, and the data tools/paper_table.py does not build: docs/paper_tables.md, "By hand".
from mmengine.config import read_base

with read_base():
    from ..stage1_pitts import *  # noqa: F401,F403

train_dataloader.dataset.update(data_path=data_root + "georeasoner/train.json")
work_dir = "./work_dirs/llava_phi3_mini/table2_georeasoner_stage1"
