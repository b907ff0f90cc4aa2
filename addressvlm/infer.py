"""Answer test questions with a trained model: an XTuner recipe plus checkpoint, or an exported Hugging Face folder;
or with the untuned release a recipe starts from (the zero-shot row of the paper's Table 2).

The XTuner path builds the model exactly as training built it (the recipe, its ``--cfg-options``, the checkpoint's
LoRA adapters and projector, every tensor checked) and prompts it exactly as training did: the dataset's chat
template around ``"<image>\\n" + question``, the image padded to a square with the processor's mean colour when the
recipe's dataset pads. The Hugging Face path reads the same things from the folder ``tools/export_hf.py`` wrote.

Answers go to ``predictions.jsonl`` one flushed line at a time; a rerun skips answered ids, and
``chunk_questions`` gives one process per GPU a disjoint share (whole images, so prefix sharing still applies).
"""
from __future__ import annotations

import argparse
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Sequence

import torch
from PIL import Image
from tqdm import tqdm

from addressvlm.prefix_cache import (
    ImageQuestions,
    VisionChatModel,
    generate_plain,
    generate_shared,
    sampler,
)
from addressvlm.precision import default_device_dtype, is_quantized
from addressvlm.records import (
    DataError, PREDICTION_KEYS, file_identity, open_predictions, read_jsonl, read_questions, refuse_output_over_inputs,
    write_atomic,
)
from addressvlm.model_arguments import add_model_source_arguments  # its home is torch-free: drawing tools use it

IMAGE_TOKEN = "<image>"


class CheckpointError(RuntimeError):
    """A checkpoint that does not fit the model built from its recipe."""


def image_turn(question: str) -> str:
    """The user turn as training wrote it (XTuner's ``llava_map_fn``): the image token, a newline, the text."""
    return IMAGE_TOKEN + "\n" + question.replace(IMAGE_TOKEN, "").strip()


def split_at_image(tokenizer, text: str, bos_ids: Sequence[int] = ()) -> tuple[list[int], list[int]]:
    """Token ids before and after the single image token of ``text``, each side encoded on its own as XTuner's
    ``encode_fn`` does (so no token straddles the image)."""
    before, image, after = text.partition(IMAGE_TOKEN)
    if not image or IMAGE_TOKEN in after:
        raise ValueError(f"a prompt needs exactly one {IMAGE_TOKEN}: {text!r}")
    encode = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    return list(bos_ids) + encode(before), encode(after)


def image_preprocessor(image_processor, pad_to_square: bool):
    """PIL image or path -> ``[3, H, W]`` pixels, as ``LLaVADataset`` prepares them."""
    from xtuner.dataset.utils import expand2square

    background = tuple(int(x * 255) for x in image_processor.image_mean)

    def preprocess(image) -> torch.Tensor:
        if not isinstance(image, Image.Image):
            image = Image.open(image)
        image = image.convert("RGB")
        if pad_to_square:
            image = expand2square(image, background)
        return image_processor.preprocess(image, return_tensors="pt")["pixel_values"][0]

    return preprocess


# --------------------------------------------------------------------------------------------- XTuner checkpoints
def parse_cfg_options(options: Sequence[str] | dict | None) -> dict:
    """``key=value`` strings (as ``xtuner train --cfg-options`` takes them) or a dict, as a dict for mmengine."""
    if not options:
        return {}
    if isinstance(options, dict):
        return dict(options)
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser()
    parser.add_argument("--cfg-options", nargs="+", action=DictAction)
    return parser.parse_args(["--cfg-options", *options]).cfg_options


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """An ``iter_N.pth`` file, a DeepSpeed checkpoint folder, or a work_dir (its last checkpoint)."""
    from addressvlm.stage_chain import find_last_checkpoint

    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        if any(path.glob("*model_states.pt")):
            return path
        return find_last_checkpoint(path)
    raise FileNotFoundError(f"checkpoint {path} not found (an iter_N.pth file, a DeepSpeed folder or a work_dir)")


def weights_identity(path: str | os.PathLike) -> str:
    """What identifies the weights of a checkpoint (file, DeepSpeed folder, or a work_dir's last checkpoint), as
    recorded beside answers: its files' names, sizes and modification times (``records.file_identity``). Hashing
    the content would cost a minute per start on a multi-GB checkpoint; a retrain rewrites the file, which changes
    its time."""
    return file_identity(resolve_checkpoint(path))


def load_checked_state(model: torch.nn.Module, checkpoint: Path) -> int:
    """Load a training checkpoint with ``strict=False`` (it holds only the trained tensors) and fail, naming keys,
    unless it holds exactly what this model trains and every tensor fits; return the tensor count."""
    from addressvlm.stage_chain import fit_problems
    from xtuner.model.utils import guess_load_checkpoint

    state = guess_load_checkpoint(str(checkpoint))
    # model.state_dict() (LLaVAModel's, AddressMiniCPMV's): the tensors training saves.
    problems = fit_problems(torch.nn.Module.state_dict(model), set(model.state_dict()), state)
    if problems:
        raise CheckpointError(f"{checkpoint} does not fit the model its recipe builds (same recipe and --cfg-options "
                              "as training?): " + "; ".join(problem.strip() for problem in problems))
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise CheckpointError(f"{checkpoint}: tensors did not load: {sorted(result.unexpected_keys)[:20]}")
    return len(state)


def build_recipe_model(config: str | os.PathLike, cfg_options: Sequence[str] | dict | None = None,
                       dtype: torch.dtype | None = None):
    """``(cfg, model)``: the recipe's model built as training builds it, ``cfg_options`` merged (e.g.
    ``runtime.model_root_options``), without a previous stage (a checkpoint will replace every trained tensor); frozen
    weights load in ``dtype`` (default: the dtype answering uses on this machine,
    ``precision.default_device_dtype``)."""
    from addressvlm.runtime import load_recipe

    from addressvlm import xtuner_shims  # noqa: F401
    from xtuner.registry import BUILDER

    cfg = load_recipe(str(config))
    cfg.merge_from_dict(parse_cfg_options(cfg_options))
    if "torch_dtype" in cfg.model:
        cfg.model.torch_dtype = str(dtype or default_device_dtype()[1]).removeprefix("torch.")
    if "init_from_work_dir" in cfg.model:
        cfg.model.init_from_work_dir = None
    return cfg, BUILDER.build(cfg.model)


def load_xtuner_model(config: str | os.PathLike, checkpoint: str | os.PathLike,
                      cfg_options: Sequence[str] | dict | None = None, device: str | None = None,
                      dtype: str | torch.dtype | None = None) -> VisionChatModel:
    """The recipe's model (``build_recipe_model``) with ``checkpoint`` (file, DeepSpeed folder or work_dir) loaded
    and every tensor checked, wrapped for answering with the recipe's chat template and image preprocessing."""
    checkpoint = resolve_checkpoint(checkpoint)
    cfg, model = build_recipe_model(config, cfg_options, default_device_dtype(device, dtype)[1])
    load_checked_state(model, checkpoint)
    return answering_model(cfg, model, device, dtype)


def load_release_model(config: str | os.PathLike, cfg_options: Sequence[str] | dict | None = None,
                       device: str | None = None, dtype: str | torch.dtype | None = None) -> VisionChatModel:
    """The recipe's model untuned, as training starts it: the release's weights and projector, LoRA adapters fresh
    (peft's B = 0 leaves every layer as released); prompted as the recipe trains. Table 2's zero-shot row."""
    cfg, model = build_recipe_model(config, cfg_options, default_device_dtype(device, dtype)[1])
    return answering_model(cfg, model, device, dtype)


def answering_model(cfg, model, device: str | None = None, dtype: str | torch.dtype | None = None):
    """A built recipe model ready to answer on ``device`` in ``dtype``: MiniCPM-V one question at a time, a LLaVA
    through ``wrap_xtuner_model``."""
    if prompts_itself(model):
        device, _ = default_device_dtype(device, dtype)
        return PerQuestionModel(model.to(device).eval())
    return wrap_xtuner_model(cfg, model, device, dtype)


def prompts_itself(model) -> bool:
    """MiniCPM-V (``answer(image, question)``, its remote code places the image) rather than a LLaVA and projector."""
    return not hasattr(model, "projector") and hasattr(model, "answer")


def answering_in_place(cfg, model):
    """Answering for a model as it stands, mid-training: nothing moved or cast (the optimizer holds its tensors), the
    image features in the dtype of the LLM's input embeddings; the caller chooses eval mode and autocast."""
    if prompts_itself(model):
        return PerQuestionModel(model)
    embeddings = model.llm.get_input_embeddings().weight
    return chat_model(cfg, model, embeddings.device, embeddings.dtype)


class PerQuestionModel:
    """A model that prompts itself: ``answer(image, question, max_new_tokens)`` (MiniCPM-V, whose remote code slices
    the image and places its own tokens). Answered one question at a time, greedily: no prefix sharing, no sampling."""

    def __init__(self, model):
        self.model = model

    def answer_image(self, image, questions: Sequence[str], max_new_tokens: int) -> list[str]:
        """Greedy answers to ``questions`` about ``image`` (a PIL image or a path)."""
        picture = image if isinstance(image, Image.Image) else Image.open(image)
        picture = picture.convert("RGB")
        return [self.model.answer(picture, question, max_new_tokens=max_new_tokens) for question in questions]

    def prompt_length(self, image: Image.Image, question: str) -> int:
        """Tokens of the prompt ``answer`` builds, image placeholders included (their count depends on the image's
        size: the slices)."""
        from addressvlm.minicpmv_dataset import encode_question

        return len(encode_question(question, image.convert("RGB"), self.model.tokenizer,
                                   self.model.image_settings)["input_ids"])


def wrap_xtuner_model(cfg, model, device: str | None = None, dtype: str | torch.dtype | None = None
                      ) -> VisionChatModel:
    """An XTuner ``LLaVAModel`` moved to ``device`` and cast to ``dtype`` (default: this machine's answering dtype), in
    eval mode, with the prompt format and image preprocessing of its recipe's training dataset."""
    device, dtype = default_device_dtype(device, dtype)
    if is_quantized(model.llm):
        # bitsandbytes weights (a QLoRA recipe) are placed and typed at load and cannot be cast; the image features
        # take the dtype of the LLM's (unquantized) input embeddings instead.
        dtype = model.llm.get_input_embeddings().weight.dtype
        model.visual_encoder.to(device=device, dtype=dtype)
        model.projector.to(device=device, dtype=dtype)
    else:
        model.to(device=device, dtype=dtype)
    model.eval()
    return chat_model(cfg, model, device, dtype)


def chat_model(cfg, model, device: torch.device | str, dtype: torch.dtype) -> VisionChatModel:
    """An XTuner ``LLaVAModel`` placed on ``device`` answering in ``dtype``, prompted as its recipe's dataset trains."""
    from xtuner.dataset.utils import get_bos_eos_token_ids
    from xtuner.registry import BUILDER

    dataset = cfg.train_dataloader.dataset
    template = dataset.template_map_fn.template
    tokenizer = BUILDER.build(cfg.tokenizer)
    image_processor = BUILDER.build(cfg.image_processor)
    bos_ids, eos_ids = get_bos_eos_token_ids(tokenizer)
    stop_ids = set(eos_ids)
    for word in template.get("STOP_WORDS", []):
        stop_ids.update(tokenizer.encode(word, add_special_tokens=False))

    def prompt_pieces(question: str) -> tuple[list[int], list[int]]:
        return split_at_image(tokenizer, template.INSTRUCTION.format(input=image_turn(question), round=1), bos_ids)

    def encode_images(pixels: torch.Tensor) -> torch.Tensor:
        hidden = model.visual_encoder(pixels, output_hidden_states=True).hidden_states
        return model.projector(hidden[model.visual_select_layer][:, 1:])

    def answer_ids(answer: str) -> list[int]:
        # XTuner's template_map_fn and encode_fn: the answer and SUFFIX encoded together, EOS appended unless the
        # template's SUFFIX is its EOS.
        ids = tokenizer.encode(answer + template.get("SUFFIX", ""), add_special_tokens=False)
        return ids if template.get("SUFFIX_AS_EOS", False) else ids + list(eos_ids)

    return VisionChatModel(
        language_model=model.llm, encode_images=encode_images, prompt_pieces=prompt_pieces,
        preprocess_image=image_preprocessor(image_processor, bool(dataset.get("pad_image_to_square", False))),
        tokenizer=tokenizer, stop_token_ids=frozenset(stop_ids),
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0],
        device=device, dtype=dtype, answer_ids=answer_ids)


# --------------------------------------------------------------------------------------------- exported folders
def is_minicpmv_folder(folder: str | os.PathLike) -> bool:
    """A MiniCPM-V folder (the release, or an export of a trained one): ``MiniCPMV`` in its config's architectures."""
    config = Path(folder) / "config.json"
    return config.is_file() and "MiniCPMV" in json.loads(config.read_text()).get("architectures", [])


def load_hf_model(folder: str | os.PathLike, device: str | None = None,
                  dtype: str | torch.dtype | None = None) -> VisionChatModel | PerQuestionModel:
    """Wrap a folder ``tools/export_hf.py`` wrote. A ``LlavaForConditionalGeneration``: its chat template, processor,
    stop tokens from its generation config, and square padding where its config says ``image_aspect_ratio="pad"``.
    A MiniCPM-V folder (LoRA merged, the release's layout): its hub code, prompted as the recipes train."""
    from transformers import AutoProcessor, GenerationConfig, LlavaForConditionalGeneration

    device, dtype = default_device_dtype(device, dtype)
    if is_minicpmv_folder(folder):
        from addressvlm.minicpmv import AddressMiniCPMV

        return PerQuestionModel(AddressMiniCPMV(str(folder), torch_dtype=dtype, gradient_checkpointing=False)
                                .to(device).eval())
    model = LlavaForConditionalGeneration.from_pretrained(folder, torch_dtype=dtype).to(device).eval()
    processor = AutoProcessor.from_pretrained(folder)
    tokenizer = processor.tokenizer
    stop_ids = {tokenizer.eos_token_id}
    if (Path(folder) / "generation_config.json").is_file():
        eos = GenerationConfig.from_pretrained(folder).eos_token_id
        stop_ids.update(eos if isinstance(eos, list) else [eos])
    config = model.config

    def prompt_pieces(question: str) -> tuple[list[int], list[int]]:
        text = tokenizer.apply_chat_template([{"role": "user", "content": image_turn(question)}],
                                             tokenize=False, add_generation_prompt=True)
        return split_at_image(tokenizer, text)

    def encode_images(pixels: torch.Tensor) -> torch.Tensor:
        return model.get_image_features(pixels, config.vision_feature_layer, config.vision_feature_select_strategy)

    # The chat template's text after an assistant answer (its end of turn), found by rendering a marked answer.
    marker = "\u2063ANSWER\u2063"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "?"}, {"role": "assistant", "content": marker}],
                                             tokenize=False)
    answer_end = rendered.partition(marker)[2].rstrip()

    def answer_ids(answer: str) -> list[int]:
        return tokenizer.encode(answer + answer_end, add_special_tokens=False)

    return VisionChatModel(
        language_model=model.language_model, encode_images=encode_images, prompt_pieces=prompt_pieces,
        preprocess_image=image_preprocessor(processor.image_processor,
                                            getattr(config, "image_aspect_ratio", None) == "pad"),
        tokenizer=tokenizer, stop_token_ids=frozenset(i for i in stop_ids if i is not None),
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        device=device, dtype=dtype, answer_ids=answer_ids)


# --------------------------------------------------------------------------------------------- answering
def group_by_image(questions: Iterable[dict]) -> "OrderedDict[str, list[dict]]":
    groups: OrderedDict[str, list[dict]] = OrderedDict()
    for q in questions:
        groups.setdefault(q["image"], []).append(q)
    return groups


def chunk_questions(questions: Sequence[dict], num_chunks: int, chunk_idx: int) -> list[dict]:
    """Share ``chunk_idx`` of ``num_chunks``: whole images (in order of first appearance), contiguous and near-equal
    in image count, so the shares are disjoint and together hold every question."""
    if num_chunks < 1 or not 0 <= chunk_idx < num_chunks:
        raise ValueError(f"chunk index {chunk_idx} out of range for {num_chunks} chunks")
    images = list(group_by_image(questions).items())
    start, stop = len(images) * chunk_idx // num_chunks, len(images) * (chunk_idx + 1) // num_chunks
    return [q for _, qs in images[start:stop] for q in qs]


def _batches(groups: "OrderedDict[str, list[dict]]", batch_size: int) -> Iterable[list[tuple[str, list[dict]]]]:
    """Whole images per batch while they fit in ``batch_size`` rows; an image with more questions is split."""
    batch, rows = [], 0
    for image, qs in groups.items():
        for start in range(0, len(qs), batch_size):
            piece = qs[start:start + batch_size]
            if batch and rows + len(piece) > batch_size:
                yield batch
                batch, rows = [], 0
            batch.append((image, piece))
            rows += len(piece)
    if batch:
        yield batch


def image_question_groups(model: VisionChatModel, images_questions: Sequence[tuple[object, Sequence[str]]],
                          num_samples: int = 1) -> tuple[list[int], list[ImageQuestions]]:
    """The prompt prefix every question shares and, per image (a PIL image or a path), its pixels with each of its
    questions' suffixes ``num_samples`` times: the input of ``prefix_cache``'s generation."""
    prefixes, groups = [], []
    for image, questions in images_questions:
        pieces = [model.prompt_pieces(q) for q in questions]
        prefixes += [prefix for prefix, _ in pieces]
        suffixes = [suffix for _, suffix in pieces for _ in range(num_samples)]
        groups.append(ImageQuestions(model.preprocess_image(image), suffixes))
    if any(p != prefixes[0] for p in prefixes):
        raise ValueError("the chat template puts question-dependent text before the image")
    return prefixes[0], groups


@torch.inference_mode()
def answer_questions(model: VisionChatModel, questions: Sequence[dict], out_path: str | os.PathLike,
                     image_folder: str | os.PathLike = ".", batch_size: int = 18, share_prefix: bool = True,
                     max_new_tokens: int = 32, temperature: float = 0.0, num_samples: int = 1, seed: int = 0,
                     progress: bool = True, model_settings: dict | None = None) -> int:
    """Answer the questions not yet in ``out_path`` and append them there; return how many were answered.

    ``batch_size`` counts decoded rows (question x sample). With ``num_samples > 1`` each line also holds
    ``"samples"`` (all of them; ``"prediction"`` is the first). The generation settings and ``model_settings``
    (which model answered) are recorded beside ``out_path``; resuming with others is refused."""
    if num_samples > 1 and temperature == 0:
        raise ValueError("several samples of a greedy answer are all the same: set a temperature > 0")
    if batch_size < num_samples:
        raise ValueError(f"batch size {batch_size} is smaller than the {num_samples} samples of one question")
    generate = generate_shared if share_prefix else generate_plain
    image_folder = Path(image_folder)
    settings = {"max_new_tokens": max_new_tokens, "temperature": temperature, "num_samples": num_samples,
                "seed": seed if temperature > 0 else None, **(model_settings or {})}
    with open_predictions(out_path, settings) as out:
        pending = [q for q in questions if q["question_id"] not in out.done]
        groups = group_by_image(pending)
        missing = [(qs[0]["question_id"], image) for image, qs in groups.items()
                   if not (image_folder / image).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} image(s) missing under {image_folder}; first: question "
                                    f"{missing[0][0]!r} names {missing[0][1]!r}")
        bar = tqdm(total=len(pending), unit="question", desc="answering", disable=not progress, smoothing=0.1)
        if isinstance(model, PerQuestionModel):
            if temperature > 0:
                raise ValueError("this model answers greedily only")
            for image, qs in groups.items():
                answers = model.answer_image(image_folder / image, [q["question"] for q in qs], max_new_tokens)
                for q, answer in zip(qs, answers):
                    out.write({"question_id": q["question_id"], "prediction": answer})
                bar.update(len(qs))
            bar.close()
            return len(pending)
        generator = torch.Generator(device=model.device).manual_seed(seed) if temperature > 0 else None
        choose = sampler(temperature, generator)
        for batch in _batches(groups, max(1, batch_size // num_samples)):
            prefix, image_groups = image_question_groups(
                model, [(image_folder / image, [q["question"] for q in qs]) for image, qs in batch], num_samples)
            asked = [q for _, qs in batch for q in qs]
            answers = [a for group in model.decode_groups(generate(model, prefix, image_groups, max_new_tokens, choose))
                       for a in group]
            for i, q in enumerate(asked):
                samples = answers[i * num_samples:(i + 1) * num_samples]
                record = {"question_id": q["question_id"], "prediction": samples[0]}
                if num_samples > 1:
                    record["samples"] = samples
                out.write(record)
            bar.update(len(asked))
        bar.close()
    return len(pending)


@torch.inference_mode()
def sample_answers(model: VisionChatModel, image, prompt: str, n: int, temperature: float = 0.8,
                   max_new_tokens: int = 32, seed: int | None = None, batch_size: int = 100) -> list[str]:
    """``n`` answers to one question about one image (a PIL image or a path), sampled at ``temperature`` from one
    shared prefix (the street-distribution tool asks 100 at 0.8)."""
    generator = None
    if temperature > 0:
        generator = torch.Generator(device=model.device)
        generator.manual_seed(seed) if seed is not None else generator.seed()
    choose = sampler(temperature, generator)
    prefix, suffix = model.prompt_pieces(prompt)
    pixels = model.preprocess_image(image)
    answers: list[str] = []
    while len(answers) < n:
        rows = min(batch_size, n - len(answers))
        group = ImageQuestions(pixels, [suffix] * rows)
        answers += model.decode_groups(generate_shared(model, prefix, [group], max_new_tokens, choose))[0]
    return answers


# --------------------------------------------------------------------------------------------- merging chunks
def merge_predictions(questions_path: str | os.PathLike, chunk_paths: Sequence[str | os.PathLike],
                      out_path: str | os.PathLike, allow_missing: bool = False) -> int:
    """Join per-chunk predictions into one file in question order; an id answered twice, an id not among the
    questions, or (unless ``allow_missing``) an unanswered question is an error. Return the lines written."""
    refuse_output_over_inputs(out_path, [("--questions", questions_path), *(("chunk", path) for path in chunk_paths)],
                              "--out")
    questions = read_questions(questions_path)
    known = {q["question_id"] for q in questions}
    found: dict[str, dict] = {}
    where: dict[str, str] = {}
    for path in chunk_paths:
        for line, rec in read_jsonl(path, PREDICTION_KEYS):
            qid = rec["question_id"]
            if not isinstance(rec["prediction"], str):
                raise DataError(path, line, "prediction must be a string")
            if qid not in known:
                raise DataError(path, line, f"question_id {qid!r} is not in {questions_path}")
            if qid in found:
                raise DataError(path, line, f"question_id {qid!r} answered twice (also at {where[qid]})")
            found[qid], where[qid] = rec, f"{path}:{line}"
    missing = [q["question_id"] for q in questions if q["question_id"] not in found]
    if missing and not allow_missing:
        raise DataError(questions_path, None, f"{len(missing)} question(s) have no prediction in the chunks, "
                        f"first {missing[:5]} (run the missing chunks, or pass --allow-missing)")
    lines = [json.dumps(found[q["question_id"]], ensure_ascii=False, sort_keys=True)
             for q in questions if q["question_id"] in found]
    write_atomic(out_path, "".join(line + "\n" for line in lines))
    return len(lines)


# --------------------------------------------------------------------------------------------- command line
def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The questions, output, image folder, model and device options every answering tool takes."""
    parser.add_argument("--questions", required=True, help="test_questions.jsonl")
    parser.add_argument("--image-folder",
                        help="folder the questions' image paths are relative to (default: the city root, i.e. the "
                             "parent of the questions file's folder, as in data/<city>/vqa/test_questions.jsonl)")
    add_model_source_arguments(parser)
    parser.add_argument("--num-chunks", type=int, default=1, help="split the questions (by image) into K shares")
    parser.add_argument("--chunk-idx", type=int, default=0, help="which share this process answers")


def model_settings_of(args: argparse.Namespace) -> dict:
    """Which model answered, as recorded beside an output (a resume with another is refused): the options and, for
    a checkpoint or an exported folder, its weights' identity (``records.file_identity``), so that a retrain into the
    same path is not resumed as the same model. A recipe without a checkpoint is the zero-shot model: no key of its
    own, so outputs recorded before ``--zero-shot`` still resume."""
    settings = {"config": args.config, "checkpoint": args.checkpoint, "hf": args.hf, "model_root": args.model_root,
                "cfg_options": list(args.cfg_options), "dtype": args.dtype}
    if args.checkpoint or args.hf:
        settings["weights"] = file_identity(args.hf) if args.hf else weights_identity(args.checkpoint)
    return settings


def image_folder_of(args: argparse.Namespace) -> Path:
    return Path(args.image_folder) if args.image_folder else Path(args.questions).resolve().parent.parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Answer test_questions.jsonl with a trained model (or the untuned release: --zero-shot); "
                    "predictions are appended and flushed per line, and a rerun skips answered ids.")
    parser.add_argument("--out", required=True, help="predictions.jsonl to append to (one per chunk)")
    add_model_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=18, help="rows decoded together (default 18)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
    parser.add_argument("--num-samples", type=int, default=1,
                        help="answers per question (needs --temperature > 0); all go to a 'samples' list")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--no-share-prefix", action="store_true",
                        help="prefill every question's whole prompt (slower; same greedy answers)")
    return parser


def load_model_from_args(args: argparse.Namespace) -> VisionChatModel:
    if args.hf:
        if args.config or args.checkpoint or args.zero_shot:
            raise SystemExit("give either --hf or --config with --checkpoint or --zero-shot, not both")
        return load_hf_model(args.hf, args.device, args.dtype)
    if not (args.config and (args.checkpoint or args.zero_shot)):
        raise SystemExit("a model is needed: --config RECIPE --checkpoint CKPT, --config RECIPE --zero-shot, "
                         "or --hf DIR")
    options: list[str] = []
    if args.model_root:
        from addressvlm.runtime import load_recipe, model_root_options

        options += model_root_options(load_recipe(args.config), args.model_root)
    options += list(args.cfg_options)
    if args.zero_shot:
        return load_release_model(args.config, options, args.device, args.dtype)
    return load_xtuner_model(args.config, args.checkpoint, options, args.device, args.dtype)


def main(argv: Sequence[str] | None = None) -> None:
    from addressvlm.stage_chain import StageChainError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.chunk_idx < args.num_chunks:
        parser.error(f"--chunk-idx {args.chunk_idx} is not in 0..{args.num_chunks - 1}")
    if args.num_samples > 1 and args.temperature == 0:
        parser.error("--num-samples > 1 needs --temperature > 0 (greedy samples are all the same)")
    try:
        every_question = read_questions(args.questions)
        if not every_question:
            raise DataError(args.questions, None, "no questions to answer")
        questions = chunk_questions(every_question, args.num_chunks, args.chunk_idx)
        model_settings = model_settings_of(args)  # the weights' identity before they are read
        model = load_model_from_args(args)
        answered = answer_questions(
            model, questions, args.out, image_folder=image_folder_of(args),
            batch_size=args.batch_size, share_prefix=not args.no_share_prefix, max_new_tokens=args.max_new_tokens,
            temperature=args.temperature, num_samples=args.num_samples, seed=args.seed,
            model_settings=model_settings)
    except (DataError, FileNotFoundError, CheckpointError, StageChainError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"answered {answered} of {len(questions)} question(s) of chunk {args.chunk_idx + 1}/{args.num_chunks} "
          f"-> {args.out}")
