# AddressVLM stage 1 on Pitts-IAL: cross-view alignment tuning of LLaVA-Phi3-mini (CLIP ViT-L/14-336 + Phi-3-mini).
#
# Weights (the *trained* LLaVA-Phi3-mini in XTuner layout: LLM + tokenizer, visual_encoder/, projector/):
#   huggingface-cli download xtuner/llava-phi-3-mini-xtuner --local-dir ./models/llava-phi-3-mini-xtuner
# Data (see docs/data.md and docs/stage1.md; the city root is data/pitts):
#   python datasets_prep/ingest.py ...                                                  -> data/pitts/locations.csv
#   python datasets_prep/crop_satellite.py --city data/pitts --keep-clear-for-delta 0.5 -> data/pitts/stage1/crops/
#   python datasets_prep/graft.py --city data/pitts --delta 0.5                         -> data/pitts/stage1/grafted/
#   python datasets_prep/make_alignment_labels.py --city data/pitts --backend openai ...
#   python datasets_prep/build_stage1.py --city data/pitts                              -> data/pitts/stage1/train.json
#   (no street name under the corner the street view will cover, as Table 9's delta 0.3 / 0.7 crops keep theirs, so
#   that those rows differ from this one in delta alone)
# Train on 8 GPUs (per-device batch 4 x 8 GPUs x accumulation 16, Table A1), then stage 2 (recipes/stage2_pitts.py):
#   NPROC_PER_NODE=8 xtuner train recipes/stage1_pitts.py --deepspeed deepspeed_zero2
# Override anything from the command line, e.g. `--cfg-options train_dataloader.batch_size=2`.
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
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPImageProcessor, CLIPVisionModel

from addressvlm.training.dataset import CityLLaVADataset
from addressvlm.answering.hooks import AddressMetricsHook, ResumeLoadHook, RNGStateHook
from addressvlm.training.model import AddressLLaVAModel
from addressvlm.training.vis_backends import TensorboardIfInstalled
from xtuner.dataset.collate_fns import default_collate_fn
from xtuner.dataset.map_fns import llava_map_fn, template_map_fn_factory
from xtuner.dataset.samplers import LengthGroupedSampler
from xtuner.engine.hooks import DatasetInfoHook
from xtuner.engine.runner import TrainLoop
from xtuner.utils import PROMPT_TEMPLATE

# Applied as the recipe is read, not when its classes are built: `xtuner train --resume` reads the checkpoint
# before it builds anything (addressvlm/training/xtuner_shims.py).
__import__("addressvlm.training.xtuner_shims")

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
# Model: the released LLaVA-Phi3-mini (fine-tuned LLM, fine-tuned CLIP, trained projector), not a random projector.
llava_root = "./models/llava-phi-3-mini-xtuner"
llm_name_or_path = llava_root
visual_encoder_name_or_path = llava_root + "/visual_encoder"
projector_name_or_path = llava_root + "/projector"
init_from_work_dir = None  # stage 1 starts from the release itself
# What a stage started from init_from_work_dir does with each part the previous stage trained: "continue" training
# it, "open" it fresh (the previous stage did not train it) or carry it "frozen" (loaded, not trained); a checkpoint
# that does not match is refused, naming the keys. Table 4's variants change it (recipes/ablations/).
stage_chain = dict(llm_lora="continue", visual_encoder_lora="continue", projector="continue")
# Frozen LLM and CLIP load in bf16 (fp16 on a GPU without bf16; fp32 on CPU through addressvlm.training.recipes); the
# trained tensors (LoRA, projector) are kept in fp32 by the model whatever this is (addressvlm/training/precision.py).
torch_dtype = "bfloat16"

# Data: the city root holds locations.csv and images; stage-1 JSON paths are relative to it.
data_root = "./data/pitts/"
data_path = data_root + "stage1/train.json"
image_folder = data_root
prompt_template = PROMPT_TEMPLATE.phi3_chat  # ours (the paper names none): the release's own chat template
max_length = int(2048 - (336 / 14) ** 2)  # Table A1: 2048 minus the 576 image tokens

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

# LoRA (Table A1: rank 128, dropout 0.05). Where it goes is ours, A1 does not say: on the LLM and on the vision
# encoder, the two parts Table 4's full model trains. The paper gives no alpha; we use 256 = 2 x rank, the setting
# of LLaVA-1.5's own rank-128 LoRA recipe, which keeps the update scale (alpha / r = 2) this model family was tuned
# with.
lora_rank = 128
lora_alpha = 256
lora_dropout = 0.05

# Save
work_dir = "./work_dirs/llava_phi3_mini/stage1_pitts"
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
    type=AddressLLaVAModel,
    # Base weights frozen, LoRA adapters and the projector trained: Table 4's "Ours" row (VE and LLM in both stages;
    # the projector, "VLA", trained in both by section 4.3's text). Training VE and LLM through LoRA is our reading.
    freeze_llm=True,
    freeze_visual_encoder=True,
    projector_name_or_path=projector_name_or_path,
    init_from_work_dir=init_from_work_dir,
    stage_chain=stage_chain,
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
    # No target_modules: every linear layer of the CLIP layers whose output reaches the LLM (not the last one, since
    # the LLM reads hidden_states[-2]; addressvlm.training.model places it).
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
llava_dataset = dict(
    type=CityLLaVADataset,
    data_path=data_path,
    image_folder=image_folder,
    tokenizer=tokenizer,
    image_processor=image_processor,
    dataset_map_fn=llava_map_fn,
    template_map_fn=dict(type=template_map_fn_factory, template=prompt_template),
    max_length=max_length,
    pad_image_to_square=True,
)

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=dataloader_num_workers,
    pin_memory=True,
    dataset=llava_dataset,
    sampler=dict(
        type=LengthGroupedSampler,
        length_property="modality_length",
        per_device_batch_size=batch_size * accumulative_counts,
    ),
    collate_fn=dict(type=default_collate_fn),
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
    dtype=torch_dtype,  # AMP computes in the frozen weights' dtype (V100: model.torch_dtype=float16 and this)
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
