"""The project's LLaVA JSON, fed to MiniCPM-V 2.6: image slicing, image placeholders, Qwen2 chat turns, answer labels.

One record (``{"image", "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", ...}]}``)
becomes what MiniCPM-V's ``forward(data)`` reads:

- the image, resized so its patch grid covers about ``scale_resolution**2`` pixels (the "source"), and, when it
  is larger than that, also cut into a grid of up to ``max_slice_nums`` slices chosen to match its aspect ratio;
- in the first human turn, ``<image>`` replaced by the placeholder the model's processor writes:
  ``<image_id>0</image_id>`` (2.6's ``use_image_id``), ``<image>`` + ``<unk>`` x query_num + ``</image>`` for the source,
  then one ``<slice>`` + ``<unk>`` x query_num + ``</slice>`` per slice, grid rows separated by newlines;
- the conversation rendered with the tokenizer's own chat template (Qwen2's ``<|im_start|>role\\n...<|im_end|>``),
  labels only on the assistant answers and their ``<|im_end|>``;
- ``pixel_values`` (per image ``[3, patch, L * patch]``: patches laid side by side), ``tgt_sizes`` (patch grids) and
  ``image_bound`` (the ``<unk>`` spans the resampled image features replace).

The image settings are read from the model folder's ``preprocessor_config.json`` (the release's processor keys), so a
recipe names one model folder; ``max_slice_nums`` may be overridden per recipe. Slicing, placeholders and patch layout
are those of ``addressvlm/training/minicpmv_code/image_processing_minicpmv.py``, the processor code of the tiny
stand-in, which the engines serving the stand-in run too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset
from xtuner.registry import BUILDER

from addressvlm.core.records import DataError, read_llava_json
from addressvlm.training.minicpmv_code.image_processing_minicpmv import ImageSettings, encode_image
from addressvlm.training import xtuner_shims  # noqa: F401
from addressvlm.training.dataset import check_llava_inputs

IGNORE_INDEX = -100
ROLES = {"human": "user", "gpt": "assistant"}


def check_marker_tokens(tokenizer, settings: ImageSettings) -> None:
    """Every image marker must be one token, or the placeholders would not line up with the image features."""
    split = [t for t in settings.marker_tokens() if len(tokenizer.encode(t, add_special_tokens=False)) != 1]
    if split:
        raise ValueError(f"tokenizer splits MiniCPM-V image markers {split}: use the model folder's tokenizer")


def image_bounds(input_ids: torch.Tensor, tokenizer, settings: ImageSettings) -> torch.Tensor:
    """``[n, 2]`` ``[start, end)`` spans between each ``<image>``/``<slice>`` and its closing marker."""
    ids = tokenizer.convert_tokens_to_ids
    starts = torch.where((input_ids == ids(settings.im_start)) | (input_ids == ids(settings.slice_start)))[0] + 1
    ends = torch.where((input_ids == ids(settings.im_end)) | (input_ids == ids(settings.slice_end)))[0]
    if len(starts) != len(ends):
        raise ValueError(f"{len(starts)} image openings but {len(ends)} closings (truncated prompt?)")
    return torch.stack([starts, ends], dim=1) if len(starts) else torch.zeros((0, 2), dtype=torch.long)


def render_turns(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Token ids of ``messages`` in the tokenizer's chat template, and labels: the ids of each assistant answer up to
    and including its ``<|im_end|>``, IGNORE_INDEX elsewhere."""
    full = tokenizer.apply_chat_template(messages, tokenize=True)
    labels = [IGNORE_INDEX] * len(full)
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:k], tokenize=True, add_generation_prompt=True)
        start, stop = len(prompt), len(tokenizer.apply_chat_template(messages[:k + 1], tokenize=True))
        if full[:start] != prompt:
            raise ValueError("the chat template does not render a prefix of a conversation as a prefix of its tokens")
        answer_end = full.index(end_id, start) + 1 if end_id in full[start:stop] else stop
        labels[start:answer_end] = full[start:answer_end]
    return full, labels


def prompt_messages(conversations: list[dict], placeholder: str) -> list[dict]:
    """LLaVA turns -> chat messages, the first ``<image>`` replaced by ``placeholder`` (or put first if absent)."""
    messages = []
    for i, turn in enumerate(conversations):
        role = ROLES.get(turn.get("from"))
        if role is None:
            raise ValueError(f"turn {i}: 'from' must be 'human' or 'gpt', not {turn.get('from')!r}")
        messages.append({"role": role, "content": turn["value"]})
    first = messages[0]["content"]
    messages[0]["content"] = (first.replace("<image>", placeholder, 1) if "<image>" in first
                              else placeholder + "\n" + first)
    return messages


def encode_record(record: dict, image: Image.Image, tokenizer, settings: ImageSettings, max_length: int) -> dict:
    """One training example for MiniCPM-V's ``forward(data)``."""
    placeholder, pixel_values, tgt_sizes = encode_image(image, settings)
    input_ids, labels = render_turns(tokenizer, prompt_messages(record["conversations"], placeholder))
    if len(input_ids) > max_length:
        # Cutting inside an image span would leave features without placeholders: cut answers only.
        last_image_token = max(i for i, t in enumerate(input_ids)
                               if t in tokenizer.convert_tokens_to_ids([settings.im_end, settings.slice_end]))
        if last_image_token >= max_length:
            raise ValueError(f"image placeholders alone take {last_image_token + 1} tokens > max_length {max_length}: "
                             "lower max_slice_nums or raise max_length")
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    ids = torch.tensor(input_ids, dtype=torch.long)
    return {"input_ids": ids, "labels": torch.tensor(labels, dtype=torch.long),
            "position_ids": torch.arange(len(ids)), "pixel_values": pixel_values, "tgt_sizes": tgt_sizes,
            "image_bound": image_bounds(ids, tokenizer, settings)}


def encode_question(question: str, image: Image.Image, tokenizer, settings: ImageSettings) -> dict:
    """A single-turn prompt (ending in the assistant header) for ``generate``: the same placeholders and template as
    training."""
    placeholder, pixel_values, tgt_sizes = encode_image(image, settings)
    messages = prompt_messages([{"from": "human", "value": question}], placeholder)
    ids = torch.tensor(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True))
    return {"input_ids": ids, "pixel_values": pixel_values, "tgt_sizes": tgt_sizes,
            "image_bound": image_bounds(ids, tokenizer, settings)}


class MiniCPMVDataset(Dataset):
    """LLaVA JSON (the stage-1 and stage-2 files) as MiniCPM-V training examples, encoded on access.

    Args:
        data_path, image_folder: the LLaVA JSON and the folder its image paths are relative to (checked at start).
        tokenizer: the model folder's tokenizer (a config dict is built).
        model_path: the MiniCPM-V folder; its ``preprocessor_config.json`` gives the image settings.
        max_length: token budget per example, image placeholders included.
        max_slice_nums: overrides the processor's slice cap.
    """

    def __init__(self, data_path: str, image_folder: str, tokenizer, model_path: str, max_length: int = 2048,
                 max_slice_nums: int | None = None):
        check_llava_inputs(data_path, image_folder)
        self.records = read_llava_json(data_path)
        without_image = [r.get("id", i) for i, r in enumerate(self.records) if "image" not in r]
        if without_image:
            raise DataError(data_path, None, f"MiniCPM-V stage data needs an image per record; none in "
                                             f"{without_image[:5]}")
        self.image_folder = Path(image_folder)
        self.tokenizer = BUILDER.build(tokenizer) if isinstance(tokenizer, dict) else tokenizer
        self.settings = ImageSettings.from_model_dir(model_path, max_slice_nums)
        check_marker_tokens(self.tokenizer, self.settings)
        self.max_length = max_length
        self.data_path = data_path

    def __len__(self) -> int:
        return len(self.records)

    @property
    def modality_length(self) -> list[int]:
        """Length estimates for ``LengthGroupedSampler`` (positive: every example has an image): answer and question
        words plus the source image's placeholder; slices are not counted (that would open every image)."""
        return [sum(len(t["value"].split()) for t in r["conversations"]) + self.settings.query_num + 2
                for r in self.records]

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        with Image.open(self.image_folder / record["image"]) as image:
            try:
                return encode_record(record, image.convert("RGB"), self.tokenizer, self.settings, self.max_length)
            except ValueError as error:
                raise DataError(self.data_path, None, f"record {record.get('id', index)}: {error}") from error


def minicpmv_collate_fn(instances: Sequence[dict], pad_index: int = 0) -> dict:
    """Right-pad token tensors; keep images as per-sample lists (their sizes differ). mmengine's layout:
    ``{"data": ..., "data_samples": None}``."""
    def pad(key, value):
        return pad_sequence([x[key] for x in instances], batch_first=True, padding_value=value)

    lengths = torch.tensor([len(x["input_ids"]) for x in instances])
    data = {
        "input_ids": pad("input_ids", pad_index),
        "labels": pad("labels", IGNORE_INDEX),
        "position_ids": pad("position_ids", 0),
        "attention_mask": torch.arange(int(lengths.max()))[None, :] < lengths[:, None],
        "pixel_values": [x["pixel_values"] for x in instances],
        "tgt_sizes": [x["tgt_sizes"] for x in instances],
        "image_bound": [x["image_bound"] for x in instances],
    }
    return {"data": data, "data_samples": None}
