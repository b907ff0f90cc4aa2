# AddressVLM stage 1 on Pitts-IAL with MiniCPM-V 2.6 (SigLIP-400M + resampler + Qwen2-7B): the paper's Table 7 row.
#
# Weights (the release, with its remote code, tokenizer and processor config):
#   huggingface-cli download openbmb/MiniCPM-V-2_6 --local-dir ./models/MiniCPM-V-2_6
# Data: the same files as the LLaVA recipes (recipes/stage1_pitts.py): data/pitts/stage1/train.json.
# Train on 8 GPUs (per-device batch 4 x 8 GPUs x accumulation 16, Table A1), then stage 2:
#   NPROC_PER_NODE=8 xtuner train recipes/minicpmv26/stage1_pitts.py --deepspeed deepspeed_zero2
#   NPROC_PER_NODE=8 xtuner train recipes/minicpmv26/stage2_pitts.py --deepspeed deepspeed_zero2
# On this machine (CPU, a tiny stand-in from tools/make_tiny_minicpmv.py; see docs/minicpmv.md):
#   python -m xtuner.tools.train recipes/minicpmv26/stage1_pitts.py --cfg-options $(python tools/run_options.py \
#       recipes/minicpmv26/stage1_pitts.py --model-root tiny_models/MiniCPM-V-2_6)
# Override anything from the command line, e.g. `--cfg-options model.attn_implementation=flash_attention_2`.
# Note: `xtuner train` exits 0 even when training fails; scripts should call `python -m xtuner.tools.train`.
from mmengine.hooks import (
    CheckpointHook,
    DistSamplerSeedHook,
    IterTimerHook,
    LoggerHook,
    ParamSchedulerHook,
)
from mmengine.optim import AmpOptimWrapper, CosineAnnealingLR, LinearLR
from mmengine.visualization import LocalVisBackend, Visualizer
from peft import LoraConfig
from torch.optim import AdamW
from transformers import AutoTokenizer

from addressvlm.answering.hooks import AddressMetricsHook, ResumeLoadHook, RNGStateHook
from addressvlm.training.minicpmv import AddressMiniCPMV
from addressvlm.training.minicpmv_dataset import MiniCPMVDataset, minicpmv_collate_fn
from addressvlm.training.vis_backends import TensorboardIfInstalled
from xtuner.dataset.samplers import LengthGroupedSampler
from xtuner.engine.hooks import DatasetInfoHook
from xtuner.engine.runner import TrainLoop

# Applied as the recipe is read, not when its classes are built: `xtuner train --resume` reads the checkpoint
# before it builds anything (addressvlm/training/xtuner_shims.py).
__import__("addressvlm.training.xtuner_shims")

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
# Model: the released MiniCPM-V 2.6 (loaded with trust_remote_code=True).
model_root = "./models/MiniCPM-V-2_6"
model_path = model_root
torch_dtype = "bfloat16"  # the release's dtype; the CPU switch (addressvlm.training.recipes) loads float32
attn_implementation = "sdpa"  # or "flash_attention_2" where flash-attn is installed
init_from_work_dir = None  # stage 1 starts from the release itself

# Data: the city root holds locations.csv and images; stage-1 JSON paths are relative to it.
data_root = "./data/pitts/"
data_path = data_root + "stage1/train.json"
image_folder = data_root
# Table A1's 2048 tokens. The LLaVA recipes subtract their 576 image tokens because XTuner's LLaVA dataset counts an
# image as one token; here the image placeholders (64 per view, source plus slices) are in the sequence itself.
max_length = 2048
max_slice_nums = 9  # the release's processor default: a 640x480 street view becomes the source plus 2 slices

# Scheduler & Optimizer. Table A1: batch, accumulation, lr, betas, weight decay, warm-up ratio. Ours (A1 states none
# of them), as XTuner's LLaVA recipes: AdamW, one epoch, gradient clipping at 1, the linear warm-up and cosine decay.
batch_size = 4  # per_device, on 8 GPUs
accumulative_counts = 16
dataloader_num_workers = 4
max_epochs = 1
optim_type = AdamW
lr = 1e-5
betas = (0.9, 0.999)
weight_decay = 0
max_norm = 1  # grad clip
warmup_ratio = 0.03

# LoRA (Table A1: rank 128, dropout 0.05). Ours, which A1 does not state: on the LLM and on the vision encoder, and
# alpha as in the LLaVA recipes, 2 x rank. LLM: the attention projections of the Qwen2 layers; vision: every linear
# layer of SigLIP.
lora_rank = 128
lora_alpha = 256
lora_dropout = 0.05
llm_lora_targets = ["q_proj", "k_proj", "v_proj", "o_proj"]

# Save
work_dir = "./work_dirs/minicpmv26/stage1_pitts"
save_steps = 500
save_total_limit = 2  # Maximum checkpoints to keep (-1 means unlimited)

# Address metrics while training (docs/eval.md): every address_eval_interval iterations, greedy answers to the
# questions of address_eval_images validation images (nine each, drawn once with seed 0), scored as eval/score.py
# scores, logged as address/A_d, address/A_s, address/A_sd beside the loss (tensorboard --logdir <work_dir>).
# Off: --cfg-options default_hooks.address_metrics.interval=0; other values likewise (.images=50): the variables
# below are copied into the hook's dict, so overriding them does not reach it.
address_eval_questions = "vqa/val_questions.jsonl"  # relative to the dataset's image_folder, the city root
address_eval_images = 22  # 198 questions
address_eval_interval = 500  # training iterations (micro-batches), 0: off

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
tokenizer = dict(
    type=AutoTokenizer.from_pretrained,
    pretrained_model_name_or_path=model_path,
    trust_remote_code=True,
    padding_side="right",
)

model = dict(
    type=AddressMiniCPMV,
    # Base weights frozen; LoRA on LLM and SigLIP and the whole resampler trained, in both stages.
    model_path=model_path,
    torch_dtype=torch_dtype,
    attn_implementation=attn_implementation,
    max_slice_nums=max_slice_nums,
    gradient_checkpointing=True,
    init_from_work_dir=init_from_work_dir,
    llm_lora=dict(
        type=LoraConfig,
        r=lora_rank,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=llm_lora_targets,
        bias="none",
        task_type="CAUSAL_LM",
    ),
    visual_encoder_lora=dict(
        type=LoraConfig,
        r=lora_rank,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        bias="none",
    ),
)

#######################################################################
#                      PART 3  Dataset & Dataloader                   #
#######################################################################
minicpmv_dataset = dict(
    type=MiniCPMVDataset,
    data_path=data_path,
    image_folder=image_folder,
    tokenizer=tokenizer,
    model_path=model_path,
    max_length=max_length,
    max_slice_nums=max_slice_nums,
)

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=dataloader_num_workers,
    pin_memory=True,
    dataset=minicpmv_dataset,
    sampler=dict(
        type=LengthGroupedSampler,
        length_property="modality_length",
        per_device_batch_size=batch_size * accumulative_counts,
    ),
    collate_fn=dict(type=minicpmv_collate_fn),
)

#######################################################################
#                    PART 4  Scheduler & Optimizer                    #
#######################################################################
# With --deepspeed, XTuner swaps this for DeepSpeed's optimizer wrapper (bf16 where the GPU supports it).
optim_wrapper = dict(
    type=AmpOptimWrapper,
    optimizer=dict(type=optim_type, lr=lr, betas=betas, weight_decay=weight_decay),
    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),
    accumulative_counts=accumulative_counts,
    loss_scale="dynamic",
    dtype=torch_dtype,  # AMP computes in the frozen weights' dtype, as stage1_pitts.py
)

param_scheduler = [
    dict(
        type=LinearLR,
        start_factor=1e-5,
        by_epoch=True,
        begin=0,
        end=warmup_ratio * max_epochs,
        convert_to_iter_based=True,
    ),
    dict(
        type=CosineAnnealingLR,
        eta_min=0.0,
        by_epoch=True,
        begin=warmup_ratio * max_epochs,
        end=max_epochs,
        convert_to_iter_based=True,
    ),
]

train_cfg = dict(type=TrainLoop, max_epochs=max_epochs)

#######################################################################
#                           PART 5  Runtime                           #
#######################################################################
custom_hooks = [dict(type=DatasetInfoHook, tokenizer=tokenizer), dict(type=RNGStateHook),
                dict(type=ResumeLoadHook)]

default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, log_metric_by_epoch=False, interval=10),
    param_scheduler=dict(type=ParamSchedulerHook),
    checkpoint=dict(
        type=CheckpointHook,
        by_epoch=False,
        interval=save_steps,
        max_keep_ckpts=save_total_limit,
    ),
    sampler_seed=dict(type=DistSamplerSeedHook),
    address_metrics=dict(type=AddressMetricsHook, questions=address_eval_questions, images=address_eval_images,
                         interval=address_eval_interval),
)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="nccl"),
)

visualizer = dict(type=Visualizer, vis_backends=[dict(type=LocalVisBackend), dict(type=TensorboardIfInstalled)])
log_level = "INFO"
load_from = None
resume = False
randomness = dict(seed=None, deterministic=False)
log_processor = dict(by_epoch=False)
