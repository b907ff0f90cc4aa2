# Table 2 (paper section 4.2), row GeoReasoner, stage 1: GeoReasoner's reasoning tuning (Appendix C) in place of
# cross-view alignment: street views alone, answered with district-level reasoning (Fig. B1's prompt).
# Changes from recipes/stage1_pitts.py: the training data (data/pitts/georeasoner/train.json; images are the street
# views, relative to the city root). The trained parts are stage 1's own, so the row differs from ours in data only.
# Data (docs/stage1.md, "GeoReasoner's first stage"; the paper's labels come from LLaVA-v1.6-Mistral-7B):
#   python datasets_prep/split_locations.py --locations data/pitts/locations.csv --seed 0
#   python datasets_prep/make_reasoning_labels.py --city data/pitts --backend openai \
#       --base-url http://localhost:8000/v1 --model llava-hf/llava-v1.6-mistral-7b-hf --concurrency 16
#   python datasets_prep/build_vqa.py --locations data/pitts/locations.csv --out data/pitts/vqa --seed 0
#   NPROC_PER_NODE=8 xtuner train recipes/ablations/table2_georeasoner_stage1.py --deepspeed deepspeed_zero2
# Then table2_georeasoner_stage2.py (its header has the commands).
from mmengine.config import read_base

with read_base():
    from ..stage1_pitts import *  # noqa: F401,F403

train_dataloader.dataset.update(data_path=data_root + "georeasoner/train.json")
work_dir = "./work_dirs/llava_phi3_mini/table2_georeasoner_stage1"
