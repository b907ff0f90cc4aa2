"""The training datasets the recipes name: XTuner's ``LLaVADataset`` that checks its inputs before tokenising, and
its several-images-per-sample form (Table 1's "two images input separately") with the collate function it needs.

XTuner would fail deep inside tokenisation, or at the first batch that reaches a missing image; a recipe pointed at a
wrong data file or image folder should instead stop at start, naming the path.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image
from xtuner.dataset import LLaVADataset
from xtuner.dataset.collate_fns import default_collate_fn
from xtuner.dataset.utils import expand2square
from xtuner.registry import BUILDER
from xtuner.utils import IGNORE_INDEX, IMAGE_TOKEN_INDEX

from addressvlm.core.records import DataError, llava_images, read_llava_json
from addressvlm.training import xtuner_shims  # noqa: F401
from addressvlm.training.inputs import MissingInputError


def check_llava_inputs(data_path: str, image_folder: str) -> int:
    """Validate a LLaVA JSON and that every image it names exists under ``image_folder``; return the record count."""
    if not Path(data_path).is_file():
        raise MissingInputError(f"training data file {data_path} not found: build it first (docs/data.md, "
                                "docs/stage1.md) or set data_root / data_path in the recipe")
    if not Path(image_folder).is_dir():
        raise MissingInputError(f"image folder {image_folder} not found: set data_root / image_folder in the recipe")
    records = read_llava_json(data_path)
    missing = [image for r in records for image in llava_images(r) if not (Path(image_folder) / image).is_file()]
    if missing:
        raise DataError(data_path, None, f"{len(missing)} image(s) missing under {image_folder}, first: {missing[:5]}")
    return len(records)


class CityLLaVADataset(LLaVADataset):
    def __init__(self, image_folder, image_processor, data_path=None, **kwargs):
        self.check_inputs(data_path, image_folder)
        super().__init__(image_folder=image_folder, image_processor=image_processor, data_path=data_path, **kwargs)

    def check_inputs(self, data_path: str, image_folder: str) -> None:
        """Before tokenising (minutes on a real city): what a run needs from the data file and image folder."""
        check_llava_inputs(data_path, image_folder)


# What separates two image blocks in the token sequence: the line break after each ``<image>`` of the record.
IMAGE_SEPARATOR = "\n"


class CityMultiImageLLaVADataset(CityLLaVADataset):
    """``images_per_sample`` images per record, each its own block of visual tokens in one sequence.

    Records hold ``"image": [path, ...]`` and that many ``<image>`` tokens in their first human turn, as
    ``build_stage1.py --variant separate`` writes them (``"<image>\\n<image>\\n" + question``). XTuner 0.2.0 encodes
    one image per turn (``llava_map_fn`` folds the turn's ``<image>`` tokens into one leading token and ``encode_fn``
    splits a turn on a single one), so the record is encoded with one and each image position is then widened to
    ``images_per_sample`` positions joined by the encoded separator: the sequence XTuner would give if it split on
    every ``<image>``. ``max_length`` bounds the widened text; the visual tokens come on top (the recipe's
    ``max_length`` subtracts them, ``images_per_sample`` x 576 at 336 px). Items carry ``pixel_values`` of shape
    ``(images_per_sample, 3, H, W)`` in the record's order; ``multi_image_collate_fn`` batches them.
    """

    def __init__(self, image_folder, image_processor, data_path=None, tokenizer=None, images_per_sample: int = 2,
                 max_length: int = 2048, **kwargs):
        if images_per_sample < 2:
            raise ValueError(f"images_per_sample must be at least 2 (one image per record: CityLLaVADataset), "
                             f"got {images_per_sample}")
        self.images_per_sample = images_per_sample
        if tokenizer is None:
            raise ValueError("CityMultiImageLLaVADataset tokenises its data file itself: give it the recipe's tokenizer")
        if isinstance(tokenizer, dict):
            tokenizer = BUILDER.build(tokenizer)
        separator = tokenizer.encode(IMAGE_SEPARATOR, add_special_tokens=False)
        widened_by = (images_per_sample - 1) * (len(separator) + 1)
        super().__init__(image_folder=image_folder, image_processor=image_processor, data_path=data_path,
                         tokenizer=tokenizer, max_length=max_length - widened_by, **kwargs)
        self.text_data = self.text_data.map(
            lambda record: widen_image_positions(record, images_per_sample, separator, data_path))

    def check_inputs(self, data_path: str, image_folder: str) -> None:
        super().check_inputs(data_path, image_folder)
        check_images_per_record(data_path, self.images_per_sample)

    def __getitem__(self, index):
        data_dict = self.text_data[index]
        images = [Image.open(os.path.join(self.image_folder, path)).convert("RGB") for path in data_dict["image"]]
        if self.pad_image_to_square:
            background = tuple(int(x * 255) for x in self.image_processor.image_mean)
            images = [expand2square(image, background) for image in images]
        data_dict["pixel_values"] = self.image_processor.preprocess(images, return_tensors="pt")["pixel_values"]
        return data_dict


def check_images_per_record(data_path: str, images_per_sample: int) -> None:
    """Every record names ``images_per_sample`` images (the recipe's ``max_length`` is sized for that many)."""
    for index, record in enumerate(read_llava_json(data_path)):
        count = len(llava_images(record))
        if count != images_per_sample or not isinstance(record["image"], list):
            raise DataError(data_path, None, f"record {index} ({record['id']}): {count} image(s), the recipe's "
                            f"dataset takes a list of {images_per_sample} per record "
                            "(build_stage1.py --variant separate)")


def widen_image_positions(record: dict, images: int, separator: list[int], data_path: str) -> dict:
    """The record's one image position made ``images`` positions joined by ``separator`` (labels: ignored)."""
    input_ids, labels = record["input_ids"], record["labels"]
    positions = [i for i, token in enumerate(input_ids) if token == IMAGE_TOKEN_INDEX]
    if len(positions) != 1:
        raise DataError(data_path, None, f"record {record.get('id')}: {len(positions)} image positions after encoding, "
                        "expected 1 (max_length too short to keep the image token?)")
    at = positions[0]
    block = [IMAGE_TOKEN_INDEX] + [token for _ in range(images - 1) for token in [*separator, IMAGE_TOKEN_INDEX]]
    return {"input_ids": input_ids[:at] + block + input_ids[at + 1:],
            "labels": labels[:at] + [IGNORE_INDEX] * len(block) + labels[at + 1:],
            "length": len(input_ids) + len(block) - 1}


def multi_image_collate_fn(instances, **kwargs):
    """XTuner's ``default_collate_fn`` for items with several images: every item's ``pixel_values`` concatenated
    along dim 0, in batch order, which is the order XTuner's ``prepare_inputs_labels_for_multimodal`` fills the
    image positions of the batch in. An item whose image positions and images differ in number would shift every
    later image into the wrong sample, so it is refused."""
    for index, item in enumerate(instances):
        positions = sum(1 for token in item["input_ids"] if token == IMAGE_TOKEN_INDEX)
        if positions != len(item["pixel_values"]):
            raise ValueError(f"batch item {index}: {positions} image positions but {len(item['pixel_values'])} "
                             "images (a multi-image item needs pixel_values of shape (images, 3, H, W))")
    batch = default_collate_fn([{k: v for k, v in item.items() if k != "pixel_values"} for item in instances],
                               **kwargs)
    data = batch if kwargs.get("return_hf_format") else batch["data"]
    data["pixel_values"] = torch.cat([item["pixel_values"] for item in instances])
    return batch
