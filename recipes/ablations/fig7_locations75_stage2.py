# Stage 2 of Fig. 7 (density of street views (per location) and of locations in stage 2), row "75 % of the locations".
# Changes from recipes/stage2_pitts.py: the stage-2 training JSON keeps 75 % of the training locations (the test
# questions are the full set's).
# Run: python tools/paper_table.py --table fig7 --city data/pitts --device gpu --gpus 8 --rows fig7_locations75_stage2
# By hand, and the data tools/paper_table.py does not build: docs/paper_tables.md, "By hand".
from mmengine.config import read_base

with read_base():
    from ..stage2_pitts import *  # noqa: F401,F403

train_dataloader.dataset.update(data_path=data_root + "vqa_locations75/train.json")
work_dir = "./work_dirs/llava_phi3_mini/fig7_locations75_stage2"
