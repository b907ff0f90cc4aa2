# Stage 1 of Table 1 (three ways of combining the satellite and street views in stage 1), row "Two images input
# separately".
# Changes from recipes/stage1_pitts.py: the crop and the street view as two images, each its own block of 576 visual
# tokens in one sequence: the "separate" stage-1 data (image lists), the dataset and collate function for several
# images per sample (addressvlm/training/dataset.py) and max_length 2048 - 2 x 576 for the text; XTuner's LLaVA model
# already fills several image positions of a sequence in order.
# Run: python tools/paper_table.py --table 1 --city data/pitts --device gpu --gpus 8 --rows table1_two_images_stage2
# By hand, and the data tools/paper_table.py does not build: docs/paper_tables.md, "By hand".
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
