# Table 5 (paper section 4.3), rows Pitts + SF / Pitts and Pitts + SF / SF, stage 1: cross-view alignment tuning on
# both cities' stage-1 data at once; the one model is then tested on each city.
# Changes from recipes/stage1_pitts.py: the data root is the merged root data/pitts_sf (its pitts/ and sf/ link to
# the two city roots; docs/data.md, "Two cities in one training set").
# Data (docs/stage1.md, docs/data.md): each city's stage-1 and stage-2 data, then the merge:
#   for city in pitts sf; do
#     python datasets_prep/split_locations.py --locations data/$city/locations.csv --seed 0
#     python datasets_prep/build_vqa.py --locations data/$city/locations.csv --out data/$city/vqa --seed 0
#     python datasets_prep/crop_satellite.py --city data/$city --keep-clear-for-delta 0.5
#     python datasets_prep/graft.py --city data/$city --delta 0.5
#     python datasets_prep/make_alignment_labels.py --city data/$city --backend openai \
#         --base-url http://localhost:8000/v1 --model llava-hf/llava-v1.6-mistral-7b-hf --concurrency 16
#     python datasets_prep/build_stage1.py --city data/$city
#   done
#   python datasets_prep/merge_cities.py --city pitts=data/pitts --city sf=data/sf --out data/pitts_sf
#   NPROC_PER_NODE=8 xtuner train recipes/ablations/table5_pitts_sf_stage1.py --deepspeed deepspeed_zero2
# Then table5_pitts_sf_stage2.py (its header has the commands).
from mmengine.config import read_base

with read_base():
    from ..stage1_pitts import *  # noqa: F401,F403

data_root = "./data/pitts_sf/"
train_dataloader.dataset.update(data_path=data_root + "stage1/train.json", image_folder=data_root)
work_dir = "./work_dirs/llava_phi3_mini/table5_pitts_sf_stage1"
