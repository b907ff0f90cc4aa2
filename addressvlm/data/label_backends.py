"""The backends that write a hint prompt's answer: ``rule`` (reasons composed from facts), ``openai`` (any
OpenAI-compatible server) and ``hf`` (a local transformers LVLM); and the command-line options that choose one,
shared by the labelling scripts and the retrieval data builder.
"""
from __future__ import annotations

import base64
import hashlib
import os
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from pathlib import Path

from addressvlm.data.graft import parse_splits

if TYPE_CHECKING:
    from addressvlm.data.labels import Facts


@dataclass
class LabelRequest:
    key: str  # the street view's image path in locations.csv
    images: list[Path]  # what the model sees (two for the "separate" variant)
    prompt: str
    facts: Facts


class LabelBackendError(RuntimeError):
    """One request failed for good (retries exhausted); the run goes on and a rerun retries it."""


class BackendUnavailable(RuntimeError):
    """The backend cannot answer any request (no server at the address, a key it refuses, no model named): the run
    stops before, or at, its first request rather than retrying every image."""


# --------------------------------------------------------------------------------------------- backends
class RuleBackend:
    """Deterministic reasons composed from facts by the task; phrasing varies per image (seeded by its key) but
    reproduces."""

    name = "rule"
    concurrency = 1

    def __init__(self, task):
        self.task = task

    def generate(self, request: LabelRequest) -> str:
        rng = random.Random(int.from_bytes(hashlib.sha256(request.key.encode()).digest()[:8], "big"))
        return self.task.rule_reason(request.facts, rng)


def data_url(path: Path) -> str:
    """The image file as a base64 ``data:`` URL, the form every OpenAI-compatible server accepts."""
    mime = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


class OpenAIBackend:
    """Any OpenAI-compatible chat server with vision (vLLM, lmdeploy, SGLang, Ollama, OpenAI).

    Retries 408/409/429/5xx, timeouts and dropped connections with exponential backoff (honouring Retry-After);
    any other error (401, 404 model not found, 400 bad request) stops the run, since it would fail every request,
    and so does a refused connection (no server listening at ``base_url``): ``BackendUnavailable``.
    """

    name = "openai"

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None, concurrency: int = 8,
                 max_retries: int = 6, backoff_s: float = 1.0, max_backoff_s: float = 60.0,
                 timeout_s: float = 120.0, temperature: float = 0.2, max_tokens: int = 400):
        import openai

        self._openai = openai
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY", "EMPTY"),
                                    max_retries=0, timeout=timeout_s)
        self.model, self.concurrency, self.max_retries = model, max(1, concurrency), max_retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.temperature, self.max_tokens = temperature, max_tokens

    def reach(self, timeout_s: float = 10.0) -> None:
        """Ask the server once for its models, before any work: ``BackendUnavailable`` when no server answers at
        ``base_url`` or it refuses the key."""
        oa = self._openai
        try:
            self.client.with_options(timeout=timeout_s).models.list()
        except oa.APIConnectionError as exc:
            raise BackendUnavailable(f"no OpenAI-compatible server answers at {self.client.base_url} "
                                     f"({_connection_failure(exc)}): start it, or give the right --base-url") from None
        except oa.APIStatusError as exc:
            if exc.status_code in (401, 403):
                raise BackendUnavailable(f"the server at {self.client.base_url} refuses the API key (HTTP "
                                         f"{exc.status_code}): check it (--api-key, else $OPENAI_API_KEY)") from None
            # Any other answer (a server without /models) still shows that one is listening.

    def _retry_after(self, exc) -> float | None:
        response = getattr(exc, "response", None)
        value = response.headers.get("retry-after") if response is not None else None
        try:
            return float(value) if value else None
        except ValueError:
            return None

    def generate(self, request: LabelRequest) -> str:
        oa = self._openai
        content = [{"type": "image_url", "image_url": {"url": data_url(p)}} for p in request.images]
        content.append({"type": "text", "text": request.prompt})
        last = None
        for attempt in range(self.max_retries + 1):
            try:
                response = self.client.chat.completions.create(
                    model=self.model, messages=[{"role": "user", "content": content}],
                    temperature=self.temperature, max_tokens=self.max_tokens)
                return (response.choices[0].message.content or "").strip()
            except (oa.APIConnectionError, oa.APITimeoutError) as exc:  # APITimeoutError is a connection error too
                if _refused(exc):
                    raise BackendUnavailable(f"{self.client.base_url}: connection refused (no server listening "
                                             "there); labels written so far are kept, a rerun goes on") from None
                last, wait = exc, None
            except oa.APIStatusError as exc:
                if exc.status_code not in (408, 409, 429) and exc.status_code < 500:
                    raise
                last, wait = exc, self._retry_after(exc)
            if attempt < self.max_retries:
                backoff = min(self.max_backoff_s, self.backoff_s * 2 ** attempt) * random.uniform(1.0, 1.25)
                time.sleep(min(self.max_backoff_s, wait) if wait is not None else backoff)
        raise LabelBackendError(f"{request.images[0]}: no answer after {self.max_retries + 1} attempts ({last})")


def _causes(exc: BaseException):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def _refused(exc: BaseException) -> bool:
    """A connection the server's host refused: nothing listens there, so waiting and retrying cannot help."""
    return any(isinstance(cause, ConnectionRefusedError) for cause in _causes(exc))


def _connection_failure(exc: BaseException) -> str:
    """The innermost reason a connection failed ("[Errno 111] Connection refused"), for a one-line message."""
    return str(list(_causes(exc))[-1]) or type(exc).__name__


class HFBackend:
    """A local transformers LVLM with a chat template (e.g. llava-hf/llava-v1.6-mistral-7b-hf), greedy by default."""

    name = "hf"
    concurrency = 1

    def __init__(self, model: str, device: str | None = None, dtype: str = "auto", max_new_tokens: int = 400,
                 temperature: float = 0.0):
        import torch
        from transformers import AutoModelForVision2Seq, AutoProcessor

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.processor = AutoProcessor.from_pretrained(model)
        self.model = AutoModelForVision2Seq.from_pretrained(
            model, torch_dtype=dtype if dtype == "auto" else getattr(torch, dtype)).to(self.device).eval()
        self.max_new_tokens, self.temperature = max_new_tokens, temperature

    def generate(self, request: LabelRequest) -> str:
        import torch
        from PIL import Image

        images = [Image.open(p).convert("RGB") for p in request.images]
        conversation = [{"role": "user", "content": [{"type": "image"} for _ in images] +
                         [{"type": "text", "text": request.prompt}]}]
        text = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        inputs = self.processor(images=images, text=text, return_tensors="pt").to(self.device)
        sampling = dict(do_sample=True, temperature=self.temperature) if self.temperature > 0 else dict(do_sample=False)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, **sampling)
        return self.processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def make_backend(name: str, task, **options):
    """``rule`` (reasons composed by ``task``) | ``openai`` (options: model, base_url, api_key, concurrency, ...) |
    ``hf`` (options: model, ...)."""
    if name == "rule":
        return RuleBackend(task)
    if name == "openai":
        return OpenAIBackend(**options)
    if name == "hf":
        return HFBackend(**options)
    raise ValueError(f"unknown label backend {name!r}: rule, openai or hf")


def check_backend(name: str, options: dict) -> None:
    """Before any work: the backend's options are complete (``ValueError``), and an openai backend's server answers
    once (``BackendUnavailable``)."""
    if name != "rule" and not options.get("model"):
        raise ValueError(f"the {name} label backend needs a model (--model)")
    if name == "openai":
        OpenAIBackend(**options).reach()


def add_backend_arguments(parser, backend_help: str, max_tokens: int) -> None:
    """The options that choose a backend and set it up (``backend_options`` reads them): the labelling scripts'
    and the retrieval data builder's. ``max_tokens``: the default answer length (a reason is longer than a scene
    text)."""
    parser.add_argument("--backend", choices=("rule", "openai", "hf"), default="rule", help=backend_help)
    parser.add_argument("--model", help="openai: served model name; hf: model path or hub id")
    parser.add_argument("--base-url", help="openai: server URL, e.g. http://localhost:8000/v1")
    parser.add_argument("--api-key", help="openai: key (default $OPENAI_API_KEY, else 'EMPTY')")
    parser.add_argument("--concurrency", type=int, default=8, help="openai: requests in flight (8)")
    parser.add_argument("--max-retries", type=int, default=6, help="openai: retries on 429/5xx/timeouts (6)")
    parser.add_argument("--backoff", type=float, default=1.0, help="openai: first retry delay in seconds (1.0)")
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--max-tokens", type=int, default=max_tokens, help=f"longest answer in tokens ({max_tokens})")
    parser.add_argument("--device", help="hf: torch device (default cuda if available)")
    parser.add_argument("--dtype", default="auto", help="hf: torch dtype name or auto")


def add_label_arguments(parser) -> None:
    """The options every labelling script shares: backend, its settings, street data, splits, limit."""
    add_backend_arguments(parser, "rule: reasons from facts, no model (the paper rejects such templates; its labels "
                                  "come from an LVLM: openai or hf)", max_tokens=400)
    parser.add_argument("--streets", type=Path, help="streets GeoJSON or .osm.pbf (default: the city's)")
    parser.add_argument("--city-name", help="city name used in prompts (default: the city folder's name)")
    parser.add_argument("--splits", default="train", type=parse_splits,
                        help="comma-separated splits, or 'all' (default train)")
    parser.add_argument("--limit", type=int, default=None, help="label at most this many images in this run")


def backend_options(parser, args) -> dict:
    """The chosen backend's constructor options from ``add_backend_arguments``'s flags (a usage error if
    incomplete)."""
    if args.backend != "rule" and not args.model:
        parser.error(f"--backend {args.backend} needs --model")
    if args.backend == "openai":
        return dict(model=args.model, base_url=args.base_url, api_key=args.api_key, concurrency=args.concurrency,
                    max_retries=args.max_retries, backoff_s=args.backoff, temperature=args.temperature,
                    max_tokens=args.max_tokens)
    if args.backend == "hf":
        return dict(model=args.model, device=args.device, dtype=args.dtype, max_new_tokens=args.max_tokens,
                    temperature=args.temperature)
    return {}
