"""The training dataset the recipes name: XTuner's ``LLaVADataset`` that checks its inputs before tokenising.

XTuner would fail deep inside tokenisation, or at the first batch that reaches a missing image; a recipe pointed at a
wrong data file or image folder should instead stop at start, naming the path.
"""
from __future__ import annotations

from pathlib import Path

from addressvlm import xtuner_shims  # noqa: F401
from addressvlm.inputs import MissingInputError
from addressvlm.records import DataError, read_llava_json
from xtuner.dataset import LLaVADataset


def check_llava_inputs(data_path: str, image_folder: str) -> int:
    """Validate a LLaVA JSON and that every image it names exists under ``image_folder``; return the record count."""
    if not Path(data_path).is_file():
        raise MissingInputError(f"training data file {data_path} not found: build it first (docs/data.md, "
                                "docs/stage1.md) or set data_root / data_path in the recipe")
    if not Path(image_folder).is_dir():
        raise MissingInputError(f"image folder {image_folder} not found: set data_root / image_folder in the recipe")
    records = read_llava_json(data_path)
    missing = [r["image"] for r in records if "image" in r and not (Path(image_folder) / r["image"]).is_file()]
    if missing:
        raise DataError(data_path, None, f"{len(missing)} image(s) missing under {image_folder}, first: {missing[:5]}")
    return len(records)


class CityLLaVADataset(LLaVADataset):
    def __init__(self, image_folder, image_processor, data_path=None, **kwargs):
        check_llava_inputs(data_path, image_folder)
        super().__init__(image_folder=image_folder, image_processor=image_processor, data_path=data_path, **kwargs)
