"""A trained retriever as ``eval/retrieve.py`` uses it: images and texts in, L2-normalised embeddings out.

``load_encoder`` builds the recipe's model exactly as training built it
(``addressvlm.training.checkpoints.build_recipe_model``), loads the checkpoint with every tensor checked, and prepares
inputs with the recipe's own ``inputs`` (the same prompts and preprocessing as training,
``addressvlm.training.retrieval_dataset``). ``random_release_encoder`` builds the same retriever around the published
architectures at random weights: what a tile costs to embed, without a download.
``time_gallery_embedding`` measures that cost, batched against one tile at a time.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

import torch

from addressvlm.releases.shapes import build_release_model, release_config
from addressvlm.releases.tokenizer import train_tokenizer
from addressvlm.training.checkpoints import build_recipe_model, build_trained_model
from addressvlm.training.precision import default_device_dtype
from addressvlm.training.recipes import parse_cfg_options, read_recipe
from addressvlm.training.retrieval_dataset import DEFAULT_PROMPTS, collate_inputs


class Encoder:
    """Embeds street views (``role="query"``), satellite tiles (``role="gallery"``) and texts into one space:
    ``[N, D]`` float32 CPU tensors with unit rows."""

    def __init__(self, name: str, model: torch.nn.Module, inputs, device: torch.device):
        self.name, self.model, self.inputs, self.device = name, model, inputs, device

    @torch.no_grad()
    def _embed(self, items: list[dict]) -> torch.Tensor:
        from mmengine.utils import apply_to

        batch = apply_to(collate_inputs(items), lambda x: isinstance(x, torch.Tensor), lambda x: x.to(self.device))
        return self.model.embed(batch).float().cpu()

    def _batched(self, make, values: Sequence, batch_size: int) -> torch.Tensor:
        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size} must be at least 1")
        chunks = [self._embed([make(v) for v in values[i:i + batch_size]]) for i in range(0, len(values), batch_size)]
        return torch.cat(chunks) if chunks else torch.zeros(0, 0)

    def embed_images(self, paths: Sequence[str | os.PathLike], role: str, batch_size: int = 16) -> torch.Tensor:
        return self._batched(lambda path: self.inputs.image(Path(path), role), list(paths), batch_size)

    def embed_texts(self, texts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
        return self._batched(self.inputs.text, list(texts), batch_size)


def load_encoder(config: str, checkpoint: str | None = None, cfg_options=None,
                 device: str | None = None) -> Encoder:
    """The retriever of recipe ``config`` with ``checkpoint`` (an ``iter_N.pth``, a DeepSpeed folder or a work_dir,
    as ``eval/infer.py`` resolves them) loaded, or untrained (the released weights, fresh LoRA) when it is None.
    ``cfg_options``: ``key=value`` strings or a dict, as training took them (e.g. ``recipes.model_root_options``)."""
    read_recipe(config, retrieval=True)  # a recipe of another kind is refused before anything is built
    device, dtype = default_device_dtype(device)
    cfg, model = (build_recipe_model(config, cfg_options, dtype) if checkpoint is None
                  else build_trained_model(config, checkpoint, cfg_options, dtype))
    from xtuner.registry import BUILDER

    return _ready(model, BUILDER.build(cfg.train_dataloader.dataset.inputs), device, dtype)


def random_release_encoder(config: str, cfg_options=None, device: str | None = None) -> Encoder:
    """The retriever of recipe ``config`` around the published architectures (``addressvlm/releases/release_configs/``:
    CLIP ViT-L/14-336, and Phi-3-mini for the LVLM retriever) at random weights, for timing: its embeddings mean
    nothing. Images are prepared as the release prepares them (336 px); the tokenizer is a small local one in the
    release's chat format, so a tile's prompt (a few dozen tokens beside the LVLM's 576 image tokens) is close to, not
    exactly, the release's length, and texts are not tokenised as the release would."""
    from transformers import CLIPImageProcessor

    device, dtype = default_device_dtype(device)
    cfg = read_recipe(config, retrieval=True)  # refused before gigabytes of random weights are built
    cfg.merge_from_dict(parse_cfg_options(cfg_options))
    model = build_release_model(cfg, device, dtype)
    size = release_config("clip_vit_large_patch14_336")["image_size"]
    spec = dict(cfg.train_dataloader.dataset.inputs)
    make_inputs = spec.pop("type")
    inputs = make_inputs(**{**spec, "tokenizer": train_tokenizer(DEFAULT_PROMPTS.values(), 512),
                            "image_processor": CLIPImageProcessor(size={"shortest_edge": size},
                                                                  crop_size={"height": size, "width": size})})
    return _ready(model, inputs, device, dtype)


def _ready(model: torch.nn.Module, inputs, device: torch.device, dtype: torch.dtype) -> Encoder:
    model.to(device=device, dtype=dtype).eval()  # one dtype: frozen and trained tensors meet in every layer
    return Encoder(model.retriever_name, model, inputs, device)


PROJECTED_TILES = (10_000, 100_000)


def time_gallery_embedding(encoder: Encoder, paths: Sequence[str | os.PathLike], batch_size: int,
                           rounds: int = 2) -> dict:
    """Gallery tiles embedded per second in batches of ``batch_size`` (``embed_images``' batched path) and one tile
    at a time (the naive loop), image loading and preprocessing included. The two take turns, each going first in
    alternate rounds, so a load that comes and goes falls on both; the best round of each is kept. Also the largest
    difference between the two ways' embeddings (padding or masking that leaks across a batch shows here), and the
    wall time projected from the throughput for 10K and 100K tiles."""
    if rounds < 1 or not paths:
        raise ValueError(f"need at least one round and one tile, got {rounds} round(s) and {len(paths)} tile(s)")
    encoder.embed_images(paths[:1], role="gallery", batch_size=1)  # first-call set-up is not the steady cost
    ways = {"batched": batch_size, "one_at_a_time": 1}
    seconds = {way: [] for way in ways}
    embeddings = {}
    for round_index in range(rounds):
        for way in (list(ways) if round_index % 2 == 0 else list(ways)[::-1]):
            started = time.perf_counter()
            embeddings[way] = encoder.embed_images(paths, role="gallery", batch_size=ways[way])
            seconds[way].append(time.perf_counter() - started)
    out = {"encoder": encoder.name, "device": str(encoder.device),
           "dtype": str(next(encoder.model.parameters()).dtype).removeprefix("torch."),
           "threads": torch.get_num_threads(), "tiles": len(paths), "batch_size": batch_size, "rounds": rounds,
           "embedding_dim": embeddings["batched"].shape[1]}
    for way in ways:
        best = min(seconds[way])
        out[way] = {"seconds": round(best, 6), "tiles_per_s": float(f"{len(paths) / best:.4g}"),
                    "projected_seconds": {str(n): round(n * best / len(paths), 1) for n in PROJECTED_TILES}}
    out["batched_over_one_at_a_time"] = round(out["batched"]["tiles_per_s"] / out["one_at_a_time"]["tiles_per_s"], 3)
    out["max_abs_difference"] = float((embeddings["batched"] - embeddings["one_at_a_time"]).abs().max())
    return out
