"""A tiny stand-in for ``openbmb/MiniCPM-V-2_6`` whose code, like the real one's, is *remote code* in the model folder.

The real model's Python lives on the Hugging Face hub (``modeling_minicpmv.py``, ``resampler.py``,
``modeling_navit_siglip.py``, ``image_processing_minicpmv.py``, ...) and cannot be fetched here. This module is written
into a model folder as its ``modeling_minicpmv.py`` (``write_tiny_minicpmv``), with a ``config.json`` whose ``auto_map``
names it, so ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` takes the same road it takes for the real
model. It follows the part of the real model's interface that ``addressvlm.minicpmv`` uses:

- ``model.llm``: a ``Qwen2ForCausalLM`` built from the top-level config (a ``Qwen2Config`` subclass), as in the release;
- ``model.vpm``: a SigLIP vision transformer (transformers' ``SiglipVisionTransformer``, the module ``SiglipVisionModel``
  wraps, so parameter names read ``vpm.encoder.layers.N.self_attn.q_proj`` like the release's);
- ``model.resampler``: learned queries cross-attending to the vision features (``query``, ``kv_proj``, ``attn``,
  ``ln_q``, ``ln_kv``, ``ln_post``, ``proj``, 2-D sin-cos key positions for each image's patch grid);
- ``get_vllm_embedding(data)`` / ``forward(data, **kwargs)`` / ``generate(input_ids, pixel_values, tgt_sizes,
  image_bound, attention_mask, tokenizer, decode_text, **kwargs)`` with the release's batch layout: ``pixel_values`` a
  list (per sample) of lists of ``[3, patch, L * patch]`` tensors (images cut into patches and laid side by side),
  ``tgt_sizes`` the patch grid of each, ``image_bound`` the ``[start, end)`` token spans the resampled features replace.

What it does not reproduce (docs/minicpmv.md): the NaViT SigLIP (one padded batch with a patch attention mask and
bucketed positions; here each image runs alone with interpolated positions), the exact resampler, the hub processor
and ``chat()`` (the wrapper builds prompts itself and calls ``generate``), streaming, and the 7B memory/bf16 behaviour.
This file must stay importable on its own (torch and transformers only): it is copied into model folders.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Iterable

import torch
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2PreTrainedModel, SiglipVisionConfig
from transformers.models.siglip.modeling_siglip import SiglipVisionTransformer

# MiniCPM-V 2.6's token strings: the chat tokens of Qwen2, and the image/slice markers its processor writes.
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]
IMAGE_TOKENS = ["<unk>", "<image>", "</image>", "<slice>", "</slice>", "<image_id>", "</image_id>"]
PAD = "<|endoftext|>"
# Qwen2's chat template (as in the release's tokenizer_config.json): a default system turn, then im_start/im_end turns.
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class MiniCPMVConfig(Qwen2Config):
    model_type = "minicpmv"

    def __init__(self, vision_config=None, query_num=64, patch_size=14, image_size=448, slice_config=None, **kwargs):
        if isinstance(vision_config, SiglipVisionConfig):
            vision_config = vision_config.to_dict()
        # The release drops SigLIP's pooling head: the resampler reads every patch.
        self.vision_config = SiglipVisionConfig(**{"vision_use_head": False, **(vision_config or {})})
        self.query_num = query_num
        self.patch_size = patch_size
        self.image_size = image_size
        self.slice_config = dict(slice_config or {"patch_size": patch_size, "max_slice_nums": 9,
                                                  "scale_resolution": image_size})
        super().__init__(**kwargs)


def sincos_2d(dim: int, height: int, width: int, device=None) -> torch.Tensor:
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

    def forward(self, features: torch.Tensor, tgt_size: torch.Tensor) -> torch.Tensor:
        """``features`` ``[patches, kv_dim]`` of one image whose patch grid is ``tgt_size`` -> ``[queries, dim]``."""
        keys = self.ln_kv(self.kv_proj(features))
        height, width = (int(v) for v in tgt_size)
        positions = sincos_2d(keys.shape[-1], height, width, keys.device).to(keys.dtype)
        query = self.ln_q(self.query)
        out, _ = self.attn(query[None], (keys + positions)[None], keys[None], need_weights=False)
        return self.ln_post(out[0]) @ self.proj


def patches_to_image(flat: torch.Tensor, tgt_size: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Undo the processor's patch layout: ``[3, p, (h*w)*p]`` (patches side by side, row-major) -> ``[3, h*p, w*p]``."""
    height, width = (int(v) for v in tgt_size)
    channels = flat.shape[0]
    grid = flat.reshape(channels, patch_size, height, width, patch_size)  # c, row-in-patch, gy, gx, col-in-patch
    return grid.permute(0, 2, 1, 3, 4).reshape(channels, height * patch_size, width * patch_size)


class MiniCPMVPreTrainedModel(Qwen2PreTrainedModel):
    config_class = MiniCPMVConfig


class MiniCPMV(MiniCPMVPreTrainedModel):
    def __init__(self, config: MiniCPMVConfig):
        super().__init__(config)
        self.llm = Qwen2ForCausalLM(config)
        self.vpm = SiglipVisionTransformer(config.vision_config)
        self.embed_dim = config.hidden_size
        self.resampler = Resampler(config.query_num, self.embed_dim, max(1, self.embed_dim // 128),
                                   config.vision_config.hidden_size)
        self.terminators = ["<|im_end|>", "<|endoftext|>"]
        self.post_init()

    def get_input_embeddings(self):
        return self.llm.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.llm.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.llm.lm_head

    def _encode_images(self, flats: list[torch.Tensor], tgt_sizes: list[torch.Tensor]) -> list[torch.Tensor]:
        """Resampled features of each image; images of one patch grid go through SigLIP as one batch."""
        dtype = self.vpm.embeddings.patch_embedding.weight.dtype
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, size in enumerate(tgt_sizes):
            by_size.setdefault(tuple(int(v) for v in size), []).append(i)
        encoded: list[torch.Tensor] = [None] * len(flats)
        for indices in by_size.values():
            images = torch.stack([patches_to_image(flats[i], tgt_sizes[i], self.config.patch_size) for i in indices])
            features = self.vpm(images.to(dtype), interpolate_pos_encoding=True).last_hidden_state
            for i, feature in zip(indices, features):
                encoded[i] = self.resampler(feature, tgt_sizes[i])
        return encoded

    def get_vllm_embedding(self, data: dict) -> tuple[torch.Tensor, list]:
        """Token embeddings with each sample's image spans (``image_bound``) replaced by its resampled images."""
        embeddings = self.llm.model.embed_tokens(data["input_ids"])
        if "vision_hidden_states" in data:
            vision_hidden_states = data["vision_hidden_states"]
        else:
            counts = [len(images) for images in data["pixel_values"]]
            encoded = self._encode_images([flat for images in data["pixel_values"] for flat in images],
                                          [size for sizes in data["tgt_sizes"] for size in sizes])
            vision_hidden_states, start = [], 0
            for count in counts:
                vision_hidden_states.append(torch.stack(encoded[start:start + count]) if count else [])
                start += count
        rows = []
        for row, states, bounds in zip(embeddings, vision_hidden_states, data["image_bound"]):
            if len(bounds) and len(states):
                index = torch.cat([torch.arange(int(s), int(e), device=row.device) for s, e in bounds])
                flat_states = states.reshape(-1, states.shape[-1]).to(row.dtype)
                if flat_states.shape[0] != index.numel():
                    raise ValueError(f"{index.numel()} image placeholder tokens but {flat_states.shape[0]} image "
                                     "features: prompt and images disagree")
                row = row.index_copy(0, index, flat_states)
            rows.append(row)
        return torch.stack(rows), vision_hidden_states

    def forward(self, data: dict, **kwargs):
        embeddings, _ = self.get_vllm_embedding(data)
        return self.llm(input_ids=None, position_ids=data["position_ids"].long(), inputs_embeds=embeddings, **kwargs)

    @torch.inference_mode()
    def generate(self, input_ids=None, pixel_values=None, tgt_sizes=None, image_bound=None, attention_mask=None,
                 tokenizer=None, vision_hidden_states=None, decode_text=False, **kwargs):
        if len(input_ids) != len(pixel_values):
            raise ValueError("one list of images per prompt")
        model_inputs = {"input_ids": input_ids, "image_bound": image_bound}
        if vision_hidden_states is None:
            model_inputs.update(pixel_values=pixel_values, tgt_sizes=tgt_sizes)
        else:
            model_inputs["vision_hidden_states"] = vision_hidden_states
        embeddings, _ = self.get_vllm_embedding(model_inputs)
        terminators = [tokenizer.convert_tokens_to_ids(t) for t in self.terminators]
        output = self.llm.generate(inputs_embeds=embeddings, attention_mask=attention_mask, pad_token_id=0,
                                   eos_token_id=terminators, **kwargs)
        if not decode_text:
            return output
        texts = []
        for ids in output:
            ids = [i for i in ids.tolist() if i != 0]
            while ids and ids[-1] in terminators:
                ids.pop()
            texts.append(tokenizer.decode(ids).strip())
        return texts


# ------------------------------------------------------------------------------------------------------------------
# Writing a stand-in folder (runs in the project, not in the copied remote code).

TINY_CORPUS = [
    "The street view in the right-upper corner appears to be taken near the intersection of two streets.",
    "Tell me the district where this image was captured. Identify the street in this image, please.",
    "Answer the question using a single word or phrase. Is this image taken on this street, Yes or No?",
    "Which of the following street correctly represents the location shown in the image?",
    "(A) (B) (C) (D). Please select the correct option (A/B/C/D). Yes No",
    "You are a helpful assistant. user assistant system 0 1 2 3 4 5 6 7 8 9",
]


def train_qwen2_style_tokenizer(corpus: Iterable[str], vocab_size: int):
    """A byte-level BPE whose chat, image and slice markers are single special tokens, with Qwen2's chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [PAD, *CHAT_TOKENS, *IMAGE_TOKENS]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(corpus), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token=PAD, unk_token="<unk>",
        additional_special_tokens=[t for t in specials if t not in (PAD, "<|im_end|>", "<unk>")],
        model_max_length=8192, padding_side="right")
    tokenizer.chat_template = QWEN2_CHAT_TEMPLATE
    return tokenizer


def write_tiny_minicpmv(out: str | Path, corpus: Iterable[str] = (), *, hidden: int = 64, layers: int = 2,
                        heads: int = 4, kv_heads: int = 2, vision_hidden: int = 32, vision_layers: int = 2,
                        patch_size: int = 14, scale_resolution: int = 28, query_num: int = 8,
                        max_slice_nums: int = 9, vocab: int = 1024, seed: int = 0) -> Path:
    """Write a tiny random MiniCPM-V-2_6-shaped folder (remote code, config with ``auto_map``, weights, tokenizer,
    ``preprocessor_config.json``) to ``out`` and return ``out``. Deterministic for a seed."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = train_qwen2_style_tokenizer([*TINY_CORPUS, *corpus], vocab)
    tokenizer.save_pretrained(out)

    shutil.copyfile(__file__, out / "modeling_minicpmv.py")
    # The release keeps its config class in its own file; here it re-exports the one in the copied model file.
    (out / "configuration_minicpm.py").write_text("from .modeling_minicpmv import MiniCPMVConfig  # noqa: F401\n")
    config = MiniCPMVConfig(
        vision_config=dict(hidden_size=vision_hidden, intermediate_size=vision_hidden * 2,
                           num_hidden_layers=vision_layers, num_attention_heads=max(1, vision_hidden // 16),
                           image_size=scale_resolution, patch_size=patch_size),
        query_num=query_num, patch_size=patch_size, image_size=scale_resolution,
        slice_config={"patch_size": patch_size, "max_slice_nums": max_slice_nums, "scale_resolution": scale_resolution},
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=8192,
        tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        # Frozen random weights at the usual 0.02 leave lm_head's logits within about +-1 of each other, which no LoRA
        # on the attention can overcome: wider weights let the tiny model answer confidently once trained.
        initializer_range=0.2,
        bos_token_id=None,
        auto_map={"AutoConfig": "configuration_minicpm.MiniCPMVConfig",
                  "AutoModel": "modeling_minicpmv.MiniCPMV",
                  "AutoModelForCausalLM": "modeling_minicpmv.MiniCPMV"},
    )
    MiniCPMV(config).save_pretrained(out, safe_serialization=True)
    # save_pretrained records this module's own dotted name; the folder must point at its local files instead.
    config_path = out / "config.json"
    saved = json.loads(config_path.read_text())
    saved["auto_map"] = config.auto_map
    saved["architectures"] = ["MiniCPMV"]
    config_path.write_text(json.dumps(saved, indent=2) + "\n")
    # The release's processor settings (image_processing_minicpmv.py reads the same keys).
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "MiniCPMVImageProcessor",
        "max_slice_nums": max_slice_nums, "scale_resolution": scale_resolution, "patch_size": patch_size,
        "use_image_id": True, "image_feature_size": query_num, "slice_mode": True,
        "im_start": "<image>", "im_end": "</image>", "slice_start": "<slice>", "slice_end": "</slice>",
        "unk": "<unk>", "im_id_start": "<image_id>", "im_id_end": "</image_id>",
        "norm_mean": [0.5, 0.5, 0.5], "norm_std": [0.5, 0.5, 0.5], "version": 2.6,
    }, indent=2) + "\n")
    return out
