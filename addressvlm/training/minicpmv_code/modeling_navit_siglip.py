"""The stand-in's vision tower: SigLIP run NaViT-style, as the release's ``modeling_navit_siglip.py`` runs it.

The views of a batch (of any patch grids) go through SigLIP as one padded batch: each view's patches laid side by side
(``[3, patch, L * patch]``, padded at the end), a patch attention mask that hides the padding from attention, and
positions bucketed from each patch's fractional place in its own grid onto SigLIP's square position table (so a view of
any shape reads the table as a stretched copy of itself). vLLM's MiniCPM-V computes its vision tower in the same way
(``Idefics2VisionTransformer`` with ``tgt_sizes``), so the stand-in's answers there are those it gives here.

Parameter names are transformers' SigLIP vision transformer's (``embeddings.patch_embedding``,
``encoder.layers.N.self_attn.q_proj``, ``post_layernorm``), as in the release.
"""
import torch
from transformers.modeling_attn_mask_utils import _prepare_4d_attention_mask
from transformers.models.siglip.modeling_siglip import SiglipVisionTransformer


def bucketed_position_ids(tgt_sizes: torch.Tensor, length: int, side: int) -> torch.Tensor:
    """``[views, length]`` rows of SigLIP's ``side x side`` position table for each view's patches (row-major in its
    ``tgt_sizes`` grid): each patch's fractional row and column, bucketed into ``side`` equal bins; 0 past the view."""
    boundaries = torch.arange(1 / side, 1.0, 1 / side, device=tgt_sizes.device)
    index = torch.arange(length, device=tgt_sizes.device)[None]
    rows, cols = tgt_sizes[:, :1].clamp(min=1), tgt_sizes[:, 1:].clamp(min=1)
    row = torch.bucketize((index // cols) / rows, boundaries, right=True)
    col = torch.bucketize((index % cols) / cols, boundaries, right=True)
    return torch.where(index < rows * cols, row * side + col, 0)


class NaViTSiglipVisionTransformer(SiglipVisionTransformer):
    def forward(self, pixel_values: torch.Tensor, patch_attention_mask: torch.Tensor,
                tgt_sizes: torch.Tensor) -> torch.Tensor:
        """``pixel_values`` ``[views, 3, patch, L * patch]``, ``patch_attention_mask`` ``[views, 1, L]`` (True on each
        view's own patches), ``tgt_sizes`` ``[views, 2]`` patch grids -> ``[views, L, hidden]`` after the final norm."""
        embeddings = self.embeddings
        patches = embeddings.patch_embedding(pixel_values.to(embeddings.patch_embedding.weight.dtype))
        hidden = patches.flatten(2).transpose(1, 2)
        side = self.config.image_size // self.config.patch_size
        hidden = hidden + embeddings.position_embedding(bucketed_position_ids(tgt_sizes, hidden.shape[1], side))
        mask = _prepare_4d_attention_mask(patch_attention_mask.flatten(1), hidden.dtype)
        hidden = self.encoder(inputs_embeds=hidden, attention_mask=mask).last_hidden_state
        return self.post_layernorm(hidden)
