# Stage 2 of Table 6 (general instruction data (llava_v1_5_mix665k) mixed into stage 2, general:address), row "w/
# llava_v1_5_mix665k (1:1)".
# Changes from recipes/stage2_pitts.py: 1 general record(s) of llava_v1_5_mix665k per address record (mix_general.py);
# images resolve from data/, holding pitts/ and llava/.
# Run: python tools/paper_table.py --table 6 --city data/pitts --device gpu --gpus 8 --rows table6_general1_stage2
# By hand, and the data tools/paper_table.py does not build: docs/paper_tables.md, "By hand".
from mmengine.config import read_base

with read_base():
    from ..stage2_pitts import *  # noqa: F401,F403

train_dataloader.dataset.update(data_path=data_root + "vqa_general1/train.json", image_folder="./data/")
work_dir = "./work_dirs/llava_phi3_mini/table6_general1_stage2"
