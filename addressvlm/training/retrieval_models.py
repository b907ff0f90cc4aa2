"""The two cross-view retrievers (docs/retrieval.md), mmengine models that ``xtuner train`` trains from a recipe.

- ``LVLMRetriever``: LLaVA-Phi3-mini turned retriever, as NGCG ("Turning Generators into Retrievers") turns an MLLM:
  LoRA on the LLM (and on CLIP), and the embedding of an input is the last hidden state of a summarising prompt's last
  token ("... Summarize the above street view in one word:", then the assistant turn opens), or the mean over all
  tokens (``pooling="mean"``, the ablation NGCG reports). It is ``AddressLLaVAModel``, so the backbone, projector,
  LoRA placement and dtypes are built and checked exactly as the AddressVLM recipes build them.
- ``CLIPDualEncoder``: CrossText2Loc's baseline, a CLIP image tower and text tower fine-tuned contrastively, with
  the text position embeddings extended past CLIP's 77 tokens for long scene descriptions. Street views and satellite
  tiles share the one image tower (CLIP has one; two views of one place are matched in one space).

Both train with symmetric InfoNCE over in-batch negatives and a learnable temperature, optionally widened by a memory
bank of earlier batches' embeddings (``bank_size``): a small batch gives few negatives, and stored ones cost no
backward pass. A batch is ``{"queries", "positives"}`` (``addressvlm.training.retrieval_dataset.collate_inputs`` each)
and
``tiles``, the positive tile's index per pair: pairs that share a tile are not each other's negatives.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from torch import nn
from xtuner.utils import IMAGE_TOKEN_INDEX

from addressvlm.training.inputs import require_model_folder
from addressvlm.training.model import AddressLLaVAModel

POOLINGS = ("last", "mean")


def symmetric_info_nce(queries: torch.Tensor, positives: torch.Tensor, logit_scale: torch.Tensor,
                       tiles: torch.Tensor, bank_queries: torch.Tensor | None = None,
                       bank_positives: torch.Tensor | None = None, bank_tiles: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """Mean of the query -> positive and positive -> query cross-entropies over cosine similarities times
    ``exp(logit_scale)``; pair i's positive is column i. Other columns of the same tile (two street views of one
    location in a batch, or a stored copy in the bank) are masked out rather than pushed away. The bank, when given,
    adds columns: stored positives for the queries, stored queries for the positives."""
    scale = logit_scale.exp()
    same = tiles[:, None] == tiles[None, :]
    own = torch.eye(len(tiles), dtype=torch.bool, device=tiles.device)
    losses = []
    for rows, columns, bank in ((queries, positives, bank_positives), (positives, queries, bank_queries)):
        logits = scale * rows @ columns.t()
        masked = same & ~own
        if bank is not None and len(bank):
            logits = torch.cat([logits, scale * rows @ bank.t()], dim=1)
            masked = torch.cat([masked, tiles[:, None] == bank_tiles[None, :]], dim=1)
        logits = logits.masked_fill(masked, float("-inf"))
        losses.append(F.cross_entropy(logits, torch.arange(len(tiles), device=logits.device)))
    return (losses[0] + losses[1]) / 2


class ContrastiveHead(nn.Module):
    """The learnable temperature (CLIP's log-scale parameter, clamped so the scale stays in [1, ``max_scale``]) and
    the memory bank: the last ``bank_size`` pairs' embeddings, detached, used as extra negatives. The bank is not
    saved (a resumed run refills it within ``bank_size / batch`` steps)."""

    def __init__(self, temperature: float = 0.07, max_scale: float = 100.0, bank_size: int = 0, dim: int = 0):
        super().__init__()
        if not 0 < temperature <= 1:
            raise ValueError(f"temperature {temperature} must be in (0, 1]")
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / temperature)))
        self.max_log_scale = math.log(max_scale)
        self.bank_size = bank_size
        self.register_buffer("bank_queries", torch.zeros(0, dim), persistent=False)
        self.register_buffer("bank_positives", torch.zeros(0, dim), persistent=False)
        self.register_buffer("bank_tiles", torch.zeros(0, dtype=torch.long), persistent=False)

    def forward(self, queries: torch.Tensor, positives: torch.Tensor, tiles: torch.Tensor) -> torch.Tensor:
        log_scale = self.logit_scale.clamp(0, self.max_log_scale)
        use_bank = self.bank_size > 0 and self.training
        loss = symmetric_info_nce(queries, positives, log_scale, tiles,
                                  *((self.bank_queries, self.bank_positives, self.bank_tiles) if use_bank else ()))
        if use_bank:
            keep = self.bank_size
            self.bank_queries = torch.cat([queries.detach().float(), self.bank_queries])[:keep]
            self.bank_positives = torch.cat([positives.detach().float(), self.bank_positives])[:keep]
            self.bank_tiles = torch.cat([tiles, self.bank_tiles])[:keep]
        return loss


def pool_hidden(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """``[B, L, D]`` right-padded hidden states -> ``[B, D]``: the last real token's, or the mean over real tokens."""
    if pooling == "last":
        return hidden[torch.arange(len(hidden), device=hidden.device), mask.sum(dim=1) - 1]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1)


def splice_images(embed_tokens: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  image_features: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token embeddings with each image token replaced by its image's features, right-padded: ``(embeds, mask)``.
    Rows holding an image token take ``image_features`` in order; rows without one (text prompts) take none, which
    is why XTuner's ``prepare_inputs_labels_for_multimodal`` (one image per row) is not used."""
    rows, next_image = [], 0
    for ids in (row[keep.bool()] for row, keep in zip(input_ids, attention_mask)):
        at = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
        if len(at) > 1:
            raise ValueError(f"a retrieval prompt holds at most one image token, got {len(at)}")
        if not at:
            rows.append(embed_tokens(ids))
            continue
        if image_features is None or next_image >= len(image_features):
            raise ValueError("more image tokens in the batch than images")
        before, after = embed_tokens(ids[:at[0]]), embed_tokens(ids[at[0] + 1:])
        rows.append(torch.cat([before, image_features[next_image].to(before.dtype), after]))
        next_image += 1
    if image_features is not None and next_image != len(image_features):
        raise ValueError(f"{len(image_features)} images for {next_image} image tokens")
    length = max(len(r) for r in rows)
    embeds = rows[0].new_zeros(len(rows), length, rows[0].shape[-1])
    mask = torch.zeros(len(rows), length, dtype=torch.long, device=embeds.device)
    for i, row in enumerate(rows):
        embeds[i, :len(row)] = row
        mask[i, :len(row)] = 1
    return embeds, mask


class RetrieverMixin:
    """``forward`` for both retrievers: ``mode="loss"`` embeds queries and positives and returns the InfoNCE loss,
    ``mode="tensor"`` returns the two embedding matrices. Subclasses define ``embed`` (L2-normalised rows)."""

    contrastive: ContrastiveHead

    def forward(self, data: dict, data_samples=None, mode: str = "loss"):
        queries, positives = self.embed(data["queries"]), self.embed(data["positives"])
        if mode == "tensor":
            return queries, positives
        if mode != "loss":
            raise NotImplementedError(f"mode {mode!r}: a retriever trains (loss) or embeds (tensor)")
        loss = self.contrastive(queries, positives, data["tiles"])
        return {"loss": loss, "temperature": 1 / self.contrastive.logit_scale.detach().clamp(
            0, self.contrastive.max_log_scale).exp()}


class LVLMRetriever(RetrieverMixin, AddressLLaVAModel):
    """LLaVA-Phi3-mini as an embedding model (see the module's docstring).

    Args (beyond ``AddressLLaVAModel``'s): ``pooling`` ("last": the prompt's last token, NGCG's choice; "mean"),
    ``temperature`` (initial, learnable), ``max_scale`` (the clamp on 1 / temperature), ``bank_size`` (memory-bank
    pairs, 0: in-batch negatives only), ``freeze_projector`` (keep the released projector: LoRA-only adaptation).
    """

    def __init__(self, *args, pooling: str = "last", temperature: float = 0.07, max_scale: float = 100.0,
                 bank_size: int = 0, freeze_projector: bool = False, **kwargs):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r} not in {POOLINGS}")
        super().__init__(*args, **kwargs)
        self.projector.requires_grad_(not freeze_projector)
        self.pooling = pooling
        self.contrastive = ContrastiveHead(temperature, max_scale, bank_size, self.llm.config.hidden_size)

    @property
    def retriever_name(self) -> str:
        return f"lvlm_{self.pooling}_token" if self.pooling == "last" else f"lvlm_{self.pooling}_pooling"

    def embed(self, inputs: dict) -> torch.Tensor:
        features = None
        if inputs.get("pixel_values") is not None:
            hidden = self.visual_encoder(inputs["pixel_values"].to(self.visual_encoder.dtype),
                                         output_hidden_states=True).hidden_states
            features = self.projector(hidden[self.visual_select_layer][:, 1:])
        embeds, mask = splice_images(self.llm.get_input_embeddings(), inputs["input_ids"], inputs["attention_mask"],
                                     features)
        hidden = self.llm.get_decoder()(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
        return F.normalize(pool_hidden(hidden, mask, self.pooling).float(), dim=-1)

    def state_dict(self, *args, **kwargs):
        """What training saves: LoRA and projector (``LLaVAModel.state_dict``, the projector even when frozen, so a
        checkpoint names the exact projector it was trained over) and the learned temperature."""
        state = super().state_dict(*args, **kwargs)
        state.update({k: v for k, v in nn.Module.state_dict(self, *args, **kwargs).items()
                      if k.startswith("contrastive.")})
        return state


def extend_text_positions(text_model: nn.Module, length: int) -> None:
    """Give a CLIP text model ``length`` positions (CrossText2Loc's extended embedding, its length 300): the first
    77 (the pretrained count) keep their pretrained values, and positions past them start as the pretrained table
    linearly resampled over the new span, so each starts as a plausible position code and is learned in fine-tuning.
    Idempotent at the same length; refuses to shrink."""
    embeddings = text_model.embeddings
    old = embeddings.position_embedding.weight
    count = old.shape[0]
    if length == count:
        return
    if length < count:
        raise ValueError(f"text positions {length} < the model's {count}: extending never truncates")
    extra = F.interpolate(old.detach().t().unsqueeze(0).float(), size=length - count, mode="linear",
                          align_corners=True)[0].t().to(old.dtype)
    table = nn.Embedding(length, old.shape[1], device=old.device, dtype=old.dtype)
    with torch.no_grad():
        table.weight.copy_(torch.cat([old.detach(), extra]))
    table.weight.requires_grad_(old.requires_grad)
    embeddings.position_embedding = table
    embeddings.register_buffer("position_ids", torch.arange(length, device=old.device).expand((1, -1)),
                               persistent=False)
    text_model.config.max_position_embeddings = length


class CLIPDualEncoder(RetrieverMixin, BaseModel):
    """CLIP's two towers as a retriever (see the module's docstring).

    Args: ``clip`` (a ``CLIPModel`` config dict or module), ``text_positions`` (the extended text length),
    ``freeze_vision`` / ``freeze_text`` (train one tower only), ``temperature`` (initial, learnable; 0.01 is
    pretrained CLIP's own), ``max_scale``, ``bank_size`` (as ``LVLMRetriever``).
    """

    def __init__(self, clip, text_positions: int = 300, freeze_vision: bool = False, freeze_text: bool = False,
                 temperature: float = 0.01, max_scale: float = 100.0, bank_size: int = 0):
        super().__init__()
        from xtuner.registry import BUILDER

        if isinstance(clip, dict):
            require_model_folder(clip.get("pretrained_model_name_or_path"), "openai/clip-vit-large-patch14")
        self.clip = BUILDER.build(clip) if isinstance(clip, dict) else clip
        extend_text_positions(self.clip.text_model, text_positions)
        # CLIP's own logit_scale is replaced by the head's (initialised from ``temperature``); it stays unused.
        self.clip.logit_scale.requires_grad_(False)
        if freeze_vision:
            self.clip.vision_model.requires_grad_(False)
            self.clip.visual_projection.requires_grad_(False)
        if freeze_text:
            self.clip.text_model.requires_grad_(False)
            self.clip.text_projection.requires_grad_(False)
        self.contrastive = ContrastiveHead(temperature, max_scale, bank_size, self.clip.config.projection_dim)

    retriever_name = "clip_dual_encoder"

    def embed(self, inputs: dict) -> torch.Tensor:
        rows = inputs["image_rows"].numel() + inputs["text_rows"].numel()
        out = torch.zeros(rows, self.clip.config.projection_dim, device=self.clip.logit_scale.device)
        if inputs["image_rows"].numel():
            pixels = inputs["pixel_values"].to(self.clip.visual_projection.weight.dtype)
            out = out.index_copy(0, inputs["image_rows"], self.clip.get_image_features(pixel_values=pixels).float())
        if inputs["text_rows"].numel():
            features = self.clip.get_text_features(input_ids=inputs["input_ids"],
                                                   attention_mask=inputs["attention_mask"])
            out = out.index_copy(0, inputs["text_rows"], features.float())
        return F.normalize(out, dim=-1)

    def state_dict(self, *args, **kwargs):
        """Every trained tensor: what training saves and ``encoders.load_encoder`` loads."""
        trained = {name for name, p in self.named_parameters() if p.requires_grad}
        state = super().state_dict(*args, **kwargs)
        for key in [k for k in state if k not in trained]:
            del state[key]  # in place: mmengine sets attributes on the OrderedDict it gets
        return state
