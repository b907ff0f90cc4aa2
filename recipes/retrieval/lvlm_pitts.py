# Cross-view retrieval with LLaVA-Phi3-mini turned retriever (NGCG, "Turning Generators into Retrievers"; see
# docs/retrieval.md): LoRA on the LLM, the embedding of a street view, a satellite tile or a scene text is the last
# hidden state of a summarising prompt's last token; symmetric InfoNCE, in-batch negatives, learnable temperature.
#
# Weights: the same release as the AddressVLM recipes (LLM + tokenizer, visual_encoder/, projector/):
#   huggingface-cli download xtuner/llava-phi-3-mini-xtuner --local-dir ./models/llava-phi-3-mini-xtuner
# Data (docs/data.md for the city itself, docs/retrieval.md for the pairs; the city root is data/pitts):
#   python datasets_prep/build_retrieval.py --city data/pitts   -> data/pitts/retrieval/{gallery,queries}.jsonl
# Train on 8 GPUs:
#   NPROC_PER_NODE=8 xtuner train recipes/retrieval/lvlm_pitts.py --deepspeed deepspeed_zero2
# Evaluate (R@1/5/10 and the share of queries within 50/100/150 m, per query kind):
#   python eval/retrieve.py --root data/pitts --split test --config recipes/retrieval/lvlm_pitts.py \
#       --checkpoint work_dirs/retrieval/lvlm_pitts --out eval_results/retrieval/lvlm_pitts
# The pooling ablation is recipes/retrieval/lvlm_mean_pooling_pitts.py; anything else from the command line, e.g.
# `--cfg-options model.bank_size=256 train_dataloader.dataset.query_kinds="['text']"`.
# Note: `xtuner train` exits 0 even when training fails; scripts should call `python -m xtuner.tools.train`.
from mmengine.dataset import DefaultSampler
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
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPImageProcessor, CLIPVisionModel

from addressvlm.answering.hooks import ResumeLoadHook, RNGStateHook
from addressvlm.training.retrieval_dataset import LVLMRetrievalInputs, RetrievalPairDataset, retrieval_collate_fn
from addressvlm.training.retrieval_models import LVLMRetriever
from addressvlm.training.vis_backends import TensorboardIfInstalled
from xtuner.engine.runner import TrainLoop
from xtuner.utils import PROMPT_TEMPLATE

# Applied as the recipe is read, not when its classes are built (addressvlm/training/xtuner_shims.py).
__import__("addressvlm.training.xtuner_shims")

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
llava_root = "./models/llava-phi-3-mini-xtuner"
llm_name_or_path = llava_root
visual_encoder_name_or_path = llava_root + "/visual_encoder"
projector_name_or_path = llava_root + "/projector"
torch_dtype = "bfloat16"  # frozen weights; LoRA and the temperature train in fp32 (addressvlm/training/precision.py)

data_root = "./data/pitts/"
# "image" (street view -> satellite), "text" (scene text -> satellite): one model for both, as NGCG trains one
# retriever per dataset; a single kind is a cfg-option away.
query_kinds = ["image", "text"]
prompt_template = PROMPT_TEMPLATE.phi3_chat
max_text_tokens = 512  # CVG-Text's longest descriptions are ~300 CLIP tokens; Phi-3's tokenizer needs a few more

# Embedding: the prompt's last token (NGCG's choice) or "mean" over all tokens (the ablation NGCG reports).
pooling = "last"
# Learnable temperature, initial value 0.05 (E5-V's and most LLM-embedding recipes' fixed value; NGCG's figure is not
# in the text we have), clamped at 1 / 100 as CLIP clamps it.
temperature = 0.05
max_scale = 100.0
# Memory bank of earlier batches' embeddings as extra negatives (0: in-batch only). Off: with 8 pairs per GPU x 8 GPUs
# and no cross-GPU gather each GPU sees 7 negatives per query; docs/retrieval.md has what the bank buys on the tiny
# model before you turn it on (model.bank_size=256).
bank_size = 0

# Scheduler & Optimizer. NGCG gives LoRA fine-tuning with ~9M trainable parameters but, in the text we have, not its
# learning rate or batch: rank 8 on every linear layer of Phi-3-mini is 12.6M parameters (the nearest rank), lr 2e-4
# is the usual LoRA contrastive rate (E5-V), and the batch is what a bf16 Phi-3-mini with a 336 px image fits per
# 80 GB GPU with activation checkpointing.
batch_size = 8  # per device, 8 GPUs
accumulative_counts = 1  # accumulation would not add negatives: each micro-batch has its own softmax
dataloader_num_workers = 4
max_epochs = 2
optim_type = AdamW
lr = 2e-4
betas = (0.9, 0.999)
weight_decay = 0
max_norm = 1
warmup_ratio = 0.03

lora_rank = 8
lora_alpha = 16
lora_dropout = 0.05

work_dir = "./work_dirs/retrieval/lvlm_pitts"
save_steps = 500
save_total_limit = 2

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
tokenizer = dict(
    type=AutoTokenizer.from_pretrained,
    pretrained_model_name_or_path=llm_name_or_path,
    trust_remote_code=True,
    padding_side="right",
)

image_processor = dict(
    type=CLIPImageProcessor.from_pretrained,
    pretrained_model_name_or_path=visual_encoder_name_or_path,
    trust_remote_code=True,
)

model = dict(
    type=LVLMRetriever,
    pooling=pooling,
    temperature=temperature,
    max_scale=max_scale,
    bank_size=bank_size,
    # The released projector, kept: NGCG adapts the MLLM with LoRA only (freeze_projector=False trains it too).
    freeze_projector=True,
    freeze_llm=True,
    freeze_visual_encoder=True,
    projector_name_or_path=projector_name_or_path,
    torch_dtype=torch_dtype,
    llm=dict(
        type=AutoModelForCausalLM.from_pretrained,
        pretrained_model_name_or_path=llm_name_or_path,
        trust_remote_code=True,
    ),
    visual_encoder=dict(
        type=CLIPVisionModel.from_pretrained,
        pretrained_model_name_or_path=visual_encoder_name_or_path,
    ),
    llm_lora=dict(
        type=LoraConfig,
        r=lora_rank,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        bias="none",
        task_type="CAUSAL_LM",
    ),
    # LoRA on CLIP too: model.visual_encoder_lora=dict(type=LoraConfig, r=8, lora_alpha=16, ...)
    # (addressvlm.training.model places it in the layers whose output reaches the LLM).
    visual_encoder_lora=None,
)

#######################################################################
#                      PART 3  Dataset & Dataloader                   #
#######################################################################
retrieval_dataset = dict(
    type=RetrievalPairDataset,
    data_root=data_root,
    split="train",
    query_kinds=query_kinds,
    # What turns an image or a text into model inputs; eval/retrieve.py builds the same one (encoders.load_encoder).
    inputs=dict(
        type=LVLMRetrievalInputs,
        tokenizer=tokenizer,
        image_processor=image_processor,
        prompt_template=prompt_template,
        pad_image_to_square=True,
        max_text_tokens=max_text_tokens,
    ),
)

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=dataloader_num_workers,
    pin_memory=True,
    dataset=retrieval_dataset,
    sampler=dict(type=DefaultSampler, shuffle=True),
    collate_fn=dict(type=retrieval_collate_fn),
)

#######################################################################
#                    PART 4  Scheduler & Optimizer                    #
#######################################################################
optim_wrapper = dict(
    type=AmpOptimWrapper,
    optimizer=dict(type=optim_type, lr=lr, betas=betas, weight_decay=weight_decay),
    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),
    accumulative_counts=accumulative_counts,
    loss_scale="dynamic",
    dtype=torch_dtype,
)

param_scheduler = [
    dict(type=LinearLR, start_factor=1e-5, by_epoch=True, begin=0, end=warmup_ratio * max_epochs,
         convert_to_iter_based=True),
    dict(type=CosineAnnealingLR, eta_min=0.0, by_epoch=True, begin=warmup_ratio * max_epochs, end=max_epochs,
         convert_to_iter_based=True),
]

train_cfg = dict(type=TrainLoop, max_epochs=max_epochs)

#######################################################################
#                           PART 5  Runtime                           #
#######################################################################
custom_hooks = [dict(type=RNGStateHook), dict(type=ResumeLoadHook)]

default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, log_metric_by_epoch=False, interval=10),
    param_scheduler=dict(type=ParamSchedulerHook),
    checkpoint=dict(type=CheckpointHook, by_epoch=False, interval=save_steps, max_keep_ckpts=save_total_limit),
    sampler_seed=dict(type=DistSamplerSeedHook),
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
