# The pooling ablation NGCG reports: recipes/retrieval/lvlm_pitts.py with the embedding the mean of the last hidden
# states over all tokens (prompt, image and text) instead of the summarising prompt's last token.
# Commands: those of recipes/retrieval/lvlm_pitts.py with this file.
from mmengine.config import read_base

with read_base():
    from .lvlm_pitts import *  # noqa: F401,F403

model.update(pooling="mean")
work_dir = "./work_dirs/retrieval/lvlm_mean_pooling_pitts"
