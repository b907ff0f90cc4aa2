"""Training pairs for the retrievers: each query of a split (a street view or a scene text) with its positive
satellite tile, read from ``<city>/retrieval/{gallery,queries}.jsonl`` (``addressvlm.core.records``), and the model
inputs each retriever needs, built the same way for training and for ``encoders.Encoder``.

An *inputs* object turns one image or one text into tensors (``image(path, role)``, ``text(text)``); a recipe
declares it once (``train_dataloader.dataset.inputs``) and the encoder builds the same one, so a trained model is
always prompted and preprocessed as it was trained.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import Dataset
from xtuner.utils import IMAGE_TOKEN_INDEX

from addressvlm.core.records import DataError, RETRIEVAL_QUERY_KINDS, read_gallery, read_retrieval_queries
from addressvlm.training.image_prompts import image_preprocessor, split_at_image
from addressvlm.training.inputs import MissingInputError

ROLES = ("query", "gallery")
# NGCG's prompts, after E5-V's "<image>\nSummarize above image in one word:", one per view. The two image prompts
# name the view, since a street view and a satellite tile of one place look nothing alike and the model should know
# which it reads; all three end alike, so the last token is asked the same question: one word for the place.
DEFAULT_PROMPTS = {
    "query": "<image>\nSummarize the above street view in one word:",
    "gallery": "<image>\nSummarize the above satellite image in one word:",
    "text": "<sentence>\nSummarize the above scene description in one word:",
}
TEXT_SLOT = "<sentence>"


def _build(spec):
    from xtuner.registry import BUILDER

    return BUILDER.build(spec) if isinstance(spec, dict) else spec


class LVLMRetrievalInputs:
    """LLaVA inputs: the role's prompt in the recipe's chat template (the assistant turn opened, so the last token is
    where the one-word answer would start), the image as ``LLaVADataset`` preprocesses it. A long description is
    cut to ``max_text_tokens`` before the prompt's tail, which is never cut: it holds the token that embeds."""

    def __init__(self, tokenizer, image_processor, prompt_template: dict, prompts: dict | None = None,
                 pad_image_to_square: bool = True, max_text_tokens: int = 512):
        from xtuner.dataset.utils import get_bos_eos_token_ids

        self.tokenizer = _build(tokenizer)
        self.preprocess = image_preprocessor(_build(image_processor), pad_image_to_square)
        self.prompts = {**DEFAULT_PROMPTS, **(prompts or {})}
        if set(self.prompts) != set(DEFAULT_PROMPTS):
            raise ValueError(f"prompts for {sorted(self.prompts)}; expected {sorted(DEFAULT_PROMPTS)}")
        self.instruction = prompt_template["INSTRUCTION"]
        self.bos_ids = get_bos_eos_token_ids(self.tokenizer)[0]
        self.max_text_tokens = max_text_tokens

    def _framed(self, prompt: str) -> str:
        return self.instruction.format(input=prompt, round=1)

    def image(self, path: str | Path, role: str) -> dict:
        if role not in ROLES:
            raise ValueError(f"role {role!r} not in {ROLES}")
        before, after = split_at_image(self.tokenizer, self._framed(self.prompts[role]), self.bos_ids)
        return {"input_ids": torch.tensor(before + [IMAGE_TOKEN_INDEX] + after), "pixel_values": self.preprocess(path)}

    def text(self, text: str) -> dict:
        before, slot, after = self._framed(self.prompts["text"]).partition(TEXT_SLOT)
        if not slot:
            raise ValueError(f"the text prompt needs {TEXT_SLOT}: {self.prompts['text']!r}")
        encode = lambda s: self.tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
        ids = list(self.bos_ids) + encode(before) + encode(text)[:self.max_text_tokens] + encode(after)
        return {"input_ids": torch.tensor(ids)}


class CLIPRetrievalInputs:
    """CLIP inputs: images through CLIP's processor (street views and tiles alike: one shared image tower), texts
    tokenised up to ``max_text_tokens`` (the model's extended ``text_positions``), not CLIP's 77."""

    def __init__(self, tokenizer, image_processor, max_text_tokens: int = 300):
        self.tokenizer = _build(tokenizer)
        self.preprocess = image_preprocessor(_build(image_processor), pad_to_square=False)
        self.max_text_tokens = max_text_tokens

    def image(self, path: str | Path, role: str) -> dict:
        if role not in ROLES:
            raise ValueError(f"role {role!r} not in {ROLES}")
        return {"pixel_values": self.preprocess(path)}

    def text(self, text: str) -> dict:
        ids = self.tokenizer(text, truncation=True, max_length=self.max_text_tokens)["input_ids"]
        return {"input_ids": torch.tensor(ids)}


def collate_inputs(items: Sequence[dict]) -> dict:
    """One batch from ``image``/``text`` outputs: ``input_ids`` right-padded with 0 and ``attention_mask`` over the
    items that have token ids (``text_rows``), ``pixel_values`` stacked over those with an image (``image_rows``),
    both in item order."""
    text_rows = [i for i, item in enumerate(items) if "input_ids" in item]
    image_rows = [i for i, item in enumerate(items) if "pixel_values" in item]
    batch = {"text_rows": torch.tensor(text_rows, dtype=torch.long),
             "image_rows": torch.tensor(image_rows, dtype=torch.long),
             "input_ids": None, "attention_mask": None, "pixel_values": None}
    if text_rows:
        length = max(len(items[i]["input_ids"]) for i in text_rows)
        batch["input_ids"] = torch.zeros(len(text_rows), length, dtype=torch.long)
        batch["attention_mask"] = torch.zeros(len(text_rows), length, dtype=torch.long)
        for row, i in enumerate(text_rows):
            ids = items[i]["input_ids"]
            batch["input_ids"][row, :len(ids)] = ids
            batch["attention_mask"][row, :len(ids)] = 1
    if image_rows:
        batch["pixel_values"] = torch.stack([items[i]["pixel_values"] for i in image_rows])
    return batch


def retrieval_collate_fn(instances: Sequence[dict]) -> dict:
    """The ``collate_fn`` of a retrieval recipe: ``{"data": {"queries", "positives", "tiles"}}`` for the model."""
    return {"data": {"queries": collate_inputs([x["query"] for x in instances]),
                     "positives": collate_inputs([x["positive"] for x in instances]),
                     "tiles": torch.tensor([x["tile"] for x in instances], dtype=torch.long)},
            "data_samples": None}


def retrieval_files(city_root: str | Path) -> tuple[Path, Path]:
    """``(gallery.jsonl, queries.jsonl)`` of a city root, refusing to go on without them."""
    folder = Path(city_root) / "retrieval"
    paths = folder / "gallery.jsonl", folder / "queries.jsonl"
    for path in paths:
        if not path.is_file():
            raise MissingInputError(f"retrieval file {path} not found: build it with "
                                    f"python datasets_prep/build_retrieval.py --city {city_root} (docs/retrieval.md)")
    return paths


class RetrievalPairDataset(Dataset):
    """Every query of ``split`` whose kind is in ``query_kinds`` with its positive tile, as model inputs.

    Args: ``data_root`` (the city root), ``inputs`` (an inputs object or its config dict), ``split``,
    ``query_kinds`` ("image": street view -> satellite, "text": scene text -> satellite; both by default).
    """

    def __init__(self, data_root: str, inputs, split: str = "train", query_kinds: Sequence[str] = RETRIEVAL_QUERY_KINDS):
        unknown = sorted(set(query_kinds) - set(RETRIEVAL_QUERY_KINDS))
        if unknown or not query_kinds:
            raise ValueError(f"query_kinds {list(query_kinds)}: choose from {RETRIEVAL_QUERY_KINDS}")
        self.root = Path(data_root)
        gallery_path, queries_path = retrieval_files(self.root)
        gallery = read_gallery(gallery_path)
        self.tiles = {tile["tile"]: tile for tile in gallery}
        self.tile_index = {tile["tile"]: i for i, tile in enumerate(gallery)}
        self.queries = [q for q in read_retrieval_queries(queries_path, gallery)
                        if q["split"] == split and q["kind"] in query_kinds]
        if not self.queries:
            raise DataError(queries_path, None, f"no {'/'.join(query_kinds)} queries in split {split!r}")
        missing = sorted({str(self.root / path) for path in self._images() if not (self.root / path).is_file()})
        if missing:
            raise DataError(queries_path, None, f"{len(missing)} image(s) missing, first: {missing[:5]}")
        self.inputs = _build(inputs)

    def _images(self):
        for query in self.queries:
            if query["image"] is not None:
                yield query["image"]
            yield self.tiles[query["tile"]]["image"]

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, index: int) -> dict:
        query = self.queries[index]
        if query["kind"] == "image":
            encoded = self.inputs.image(self.root / query["image"], "query")
        else:
            encoded = self.inputs.text(query["text"])
        tile = self.tiles[query["tile"]]
        return {"query": encoded, "positive": self.inputs.image(self.root / tile["image"], "gallery"),
                "tile": self.tile_index[query["tile"]]}
