# Table 3 (paper section 4.3), row "Satellite w/o road", delta = 0.5, stage 1.
# Changes from recipes/stage1_pitts.py: the stage-1 JSON of crops without street names, grafted with delta = 0.5.
# Data (after the main stage-1 steps of recipes/stage1_pitts.py; labels through an LVLM, as the paper's section 3.2
# prescribes: the rule backend is only the demo's stand-in):
#   python datasets_prep/crop_satellite.py --city data/pitts --no-labels --out-dir data/pitts/stage1/crops_noroad
#   python datasets_prep/graft.py --city data/pitts --crops data/pitts/stage1/crops_noroad --delta 0.5 \
#       --out-dir data/pitts/stage1/grafted_noroad_d05
#   python datasets_prep/make_alignment_labels.py --city data/pitts --backend openai --base-url URL --model MODEL \
#       --no-map-labels --grafted data/pitts/stage1/grafted_noroad_d05 --crops data/pitts/stage1/crops_noroad \
#       --out data/pitts/stage1/labels_noroad_d05.jsonl
#   python datasets_prep/build_stage1.py --city data/pitts --labels data/pitts/stage1/labels_noroad_d05.jsonl \
#       --out data/pitts/stage1/train_noroad_d05.json
# Train and evaluate (stage 2: table3_noroad_d05_stage2.py):
#   NPROC_PER_NODE=8 xtuner train recipes/ablations/table3_noroad_d05_stage1.py --deepspeed deepspeed_zero2
#   NPROC_PER_NODE=8 xtuner train recipes/ablations/table3_noroad_d05_stage2.py --deepspeed deepspeed_zero2
#   python eval/infer.py --config recipes/ablations/table3_noroad_d05_stage2.py --checkpoint work_dirs/llava_phi3_mini/table3_noroad_d05_stage2 \
#       --questions data/pitts/vqa/test_questions.jsonl --out eval_results/llava_phi3_mini/table3_noroad_d05_stage2/predictions.jsonl
#   python eval/score.py --questions data/pitts/vqa/test_questions.jsonl \
#       --predictions eval_results/llava_phi3_mini/table3_noroad_d05_stage2/predictions.jsonl
# Or the whole table: python tools/paper_table.py --table 3 --city data/pitts --device gpu --gpus 8
from mmengine.config import read_base

with read_base():
    from ..stage1_pitts import *  # noqa: F401,F403

train_dataloader.dataset.update(data_path=data_root + "stage1/train_noroad_d05.json")
work_dir = "./work_dirs/llava_phi3_mini/table3_noroad_d05_stage1"
