"""Reasons for the first stage, written by an LVLM (or rules) from a hint prompt that holds the true answer.

Two tasks share one labelling run (backends, resumable appending, rejection):
- alignment (paper section 3.2, "Automatic Alignment Label Generation", Fig. 3b), AddressVLM's stage 1: for each
  stage-1 image the hint prompt is the training question plus the true address (street, cross street when known,
  district, city) and the instruction to begin by stating it and then give the visual reasons that the street view
  matches the labelled map. A reason that does not name the true street is rejected and counted.
- georeasoner (Appendix C, Fig. B1), the first stage of Table 2's GeoReasoner row: for each street view alone the
  hint prompt names its district and city and asks for the district's architectural and streetscape cues. A reason
  that does not name the true district is rejected and counted.
Either way the answer becomes the gpt turn of a training record whose human turn is the same question *without* the
hint.

Backends: ``openai`` (any OpenAI-compatible server: vLLM, lmdeploy, SGLang, Ollama), ``hf`` (a local transformers
LVLM such as llava-hf/llava-v1.6-mistral-7b-hf, which the paper used), ``rule`` (deterministic reasons from known
facts - cross streets and named places from the street data, the street's direction, district - no model).
"""
from __future__ import annotations

import base64
import hashlib
import math
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from shapely.geometry import Point
from shapely.ops import unary_union

from addressvlm.graft import SEPARATE_SUFFIXES, VARIANTS, grafted_name, select_rows
from addressvlm.names import mentions_name, normalize_name
from addressvlm.records import (DataError, JsonlAppender, Location, location_lines, read_jsonl, read_locations,
                                refuse_output_over_inputs, write_llava_json)
from addressvlm.vqa import view_names

CORNER_WORDS = {"upper_right": "upper-right", "upper_left": "upper-left", "lower_right": "lower-right",
                "lower_left": "lower-left"}
LABEL_KEYS = ("image", "location_id", "variant", "images", "question", "hint_prompt", "reason", "backend")
NEAR_RADIUS_M = 150.0
COMPASS = ("north", "north-east", "east", "south-east", "south", "south-west", "west", "north-west")
AXES = ("north-south", "north-east to south-west", "east-west", "north-west to south-east")


# --------------------------------------------------------------------------------------------- prompts
def _scene(variant: str, corner: str, map_labels: bool) -> tuple[str, str]:
    """(how the question introduces the input, what the street view is called in it)."""
    kind = "a satellite map labelled with street names" if map_labels else "a satellite map"
    if variant == "grafted":
        where = CORNER_WORDS[corner]
        return f"This image is {kind} with a street-view photo in its {where} corner.", \
            f"the street view in the {where} corner"
    if variant == "stitched":
        return f"This image shows {kind} on the left and a street-view photo on the right.", \
            "the street view on the right"
    return f"The first image is {kind} and the second image is a street-view photo.", "the street view"


def training_question(variant: str = "grafted", corner: str = "upper_right", map_labels: bool = True) -> str:
    """The stage-1 human turn (no hint)."""
    intro, view = _scene(variant, corner, map_labels)
    return (f"{intro} Where was {view} taken? State its street and district, then explain the visual reasons "
            f"why it matches that place on the map.")


def address_phrase(street: str, cross_street: str, district: str, city: str) -> str:
    near = f" near {cross_street}" if cross_street else ""
    return f"on {street}{near} in {district}, {city}"


def hint_prompt(street: str, cross_street: str, district: str, city: str, variant: str = "grafted",
                corner: str = "upper_right", map_labels: bool = True) -> str:
    """The label-generation prompt: the training question plus the true address as a hint (paper Fig. 3b)."""
    _, view = _scene(variant, corner, map_labels)
    where = address_phrase(street, cross_street, district, city)
    cues = "the street names written on the map, " if map_labels else ""
    return (f"{training_question(variant, corner, map_labels)} (Hint: {view[0].upper() + view[1:]} was taken {where}. "
            f"Begin your response by stating that it was taken {where}, then substantiate it by matching what the "
            f"street view shows (road width and direction, intersections, buildings, greenery, signs) with "
            f"{cues}the road layout and the surroundings on the map.)")


# The first sentence of Fig. B1's prompt, as printed ("neighborhood" included): GeoReasoner's stage-1 question.
GEOREASONER_QUESTION = ("Examine the image presented, and deduce from which neighborhood it was most likely captured, "
                        "providing your rationale.")


def georeasoner_hint_prompt(district: str, city: str) -> str:
    """Fig. B1's label-generation prompt for one street view (its unclosed parenthesis closed, "that in this image"
    read as "that appear in this image")."""
    return (f"{GEOREASONER_QUESTION} (Hint: This image was taken in {district} within {city}. Begin your response by "
            f"confirming its location in {district}, then substantiate your claim by analyzing the distinct "
            f"architectural and streetscape style characteristic of {district} that appear in this image.)")


# --------------------------------------------------------------------------------------------- facts
@dataclass
class Facts:
    """What is known about one street view's place, from the city table, the street data and the crop index."""

    image: str
    location_id: str
    street: str
    district: str
    city: str
    cross_street: str = ""
    crossings: list[tuple[str, float]] = field(default_factory=list)  # other streets meeting it: (name, metres)
    places: list[tuple[str, str, float, str]] = field(default_factory=list)  # (name, kind, metres, compass dir)
    street_axis: str = ""  # e.g. "east-west", from the street geometry
    map_position: str = ""  # where the camera is in the map ("in the centre", "left of the centre"...)
    heading: float | None = None
    labels_on_map: set[str] | None = None  # street names the crop step wrote on this map (None: not known)

    def labelled(self, name: str) -> bool:
        """Whether ``name`` is written on the map; when unknown, assume so (the crop step labels what fits)."""
        return self.labels_on_map is None or name in self.labels_on_map


def _compass(dx: float, dy: float) -> str:
    return COMPASS[round(math.degrees(math.atan2(dx, dy)) % 360 / 45) % 8]


def _axis(line, at: Point) -> str:
    s = line.project(at)
    a, b = line.interpolate(max(0.0, s - 15)), line.interpolate(min(line.length, s + 15))
    bearing = math.degrees(math.atan2(b.x - a.x, b.y - a.y)) % 180
    return AXES[round(bearing / 45) % 4]


def _map_position(east_m: float, north_m: float, size_m: float) -> str:
    """Where a point lies in the crop, in words, using a 3x3 grid of the square."""
    col = 0 if east_m < -size_m / 6 else 2 if east_m > size_m / 6 else 1
    row = 0 if north_m > size_m / 6 else 2 if north_m < -size_m / 6 else 1
    names = [["in the upper left", "in the upper middle", "in the upper right"],
             ["left of the centre", "in the centre", "right of the centre"],
             ["in the lower left", "in the lower middle", "in the lower right"]]
    return names[row][col]


def gather_facts(row: Location, city: str, street_map=None, crop: dict | None = None,
                 radius_m: float = NEAR_RADIUS_M) -> Facts:
    """Facts for one street view: crossings and places within ``radius_m``, street direction, map position."""
    facts = Facts(row.image, row.location_id, row.street, row.district, city, row.cross_street, heading=row.heading)
    if crop:
        facts.map_position = _map_position(crop["location_east_m"], crop["location_north_m"], crop["size_m"])
        if "street_labels" in crop:
            facts.labels_on_map = set(crop["street_labels"])
    if street_map is None:
        return facts
    here = Point(0, 0)
    near = street_map.near(row.lat, row.lon, radius_m)
    own = [s for s in near if normalize_name(s.name) == normalize_name(row.street)]
    own_line = unary_union([s.line for s in own]) if own else None
    if own:
        facts.street_axis = _axis(min(own, key=lambda s: s.distance_m).line, here)
    best: dict[str, float] = {}
    for s in near:
        if normalize_name(s.name) == normalize_name(row.street):
            continue
        if own_line is not None:
            meet = own_line.intersection(s.line)
            if meet.is_empty:
                continue  # runs alongside, does not cross: not a cross street
            d = meet.distance(here)
        else:
            d = s.distance_m
        if d <= radius_m and d < best.get(s.name, math.inf):
            best[s.name] = d
    facts.crossings = sorted(best.items(), key=lambda kv: kv[1])[:2]
    if not facts.cross_street and facts.crossings:
        facts.cross_street = facts.crossings[0][0]
    for place, x, y in street_map.places_near(row.lat, row.lon, radius_m)[:2]:
        facts.places.append((place.name, place.kind.replace("_", " "), math.hypot(x, y), _compass(x, y)))
    return facts


# --------------------------------------------------------------------------------------------- requests
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


def _metres(d: float) -> str:
    return f"{round(d / 5) * 5:.0f} metres"


def _place_sentence(place: tuple[str, str, float, str], rng: random.Random) -> str:
    name, kind, d, direction = place
    return rng.choice([f"{name} ({kind}) lies about {_metres(d)} to the {direction}.",
                       f"Nearby to the {direction} is {name}, a {kind}, roughly {_metres(d)} away."])


def _heading_sentence(f: Facts, rng: random.Random) -> str:
    facing = COMPASS[round(f.heading % 360 / 45) % 8]
    axis_deg = {AXES[0]: 0, AXES[1]: 45, AXES[2]: 90, AXES[3]: 135}[f.street_axis]
    off = abs((f.heading - axis_deg + 90) % 180 - 90)
    if off <= 30:
        return f"The camera faces {facing}, looking along {f.street}, so the road runs away from the viewer."
    if off >= 60:
        return f"The camera faces {facing}, across {f.street}, towards the buildings along one side of it."
    return rng.choice([f"The camera faces {facing}, at an angle to {f.street}.",
                       f"The view is towards the {facing}, diagonally across {f.street}."])


# --------------------------------------------------------------------------------------------- tasks
class AlignmentTask:
    """AddressVLM's stage 1: the grafted (stitched, separate) image of each street view; the reason names its street."""

    named = "street"

    def __init__(self, grafted_dir, variant: str = "grafted", corner: str = "upper_right", map_labels: bool = True):
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.grafted_dir, self.variant, self.corner, self.map_labels = Path(grafted_dir), variant, corner, map_labels
        self.question = training_question(variant, corner, map_labels)

    def inputs(self, row: Location) -> tuple[list[Path], str | None]:
        """The files the model sees, and why they cannot be used (None when they can)."""
        images = stage1_images(self.grafted_dir, row.image, self.variant)
        absent = [str(p) for p in images if not p.is_file()]
        return images, f"stage-1 image {', '.join(absent)} not found (not grafted yet?)" if absent else None

    def prompt(self, facts: Facts) -> str:
        return hint_prompt(facts.street, facts.cross_street, facts.district, facts.city, self.variant, self.corner,
                           self.map_labels)

    def rule_reason(self, f: Facts, rng: random.Random) -> str:
        _, view = _scene(self.variant, self.corner, self.map_labels)
        view = view[0].upper() + view[1:]
        out = [f"{view} was taken {address_phrase(f.street, f.cross_street, f.district, f.city)}."]
        on_map = "the map"
        if f.street_axis:
            where = f" {f.map_position}" if f.map_position else ""
            if self.map_labels and f.labelled(f.street):
                out.append(rng.choice([
                    f"On {on_map}, the road labelled {f.street} runs {f.street_axis}{where}, where the photo was taken.",
                    f"The label {f.street} on {on_map} marks a road running {f.street_axis}{where}, at the camera's position.",
                ]))
            else:
                out.append(f"On {on_map}, {f.street} is the road running {f.street_axis}{where}, where the photo was taken.")
        if f.heading is not None and f.street_axis:
            out.append(_heading_sentence(f, rng))
        if f.crossings:
            parts = [f"{name} about {_metres(d)} away" for name, d in f.crossings]
            shown = self.map_labels and all(f.labelled(name) for name, _ in f.crossings)
            labelled = (", both labelled on the map" if len(parts) > 1 else ", labelled on the map") if shown else ""
            out.append(f"{f.street} meets {' and '.join(parts)}{labelled}, which fits the intersection layout "
                       f"around the camera.")
        out += [_place_sentence(place, rng) for place in f.places[:2]]
        out.append(rng.choice([
            f"The buildings and the road seen in the street view are consistent with this part of {f.district}.",
            f"Together these cues place the street view on {f.street} in {f.district}.",
            f"The street layout on the map therefore matches {f.street} in {f.district}, {f.city}.",
        ]))
        return " ".join(out)


class GeoReasonerTask:
    """Table 2's GeoReasoner row, stage 1 (paper Appendix C, Fig. B1): each street view alone; the reason confirms
    its district and argues from the district's look. Street views are the user's files, so each one is decoded
    before it is asked about: a missing or broken one is reported, not sent."""

    named = "district"
    variant = "georeasoner"  # what the labels were made for (build_stage1_json checks it)
    question = GEOREASONER_QUESTION

    def __init__(self, city_root):
        self.city_root = Path(city_root)

    def inputs(self, row: Location) -> tuple[list[Path], str | None]:
        from addressvlm.ingest import image_decode_error

        path = self.city_root / row.image
        if not path.is_file():
            return [path], f"street view {path} not found"
        error = image_decode_error(str(path))
        return [path], f"street view {path} does not decode ({error})" if error else None

    def prompt(self, facts: Facts) -> str:
        return georeasoner_hint_prompt(facts.district, facts.city)

    def rule_reason(self, f: Facts, rng: random.Random) -> str:
        """District-level cues only (no street name): what the paper's GeoReasoner labeller was told."""
        out = [rng.choice([f"The image is indeed captured in {f.district}, {f.city}.",
                           f"This street view was taken in {f.district}, within {f.city}."])]
        if f.street_axis:
            out.append(f"The road in view runs {f.street_axis}.")
        out += [_place_sentence(place, rng) for place in f.places[:2]]
        out.append(rng.choice([
            f"The buildings, the width of the street and the greenery are characteristic of {f.district}.",
            f"These cues are consistent with the architecture and streetscape of {f.district} within {f.city}.",
            f"Taken together, the scene fits the character of {f.district}, making it the most likely neighborhood.",
        ]))
        return " ".join(out)


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


def add_label_arguments(parser) -> None:
    """The options every labelling script shares: backend, its settings, street data, splits, limit."""
    from addressvlm.graft import parse_splits

    parser.add_argument("--backend", choices=("rule", "openai", "hf"), default="rule",
                        help="rule: reasons from facts, no model (the paper rejects such templates; its labels come "
                             "from an LVLM: openai or hf)")
    parser.add_argument("--streets", type=Path, help="streets GeoJSON or .osm.pbf (default: the city's)")
    parser.add_argument("--city-name", help="city name used in prompts (default: the city folder's name)")
    parser.add_argument("--splits", default="train", type=parse_splits,
                        help="comma-separated splits, or 'all' (default train)")
    parser.add_argument("--limit", type=int, default=None, help="label at most this many images in this run")
    parser.add_argument("--model", help="openai: served model name; hf: model path or hub id")
    parser.add_argument("--base-url", help="openai: server URL, e.g. http://localhost:8000/v1")
    parser.add_argument("--api-key", help="openai: key (default $OPENAI_API_KEY, else 'EMPTY')")
    parser.add_argument("--concurrency", type=int, default=8, help="openai: requests in flight (8)")
    parser.add_argument("--max-retries", type=int, default=6, help="openai: retries on 429/5xx/timeouts (6)")
    parser.add_argument("--backoff", type=float, default=1.0, help="openai: first retry delay in seconds (1.0)")
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--max-tokens", type=int, default=400)
    parser.add_argument("--device", help="hf: torch device (default cuda if available)")
    parser.add_argument("--dtype", default="auto", help="hf: torch dtype name or auto")


def backend_options(parser, args) -> dict:
    """The chosen backend's constructor options from ``add_label_arguments``'s flags (a usage error if incomplete)."""
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


# --------------------------------------------------------------------------------------------- batch
@dataclass
class LabelReport:
    written: int = 0
    already_done: int = 0
    rejected: int = 0  # answers that did not name the true street/district (logged to <labels>.rejected.jsonl)
    missing: list[str] = field(default_factory=list)  # "<locations.csv>:<line>: why" of each input that cannot be used
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image, why) requests that gave up
    named: str = "street"  # what a reason must name

    def summary(self) -> str:
        lines = [f"labels: {self.written} written, {self.already_done} already done, {self.rejected} rejected "
                 f"(true {self.named} not named), {len(self.missing)} images missing or unreadable, "
                 f"{len(self.failed)} failed"]
        lines += [f"  {m}" for m in self.missing[:20]]
        lines += [f"  ... and {len(self.missing) - 20} more missing or unreadable"] if len(self.missing) > 20 else []
        lines += [f"  failed {img}: {why}" for img, why in self.failed]
        return "\n".join(lines)


def stage1_images(grafted_dir: Path, image: str, variant: str) -> list[Path]:
    """The stage-1 input file(s) of one street view, as written by addressvlm.graft."""
    target = grafted_dir / grafted_name(image)
    return [target.with_suffix(s) for s in SEPARATE_SUFFIXES] if variant == "separate" else [target]


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as named, links not followed (an image folder linked in from another disk stays
    under the city root); absolute when it lies outside."""
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    return str(Path(path).resolve()) if relative.split(os.sep)[0] == ".." else relative


def make_labels(city_root, grafted_dir, out_jsonl, backend="rule", *, streets=None, crops_dir=None,
                city_name: str | None = None, variant: str = "grafted", corner: str = "upper_right",
                map_labels: bool = True, splits: tuple[str, ...] | None = ("train",),
                backend_options: dict | None = None, limit: int | None = None, progress: bool = True) -> LabelReport:
    """Alignment reasons for every stage-1 image of the city (train split when the table has splits), into
    ``out_jsonl``; ``crops_dir`` defaults to ``<city>/stage1/crops`` (its index tells where each camera sits in its
    map). The rest as ``label_city``."""
    from addressvlm.geo.crop import CROPS_INDEX, read_crop_index

    city_root = Path(city_root)
    crops_dir = Path(crops_dir) if crops_dir else city_root / "stage1" / "crops"
    refuse_output_over_inputs(out_jsonl, [("city table", city_root / "locations.csv"), ("--grafted", grafted_dir),
                                          ("--crops", crops_dir), ("--streets", streets)], "--out")
    crops = read_crop_index(crops_dir) if (crops_dir / CROPS_INDEX).is_file() else {}
    return label_city(AlignmentTask(grafted_dir, variant, corner, map_labels), city_root, out_jsonl, backend,
                      streets=streets, crops=crops, city_name=city_name, splits=splits,
                      backend_options=backend_options, limit=limit, progress=progress)


def label_city(task, city_root, out_jsonl, backend="rule", *, streets=None, crops: dict | None = None,
               city_name: str | None = None, splits: tuple[str, ...] | None = ("train",),
               backend_options: dict | None = None, limit: int | None = None, progress: bool = True) -> LabelReport:
    """Ask ``task``'s question (``AlignmentTask``, ``GeoReasonerTask``) about every street view of the city's
    ``splits`` (all when the table has no split column) and append the answers to ``out_jsonl``.

    ``backend`` is a name (``rule``, ``openai``, ``hf``; ``backend_options`` go to its constructor) or an object
    with ``generate(LabelRequest) -> str`` and ``concurrency``. Each label is appended and flushed as it arrives;
    a rerun skips images already labelled. An input the task cannot use is skipped and reported with its line in
    ``locations.csv``. ``streets`` defaults to the city's streets file when there is one; ``crops`` is the crop
    index by location (alignment only).
    """
    from addressvlm.geo.streets import find_city_streets, read_street_map

    city_root, out_jsonl = Path(city_root), Path(out_jsonl)
    city = city_name or city_root.resolve().name
    table = city_root / "locations.csv"
    rows = select_rows(read_locations(table), splits)
    if streets is None:
        try:
            streets = find_city_streets(city_root)
        except DataError:
            streets = None
    street_map = read_street_map(streets) if streets else None
    crops = crops or {}
    if isinstance(backend, str):
        backend = make_backend(backend, task, **(backend_options or {}))

    report = LabelReport(named=task.named)
    rejected_log = out_jsonl.with_name(out_jsonl.stem + ".rejected.jsonl")
    lines: dict[str, int] = {}
    with JsonlAppender(out_jsonl, key="image", required=LABEL_KEYS) as out, \
            JsonlAppender(rejected_log, key="image") as rejected:
        requests = []
        for row in rows:
            if row.image in out.done:
                report.already_done += 1
                continue
            images, problem = task.inputs(row)
            if problem:
                lines = lines or location_lines(table)
                report.missing.append(f"{table}:{lines[row.image]}: {problem}")
                continue
            facts = gather_facts(row, city, street_map, crops.get(row.location_id))
            requests.append(LabelRequest(row.image, images, task.prompt(facts), facts))
            if limit is not None and len(requests) >= limit:
                break

        def record(request: LabelRequest, reason: str) -> None:
            base = {"image": request.key, "location_id": request.facts.location_id, "variant": task.variant,
                    "images": [_relative(p, city_root) for p in request.images], "question": task.question,
                    "hint_prompt": request.prompt, "reason": reason, "backend": backend.name,
                    "street": request.facts.street, "district": request.facts.district}
            if mentions_name(reason, getattr(request.facts, task.named)):
                out.write(base)
                report.written += 1
            else:
                rejected.write(base)
                report.rejected += 1

        report.failed += generate_all(backend, requests, record, f"{task.variant} labels ({backend.name})", progress)
    return report


def generate_all(backend, requests: list[LabelRequest], record, desc: str, progress: bool = True,
                 ) -> list[tuple[str, str]]:
    """Ask ``backend`` for every request, ``backend.concurrency`` at a time, and hand each answer to
    ``record(request, text)`` as it arrives (in this thread, so ``record`` may write files). Returns the
    ``(key, why)`` of requests that failed for good; any other error stops the run, queued requests dropped."""
    from tqdm import tqdm

    failed = []
    # Closed on a fatal error too, so that the error is the last line the user sees.
    with tqdm(total=len(requests), desc=desc, unit="request", disable=not progress) as bar:
        if getattr(backend, "concurrency", 1) <= 1:
            for request in requests:
                try:
                    record(request, backend.generate(request))
                except LabelBackendError as exc:
                    failed.append((request.key, str(exc)))
                bar.update(1)
        else:
            pool = ThreadPoolExecutor(max_workers=backend.concurrency)
            try:
                futures = {pool.submit(backend.generate, r): r for r in requests}
                for future in as_completed(futures):
                    request = futures[future]
                    try:
                        record(request, future.result())
                    except LabelBackendError as exc:
                        failed.append((request.key, str(exc)))
                    bar.update(1)
            finally:
                # On a fatal error or Ctrl-C: drop queued requests; what was written stays written.
                pool.shutdown(wait=True, cancel_futures=True)
    return failed


# --------------------------------------------------------------------------------------------- stage-1 JSON
@dataclass
class Stage1Report:
    records: int = 0
    unlabelled: list[str] = field(default_factory=list)  # street views of the selected splits without a label
    outside_splits: int = 0  # labels of images no longer in the selected splits, left out

    def summary(self) -> str:
        return (f"stage-1 records: {self.records}; {len(self.unlabelled)} street views without a label; "
                f"{self.outside_splits} labels outside the selected splits left out")


def build_stage1_json(city_root, labels_jsonl=None, out_json=None, *, variant: str = "grafted",
                      image_root=None, splits: tuple[str, ...] | None = ("train",)) -> Stage1Report:
    """Write the stage-1 LLaVA JSON: one record per labelled stage-1 image, in ``locations.csv`` order.

    Human turn: ``"<image>\\n"`` (twice for "separate") + the question without the hint; gpt turn: the reason.
    ``image`` paths are relative to ``image_root`` (default: the city root, the same image folder as stage 2).
    """
    city_root = Path(city_root)
    labels_jsonl = Path(labels_jsonl) if labels_jsonl else city_root / "stage1" / "labels.jsonl"
    out_json = Path(out_json) if out_json else city_root / "stage1" / "train.json"
    refuse_output_over_inputs(out_json, [("--labels", labels_jsonl), ("city table", city_root / "locations.csv")],
                              "--out")
    image_root = Path(image_root) if image_root else city_root
    rows = select_rows(read_locations(city_root / "locations.csv"), splits)
    labels: dict[str, dict] = {}
    for line, rec in read_jsonl(labels_jsonl, LABEL_KEYS):
        if rec["variant"] != variant:
            raise DataError(labels_jsonl, line, f"label made for the {rec['variant']!r} input, not {variant!r}")
        labels[rec["image"]] = rec
    report = Stage1Report()
    wanted = {r.image for r in rows}
    report.outside_splits = sum(1 for image in labels if image not in wanted)
    city = city_root.resolve().name
    views = view_names(rows)  # the same view names (and so ids) as the stage-2 records
    records = []
    for row in rows:
        rec = labels.get(row.image)
        if rec is None:
            report.unlabelled.append(row.image)
            continue
        paths = []
        for p in rec["images"]:
            absolute = Path(p) if os.path.isabs(p) else city_root / p
            if not absolute.is_file():
                raise DataError(labels_jsonl, None, f"image {absolute} of label {row.image!r} not found")
            paths.append(os.path.relpath(absolute, image_root))
        records.append({
            "id": f"{city}/{row.location_id}/{views[row.image]}",
            "image": paths[0] if len(paths) == 1 else paths,
            "conversations": [{"from": "human", "value": "<image>\n" * len(paths) + rec["question"]},
                              {"from": "gpt", "value": rec["reason"]}],
        })
    if not records:
        raise DataError(labels_jsonl, None, f"no label matches a street view of splits {splits}")
    write_llava_json(out_json, records)
    report.records = len(records)
    return report
