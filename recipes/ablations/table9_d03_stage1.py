# Table 9 (appendix) and Table 3 (section 4.3), row "delta = 0.3" (Table 3: "Satellite", 0.3), stage 1.
# Changes from recipes/stage1_pitts.py: the stage-1 JSON of street views grafted with overlap ratio delta = 0.3.
# Data (after the main stage-1 steps of recipes/stage1_pitts.py; labels through an LVLM, as the paper's section 3.2
# prescribes: the rule backend is only the demo's stand-in):
#   python datasets_prep/crop_satellite.py --city data/pitts --keep-clear-for-delta 0.3 --out-dir data/pitts/stage1/crops_d03
#   python datasets_prep/graft.py --city data/pitts --crops data/pitts/stage1/crops_d03 --delta 0.3 \
#       --out-dir data/pitts/stage1/grafted_d03
#   python datasets_prep/make_alignment_labels.py --city data/pitts --backend openai --base-url URL --model MODEL \
#       --grafted data/pitts/stage1/grafted_d03 --crops data/pitts/stage1/crops_d03 --out data/pitts/stage1/labels_d03.jsonl
#   python datasets_prep/build_stage1.py --city data/pitts --labels data/pitts/stage1/labels_d03.jsonl \
#       --out data/pitts/stage1/train_d03.json
# Train and evaluate (stage 2: table9_d03_stage2.py):
#   NPROC_PER_NODE=8 xtuner train recipes/ablations/table9_d03_stage1.py --deepspeed deepspeed_zero2
#   NPROC_PER_NODE=8 xtuner train recipes/ablations/table9_d03_stage2.py --deepspeed deepspeed_zero2
#   python eval/infer.py --config recipes/ablations/table9_d03_stage2.py --checkpoint work_dirs/llava_phi3_mini/table9_d03_stage2 \
#       --questions data/pitts/vqa/test_questions.jsonl --out eval_results/llava_phi3_mini/table9_d03_stage2/predictions.jsonl
#   python eval/score.py --questions data/pitts/vqa/test_questions.jsonl \
#       --predictions eval_results/llava_phi3_mini/table9_d03_stage2/predictions.jsonl
# Or the whole table: python tools/paper_table.py --table 9 --city data/pitts --device gpu --gpus 8
from mmengine.config import read_base

with read_base():
    from ..stage1_pitts import *  # noqa: F401,F403

train_dataloader.dataset.update(data_path=data_root + "stage1/train_d03.json")
work_dir = "./work_dirs/llava_phi3_mini/table9_d03_stage1"
