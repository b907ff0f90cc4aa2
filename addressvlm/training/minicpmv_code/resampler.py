"""The stand-in's resampler, with the import structure of the release's ``resampler.py``.

Like the release, this file takes what it needs from ``from torch.nn.functional import *`` and annotates with
``List``, which it never imports: that name came from torch.nn.functional in the torch the release was written for.
Under torch 2.14 it does not, and importing this file fails unless ``addressvlm.training.remote_code.hub_code_names``
lends it. Keep it that way: it is what makes the tests meet the release's import failure.
"""
from typing import Optional, Tuple  # noqa: F401  (the release imports these, and not List)

import torch
from torch import nn
from torch.nn.functional import *  # noqa: F401,F403


def sincos_grid(dim: int, height: int, width: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """``[height, width, dim]`` fixed 2-D sine-cosine positions, as the release's resampler builds them: the first half
    of the channels encodes the column, the second the row, each as the sines then the cosines of the position times
    ``dim / 4`` geometric frequencies (``dim`` a multiple of 4)."""
    quarter = dim // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32, device=device) / quarter)

    def encoded(length: int) -> torch.Tensor:
        angles = torch.arange(length, dtype=torch.float32, device=device)[:, None] * frequencies
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    columns, rows = encoded(width), encoded(height)
    return torch.cat([columns[None].expand(height, width, 2 * quarter),
                      rows[:, None].expand(height, width, 2 * quarter)], dim=-1)


class Resampler(nn.Module):
    """``num_queries`` learned queries attend to each view's patch features (keys carry their 2-D positions); the
    release's parameters, and its one head per 128 channels."""

    def __init__(self, num_queries: int, embed_dim: int, num_heads: int, kv_dim: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(num_queries, embed_dim) * 0.02)
        self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False)
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.ln_q = nn.LayerNorm(embed_dim, eps=1e-6)
        self.ln_kv = nn.LayerNorm(embed_dim, eps=1e-6)
        self.ln_post = nn.LayerNorm(embed_dim, eps=1e-6)
        self.proj = nn.Parameter(torch.randn(embed_dim, embed_dim) * embed_dim ** -0.5)

    def forward(self, features: torch.Tensor, tgt_sizes: List[torch.Tensor]) -> torch.Tensor:  # noqa: F405
        """``features`` ``[views, L, kv_dim]`` (each view's ``rows * cols`` patches first, then padding), ``tgt_sizes``
        the views' patch grids -> ``[views, queries, dim]``."""
        keys = self.ln_kv(self.kv_proj(features))
        positions = torch.zeros_like(keys)
        padding = torch.ones(keys.shape[:2], dtype=torch.bool, device=keys.device)
        for view, (height, width) in enumerate((int(h), int(w)) for h, w in tgt_sizes):
            grid = sincos_grid(keys.shape[-1], height, width, keys.device)
            positions[view, :height * width] = grid.reshape(height * width, -1).to(keys.dtype)
            padding[view, :height * width] = False
        query = self.ln_q(self.query)[None].expand(len(keys), -1, -1)
        out, _ = self.attn(query, keys + positions, keys, key_padding_mask=padding, need_weights=False)
        return self.ln_post(out) @ self.proj
