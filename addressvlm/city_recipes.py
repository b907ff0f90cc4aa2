"""Child recipes for a new city: one level of `read_base()` over stage1_pitts.py, naming data, chain and work dirs.

Both stages inherit the flat stage-1 recipe (stage 2 differs only in its data and its start), so no child is two
levels deep.

mmengine pitfall: re-assigning ``data_root`` in a child does not reach the dicts the parent already built from it,
so the child patches those dicts (the dataset, and stage 2's ``init_from_work_dir``) directly.
"""
from __future__ import annotations

import re
from pathlib import Path

_TEMPLATE = '''# AddressVLM stage {stage} on {city}: recipes/stage{stage}_{base}.py with the city root {data_root}.
# Commands: those of recipes/stage{stage}_{base}.py with this file; {chain}
from mmengine.config import read_base

with read_base():
    from .stage1_{base} import *  # noqa: F401,F403

# Re-assigning data_root alone would not reach the dicts the parent already built: patch them.
data_root = "{data_root}"
train_dataloader.dataset.update(data_path=data_root + "{data_file}", image_folder=data_root)
{init}work_dir = "{work_root}/stage{stage}_{city}"
'''


# Long enough for any city's name; short enough that stage1_<city>.py and the work dirs named after it stay far below
# the file systems' 255-byte limit.
MAX_CITY_NAME = 64


def check_city_name(city: str) -> str:
    """``city`` if it can name recipe files, modules and work dirs: ASCII lower case, digits, underscores, starting
    with a letter, at most ``MAX_CITY_NAME`` characters; else a ``ValueError`` saying so."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", city):
        raise ValueError(f"city name {city!r} must be a valid module name: ASCII lower case letters, digits and "
                         "underscores, starting with a letter (e.g. tokyo, new_york)")
    if len(city) > MAX_CITY_NAME:
        raise ValueError(f"city name of {len(city)} characters: at most {MAX_CITY_NAME}")
    return city


def city_recipe_text(city: str, stage: int, data_root: str, work_root: str = "./work_dirs/llava_phi3_mini",
                     base: str = "pitts") -> str:
    check_city_name(city)
    data_root = data_root.rstrip("/") + "/"
    if stage == 1:
        data_file, init, chain = "stage1/train.json", "", f"then recipes/stage2_{city}.py."
    elif stage == 2:
        data_file = "vqa/train.json"
        init = f'model.update(init_from_work_dir="{work_root}/stage1_{city}")\n'
        chain = f"after recipes/stage1_{city}.py."
    else:
        raise ValueError(f"stage must be 1 or 2, not {stage}")
    return _TEMPLATE.format(stage=stage, city=city, base=base, data_root=data_root, data_file=data_file,
                            init=init, chain=chain, work_root=work_root)


def write_city_recipes(city: str, data_root: str, recipes_dir: str | Path,
                       work_root: str = "./work_dirs/llava_phi3_mini", overwrite: bool = False) -> list[Path]:
    """Write ``stage1_<city>.py`` and ``stage2_<city>.py`` into ``recipes_dir``, beside the reference recipes (their
    ``read_base`` imports are relative)."""
    if not (Path(recipes_dir) / "stage1_pitts.py").is_file():
        raise FileNotFoundError(f"{recipes_dir} has no stage1_pitts.py: give the recipes/ folder of your checkout")
    written = []
    for stage in (1, 2):
        path = Path(recipes_dir) / f"stage{stage}_{city}.py"
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists (use --overwrite to replace it)")
        path.write_text(city_recipe_text(city, stage, data_root, work_root))
        written.append(path)
    return written
