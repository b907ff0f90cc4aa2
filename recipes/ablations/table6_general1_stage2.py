# Table 6 (paper section 4.3), row "w/ llava_v1_5_mix665k (1:1)", read as general:address: stage 2 on other data,
# continuing the paper's own stage 1 (recipes/stage1_pitts.py).
# Changes from recipes/stage2_pitts.py: 1 general record(s) of llava_v1_5_mix665k per address record (the paper's
# text: more address data scores higher, so its "5:1" is general:address); images resolve from data/, holding pitts/
# and llava/.
# Data:
#   python datasets_prep/mix_general.py --address data/pitts/vqa/train.json --address-prefix pitts \
#       --general data/llava/llava_v1_5_mix665k.json --general-prefix llava --general-per-address 1 \
#       --out data/pitts/vqa_general1/train.json
#   (llava_v1_5_mix665k.json and its images under data/llava/: LLaVA-1.5's instruction data; at Pitts-VQA's size,
#   177,840 training images (Table B2), --general-per-address 5 needs 889,200 records, more than the file's 665K, and
#   is refused with the counts: docs/data.md)
# Train and evaluate:
#   NPROC_PER_NODE=8 xtuner train recipes/stage1_pitts.py --deepspeed deepspeed_zero2   (the paper's own stage 1)
#   NPROC_PER_NODE=8 xtuner train recipes/ablations/table6_general1_stage2.py --deepspeed deepspeed_zero2
#   python eval/infer.py --config recipes/ablations/table6_general1_stage2.py --checkpoint work_dirs/llava_phi3_mini/table6_general1_stage2 \
#       --questions data/pitts/vqa/test_questions.jsonl --out eval_results/llava_phi3_mini/table6_general1_stage2/predictions.jsonl
#   python eval/score.py --questions data/pitts/vqa/test_questions.jsonl \
#       --predictions eval_results/llava_phi3_mini/table6_general1_stage2/predictions.jsonl
# Or the whole figure/table: python tools/paper_table.py --table 6 --city data/pitts --device gpu --gpus 8
from mmengine.config import read_base

with read_base():
    from ..stage2_pitts import *  # noqa: F401,F403

train_dataloader.dataset.update(data_path=data_root + "vqa_general1/train.json", image_folder="./data/")
work_dir = "./work_dirs/llava_phi3_mini/table6_general1_stage2"
