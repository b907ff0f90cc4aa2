"""The image token and how a question around it is split and encoded, as XTuner's LLaVA datasets train it: shared by
answering, the retrieval datasets and the tokenization check.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image


IMAGE_TOKEN = "<image>"


def question_text(question: str) -> str:
    """A question's text as it follows the image in a prompt: stripped, any image token of its own removed."""
    return question.replace(IMAGE_TOKEN, "").strip()


def image_turn(question: str) -> str:
    """The user turn as training wrote it (XTuner's ``llava_map_fn``): the image token, a newline, the text."""
    return IMAGE_TOKEN + "\n" + question_text(question)


def split_at_image(tokenizer, text: str, bos_ids: Sequence[int] = ()) -> tuple[list[int], list[int]]:
    """Token ids before and after the single image token of ``text``, each side encoded on its own as XTuner's
    ``encode_fn`` does (so no token straddles the image)."""
    before, image, after = text.partition(IMAGE_TOKEN)
    if not image or IMAGE_TOKEN in after:
        raise ValueError(f"a prompt needs exactly one {IMAGE_TOKEN}: {text!r}")
    encode = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    return list(bos_ids) + encode(before), encode(after)


def padding_colour(image_mean) -> tuple[int, ...]:
    """The colour training padded images to a square with: the image processor's mean, as XTuner's LLaVADataset."""
    return tuple(int(x * 255) for x in image_mean)


def export_pad_colour(folder: str | os.PathLike) -> tuple[int, ...] | None:
    """The colour to pad images to a square with before a folder ``tools/export_hf.py`` wrote sees them (its
    processor does not pad; training did, where the config says ``image_aspect_ratio="pad"``), or None."""
    folder = Path(folder)
    if json.loads((folder / "config.json").read_text()).get("image_aspect_ratio") != "pad":
        return None
    return padding_colour(json.loads((folder / "preprocessor_config.json").read_text())["image_mean"])


def image_preprocessor(image_processor, pad_to_square: bool):
    """PIL image or path -> ``[3, H, W]`` pixels, as ``LLaVADataset`` prepares them."""
    from xtuner.dataset.utils import expand2square

    background = padding_colour(image_processor.image_mean)

    def preprocess(image) -> torch.Tensor:
        if not isinstance(image, Image.Image):
            image = Image.open(image)
        image = image.convert("RGB")
        if pad_to_square:
            image = expand2square(image, background)
        return image_processor.preprocess(image, return_tensors="pt")["pixel_values"][0]

    return preprocess


# --------------------------------------------------------------------------------------------- XTuner checkpoints
