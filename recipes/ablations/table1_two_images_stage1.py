# Table 1 (paper section 3.2), row "Two images input separately", stage 1: the satellite crop and the street view as
# two images, each its own block of 576 visual tokens in one sequence, instead of the street view grafted into the crop.
# Changes from recipes/stage1_pitts.py: the "separate" stage-1 data (image lists), the dataset and collate function
# for several images per sample (addressvlm/training/dataset.py), and max_length 2048 - 2 x 576 for the text. XTuner's LLaVA
# model already fills several image positions of a sequence in order, so the model is stage 1's.
# Data (docs/stage1.md; the crops are the paper's own, the labels answer the two-image question):
#   python datasets_prep/crop_satellite.py --city data/pitts --size-m 200 --pixels 336 --keep-clear-for-delta 0.5
#   python datasets_prep/graft.py --city data/pitts --variant separate --size 336   -> data/pitts/stage1/separate/
#   python datasets_prep/make_alignment_labels.py --city data/pitts --variant separate --backend openai \
#       --base-url http://localhost:8000/v1 --model llava-hf/llava-v1.6-mistral-7b-hf \
#       --out data/pitts/stage1/labels_separate.jsonl
#   python datasets_prep/build_stage1.py --city data/pitts --variant separate \
#       --labels data/pitts/stage1/labels_separate.jsonl --out data/pitts/stage1/train_separate.json
# Train, then the normal stage 2 continuing it (table1_two_images_stage2.py, whose header has the eval commands):
#   NPROC_PER_NODE=8 xtuner train recipes/ablations/table1_two_images_stage1.py --deepspeed deepspeed_zero2
#   NPROC_PER_NODE=8 xtuner train recipes/ablations/table1_two_images_stage2.py --deepspeed deepspeed_zero2
from mmengine.config import read_base

with read_base():
    from ..stage1_pitts import *  # noqa: F401,F403

from addressvlm.training.dataset import CityMultiImageLLaVADataset, multi_image_collate_fn  # noqa: E402

images_per_sample = 2
max_length = int(2048 - images_per_sample * (336 / 14) ** 2)  # Table A1's 2048 minus both images' 576 tokens
train_dataloader.dataset.update(type=CityMultiImageLLaVADataset, images_per_sample=images_per_sample,
                                data_path=data_root + "stage1/train_separate.json", max_length=max_length)
train_dataloader.collate_fn.update(type=multi_image_collate_fn)
work_dir = "./work_dirs/llava_phi3_mini/table1_two_images_stage1"
