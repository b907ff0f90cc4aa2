"""A trained retriever as ``eval/retrieve.py`` uses it: images and texts in, L2-normalised embeddings out.

``load_encoder`` builds the recipe's model exactly as training built it (``addressvlm.infer.build_recipe_model``),
loads the checkpoint with every tensor checked, and prepares inputs with the recipe's own ``inputs`` (the same prompts
and preprocessing as training, ``addressvlm.retrieval.dataset``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from addressvlm.infer import build_recipe_model, load_checked_state, resolve_checkpoint
from addressvlm.precision import default_device_dtype
from addressvlm.retrieval.dataset import collate_inputs


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
    ``cfg_options``: ``key=value`` strings or a dict, as training took them (e.g. ``runtime.model_root_options``)."""
    from xtuner.registry import BUILDER

    device, dtype = default_device_dtype(device)
    cfg, model = build_recipe_model(config, cfg_options, dtype)
    if not hasattr(model, "embed"):
        raise TypeError(f"{config} builds {type(model).__name__}, not a retriever (recipes/retrieval/)")
    if checkpoint is not None:
        load_checked_state(model, resolve_checkpoint(checkpoint))
    model.to(device=device, dtype=dtype).eval()  # one dtype: frozen and trained tensors meet in every layer
    inputs = BUILDER.build(cfg.train_dataloader.dataset.inputs)
    return Encoder(model.retriever_name, model, inputs, device)
