"""The stand-in's config (the release keeps its ``MiniCPMVConfig`` in this file too)."""
from transformers import Qwen2Config, SiglipVisionConfig


class MiniCPMVConfig(Qwen2Config):
    model_type = "minicpmv"

    def __init__(self, vision_config=None, query_num=64, patch_size=14, image_size=448, slice_config=None,
                 drop_vision_last_layer=True, version=2.6, **kwargs):
        if isinstance(vision_config, SiglipVisionConfig):
            vision_config = vision_config.to_dict()
        # The release drops SigLIP's pooling head: the resampler reads every patch.
        self.vision_config = SiglipVisionConfig(**{"vision_use_head": False, **(vision_config or {})})
        self.drop_vision_last_layer = drop_vision_last_layer
        self.query_num = query_num
        self.version = version  # engines (vLLM) pick the MiniCPM-V generation's architecture by it
        self.patch_size = patch_size
        self.image_size = image_size
        self.slice_config = dict(slice_config or {"patch_size": patch_size, "max_slice_nums": 9,
                                                  "scale_resolution": image_size})
        super().__init__(**kwargs)
