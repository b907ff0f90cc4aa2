# Retrieval hint (docs/retrieval.md, section 6), beyond the paper: stage 2 with the street and district names of the
# 5 best satellite tiles retrieved for each street view after every question about it, continuing the paper's own
# stage 1 (recipes/stage1_pitts.py).
# Changes from recipes/stage2_pitts.py: the training JSON and the address-metrics hook's validation questions are
# data/pitts/vqa_hint5's: build_vqa's questions (the same seed and splits as data/pitts/vqa) with the hint sentence
# after each; the training hints thinned to the validation images' candidate recall (the retriever trained on the
# training locations). Compare with recipes/stage2_pitts.py scored on vqa/test_questions.jsonl: the same questions
# without the hint.
# Data: the retrieval data, an LVLM retriever, its top tiles for every street view of each split against the whole
# city's gallery (at test time every tile is a candidate), then the hinted VQA:
#   python datasets_prep/build_retrieval.py --city data/pitts --backend openai --base-url http://localhost:8000/v1 \
#       --model Qwen/Qwen2-VL-7B-Instruct --concurrency 16
#   NPROC_PER_NODE=8 xtuner train recipes/retrieval/lvlm_pitts.py --deepspeed deepspeed_zero2
#   for split in train val test; do
#     python eval/retrieve.py --root data/pitts --config recipes/retrieval/lvlm_pitts.py \
#         --checkpoint work_dirs/retrieval/lvlm_pitts --split $split --gallery all --kinds image \
#         --out eval_results/retrieval/lvlm_pitts/$split
#   done
#   python datasets_prep/build_vqa.py --locations data/pitts/locations.csv --out data/pitts/vqa_hint5 --seed 0 \
#       --hints eval_results/retrieval/lvlm_pitts/{train,val,test}/retrieved.jsonl --hint-k 5
# Train and evaluate:
#   NPROC_PER_NODE=8 xtuner train recipes/stage1_pitts.py --deepspeed deepspeed_zero2   (the paper's own stage 1)
#   NPROC_PER_NODE=8 xtuner train recipes/ablations/retrieval_hint_stage2.py --deepspeed deepspeed_zero2
#   python eval/infer.py --config recipes/ablations/retrieval_hint_stage2.py \
#       --checkpoint work_dirs/llava_phi3_mini/retrieval_hint_stage2 --questions data/pitts/vqa_hint5/test_questions.jsonl \
#       --out eval_results/llava_phi3_mini/retrieval_hint_stage2/predictions.jsonl
#   python eval/score.py --questions data/pitts/vqa_hint5/test_questions.jsonl \
#       --predictions eval_results/llava_phi3_mini/retrieval_hint_stage2/predictions.jsonl
from mmengine.config import read_base

with read_base():
    from ..stage2_pitts import *  # noqa: F401,F403

train_dataloader.dataset.update(data_path=data_root + "vqa_hint5/train.json")
address_eval_questions = "vqa_hint5/val_questions.jsonl"  # the questions it trains on, hint and all
default_hooks.address_metrics.update(questions=address_eval_questions)
work_dir = "./work_dirs/llava_phi3_mini/retrieval_hint_stage2"
