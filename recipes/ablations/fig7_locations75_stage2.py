# Fig. 7 (paper section 4.3), density of locations: 75 % (training locations kept): stage 2 on other data,
# continuing the paper's own stage 1 (recipes/stage1_pitts.py).
# Changes from recipes/stage2_pitts.py: the stage-2 training JSON keeps 75 % of the training locations (the test
# questions are the full set's: build_vqa pins the same splits).
# Data:
#   python datasets_prep/build_vqa.py --locations data/pitts/locations.csv --out data/pitts/vqa_locations75 \
#       --seed 0 --location-fraction 0.75
# Train and evaluate:
#   NPROC_PER_NODE=8 xtuner train recipes/stage1_pitts.py --deepspeed deepspeed_zero2   (the paper's own stage 1)
#   NPROC_PER_NODE=8 xtuner train recipes/ablations/fig7_locations75_stage2.py --deepspeed deepspeed_zero2
#   python eval/infer.py --config recipes/ablations/fig7_locations75_stage2.py --checkpoint work_dirs/llava_phi3_mini/fig7_locations75_stage2 \
#       --questions data/pitts/vqa/test_questions.jsonl --out eval_results/llava_phi3_mini/fig7_locations75_stage2/predictions.jsonl
#   python eval/score.py --questions data/pitts/vqa/test_questions.jsonl \
#       --predictions eval_results/llava_phi3_mini/fig7_locations75_stage2/predictions.jsonl
# Or the whole figure/table: python tools/paper_table.py --table fig7 --city data/pitts --device gpu --gpus 8
from mmengine.config import read_base

with read_base():
    from ..stage2_pitts import *  # noqa: F401,F403

train_dataloader.dataset.update(data_path=data_root + "vqa_locations75/train.json")
work_dir = "./work_dirs/llava_phi3_mini/fig7_locations75_stage2"
