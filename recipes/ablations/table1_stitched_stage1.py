# Table 1 (paper section 3.2), row "stitched": street view and satellite crop side by side in one image, stage 1.
# Changes from recipes/stage1_pitts.py: the stage-1 JSON of the stitched images.
# Data (after the main stage-1 steps of recipes/stage1_pitts.py; labels through an LVLM, as the paper's section 3.2
# prescribes: the rule backend is only the demo's stand-in):
#   python datasets_prep/graft.py --city data/pitts --variant stitched      # -> data/pitts/stage1/stitched/
#   python datasets_prep/make_alignment_labels.py --city data/pitts --backend openai --base-url URL --model MODEL \
#       --variant stitched --out data/pitts/stage1/labels_stitched.jsonl
#   python datasets_prep/build_stage1.py --city data/pitts --variant stitched --labels data/pitts/stage1/labels_stitched.jsonl \
#       --out data/pitts/stage1/train_stitched.json
# Train and evaluate (stage 2: table1_stitched_stage2.py):
#   NPROC_PER_NODE=8 xtuner train recipes/ablations/table1_stitched_stage1.py --deepspeed deepspeed_zero2
#   NPROC_PER_NODE=8 xtuner train recipes/ablations/table1_stitched_stage2.py --deepspeed deepspeed_zero2
#   python eval/infer.py --config recipes/ablations/table1_stitched_stage2.py --checkpoint work_dirs/llava_phi3_mini/table1_stitched_stage2 \
#       --questions data/pitts/vqa/test_questions.jsonl --out eval_results/llava_phi3_mini/table1_stitched_stage2/predictions.jsonl
#   python eval/score.py --questions data/pitts/vqa/test_questions.jsonl \
#       --predictions eval_results/llava_phi3_mini/table1_stitched_stage2/predictions.jsonl
# Or the whole table: python tools/paper_table.py --table 1 --city data/pitts --device gpu --gpus 8
from mmengine.config import read_base

with read_base():
    from ..stage1_pitts import *  # noqa: F401,F403

train_dataloader.dataset.update(data_path=data_root + "stage1/train_stitched.json")
work_dir = "./work_dirs/llava_phi3_mini/table1_stitched_stage1"
