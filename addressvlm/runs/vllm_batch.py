"""Batch answering with vLLM's offline engine (``eval/infer_vllm.py``; docs/serving.md, "Batch answering with vLLM"):
the test questions of a folder ``tools/export_hf.py`` wrote, answered greedily by one engine per GPU
(``addressvlm.runs.vllm_worker``, started in the modern environment, .venv-modern), into the predictions file
``eval/infer.py`` writes (``records.open_predictions``: one flushed line per answer, resumable, its settings beside
it).

This side runs in the XTuner environment, so what makes the answers ``eval/infer.py --hf``'s is that tool's own
code: images padded to a square as training padded them (``endpoint_check.image_data_url``), the question text as
its prompt holds it, and each answer decoded from the tokens vLLM chose by the folder's tokenizer as eval/infer.py
decodes (an answer cut inside a character reads the same). The engines take whole images from one queue, so a faster
one takes more.
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from addressvlm.answering.answering import group_by_image, refuse_missing_images
from addressvlm.answering.chat_model import decode_answer
from addressvlm.answering.loading import is_minicpmv_folder
from addressvlm.checks.endpoint_check import image_data_url
from addressvlm.checks.vllm_check import (
    MODERN_PYTHON, VllmError, is_cpu_build, log_tail, modern_environment, refuse_unsupported_head_size,
    stop_process_group)
from addressvlm.core.records import file_identity, open_predictions
from addressvlm.training.image_prompts import export_pad_colour, question_text


def engine_log(out_path: Path, index: int) -> Path:
    """Where engine ``index`` logs: beside the predictions."""
    return out_path.with_name(f"{out_path.name}.vllm-{index}.log")


def default_dtype() -> str:
    """eval/infer.py's default: float32 on vLLM's CPU build, bfloat16 on a GPU."""
    return "float32" if is_cpu_build(MODERN_PYTHON) else "bfloat16"


def engine_devices(count: int) -> list[str | None]:
    """The GPU of each of ``count`` engines as ``CUDA_VISIBLE_DEVICES`` names it (the first ``count`` visible ones);
    ``[None]`` on vLLM's CPU build, which runs one engine."""
    if count < 1:
        raise VllmError(f"--data-parallel-size {count}: give 1 or more engines")
    if is_cpu_build(MODERN_PYTHON):
        if count > 1:
            raise VllmError(f"--data-parallel-size {count}: vLLM's CPU build in {MODERN_PYTHON.parent.parent} runs "
                            "one engine (a GPU build runs one per GPU)")
        return [None]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [str(index) for index in range(count)]
    devices = [device.strip() for device in visible.split(",") if device.strip()]
    if count > len(devices):
        raise VllmError(f"--data-parallel-size {count}: CUDA_VISIBLE_DEVICES={visible} names {len(devices)} GPU(s)")
    return devices[:count]


def refuse_unservable(folder: Path) -> None:
    """``VllmError`` unless vLLM can answer the folder as eval/infer.py --hf does: a LLaVA export (MiniCPM-V's
    prompt is its remote code's, not a chat template vLLM renders) of a head size the CPU build runs."""
    if not (folder / "config.json").is_file():
        raise VllmError(f"{folder}: no config.json: give a folder tools/export_hf.py wrote")
    if is_minicpmv_folder(folder):
        raise VllmError(f"{folder}: a MiniCPM-V folder; batch answering with vLLM takes a LLaVA export "
                        "(answer MiniCPM-V with eval/infer.py --hf)")
    if is_cpu_build(MODERN_PYTHON):
        refuse_unsupported_head_size(folder)


def start_engines(folder: Path, out_path: Path, devices: Sequence[str | None], dtype: str, max_new_tokens: int,
                  batch_size: int) -> list[subprocess.Popen]:
    """One ``vllm_worker`` per device, each in a session of its own (``stop_process_group`` ends it with its
    children), logging to ``engine_log``."""
    if not MODERN_PYTHON.is_file():
        raise VllmError(f"{MODERN_PYTHON} not found: build the modern environment first (make modern-env)")
    engines = []
    for index, device in enumerate(devices):
        env = modern_environment()
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        command = [str(MODERN_PYTHON), "-m", "addressvlm.runs.vllm_worker", "--model", str(folder),
                   "--dtype", dtype, "--max-new-tokens", str(max_new_tokens), "--batch-size", str(batch_size)]
        with open(engine_log(out_path, index), "w") as log:
            engines.append(subprocess.Popen(command + (["--cpu"] if device is None else []), stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=log, encoding="utf-8", env=env,
                                            start_new_session=True))
    return engines


def _feed(engine: subprocess.Popen, images: queue.Queue, image_folder: Path, pad_colour, results: queue.Queue) -> None:
    """Hand ``engine`` images (with their questions) from the shared queue until it is empty, then close its input.
    An error is passed on through ``results``; a closed pipe is the engine stopping, which its exit status tells."""
    try:
        while True:
            try:
                image, questions = images.get_nowait()
            except queue.Empty:
                break
            engine.stdin.write(json.dumps({
                "image": image_data_url(image_folder / image, pad_colour),
                "questions": [[q["question_id"], question_text(q["question"])] for q in questions]}) + "\n")
            engine.stdin.flush()
        engine.stdin.close()
    except BrokenPipeError:
        pass
    except Exception as exc:  # noqa: BLE001 - re-raised by the thread that writes the answers
        results.put(exc)


def _collect(index: int, engine: subprocess.Popen, results: queue.Queue) -> None:
    """Pass on ``engine``'s answers, then its index once its output ends."""
    for line in engine.stdout:
        results.put(json.loads(line))
    results.put(index)


def answer_with_vllm(folder: str | os.PathLike, questions: Sequence[dict], out_path: str | os.PathLike,
                     image_folder: str | os.PathLike, max_new_tokens: int = 32, batch_size: int = 256,
                     data_parallel_size: int = 1, dtype: str | None = None, progress: bool = True) -> int:
    """Answer the questions not yet in ``out_path`` with ``data_parallel_size`` vLLM engines and append them there;
    return how many were answered. The model (the folder and its weights' identity), the dtype and the generation
    settings are recorded beside ``out_path``; resuming with others is refused. Nothing starts when every question
    is answered."""
    folder, out_path, image_folder = Path(folder), Path(out_path), Path(image_folder)
    refuse_unservable(folder)
    devices = engine_devices(data_parallel_size)
    dtype = dtype or default_dtype()
    settings = {"engine": "vllm", "hf": str(folder), "weights": file_identity(folder), "dtype": dtype,
                "max_new_tokens": max_new_tokens, "temperature": 0.0}
    with open_predictions(out_path, settings) as out:
        pending = [q for q in questions if q["question_id"] not in out.done]
        groups = group_by_image(pending)
        refuse_missing_images(groups, image_folder)
        if not pending:
            return 0
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        images: queue.Queue = queue.Queue()
        for group in groups.items():
            images.put(group)
        results: queue.Queue = queue.Queue()
        pad_colour = export_pad_colour(folder)
        engines = start_engines(folder, out_path, devices, dtype, max_new_tokens, batch_size)
        answered = 0
        try:
            for index, engine in enumerate(engines):
                threading.Thread(target=_feed, args=(engine, images, image_folder, pad_colour, results),
                                 daemon=True).start()
                threading.Thread(target=_collect, args=(index, engine, results), daemon=True).start()
            with tqdm(total=len(pending), unit="question", desc="answering (vLLM)", disable=not progress,
                      smoothing=0.1) as bar:
                running = len(engines)
                while running:
                    result = results.get()
                    if isinstance(result, Exception):
                        raise result
                    if isinstance(result, int):  # an engine's output ended
                        code = engines[result].wait()
                        if code != 0:
                            log = engine_log(out_path, result)
                            raise VllmError(f"vLLM stopped (exit {code}; log {log}): {log_tail(log)}")
                        running -= 1
                        continue
                    out.write({"question_id": result["question_id"],
                               "prediction": decode_answer(tokenizer, result["token_ids"])})
                    answered += 1
                    bar.update()
        finally:
            for engine in engines:
                stop_process_group(engine)
    if answered != len(pending):
        raise VllmError(f"vLLM answered {answered} of the {len(pending)} question(s) asked (its logs: "
                        f"{out_path.name}.vllm-*.log beside {out_path})")
    return answered
