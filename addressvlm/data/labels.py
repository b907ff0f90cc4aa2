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

import math
import os
import random
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from shapely.geometry import Point
from shapely.ops import unary_union

from addressvlm.core.names import mentions_name, normalize_name
from addressvlm.core.records import JsonlAppender, Location, location_lines, read_locations, refuse_output_over_inputs
from addressvlm.data.graft import SEPARATE_SUFFIXES, VARIANTS, grafted_name, select_rows
from addressvlm.data.ingest import image_decode_error
from addressvlm.data.label_backends import LabelBackendError, LabelRequest, make_backend
from addressvlm.geo.crop import CROPS_INDEX, read_crop_index
from addressvlm.geo.streets import optional_street_map

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
    """The stage-1 input file(s) of one street view, as written by addressvlm.data.graft."""
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
    city_root, out_jsonl = Path(city_root), Path(out_jsonl)
    city = city_name or city_root.resolve().name
    table = city_root / "locations.csv"
    rows = select_rows(read_locations(table), splits)
    street_map = optional_street_map(city_root, streets)
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
