"""A tiny stand-in for ``openbmb/MiniCPM-V-2_6`` whose code, like the real one's, is *remote code* in the model folder.

The real model's Python lives on the Hugging Face hub (``modeling_minicpmv.py``, ``resampler.py``,
``modeling_navit_siglip.py``, ``image_processing_minicpmv.py``, ...) and cannot be fetched here. This module is written
into a model folder as its ``modeling_minicpmv.py`` (``write_tiny_minicpmv``), with a ``config.json`` whose ``auto_map``
names it, so ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` takes the same road it takes for the real
model. It follows the part of the real model's interface that ``addressvlm.training.minicpmv`` uses:

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
It is copied into model folders beside ``configuration_minicpm.py`` and ``resampler.py`` and imports them as the
release does.
"""

import torch
from transformers import Qwen2ForCausalLM, Qwen2PreTrainedModel
from transformers.models.siglip.modeling_siglip import SiglipVisionTransformer

from .configuration_minicpm import MiniCPMVConfig
from .resampler import Resampler


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
        if config.drop_vision_last_layer:  # as the release: the resampler reads the next-to-last layer's output
            self.vpm.encoder.layers = self.vpm.encoder.layers[:-1]
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
