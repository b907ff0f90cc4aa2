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


def sincos_2d(dim: int, height: int, width: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """``[height * width, dim]`` fixed 2-D sine-cosine positions (half the channels per axis), row-major."""
    quarter = dim // 4
    frequencies = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32, device=device) / quarter))
    rows = torch.arange(height, dtype=torch.float32, device=device)[:, None] * frequencies
    cols = torch.arange(width, dtype=torch.float32, device=device)[:, None] * frequencies
    row_part = torch.cat([rows.sin(), rows.cos()], dim=1)[:, None, :].expand(height, width, 2 * quarter)
    col_part = torch.cat([cols.sin(), cols.cos()], dim=1)[None, :, :].expand(height, width, 2 * quarter)
    positions = torch.cat([row_part, col_part], dim=-1).reshape(height * width, 4 * quarter)
    return nn.functional.pad(positions, (0, dim - 4 * quarter))


class Resampler(nn.Module):
    """``num_queries`` learned queries attend to one image's patch features (keys carry their 2-D positions)."""

    def __init__(self, num_queries: int, embed_dim: int, num_heads: int, kv_dim: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(num_queries, embed_dim) * 0.02)
        self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False)
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.ln_q = nn.LayerNorm(embed_dim, eps=1e-6)
        self.ln_kv = nn.LayerNorm(embed_dim, eps=1e-6)
        self.ln_post = nn.LayerNorm(embed_dim, eps=1e-6)
        self.proj = nn.Parameter(torch.randn(embed_dim, embed_dim) * embed_dim ** -0.5)

    def forward(self, features: torch.Tensor, tgt_size: List[int]) -> torch.Tensor:  # noqa: F405
        """``features`` ``[patches, kv_dim]`` of one image whose patch grid is ``tgt_size`` -> ``[queries, dim]``."""
        keys = self.ln_kv(self.kv_proj(features))
        height, width = (int(v) for v in tgt_size)
        positions = sincos_2d(keys.shape[-1], height, width, keys.device).to(keys.dtype)
        query = self.ln_q(self.query)
        out, _ = self.attn(query[None], (keys + positions)[None], keys[None], need_weights=False)
        return self.ln_post(out[0]) @ self.proj
