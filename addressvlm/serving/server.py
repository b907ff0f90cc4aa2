"""A trained model behind an OpenAI-compatible API and a web page (docs/serving.md; ``tools/serve.py``).

Routes: ``POST /v1/chat/completions`` (OpenAI's chat shape: one user message with one image and a question),
``GET /v1/models``, ``POST /v1/locate`` (a street view -> generated district and street, the closed-set top 5 of
``ranking.rank_image_questions``, the answer to an optional free question), ``GET /v1/city`` (the streets of the
city for the page's map), ``GET /`` (the page, ``addressvlm/serving/static/``: nothing is fetched from the internet).

One worker thread owns the model. Requests queue for it; each turn it takes every greedy generation waiting (up to
``max_batch_rows`` questions) and decodes them together through ``prefix_cache.generate_shared``, so concurrent
clients share forward passes. Sampled answers and rankings run one request at a time. A model that prompts itself
(MiniCPM-V 2.6, ``infer.PerQuestionModel``) answers through its own path, as ``eval/infer.py`` answers with it: one
greedy question at a time (no batching, no sampling), ranked by ``ranking.rank_per_question``.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import json
import math
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import unquote, urlparse

import torch
from PIL import Image, UnidentifiedImageError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from addressvlm.answering.answering import image_question_groups, sample_answers
from addressvlm.answering.chat_model import VisionChatModel
from addressvlm.answering.loading import PerQuestionModel, load_model_from_args
from addressvlm.answering.prefix_cache import choose_greedy, generate_shared
from addressvlm.answering.ranking import rank_image_questions, rank_per_question
from addressvlm.core import templates
from addressvlm.core.names import normalize_name
from addressvlm.core.records import DEFAULT_LEVEL_NAMES, DataError, Location, read_level_names, read_locations
from addressvlm.data.gazetteer import Gazetteer, build_gazetteer
from addressvlm.geo.streets import StreetMap, find_city_streets, read_street_map
from addressvlm.runs.engine import DemoSettings, checkout_paths, load_model
from addressvlm.training.checkpoints import CheckpointError
from addressvlm.training.stage_chain import StageChainError

DEFAULT_MAX_TOKENS = 32  # eval/infer.py's --max-new-tokens, so default answers match its predictions
TOP_K = 5
# A 6000x4000 camera photo: the model sees it scaled to 336x336 (LLaVA) or to at most 9 slices (MiniCPM-V), while
# decoding costs 3 bytes a pixel before padding and resizing copy it.
DEFAULT_MAX_IMAGE_MEGAPIXELS = 25.0
# The image processors take a side of 1 or 3 pixels for the colour channels (a 1x1 image fails in CLIP's
# normalisation), so smaller images are refused as unreadable.
MIN_IMAGE_SIDE = 4
# Photos' formats (Pillow reads a phone's MPO as JPEG); none that runs an outside program (EPS) or renders (WMF).
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "AVIF", "GIF", "BMP", "TIFF")


ERROR_TYPES = {403: "permission_error", 404: "not_found_error"}  # OpenAI's types; other 4xx are invalid requests


class RequestError(Exception):
    """A request the server refuses, in OpenAI's error shape with its HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = "server_error" if self.status >= 500 else ERROR_TYPES.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


# --------------------------------------------------------------------------------------------- images
def decode_image(data: bytes, what: str = "image",
                 max_pixels: int = int(DEFAULT_MAX_IMAGE_MEGAPIXELS * 1e6)) -> Image.Image:
    """The RGB picture in ``data``; a ``RequestError``: 413 for more than ``max_pixels`` (read from the header,
    before anything is decoded), 400 for anything Pillow cannot decode or smaller than ``MIN_IMAGE_SIDE``."""
    if not data:
        raise RequestError(400, f"{what} is empty", "image", "invalid_image")
    too_large = f"over the server's limit of {max_pixels / 1e6:g} megapixels (--max-image-megapixels)"
    try:
        picture = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:  # over Pillow's own bound (tools/serve.py sets it to the limit)
        raise RequestError(413, f"{what} is {too_large}: {exc}", "image", "image_too_large") from None
    except UnidentifiedImageError:
        raise RequestError(400, f"{what} is not an image Pillow can read (none of {', '.join(IMAGE_FORMATS)})",
                           "image", "invalid_image") from None
    except (OSError, ValueError) as exc:
        raise RequestError(400, f"{what} is not an image Pillow can read ({exc})", "image", "invalid_image") from None
    width, height = picture.size
    if width * height > max_pixels:
        raise RequestError(413, f"{what} is {width}x{height}, {width * height / 1e6:.1f} megapixels: {too_large}",
                           "image", "image_too_large")
    if min(width, height) < MIN_IMAGE_SIDE:
        raise RequestError(400, f"{what} is {width}x{height}: images need at least {MIN_IMAGE_SIDE} pixels a side",
                           "image", "invalid_image")
    try:
        picture.load()
        return picture.convert("RGB")
    except (OSError, ValueError) as exc:
        raise RequestError(400, f"{what} is not an image Pillow can read ({exc})", "image", "invalid_image") from None


def image_bytes_from_url(url: str, allowed_folder: Path | None, max_bytes: int) -> bytes:
    """The bytes an ``image_url`` names: a base64 ``data:`` URL, or a path (``file://`` or plain; relative paths
    are taken inside ``allowed_folder``) that resolves inside ``allowed_folder`` to a file of at most ``max_bytes``
    (the upload limit). Nothing is fetched from the web."""
    if url.startswith("data:"):
        header, comma, payload = url.partition(",")
        if not comma or not header.endswith(";base64"):
            raise RequestError(400, "a data URL image must be base64: data:image/jpeg;base64,...", "image_url",
                               "invalid_image")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(400, "the data URL's base64 payload does not decode", "image_url",
                               "invalid_image") from None
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        raise RequestError(400, "this server fetches nothing from the web: send the image as a base64 data URL",
                           "image_url", "invalid_image")
    if allowed_folder is None:
        raise RequestError(400, "image paths are refused (the server has no --allowed-folder): send a data URL",
                           "image_url", "invalid_image")
    path = unquote(parsed.path) if parsed.scheme == "file" else url
    if "\0" in path:
        raise RequestError(400, f"image path {url!r} holds a NUL byte", "image_url", "invalid_image")
    try:
        resolved = (allowed_folder / path).resolve()
        if not resolved.is_relative_to(allowed_folder.resolve()):
            raise RequestError(400, f"image path {url!r} is outside the allowed folder", "image_url",
                               "path_not_allowed")
        if not resolved.is_file():
            raise RequestError(400, f"image path {url!r} is not a file under the allowed folder", "image_url",
                               "invalid_image")
        if resolved.stat().st_size > max_bytes:
            raise RequestError(413, f"image file {url!r} is larger than the server's limit of "
                               f"{max_bytes / 2 ** 20:g} MB (--max-upload-mb)", "image_url", "image_too_large")
        return resolved.read_bytes()
    except OSError as exc:  # a name too long, a file it may not read
        raise RequestError(400, f"image path {url!r} cannot be read ({exc.strerror})", "image_url",
                           "invalid_image") from None


# --------------------------------------------------------------------------------------------- the city
@dataclass
class ServedCity:
    """The city a model was trained on: its table (candidate names, the photos whose place is known) and streets."""

    locations: list[Location]
    street_map: StreetMap
    root: Path
    level_names: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_LEVEL_NAMES))
    gazetteer: Gazetteer = field(init=False)
    _by_digest: dict[str, Location] = field(init=False, repr=False)

    def __post_init__(self):
        self.gazetteer = build_gazetteer(self.locations)
        self._by_digest = {}
        for row in self.locations:
            path = self.root / row.image
            if path.is_file():
                self._by_digest.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), row)

    @classmethod
    def from_root(cls, root: str | Path, streets: str | Path | None = None) -> "ServedCity":
        """``root/locations.csv`` and the city's streets (``streets.geojson`` or one ``*.osm.pbf`` in the root)."""
        root = Path(root)
        return cls(read_locations(root / "locations.csv"), read_street_map(streets or find_city_streets(root)), root,
                   read_level_names(root))

    def locate_questions(self) -> list[str]:
        """The district and street questions /v1/locate asks: the first Table B4 template of each level with the
        generation prompt, in the city's words for its levels, as its test questions ask them."""
        return [templates.level_question(level, "generation", 0, word=self.level_names[level])
                for level in ("district", "street")]

    def location_of(self, data: bytes) -> Location | None:
        """The table row whose image file has exactly these bytes (a photo of the city's own), else None."""
        return self._by_digest.get(hashlib.sha256(data).hexdigest())

    def map_data(self) -> dict:
        """The page's map: each street's name, its key (the normalised name /v1/locate's names carry) and lines in
        lon/lat, and the bounds of all of them."""
        streets: dict[str, dict] = {}
        lons, lats = [], []
        for street in self.street_map.streets:
            coords = [[round(x, 6), round(y, 6)] for x, y, *_ in street.line.coords]
            lons += [c[0] for c in coords]
            lats += [c[1] for c in coords]
            key = normalize_name(street.name)
            streets.setdefault(key, {"name": street.name, "key": key, "lines": []})["lines"].append(coords)
        return {"bounds": [min(lons), min(lats), max(lons), max(lats)], "streets": list(streets.values())}


# --------------------------------------------------------------------------------------------- the model's worker
@dataclass
class Generated:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (an end of turn) or "length" (max_tokens reached)


@dataclass
class _Job:
    kind: str  # "greedy", "sample" or "rank"
    image: Image.Image
    questions: Sequence[str]
    max_new_tokens: int = DEFAULT_MAX_TOKENS
    candidates: Sequence[Sequence[str]] = ()
    samples: int = 1
    temperature: float = 0.0
    seed: int | None = None
    future: Future = field(default_factory=Future)
    prompt_tokens: list[int] = field(default_factory=list)  # each question's, counted by the worker


class ModelWorker:
    """The one thread that runs the model (and its tokenizer); ``submit`` queues a job and returns a future of its
    result. A question whose prompt and answer do not fit the model's context fails with 400 before any model work."""

    def __init__(self, model: VisionChatModel | PerQuestionModel, max_batch_rows: int = 32):
        self.model, self.max_batch_rows = model, max_batch_rows
        self.per_question = isinstance(model, PerQuestionModel)
        self.jobs: queue.Queue[_Job] = queue.Queue()
        self._held: _Job | None = None
        language_model = model.model.model if self.per_question else model.language_model
        self.context_tokens = language_model.config.max_position_embeddings
        tokenizer = model.model.tokenizer if self.per_question else model.tokenizer
        # No token spells more characters than the longest in the vocabulary, so a question with more characters
        # than this cannot fit the context: refused without tokenizing (megabytes of text take the tokenizer
        # seconds).
        self.most_question_characters = self.context_tokens * max(map(len, tokenizer.get_vocab()))
        if not self.per_question:
            blank = model.preprocess_image(Image.new("RGB", (32, 32)))[None].to(model.device, model.dtype)
            with torch.inference_mode():
                self.image_tokens = model.encode_images(blank).shape[1]
        self.thread = threading.Thread(target=self._run, name="model-worker", daemon=True)
        self.thread.start()

    def _prompt_tokens(self, image: Image.Image, question: str) -> int:
        if self.per_question:
            return self.model.prompt_length(image, question)
        prefix, suffix = self.model.prompt_pieces(question)
        return len(prefix) + self.image_tokens + len(suffix)

    def greedy(self, image, questions: Sequence[str], max_new_tokens: int) -> Future:
        return self._submit(_Job("greedy", image, questions, max_new_tokens))

    def sample(self, image, question: str, n: int, temperature: float, max_new_tokens: int,
               seed: int | None) -> Future:
        return self._submit(_Job("sample", image, [question], max_new_tokens, samples=n, temperature=temperature,
                                 seed=seed))

    def rank(self, image, questions: Sequence[str], candidates: Sequence[Sequence[str]]) -> Future:
        return self._submit(_Job("rank", image, questions, candidates=candidates))

    def _submit(self, job: _Job) -> Future:
        self.jobs.put(job)
        return job.future

    def _take_batch(self) -> list[_Job]:
        """The oldest job, and (for a model answered in batches) the greedy jobs queued right behind it that fit
        ``max_batch_rows`` beside it (the first job that does not is held over to start the next batch, so the order
        of arrival is kept)."""
        first, self._held = self._held or self.jobs.get(), None
        batch, rows = [first], len(first.questions)
        while first.kind == "greedy" and not self.per_question:  # its answers come one at a time anyway
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job.kind != "greedy" or rows + len(job.questions) > self.max_batch_rows:
                self._held = job
                break
            batch.append(job)
            rows += len(job.questions)
        return batch

    def _run(self) -> None:
        while True:
            taken = self._take_batch()
            try:
                batch = [job for job in taken if self._fits_context(job)]
                results = self._answer(batch) if batch else []
            except Exception as exc:  # noqa: BLE001 - the request fails, the server goes on
                for job in taken:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            for job, result in zip(batch, results):
                job.future.set_result(result)

    def _fits_context(self, job: _Job) -> bool:
        """Whether each of the job's prompts, with ``max_new_tokens`` after it, fits the model's context (counting
        its prompt tokens into ``job.prompt_tokens``); if not, its future fails with 400 ``context_length_exceeded``.
        Rankings ask /v1/locate's own questions of the city's names: they always fit."""
        if job.kind == "rank":
            return True
        too_long = next((q for q in job.questions if len(q) > self.most_question_characters), None)
        if too_long is None:
            job.prompt_tokens = [self._prompt_tokens(job.image, q) for q in job.questions]
            if max(job.prompt_tokens) + job.max_new_tokens <= self.context_tokens:
                return True
            length = f"{max(job.prompt_tokens)} tokens of prompt (the image's included)"
        else:
            length = f"a question of {len(too_long)} characters"
        job.future.set_exception(RequestError(
            400, f"this model's context is {self.context_tokens} tokens; {length} and {job.max_new_tokens} of "
            "answer (max_tokens) do not fit: shorten the question", None, "context_length_exceeded"))
        return False

    def _answer(self, batch: Sequence[_Job]) -> list:
        if batch[0].kind == "greedy":
            return self._greedy(batch)
        if batch[0].kind == "sample":
            return [self._sample(batch[0])]
        job = batch[0]
        rank = rank_per_question if self.per_question else rank_image_questions
        return [rank(self.model, job.image, job.questions, job.candidates)]

    @torch.inference_mode()
    def _greedy(self, jobs: Sequence[_Job]) -> list[list[Generated]]:
        """Every job's questions decoded in one batch, to the longest ``max_new_tokens`` asked; each answer then
        cut at its own (greedy rows do not influence each other, so the cut equals a run to that length). A model
        that prompts itself answers the questions one after another."""
        if self.per_question:
            return [[self._answer_alone(job.image, question, job.max_new_tokens, tokens)
                     for question, tokens in zip(job.questions, job.prompt_tokens)] for job in jobs]
        prefix, groups = image_question_groups(self.model, [(job.image, job.questions) for job in jobs])
        ids = generate_shared(self.model, prefix, groups, max(job.max_new_tokens for job in jobs), choose_greedy)
        results = []
        for job, answers in zip(jobs, ids):
            results.append([Generated(self.model.decode(a[:job.max_new_tokens]), tokens,
                                      min(len(a), job.max_new_tokens),
                                      "stop" if len(a) < job.max_new_tokens else "length")
                            for tokens, a in zip(job.prompt_tokens, answers)])
        return results

    def _answer_alone(self, image: Image.Image, question: str, max_new_tokens: int, prompt_tokens: int
                      ) -> Generated:
        """``eval/infer.py``'s answer of a model that prompts itself. Its hub code returns text, so the tokens are
        counted by encoding the answer as training labelled it (with its end of turn): a longer count than
        ``max_new_tokens`` means generation stopped there."""
        text = self.model.answer_image(image, [question], max_new_tokens)[0]
        spoken = len(self.model.model.answer_ids(text))
        return Generated(text, prompt_tokens, min(spoken, max_new_tokens),
                         "stop" if spoken <= max_new_tokens else "length")

    def _sample(self, job: _Job) -> list[Generated]:
        texts = sample_answers(self.model, job.image, job.questions[0], job.samples, job.temperature,
                               job.max_new_tokens, job.seed)
        return [Generated(text, job.prompt_tokens[0],
                          len(self.model.tokenizer.encode(text, add_special_tokens=False)), "stop") for text in texts]


# --------------------------------------------------------------------------------------------- requests
def _message_parts(messages: Any) -> tuple[str, str]:
    """``(question, image url)`` of a chat request: one user message holding one image and text."""
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages must be a non-empty list", "messages")
    if len(messages) != 1 or not isinstance(messages[0], dict) or messages[0].get("role") != "user":
        raise RequestError(400, "this model answers one user message (an image and a question), as it was "
                           "trained; system and earlier turns are not supported", "messages")
    content = messages[0].get("content")
    if not isinstance(content, list):
        raise RequestError(400, "the user message needs an image: content must be a list with one image_url part "
                           "and text", "messages", "missing_image")
    texts, urls = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            if not isinstance(url, str):
                raise RequestError(400, "image_url.url must be a string", "messages")
            urls.append(url)
        else:
            raise RequestError(400, f"unsupported content part {kind!r}: text and image_url only", "messages")
    if not urls:
        raise RequestError(400, "the user message has no image: add an image_url part", "messages", "missing_image")
    if len(urls) > 1:
        raise RequestError(400, f"{len(urls)} images in one message: this model takes one", "messages")
    question = " ".join(t.strip() for t in texts if t.strip())
    if not question:
        raise RequestError(400, "the user message has no question text", "messages")
    return question, urls[0]


def _number(body: dict, key: str, default, kind, low, high):
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high \
            or (kind is int and value != int(value)):
        raise RequestError(400, f"{key} must be {kind.__name__} in [{low}, {high}], not {value!r}", key)
    return kind(value)


@dataclass
class ChatRequest:
    question: str
    image_url: str
    max_tokens: int
    temperature: float
    n: int
    seed: int | None


def parse_chat_request(body: Any, model_name: str, max_tokens_limit: int) -> ChatRequest:
    """A ``/v1/chat/completions`` body checked field by field; ``RequestError`` names the first problem."""
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    if body.get("model") not in (None, model_name):
        raise RequestError(404, f"the model {body.get('model')!r} does not exist; this server serves "
                           f"{model_name!r}", "model", "model_not_found")
    if body.get("stream"):
        raise RequestError(400, "streaming is not supported", "stream")
    if _number(body, "top_p", 1.0, float, 0.0, 1.0) != 1.0:
        raise RequestError(400, "top_p other than 1 is not supported (use temperature)", "top_p")
    question, url = _message_parts(body.get("messages"))
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    return ChatRequest(question, url,
                       _number({"max_tokens": max_tokens}, "max_tokens", DEFAULT_MAX_TOKENS, int, 1, max_tokens_limit),
                       _number(body, "temperature", 0.0, float, 0.0, 2.0), _number(body, "n", 1, int, 1, 16),
                       _number(body, "seed", None, int, 0, 2 ** 63 - 1))


def check_reserved_markers(question: str, markers: Sequence[str]) -> None:
    """Refuse a question holding any of ``markers`` (MiniCPM-V's image and slice markers, whose tokens delimit the
    image features in its prompt: a stray one breaks the spans) other than one ``markers[0]`` (``<image>``, which
    places the image, as training's questions do)."""
    if not markers:
        return
    rest = question.replace(markers[0], "", 1)
    found = [marker for marker in markers if marker in rest]
    if found:
        raise RequestError(400, f"the question holds {found[0]!r}, which this model's prompt reserves for the image "
                           f"(one {markers[0]!r} may place the image; nothing else of {list(markers)})", "messages",
                           "reserved_marker")


def top_names(ranking: Sequence[dict], k: int = TOP_K) -> list[dict]:
    """The ``k`` best names with their probability among all the city's names (the softmax of the scores: with
    the default ``sum`` scoring, P(exactly this answer) renormalised over the closed set)."""
    best = ranking[0]["logprob"]
    weights = [math.exp(r["logprob"] - best) for r in ranking]
    total = sum(weights)
    return [{"name": r["name"], "key": normalize_name(r["name"]), "probability": w / total}
            for r, w in zip(ranking[:k], weights[:k])]


def location_record(row: Location | None) -> dict | None:
    if row is None:
        return None
    return {"image": row.image, "lat": row.lat, "lon": row.lon, "street": row.street, "district": row.district}


# --------------------------------------------------------------------------------------------- bodies
def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_json(raw: bytes) -> Any:
    """A request body as JSON; ``RequestError`` (400) for anything else: a syntax error, NaN or Infinity, a number
    of more digits than Python converts, nesting deeper than Python's recursion limit."""
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # ValueError holds JSONDecodeError and UnicodeDecodeError
        raise RequestError(400, f"the request body is not JSON this server reads: {exc}") from None


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


def unsupported_media_type(request: Request, wanted: str) -> RequestError:
    """415 for a body this route does not read (a browser's cross-site text/plain or form post among them)."""
    return RequestError(415, f"send {wanted}, not {media_type(request) or 'a body without Content-Type'}", None,
                        "unsupported_media_type")


# --------------------------------------------------------------------------------------------- the guard
def allowed_hosts(host: str, port: int) -> frozenset[str] | None:
    """The Host headers that name a server bound to ``host``:``port``: localhost, the loopback addresses and
    ``host``, each with the port (what a browser sends, so a page of another site that rebinds its name to this
    address is refused). None (any) for a server bound to every interface (0.0.0.0, ::), whose names it cannot
    know."""
    if host in ("0.0.0.0", "::"):
        return None
    names = {"localhost", "127.0.0.1", "[::1]", f"[{host}]" if ":" in host else host}
    return frozenset(f"{name}:{port}".lower() for name in names)


class RequestGuard:
    """ASGI middleware refusing, before the app sees them: a Host header that does not name this server (403
    ``host_not_allowed``, against DNS rebinding), an Origin other than the server's own (403 ``origin_not_allowed``:
    a page of another site posting a form), and a body over ``limit`` bytes (413 ``request_too_large``: read in the
    server's chunks and dropped once over the limit, so a huge upload never sits in memory whole)."""

    def __init__(self, app, limit: int, hosts: frozenset[str] | None):
        self.app, self.limit, self.hosts = app, limit, hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        host = headers.get("host", "")
        if self.hosts is not None and host.lower() not in self.hosts:
            return await self._refuse(send, RequestError(
                403, f"the Host header {host!r} does not name this server (one of {', '.join(sorted(self.hosts))})",
                None, "host_not_allowed"))
        origin = headers.get("origin")
        if origin is not None and urlparse(origin).netloc.lower() != host.lower():
            return await self._refuse(send, RequestError(
                403, f"a page of {origin!r} may not call this server (it answers its own page and clients that send "
                     "no Origin)", None, "origin_not_allowed"))
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
            if size <= self.limit:
                chunks.append(message.get("body", b""))
            else:
                chunks = []  # the rest is read and dropped, so the client gets to read the 413 it is sent
        if size > self.limit:
            return await self._refuse(send, RequestError(
                413, f"the request is larger than the server's limit of {self.limit / 2 ** 20:g} MB", None,
                "request_too_large"))
        body = b"".join(chunks)
        delivered = False

        async def replay():
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(send, error: RequestError):
        payload = json.dumps(error.body()).encode()
        await send({"type": "http.response.start", "status": error.status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})


# --------------------------------------------------------------------------------------------- the app
def create_app(model: VisionChatModel | PerQuestionModel, city: ServedCity, model_name: str = "addressvlm",
               allowed_folder: str | Path | None = None, max_upload_mb: float = 20.0, max_tokens_limit: int = 512,
               max_batch_rows: int = 32, max_image_megapixels: float = DEFAULT_MAX_IMAGE_MEGAPIXELS,
               host: str = "127.0.0.1", port: int = 8000):
    """The FastAPI app (behind ``RequestGuard``) serving ``model`` and ``city`` as bound to ``host``:``port``."""
    worker = ModelWorker(model, max_batch_rows)
    allowed = Path(allowed_folder).resolve() if allowed_folder else None
    max_bytes, max_pixels = int(max_upload_mb * 2 ** 20), int(max_image_megapixels * 1e6)
    static = resources.files("addressvlm.serving") / "static"
    map_data = city.map_data()
    markers = model.model.image_settings.marker_tokens() if worker.per_question else []
    app = FastAPI(title="AddressVLM", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(RequestError)
    async def refused(_request, exc: RequestError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def malformed(_request, exc):
        return JSONResponse(RequestError(400, f"malformed request: {exc.errors()[:1]}").body(), status_code=400)

    @app.exception_handler(HTTPException)  # Starlette's own: no such route or method, a multipart body it cannot parse
    async def http_error(_request, exc: HTTPException):
        return JSONResponse(RequestError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(Exception)  # a fault of the server's: still OpenAI's shape (the traceback goes to its log)
    async def failed(_request, exc: Exception):
        return JSONResponse(RequestError(500, f"the server failed on this request ({type(exc).__name__}: {exc})", None,
                                         "server_error").body(), status_code=500)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return (static / "index.html").read_text(encoding="utf-8")

    @app.get("/static/{name}")
    async def static_file(name: str):
        files = {"page.js": "text/javascript", "page.css": "text/css"}
        if name not in files:
            raise RequestError(404, f"no static file {name!r}", None, "not_found")
        return Response((static / name).read_text(encoding="utf-8"), media_type=files[name])

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "addressvlm"}]}

    @app.get("/v1/city")
    async def city_map():
        return map_data

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        if media_type(request) != "application/json":
            raise unsupported_media_type(request, "JSON (Content-Type: application/json)")
        parsed = parse_chat_request(parse_json(await request.body()), model_name, max_tokens_limit)
        if parsed.temperature > 0 and worker.per_question:
            raise RequestError(400, f"{model_name} answers greedily only (MiniCPM-V is answered through its own code, "
                               "as eval/infer.py answers with it): leave temperature at 0", "temperature",
                               "unsupported_temperature")
        check_reserved_markers(parsed.question, markers)
        image = decode_image(image_bytes_from_url(parsed.image_url, allowed, max_bytes), "the image_url", max_pixels)
        if parsed.temperature == 0:
            answers = (await asyncio.wrap_future(worker.greedy(image, [parsed.question], parsed.max_tokens)))
            answers = answers * parsed.n
        else:
            answers = await asyncio.wrap_future(worker.sample(image, parsed.question, parsed.n, parsed.temperature,
                                                              parsed.max_tokens, parsed.seed))
        prompt_tokens = answers[0].prompt_tokens
        completion = sum(a.completion_tokens for a in answers)
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": model_name,
                "choices": [{"index": i, "message": {"role": "assistant", "content": a.text},
                             "finish_reason": a.finish_reason, "logprobs": None} for i, a in enumerate(answers)],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                          "total_tokens": prompt_tokens + completion}}

    @app.post("/v1/locate")
    async def locate(request: Request):
        data, question = await _locate_inputs(request, allowed, max_bytes)
        check_reserved_markers(question or "", markers)
        image = decode_image(data, max_pixels=max_pixels)
        questions = city.locate_questions() + ([question] if question else [])
        generated = worker.greedy(image, questions, DEFAULT_MAX_TOKENS)
        ranked = worker.rank(image, questions[:2], [city.gazetteer.districts, city.gazetteer.streets])
        answers = await asyncio.wrap_future(generated)
        districts, streets = await asyncio.wrap_future(ranked)
        return {"district": answers[0].text, "street": answers[1].text,
                "top_districts": top_names(districts), "top_streets": top_names(streets),
                "question": question, "answer": answers[2].text if question else None,
                "true_location": location_record(city.location_of(data))}

    return RequestGuard(app, max_bytes, allowed_hosts(host, port))


async def _locate_inputs(request, allowed: Path | None, max_bytes: int) -> tuple[bytes, str | None]:
    """The image bytes and the optional free question of a /v1/locate request: multipart (fields ``image``,
    ``question``) or JSON ``{"image": "<data URL or allowed path>", "question": ...}``."""
    kind = media_type(request)
    if kind == "multipart/form-data":
        async with request.form() as form:
            upload, question = form.get("image"), form.get("question")
            if upload is None or isinstance(upload, str):
                raise RequestError(400, "no file in the multipart field 'image'", "image", "missing_image")
            data = await upload.read()
    elif kind == "application/json":
        body = parse_json(await request.body())
        if not isinstance(body, dict) or not isinstance(body.get("image"), str):
            raise RequestError(400, "the JSON body needs \"image\": a data URL or a path under the allowed folder",
                               "image", "missing_image")
        data, question = image_bytes_from_url(body["image"], allowed, max_bytes), body.get("question")
    else:
        raise unsupported_media_type(request, "multipart/form-data with an 'image' file, or application/json "
                                     "{\"image\": \"data:image/jpeg;base64,...\"}")
    if question is not None and not isinstance(question, str):
        raise RequestError(400, "question must be text", "question")
    return data, (question or "").strip() or None


# --------------------------------------------------------------------------------------------- command line
CHECKOUT = Path(__file__).resolve().parents[2]


def demo_model_and_city(checkout: Path) -> tuple[VisionChatModel, Path]:
    """The AddressVLM model ``make demo`` trained in ``checkout`` (stage 1 then stage 2) and its city root."""
    paths = checkout_paths(checkout)
    for needed in (paths.models / "projector" / "config.json", paths.work / "stage1_stage2" / "last_checkpoint",
                   paths.city / "locations.csv"):
        if not needed.is_file():
            raise SystemExit(f"error: {needed} not found: run `make demo` in {checkout} first")
    return load_model(paths, DemoSettings(), "stage1_stage2"), paths.city


def served_from_args(args) -> tuple[VisionChatModel | PerQuestionModel, ServedCity, Path | None]:
    """The model (loaded as ``eval/infer.py`` loads it, or ``--demo``'s), its city and the allowed image folder
    that ``args`` name; ``SystemExit`` with one line for anything missing or not fitting."""
    check_server_options(args)
    try:
        if args.demo:
            if args.config or args.checkpoint or args.hf:
                raise SystemExit("error: give --demo or a model (--config with --checkpoint, or --hf), not both")
            model, city_root = demo_model_and_city(Path(args.demo_root).resolve())
            city_root = Path(args.city or city_root)
        else:
            if not args.city:
                raise SystemExit("error: --city ROOT is needed (the city the model was trained on), or --demo")
            city_root = Path(args.city)
            if not (city_root / "locations.csv").is_file():
                raise SystemExit(f"error: {city_root / 'locations.csv'} not found: --city must be a city root")
            model = load_model_from_args(args)
        city = ServedCity.from_root(city_root, args.streets)
    except (DataError, FileNotFoundError, CheckpointError, StageChainError) as exc:
        raise SystemExit(f"error: {exc}") from None
    allowed = None if args.allowed_folder == "none" else Path(args.allowed_folder or city_root)
    return model, city, allowed


def check_server_options(args) -> None:
    """``SystemExit`` with one line for a limit that is not a positive number, a port out of range, or an
    --allowed-folder that is not a folder; checked before the model loads."""
    for flag in ("--max-upload-mb", "--max-image-megapixels", "--max-tokens-limit", "--max-batch-rows"):
        value = getattr(args, flag[2:].replace("-", "_"))
        if not 0 < value < math.inf:
            raise SystemExit(f"error: {flag} must be a positive number, not {value:g}")
    if not 0 < args.port < 2 ** 16:
        raise SystemExit(f"error: --port must be in 1..65535, not {args.port}")
    if args.allowed_folder not in (None, "none") and not Path(args.allowed_folder).is_dir():
        raise SystemExit(f"error: --allowed-folder {args.allowed_folder} is not a folder (give one, or 'none')")
