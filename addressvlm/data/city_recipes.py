"""Child recipes for a new city: one level of `read_base()` over stage1_pitts.py, naming data, chain and work dirs.

Both stages inherit the flat stage-1 recipe (stage 2 differs only in its data and its start), so no child is two
levels deep.

mmengine pitfall: re-assigning ``data_root`` in a child does not reach the dicts the parent already built from it,
so the child patches those dicts (the dataset, and stage 2's ``init_from_work_dir``) directly.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

from addressvlm.core.records import write_atomic

# The first line of every recipe this tool writes: --overwrite replaces a file only when it carries it.
WRITTEN_MARK = "# Written by tools/new_city.py; its --overwrite may replace this file (delete this line to keep edits)."

_TEMPLATE = WRITTEN_MARK + '''
# AddressVLM stage {stage} on {city}: recipes/stage1_{base}.py with the city root {data_root}{inherits}
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
        data_file, init, chain, inherits = "stage1/train.json", "", f"then recipes/stage2_{city}.py.", "."
    elif stage == 2:
        data_file = "vqa/train.json"
        init = f'model.update(init_from_work_dir="{work_root}/stage1_{city}")\n'
        chain = f"after recipes/stage1_{city}.py."
        inherits = (f",\n# stage 2's data and its start from stage1_{city}: what recipes/stage2_{base}.py changes, "
                    "repeated so that this\n# child stays one level deep.")
    else:
        raise ValueError(f"stage must be 1 or 2, not {stage}")
    return _TEMPLATE.format(stage=stage, city=city, base=base, data_root=data_root, data_file=data_file,
                            init=init, chain=chain, work_root=work_root, inherits=inherits)


def recipes_inheriting(recipe: Path, recipes_dir: str | Path) -> list[Path]:
    """The recipes under ``recipes_dir`` whose ``read_base()`` imports ``recipe`` (relative imports, the only kind
    recipes use for a base): replacing ``recipe`` would change, or break, every one of them."""
    target = recipe.resolve()
    children = []
    for path in sorted(Path(recipes_dir).rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue  # not a recipe mmengine could load either; it inherits from nothing
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level and node.module:
                base = path.parent.joinpath(*[".."] * (node.level - 1), *node.module.split("."))
                if base.with_suffix(".py").resolve() == target and path.resolve() != target:
                    children.append(path)
                    break
    return children


def _check_replaceable(path: Path, recipes_dir: str | Path) -> None:
    """``--overwrite`` replaces a recipe this tool wrote, which no other recipe inherits from; anything else stays."""
    children = recipes_inheriting(path, recipes_dir)
    if children:
        more = f" and {len(children) - 1} more" if len(children) > 1 else ""
        raise FileExistsError(f"{path} is the base of {children[0]}{more}: --overwrite never replaces a recipe "
                              "other recipes inherit from; choose another city name")
    if path.read_text(encoding="utf-8").partition("\n")[0] != WRITTEN_MARK:
        raise FileExistsError(f"{path} was not written by tools/new_city.py (its first line is not the tool's mark): "
                              "--overwrite replaces only recipes the tool wrote; move it away or choose another name")


def write_city_recipes(city: str, data_root: str, recipes_dir: str | Path,
                       work_root: str = "./work_dirs/llava_phi3_mini", overwrite: bool = False) -> list[Path]:
    """Write ``stage1_<city>.py`` and ``stage2_<city>.py`` into ``recipes_dir``, beside the reference recipes (their
    ``read_base`` imports are relative). ``overwrite`` replaces earlier ones this tool wrote (``WRITTEN_MARK``), never
    a recipe it did not write nor one another recipe inherits from; both are checked before either is written."""
    if not (Path(recipes_dir) / "stage1_pitts.py").is_file():
        raise FileNotFoundError(f"{recipes_dir} has no stage1_pitts.py: give the recipes/ folder of your checkout")
    texts = {Path(recipes_dir) / f"stage{stage}_{city}.py": city_recipe_text(city, stage, data_root, work_root)
             for stage in (1, 2)}
    for path in texts:
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists (use --overwrite to replace it)")
        if path.exists():
            _check_replaceable(path, recipes_dir)
    for path, text in texts.items():
        write_atomic(path, text)
    return list(texts)
