"""An OpenAI-compatible endpoint (vLLM, lmdeploy, ``tools/serve.py``) checked against ``eval/infer.py``: the test
questions asked greedily through the API, the answers compared with a ``predictions.jsonl``; and its throughput with
several concurrent clients (docs/serving.md).
"""
from __future__ import annotations

import base64
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image

from addressvlm.core.records import open_predictions, read_predictions
from addressvlm.data.label_backends import data_url


def client_for(base_url: str, api_key: str | None = None, timeout_s: float = 600.0):
    import openai

    return openai.OpenAI(base_url=base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY", "EMPTY"),
                         timeout=timeout_s, max_retries=0)


# vLLM's sampling options for an answer decoded with the special tokens it holds, written as they are.
KEEP_SPECIAL_TOKENS = {"skip_special_tokens": False, "spaces_between_special_tokens": False}


def ask(client, model: str, image: str, question: str, max_tokens: int, keep_special_tokens: bool = False) -> str:
    """One greedy answer: the image (a data URL) and the question in one user message, as eval/infer.py prompts
    (the server's chat template adds the rest). ``keep_special_tokens``: ask vLLM for the answer's special tokens
    too, as eval/infer.py decodes MiniCPM-V's answers (its generate decodes as the release's chat does)."""
    response = client.chat.completions.create(
        model=model, temperature=0, max_tokens=max_tokens,
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                               {"type": "text", "text": question}]}],
        extra_body=KEEP_SPECIAL_TOKENS if keep_special_tokens else None)
    return (response.choices[0].message.content or "").strip()


def padded_data_url(path: Path, colour: tuple[int, int, int]) -> str:
    """The image padded to a square with ``colour`` as training padded it, as a lossless PNG data URL: for engines
    whose processor does not pad (vLLM, lmdeploy)."""
    from xtuner.dataset.utils import expand2square

    buffer = io.BytesIO()
    expand2square(Image.open(path).convert("RGB"), colour).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_data_url(path: Path, pad_colour: tuple[int, int, int] | None) -> str:
    """The image as a data URL for an engine that answers an exported folder: padded to a square with
    ``pad_colour`` (``image_prompts.export_pad_colour``), or the file as it is when the folder does not pad."""
    return padded_data_url(path, pad_colour) if pad_colour else data_url(path)


def endpoint_answers(client, model: str, questions: Sequence[dict], image_folder: Path, out_path: Path,
                     max_tokens: int = 32, concurrency: int = 8, pad_colour: tuple[int, int, int] | None = None,
                     keep_special_tokens: bool = False) -> int:
    """Answer the questions not yet in ``out_path`` through the endpoint, ``concurrency`` requests at a time, and
    append them (a predictions file: resumable); return how many were answered. ``pad_colour``: send the images
    padded to a square with it; ``keep_special_tokens``: as ``ask``."""
    settings = {"endpoint_model": model, "max_new_tokens": max_tokens, "temperature": 0.0,
                "pad_colour": list(pad_colour) if pad_colour else None,
                # recorded only when set, so that answers written before it existed still resume
                **({"keep_special_tokens": True} if keep_special_tokens else {})}
    with open_predictions(out_path, settings) as out:
        pending = [q for q in questions if q["question_id"] not in out.done]
        urls = {image: image_data_url(image_folder / image, pad_colour) for image in {q["image"] for q in pending}}
        with ThreadPoolExecutor(max(1, concurrency)) as pool:
            futures = {pool.submit(ask, client, model, urls[q["image"]], q["question"], max_tokens,
                                   keep_special_tokens): q
                       for q in pending}
            for future in as_completed(futures):
                out.write({"question_id": futures[future]["question_id"], "prediction": future.result()})
    return len(pending)


@dataclass
class Agreement:
    compared: int
    equal: int
    differences: list[tuple[str, str, str]]  # (question_id, reference, endpoint)

    @property
    def share(self) -> float:
        return self.equal / self.compared if self.compared else 0.0

    def summary(self, limit: int = 10) -> str:
        lines = [f"{self.equal} of {self.compared} greedy answers equal ({100 * self.share:.1f}%)"]
        lines += [f"  {qid}: eval/infer.py {ours!r}, endpoint {theirs!r}"
                  for qid, ours, theirs in self.differences[:limit]]
        return "\n".join(lines)


def _as_compared(answer: str) -> str:
    """An answer as compared: stripped, and without the replacement characters that end an answer cut by max_tokens
    inside a character (transformers' decode writes U+FFFD for the incomplete bytes, vLLM's detokenizer leaves them
    out: the same tokens either way)."""
    return answer.strip().rstrip("\ufffd").rstrip()


def agreement(reference_path: str | os.PathLike, endpoint_path: str | os.PathLike) -> Agreement:
    """The questions answered in both files, and where their answers differ (exact strings, after ``_as_compared``)."""
    reference = read_predictions(reference_path)
    endpoint = read_predictions(endpoint_path)
    shared = [qid for qid in reference if qid in endpoint]
    differences = [(qid, reference[qid][1], endpoint[qid][1]) for qid in shared
                   if _as_compared(reference[qid][1]) != _as_compared(endpoint[qid][1])]
    return Agreement(len(shared), len(shared) - len(differences), differences)


def requests_per_second(client, model: str, image: str, question: str, clients: int, requests: int,
                        max_tokens: int = 8) -> float:
    """Greedy requests completed per second with ``clients`` concurrent clients sending ``requests`` in all."""
    with ThreadPoolExecutor(clients) as pool:
        start = time.perf_counter()
        list(pool.map(lambda _: ask(client, model, image, question, max_tokens), range(requests)))
        return requests / (time.perf_counter() - start)
