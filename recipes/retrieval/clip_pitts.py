# Cross-view retrieval with a CLIP dual encoder (CrossText2Loc, "Where am I? Cross-View Geo-localization with Natural
# Language Descriptions"; see docs/retrieval.md): CLIP ViT-L/14's image tower embeds street views and satellite tiles
# (one tower, shared), its text tower the scene texts, with the text position embeddings extended from 77 to 300 as
# CrossText2Loc extends them; the whole model is fine-tuned with symmetric InfoNCE, in-batch negatives.
#
# Weights (CrossText2Loc uses the 336 px ViT-L/14; ./models/clip-vit-large-patch14-336 from
# openai/clip-vit-large-patch14-336 is a drop-in change of model_root):
#   huggingface-cli download openai/clip-vit-large-patch14 --local-dir ./models/clip-vit-large-patch14
# Data (the city root is data/pitts):
#   python datasets_prep/build_retrieval.py --city data/pitts   -> data/pitts/retrieval/{gallery,queries}.jsonl
# Train on 4 GPUs (CrossText2Loc's setting):
#   NPROC_PER_NODE=4 xtuner train recipes/retrieval/clip_pitts.py
# Evaluate:
#   python eval/retrieve.py --root data/pitts --split test --config recipes/retrieval/clip_pitts.py \
#       --checkpoint work_dirs/retrieval/clip_pitts --out eval_results/retrieval/clip_pitts
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
from torch.optim import AdamW
from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

from addressvlm.answering.hooks import ResumeLoadHook, RNGStateHook
from addressvlm.training.retrieval_dataset import CLIPRetrievalInputs, RetrievalPairDataset, retrieval_collate_fn
from addressvlm.training.retrieval_models import CLIPDualEncoder
from addressvlm.training.vis_backends import TensorboardIfInstalled
from xtuner.engine.runner import TrainLoop

__import__("addressvlm.training.xtuner_shims")

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
model_root = "./models/clip-vit-large-patch14"
data_root = "./data/pitts/"
query_kinds = ["image", "text"]
# CrossText2Loc's extended text length (its MAX_TEXT_LEN): positions 0-76 keep CLIP's, 77-299 are new.
text_positions = 300
# Learnable, from pretrained CLIP's own temperature (logit scale 100), clamped there as CLIP clamps it.
temperature = 0.01
max_scale = 100.0
bank_size = 0  # memory bank (see recipes/retrieval/lvlm_pitts.py); CrossText2Loc uses in-batch negatives only

# Scheduler & Optimizer: CrossText2Loc's published training command, lr 1e-5, batch 128 (32 per GPU x 4), 40 epochs;
# AdamW's weight decay and the warm-up are not given there (ours: 0.01, 3% of the steps).
batch_size = 32  # per device
accumulative_counts = 1  # accumulation would not add negatives
dataloader_num_workers = 4
max_epochs = 40
optim_type = AdamW
lr = 1e-5
betas = (0.9, 0.98)  # CLIP's pre-training betas (CrossText2Loc does not give its own)
weight_decay = 0.01
max_norm = 1
warmup_ratio = 0.03
torch_dtype = "bfloat16"  # AMP compute dtype; the weights train in fp32

work_dir = "./work_dirs/retrieval/clip_pitts"
save_steps = 500
save_total_limit = 2

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
tokenizer = dict(type=AutoTokenizer.from_pretrained, pretrained_model_name_or_path=model_root)
image_processor = dict(type=CLIPImageProcessor.from_pretrained, pretrained_model_name_or_path=model_root)

model = dict(
    type=CLIPDualEncoder,
    clip=dict(type=CLIPModel.from_pretrained, pretrained_model_name_or_path=model_root),
    text_positions=text_positions,
    temperature=temperature,
    max_scale=max_scale,
    bank_size=bank_size,
)

#######################################################################
#                      PART 3  Dataset & Dataloader                   #
#######################################################################
retrieval_dataset = dict(
    type=RetrievalPairDataset,
    data_root=data_root,
    split="train",
    query_kinds=query_kinds,
    inputs=dict(type=CLIPRetrievalInputs, tokenizer=tokenizer, image_processor=image_processor,
                max_text_tokens=text_positions),
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
