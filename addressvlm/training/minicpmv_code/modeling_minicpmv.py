"""A tiny stand-in for ``openbmb/MiniCPM-V-2_6`` whose code, like the real one's, is *remote code* in the model folder.

The real model's Python lives on the Hugging Face hub (``modeling_minicpmv.py``, ``resampler.py``,
``modeling_navit_siglip.py``, ``image_processing_minicpmv.py``, ...) and cannot be fetched here. This module is written
into a model folder as its ``modeling_minicpmv.py`` (``write_tiny_minicpmv``), with a ``config.json`` whose ``auto_map``
names it, so ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` takes the same road it takes for the real
model. It computes what the release computes, with the release's parameter names, so that an engine that runs the
release (vLLM's ``MiniCPMV``) runs the stand-in and answers as it does here:

- ``model.llm``: a ``Qwen2ForCausalLM`` built from the top-level config (a ``Qwen2Config`` subclass), as in the release;
- ``model.vpm``: SigLIP run NaViT-style (``modeling_navit_siglip.py``: every view of a batch in one padded batch with a
  patch attention mask, positions bucketed from each view's own patch grid), its last layer dropped;
- ``model.resampler``: learned queries cross-attending to each view's patch features with 2-D sine-cosine key
  positions, one head per 128 channels (``resampler.py``);
- ``get_vllm_embedding(data)`` / ``forward(data, **kwargs)`` / ``generate(input_ids, pixel_values, tgt_sizes,
  image_bound, attention_mask, tokenizer, decode_text, **kwargs)`` with the release's batch layout: ``pixel_values`` a
  list (per sample) of lists of ``[3, patch, L * patch]`` tensors (views cut into patches and laid side by side),
  ``tgt_sizes`` the patch grid of each, ``image_bound`` the ``[start, end)`` token spans the resampled features replace.

What it does not reproduce (docs/minicpmv.md): ``chat()`` (the wrapper builds prompts itself and calls ``generate``),
streaming, and the 7B memory/bf16 behaviour. It is copied into model folders beside ``configuration_minicpm.py``,
``modeling_navit_siglip.py``, ``resampler.py`` and ``image_processing_minicpmv.py``, and imports them as the release
does.
"""

import torch
from torch import nn
from transformers import Qwen2ForCausalLM, Qwen2PreTrainedModel

from .configuration_minicpm import MiniCPMVConfig
from .modeling_navit_siglip import NaViTSiglipVisionTransformer
from .resampler import Resampler


class MiniCPMVPreTrainedModel(Qwen2PreTrainedModel):
    config_class = MiniCPMVConfig


class MiniCPMV(MiniCPMVPreTrainedModel):
    def __init__(self, config: MiniCPMVConfig):
        super().__init__(config)
        self.llm = Qwen2ForCausalLM(config)
        self.vpm = NaViTSiglipVisionTransformer(config.vision_config)
        if config.drop_vision_last_layer:  # as the release: the resampler reads the next-to-last layer's output
            self.vpm.encoder.layers = self.vpm.encoder.layers[:-1]
        self.embed_dim = config.hidden_size
        self.resampler = Resampler(config.query_num, self.embed_dim, self.embed_dim // 128,
                                   config.vision_config.hidden_size)
        self.terminators = ["<|im_end|>", "<|endoftext|>"]
        self.post_init()

    def get_input_embeddings(self):
        return self.llm.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.llm.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.llm.lm_head

    def _encode_views(self, views: list[torch.Tensor], tgt_sizes: torch.Tensor) -> torch.Tensor:
        """``[views, queries, hidden]``: the resampled features of views in the patch layout, as one padded batch."""
        weight = self.vpm.embeddings.patch_embedding.weight
        width = max(view.shape[-1] for view in views)
        pixels = torch.stack([nn.functional.pad(view, (0, width - view.shape[-1])) for view in views])
        pixels, tgt_sizes = pixels.to(weight.device, weight.dtype), tgt_sizes.to(weight.device)
        patches = torch.arange(width // self.config.patch_size, device=weight.device)[None]
        own_patches = patches < (tgt_sizes[:, 0] * tgt_sizes[:, 1])[:, None]
        features = self.vpm(pixels, patch_attention_mask=own_patches[:, None], tgt_sizes=tgt_sizes)
        return self.resampler(features, tgt_sizes)

    def get_vllm_embedding(self, data: dict) -> tuple[torch.Tensor, list]:
        """Token embeddings with each sample's image spans (``image_bound``) replaced by its resampled images."""
        embeddings = self.llm.model.embed_tokens(data["input_ids"])
        if "vision_hidden_states" in data:
            vision_hidden_states = data["vision_hidden_states"]
        else:
            counts = [len(images) for images in data["pixel_values"]]
            views = [view for images in data["pixel_values"] for view in images]
            encoded = self._encode_views(views, torch.cat(list(data["tgt_sizes"]))) if views else None
            vision_hidden_states, start = [], 0
            for count in counts:
                vision_hidden_states.append(encoded[start:start + count] if count else [])
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
