# AddressVLM stage 1 on Pitts-IAL for ONE 24 GB GPU: recipes/stage1_pitts.py with a 4-bit (NF4) LLM (QLoRA).
# Same LoRA, same data, same effective batch as Table A1 (4 per step x 128 accumulation = 4 x 8 GPUs x 16).
#   xtuner train recipes/stage1_pitts_qlora.py        (then recipes/stage2_pitts_qlora.py)
# Needs CUDA (bitsandbytes 4-bit kernels); on CPU it parses but does not run.
import torch
from mmengine.config import read_base
from transformers import BitsAndBytesConfig

with read_base():
    from .stage1_pitts import *  # noqa: F401,F403

# The unquantized parts load in the parent's torch_dtype (bf16), which the 4-bit matmuls compute in too; peft's
# k-bit preparation then keeps embeddings, lm_head and norms in fp32 (counted in tools/estimate_memory.py).
model.llm.update(
    quantization_config=dict(
        type=BitsAndBytesConfig,
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        llm_int8_skip_modules=["lm_head"],
    ),
)
optim_wrapper.update(accumulative_counts=128)
train_dataloader.sampler.update(per_device_batch_size=4 * 128)
work_dir = "./work_dirs/llava_phi3_mini/stage1_pitts_qlora"
