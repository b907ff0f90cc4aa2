# Stage 2 of Beyond the paper (retrieved names as a hint in the stage-2 prompt, docs/retrieval.md section 6), row
# "AddressVLM + retrieved hint (k = 5)".
# Changes from recipes/stage2_pitts.py: the training JSON and the address-metrics hook's validation questions are
# data/pitts/vqa_hint5's: build_vqa's questions (the same seed and splits as vqa/) with the street and district names
# of the 5 best retrieved satellite tiles after each.
# Run: NPROC_PER_NODE=8 xtuner train recipes/ablations/retrieval_hint_stage2.py --deepspeed deepspeed_zero2 (after recipes/stage1_pitts.py)
# By hand, and the data tools/paper_table.py does not build: docs/paper_tables.md, "By hand".
from mmengine.config import read_base

with read_base():
    from ..stage2_pitts import *  # noqa: F401,F403

train_dataloader.dataset.update(data_path=data_root + "vqa_hint5/train.json")
address_eval_questions = "vqa_hint5/val_questions.jsonl"  # the questions it trains on, hint and all
default_hooks.address_metrics.update(questions=address_eval_questions)
work_dir = "./work_dirs/llava_phi3_mini/retrieval_hint_stage2"
