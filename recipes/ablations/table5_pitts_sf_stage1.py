# Table 5 (paper section 4.3), rows Pitts + SF / Pitts and Pitts + SF / SF, stage 1: cross-view alignment tuning on
# both cities' stage-1 data at once; the one model is then tested on each city.
# Changes from recipes/stage1_pitts.py: the data root is the merged root data/pitts_sf (its pitts/ and sf/ link to
# the two city roots; docs/data.md, "Two cities in one training set").
# Data (each city's stage-1 steps as in recipes/stage1_pitts.py and stage1_sf.py, each city's build_vqa, then):
#   python datasets_prep/merge_cities.py --city pitts=data/pitts --city sf=data/sf --out data/pitts_sf
#   NPROC_PER_NODE=8 xtuner train recipes/ablations/table5_pitts_sf_stage1.py --deepspeed deepspeed_zero2
# Then table5_pitts_sf_stage2.py (its header has the commands).
from mmengine.config import read_base

with read_base():
    from ..stage1_pitts import *  # noqa: F401,F403

data_root = "./data/pitts_sf/"
train_dataloader.dataset.update(data_path=data_root + "stage1/train.json", image_folder=data_root)
work_dir = "./work_dirs/llava_phi3_mini/table5_pitts_sf_stage1"
