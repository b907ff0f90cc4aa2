"""One vLLM engine of ``eval/infer_vllm.py`` (``addressvlm.runs.vllm_batch`` starts it): vLLM's offline ``LLM``
on a folder ``tools/export_hf.py`` wrote, answering greedily; run in the modern environment (.venv-modern) as
``python -m addressvlm.runs.vllm_worker``, so it imports nothing of the XTuner environment.

Questions come on stdin, one image per line: ``{"image": DATA_URL, "questions": [[question_id, text], ...]}`` (the
image already padded as training padded it). Answers go to stdout, one question per line, as the tokens the model
chose, the stop token left out: ``{"question_id": ..., "token_ids": [...]}``; the caller decodes them as
``eval/infer.py`` does. vLLM's own output goes to stderr.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
from typing import IO, Iterator

from addressvlm.checks.vllm_check import CPU_MEMORY_SHARE


def read_batches(lines: IO[str], batch_size: int) -> Iterator[list[tuple[str, object, str]]]:
    """``(question_id, image, text)`` triples, whole images at a time until a batch holds ``batch_size`` questions;
    each image decoded once for all its questions."""
    from PIL import Image

    batch: list[tuple[str, object, str]] = []
    for line in iter(lines.readline, ""):
        request = json.loads(line)
        encoded = request["image"].partition(",")[2]
        image = Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB")
        batch += [(question_id, image, text) for question_id, text in request["questions"]]
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def start_engine(model: str, dtype: str, cpu: bool):
    if cpu:
        # One process: vLLM's engine core and its worker, each a process of its own by default, each import torch
        # and vLLM again (most of a minute on a small CPU) and, with no GPU to keep busy, gain nothing.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM

    # The model on one device, run in the engine's own process ("uni"; an engine per GPU is the data parallelism).
    # Eager on a CPU: compiling the graph costs more start-up than it gains there.
    cpu_options = {"enforce_eager": True, "gpu_memory_utilization": CPU_MEMORY_SHARE} if cpu else {}
    return LLM(model=model, dtype=dtype, distributed_executor_backend="uni", **cpu_options)


def answer(engine, batch: list[tuple[str, object, str]], max_new_tokens: int) -> Iterator[dict]:
    """The batch's greedy answers as token ids. Each question is one user turn, the image before the text, rendered
    by the folder's chat template as vLLM's server renders it."""
    from vllm import SamplingParams

    conversations = [[{"role": "user", "content": [{"type": "image_pil", "image_pil": image},
                                                   {"type": "text", "text": text}]}]
                     for _, image, text in batch]
    outputs = engine.chat(conversations, SamplingParams(temperature=0.0, max_tokens=max_new_tokens,
                                                        detokenize=False), use_tqdm=False)
    for (question_id, _, _), output in zip(batch, outputs):
        completion = output.outputs[0]
        token_ids = list(completion.token_ids)
        if completion.finish_reason == "stop":  # ended by a stop token, which vLLM keeps and eval/infer.py does not
            token_ids = token_ids[:-1]
        yield {"question_id": question_id, "token_ids": token_ids}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a folder tools/export_hf.py wrote")
    parser.add_argument("--dtype", required=True)
    parser.add_argument("--max-new-tokens", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True, help="questions per call of the engine")
    parser.add_argument("--cpu", action="store_true", help="vLLM's CPU build")
    args = parser.parse_args()
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    # vLLM logs to stdout: everything but the answers goes to stderr, the log.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    engine = start_engine(args.model, args.dtype, args.cpu)
    for batch in read_batches(sys.stdin, args.batch_size):
        for record in answer(engine, batch, args.max_new_tokens):
            answers.write(json.dumps(record) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
