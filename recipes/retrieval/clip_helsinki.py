# The CLIP dual encoder on helsinki: recipes/retrieval/clip_pitts.py with the city root ./data/helsinki/.
# Commands: those of recipes/retrieval/clip_pitts.py with this file and --root data/helsinki.
from mmengine.config import read_base

with read_base():
    from .clip_pitts import *  # noqa: F401,F403

# Re-assigning data_root alone would not reach the dicts the parent already built: patch them.
data_root = "./data/helsinki/"
train_dataloader.dataset.update(data_root=data_root)
work_dir = "./work_dirs/retrieval/clip_helsinki"
