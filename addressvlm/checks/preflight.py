"""Check a recipe against the release a user downloaded, before a cluster is spent on it (``tools/preflight.py``).

What is checked, in order, each stopping at the first problem with one message:

1. the model builds from the weights folder (remote code included), with every LoRA target present;
2. the recipe's chat template markers are single tokens of the release's tokenizer;
3. a sample of the recipe's data (or a generated one when the data is not there yet) goes through the recipe's own
   dataset and collate function, with answer tokens labelled and the prompt within ``max_length``;
4. training steps run (forward, backward, optimizer), every trained tensor gets a gradient, and the loss is finite;
5. the tensors a checkpoint saves are exactly the trained ones, which is what the next stage loads.
"""
from __future__ import annotations

import math
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from addressvlm.core.records import read_llava_json, write_llava_json
from addressvlm.training.minicpmv import AddressMiniCPMV, is_trained_minicpmv_tensor
from addressvlm.training.model import is_chained_llava_tensor
from addressvlm.training.precision import count_parameters, dtype_census
from addressvlm.training.recipes import RecipeError, local_run_options, parse_cfg_options, read_recipe


class PreflightError(RuntimeError):
    """The first problem preflight met; the message says what and where."""


SAMPLE_CONVERSATION = [
    {"from": "human", "value": "<image>\nTell me the street where this image was captured."},
    {"from": "gpt", "value": "Forbes Avenue"},
]


def sample_records(data_path: Path, image_folder: Path, count: int, out_dir: Path,
                   images_per_sample: int = 1) -> tuple[Path, Path, str]:
    """``(json, image_folder, origin)``: the first ``count`` records of the recipe's data when it is there, else one
    generated record with a generated street-view-sized image (``images_per_sample`` times, for a dataset that takes
    several per record)."""
    if data_path.is_file() and image_folder.is_dir():
        records = read_llava_json(data_path)[:count]
        origin = f"{len(records)} record(s) of {data_path}"
    else:
        image_folder = out_dir
        (out_dir / "images").mkdir(parents=True, exist_ok=True)
        generator = torch.Generator().manual_seed(0)
        pixels = (torch.rand(480, 640, 3, generator=generator) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(out_dir / "images" / "sample.jpg")
        records = [{"id": "preflight/0", "image": "images/sample.jpg", "conversations": SAMPLE_CONVERSATION}]
        if images_per_sample > 1:
            records[0].update(image=[records[0]["image"]] * images_per_sample, conversations=[
                {"from": "human", "value": "<image>\n" * (images_per_sample - 1) + SAMPLE_CONVERSATION[0]["value"]},
                *SAMPLE_CONVERSATION[1:]])
        origin = f"a generated record ({data_path} is not there yet)"
    sample = out_dir / "sample.json"
    write_llava_json(sample, records)
    return sample, image_folder, origin


def template_markers(cfg) -> list[str]:
    """The ``<|...|>`` markers of a LLaVA recipe's prompt template (none for MiniCPM-V, whose dataset checks its own)."""
    import re

    template_fn = cfg.train_dataloader.dataset.get("template_map_fn")
    if not template_fn:
        return []
    text = " ".join(str(v) for v in template_fn.template.values() if isinstance(v, str))
    return sorted(set(re.findall(r"<\|[a-z_]+\|>", text)))


def chained_predicate(model) -> Callable[[str], bool]:
    return is_trained_minicpmv_tensor if isinstance(model, AddressMiniCPMV) else is_chained_llava_tensor


def run_preflight(recipe: str, weights: str, steps: int = 1, samples: int = 2, device: str | None = None,
                  cfg_options: list[str] | dict | None = None, report: Callable[[str], None] = print) -> dict:
    """Run every check; return the figures (parameter counts, token lengths, losses). ``cfg_options`` apply after
    the relocation to ``weights`` and the CPU switch. Raises ``PreflightError``."""
    from xtuner.registry import BUILDER

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not Path(weights).is_dir():
        raise PreflightError(f"weights folder {weights} not found")
    try:
        cfg = read_recipe(recipe)
    except RecipeError as error:
        raise PreflightError(str(error)) from None
    options = local_run_options(recipe, weights, "cpu" if device == "cpu" else "gpu")
    cfg.merge_from_dict(parse_cfg_options(options))
    cfg.merge_from_dict(parse_cfg_options(cfg_options))
    if "init_from_work_dir" in cfg.model:
        cfg.model.init_from_work_dir = None  # the chain itself is check 5; the previous stage may not exist yet
    figures: dict = {"recipe": recipe, "weights": weights, "device": device}

    try:
        model = BUILDER.build(cfg.model)
    except Exception as error:  # noqa: BLE001  (any failure here is the one thing to report)
        kind = "a LoRA target does not exist" if "Target modules" in str(error) else "the model does not build"
        raise PreflightError(f"{kind} from {weights}: {type(error).__name__}: {error}") from error
    figures.update(count_parameters(model))
    figures["dtypes"] = dtype_census(model)
    report(f"ok  model builds from {weights}: {figures['trainable_params']:,} trainable, "
           f"{figures['frozen_params']:,} frozen parameters; dtypes {figures['dtypes']}")

    try:
        tokenizer = BUILDER.build(cfg.tokenizer)
    except OSError:  # transformers' message sends the user to the hub
        raise PreflightError(f"no tokenizer loads from {cfg.tokenizer.get('pretrained_model_name_or_path')}: its "
                             "files (tokenizer.json or tokenizer.model, tokenizer_config.json) are missing; copy "
                             "them from the release") from None
    for marker in template_markers(cfg):
        ids = tokenizer.encode(marker, add_special_tokens=False)
        if len(ids) != 1:
            raise PreflightError(f"chat template marker {marker} is {len(ids)} tokens of the tokenizer in {weights}, "
                                 "not one: the recipe's prompt_template does not fit this release")
    report(f"ok  chat template markers are single tokens: {template_markers(cfg) or 'checked by the dataset'}")

    with tempfile.TemporaryDirectory(prefix="preflight-") as tmp:
        dataset_cfg = cfg.train_dataloader.dataset
        images_per_sample = dataset_cfg.get("images_per_sample", 1)  # two for Table 1's separate input
        sample, image_folder, origin = sample_records(Path(dataset_cfg.data_path), Path(dataset_cfg.image_folder),
                                                      samples, Path(tmp), images_per_sample)
        dataset_cfg.update(data_path=str(sample), image_folder=str(image_folder))
        try:
            dataset = BUILDER.build(dataset_cfg)
            examples = [dataset[i] for i in range(len(dataset))]
        except Exception as error:  # noqa: BLE001
            raise PreflightError(f"the recipe's dataset cannot encode {origin}: {type(error).__name__}: {error}"
                                 ) from error
        lengths = [len(example["input_ids"]) for example in examples]
        labelled = [int((torch.as_tensor(example["labels"]) >= 0).sum()) for example in examples]
        if not all(labelled):
            raise PreflightError(f"an example of {origin} has no answer token labelled: its prompt fills max_length "
                                 f"({dataset_cfg.max_length}) or the template lost the answer")
        if "image_bound" not in examples[0]:  # LLaVA: XTuner marks the image's place with one IMAGE_TOKEN_INDEX
            from xtuner.utils import IMAGE_TOKEN_INDEX

            marks = [int((torch.as_tensor(e["input_ids"]) == IMAGE_TOKEN_INDEX).sum()) for e in examples]
            if any(count != images_per_sample for count in marks):
                raise PreflightError(f"examples of {origin} hold {marks} image places, not {images_per_sample} each: "
                                     "the template or the tokenizer splits <image>")
        figures.update(sample=origin, token_lengths=lengths, max_length=dataset_cfg.max_length)
        report(f"ok  dataset encodes {origin}: {lengths} tokens (max_length {dataset_cfg.max_length}), "
               f"{labelled} answer tokens labelled")
        collate = dict(cfg.train_dataloader.collate_fn)
        batch = collate.pop("type")(examples, **collate)
        figures["losses"] = train_steps(model, batch, steps, cfg.optim_wrapper.optimizer.lr, device, report)

    is_chained = chained_predicate(model)
    saved = set(model.state_dict())
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    not_chained = sorted(k for k in saved | trainable if not is_chained(k))
    if not_chained or len(saved) != len(trainable):
        raise PreflightError(f"checkpoints would save {len(saved)} tensors for {len(trainable)} trained ones; "
                             f"not continued by the next stage: {not_chained[:10]}")
    report(f"ok  a checkpoint saves the {len(saved)} trained tensors, all of which the next stage continues")
    return figures


def train_steps(model, batch: dict, steps: int, lr: float, device: str, report: Callable[[str], None]) -> list[float]:
    """``steps`` AdamW steps on one batch; checks finite losses and a gradient for every trained tensor."""
    model.to(device).train()
    data = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch["data"].items()}
    if "pixel_values" in data and isinstance(data["pixel_values"], list):  # MiniCPM-V: per-sample lists of tensors
        data["pixel_values"] = [[t.to(device) for t in images] for images in data["pixel_values"]]
        data["tgt_sizes"] = [t.to(device) for t in data["tgt_sizes"]]
        data["image_bound"] = [t.to(device) for t in data["image_bound"]]
    trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([p for _, p in trained], lr=lr, weight_decay=0)
    # AMP as the GPU recipes run it: half-precision compute over half frozen weights and fp32 trained tensors.
    half = {p.dtype for p in model.parameters() if not p.requires_grad} & {torch.bfloat16, torch.float16}
    autocast = torch.autocast(torch.device(device).type, dtype=half.pop()) if half else nullcontext()
    losses = []
    for step in range(steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = model(dict(data), mode="loss")["loss"]
        if not math.isfinite(loss.item()):
            raise PreflightError(f"step {step}: loss is {loss.item()}")
        loss.backward()
        unreached = [name for name, p in trained if p.grad is None]
        if unreached:
            raise PreflightError(f"{len(unreached)} trained tensors get no gradient (adapters where no gradient can "
                                 f"reach): {unreached[:8]}")
        optimizer.step()
        losses.append(loss.item())
        report(f"ok  step {step}: loss {loss.item():.4f}, every one of {len(trained)} trained tensors has a gradient "
               f"({time.perf_counter() - start:.1f} s)")
    return losses
