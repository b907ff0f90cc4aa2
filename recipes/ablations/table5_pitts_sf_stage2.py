# Table 5 (paper section 4.3), rows Pitts + SF / Pitts and Pitts + SF / SF, stage 2: address localization tuning on
# both cities' VQA data at once, continuing table5_pitts_sf_stage1.py; tested on each city's own test questions.
# Changes from recipes/stage2_pitts.py: the data root is the merged root data/pitts_sf, and it starts from
# table5_pitts_sf_stage1's work_dir.
#   python datasets_prep/merge_cities.py --city pitts=data/pitts --city sf=data/sf --out data/pitts_sf
#   NPROC_PER_NODE=8 xtuner train recipes/ablations/table5_pitts_sf_stage1.py --deepspeed deepspeed_zero2
#   NPROC_PER_NODE=8 xtuner train recipes/ablations/table5_pitts_sf_stage2.py --deepspeed deepspeed_zero2
# Each row, CITY = pitts or sf (images are found from the questions' city root):
#   python eval/infer.py --config recipes/ablations/table5_pitts_sf_stage2.py \
#       --checkpoint work_dirs/llava_phi3_mini/table5_pitts_sf_stage2 --questions data/CITY/vqa/test_questions.jsonl \
#       --out eval_results/llava_phi3_mini/table5_pitts_sf_stage2/CITY/predictions.jsonl
#   python eval/score.py --questions data/CITY/vqa/test_questions.jsonl \
#       --predictions eval_results/llava_phi3_mini/table5_pitts_sf_stage2/CITY/predictions.jsonl
from mmengine.config import read_base

with read_base():
    from ..stage2_pitts import *  # noqa: F401,F403

data_root = "./data/pitts_sf/"
train_dataloader.dataset.update(data_path=data_root + "vqa/train.json", image_folder=data_root)
model.update(init_from_work_dir="./work_dirs/llava_phi3_mini/table5_pitts_sf_stage1")
work_dir = "./work_dirs/llava_phi3_mini/table5_pitts_sf_stage2"
