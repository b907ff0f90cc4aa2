# Table 1 (paper section 3.2), row "Two images input separately", stage 2: the paper's stage 2 (single street-view
# images), continuing table1_two_images_stage1's LoRA and projector instead of the grafted stage 1's.
# Changes from recipes/stage2_pitts.py: starts from table1_two_images_stage1's work_dir.
#   python datasets_prep/build_vqa.py --locations data/pitts/locations.csv --out data/pitts/vqa --seed 0
#   NPROC_PER_NODE=8 xtuner train recipes/ablations/table1_two_images_stage1.py --deepspeed deepspeed_zero2
#   NPROC_PER_NODE=8 xtuner train recipes/ablations/table1_two_images_stage2.py --deepspeed deepspeed_zero2
#   python eval/infer.py --config recipes/ablations/table1_two_images_stage2.py \
#       --checkpoint work_dirs/llava_phi3_mini/table1_two_images_stage2 \
#       --questions data/pitts/vqa/test_questions.jsonl \
#       --out eval_results/llava_phi3_mini/table1_two_images_stage2/predictions.jsonl
#   python eval/score.py --questions data/pitts/vqa/test_questions.jsonl \
#       --predictions eval_results/llava_phi3_mini/table1_two_images_stage2/predictions.jsonl
from mmengine.config import read_base

with read_base():
    from ..stage2_pitts import *  # noqa: F401,F403

model.update(init_from_work_dir="./work_dirs/llava_phi3_mini/table1_two_images_stage1")
work_dir = "./work_dirs/llava_phi3_mini/table1_two_images_stage2"
