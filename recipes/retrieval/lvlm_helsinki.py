# The LLaVA-Phi3-mini retriever on helsinki: recipes/retrieval/lvlm_pitts.py with the city root ./data/helsinki/.
# Commands: those of recipes/retrieval/lvlm_pitts.py with this file and --root data/helsinki.
from mmengine.config import read_base

with read_base():
    from .lvlm_pitts import *  # noqa: F401,F403

# Re-assigning data_root alone would not reach the dicts the parent already built: patch them.
data_root = "./data/helsinki/"
train_dataloader.dataset.update(data_root=data_root)
work_dir = "./work_dirs/retrieval/lvlm_helsinki"
