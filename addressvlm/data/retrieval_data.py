"""The cross-view retrieval data of a city (docs/retrieval.md): a gallery of satellite tiles, one per location and
centred on it, and the queries that should retrieve them: every street view, and a scene text per street view.

Tiles are cut from the city's satellite raster by the stage-1 crop code, without street names by default: a text
query that names a street would otherwise be matched by reading the name on the tile, not by seeing the place.
Scene texts describe what one street view shows in the way CVG-Text's do, and name no street, district or business;
a text that does is rejected and logged. They come from the stage-1 label backends: an LVLM (``openai``: any
OpenAI-compatible server; ``hf``: a local transformers LVLM) shown the street view with ``SCENE_PROMPT``, as
CVG-Text's were written, or ``rule``, the offline stand-in: sentences composed from what the view shows as its
renderer recorded it (``view_facts.jsonl``, which the demo city writes: colours, storeys, parks, trees, road width)
and from OpenStreetMap cues (the street's direction, crossings, nearby places by kind).

Splits are the pinned ``split`` column of ``locations.csv`` (by location, so train, val and test never share a
tile). Each step resumes: tiles already cut and texts already written are kept; the two files are rewritten whole.

The public datasets' layouts are ingested into the same two files by ``ingest_cvg_text`` and
``ingest_geotext1652``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

from addressvlm.core.names import mentions_name
from addressvlm.core.records import (
    VIEW_FACTS_FILE, DataError, JsonlAppender, Location, RETRIEVAL_SPLITS, read_jsonl, read_locations, read_text,
    read_view_facts, write_gallery, write_retrieval_queries,
)
from addressvlm.data.label_backends import LabelRequest, make_backend
from addressvlm.data.labels import gather_facts, generate_all
from addressvlm.data.vqa import view_names
from addressvlm.geo.crop import crop_city, read_crop_index
from addressvlm.geo.streets import optional_street_map

RETRIEVAL_DIR = "retrieval"
TILES_DIR = "tiles"
GALLERY_FILE = "gallery.jsonl"
QUERIES_FILE = "queries.jsonl"
SCENE_TEXTS_FILE = "scene_texts.jsonl"
SCENE_TEXT_KEYS = ("image", "location_id", "text", "source")
SCENE_RADIUS_M = 120.0

SCENE_PROMPT = (
    "This photo was taken in a city street. Describe the place for someone who must find it on a satellite image: "
    "the road (how wide, which way it runs, tram tracks, where other streets meet it), the colour of the pavements, "
    "the buildings (height in storeys, facade colour, windows), trees, parks, squares and shop fronts, and where "
    "these lie relative to each other. Do not name any street, district, business or sign text, and do not guess "
    "the city. Write one paragraph of three to five sentences.")


def retrieval_dir(city_root) -> Path:
    return Path(city_root) / RETRIEVAL_DIR


# --------------------------------------------------------------------------------------------- scene texts
def _seeded(key: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big"))


def _road_words(metres: int) -> str:
    return "wide" if metres >= 14 else "medium-width" if metres >= 11 else "narrow" if metres >= 7 else "small"


def _side(levels: int, park: bool, v: dict) -> str:
    if park:
        return "a fenced park with trees"
    return f"{levels}-storey {v['facade']} buildings with {v['windows']} windows"


def view_sentences(v: dict, rng: random.Random) -> list[str]:
    """What one street view shows (a line of ``view_facts.jsonl``), as a person would describe it."""
    road = f"a {_road_words(v['road_m'])} street, about {v['road_m']} metres of carriageway"
    tram = " with tram tracks" if v["tram"] else ""
    if v["view"] == "along":
        out = [rng.choice([f"Looking down {road}{tram}.", f"The camera looks along {road}{tram}.",
                           f"A view along {road}{tram}."])]
        (left, right), (left_park, right_park) = v["levels"], v["park"]
        if not left_park and not right_park:
            out.append(rng.choice([
                f"{v['facade'].capitalize()} facades with {v['windows']} windows line both sides, {left} storeys on "
                f"the left and {right} on the right.",
                f"On the left stand {_side(left, False, v)}, on the right {right}-storey ones.",
                f"Both sides are lined with {v['facade']} buildings ({left} and {right} storeys) with {v['windows']} "
                "windows."]))
        else:
            out.append(f"On the left is {_side(left, left_park, v)}; on the right, {_side(right, right_park, v)}.")
    else:
        out = [rng.choice([f"The camera faces the buildings across {road}{tram}.",
                           f"Across {road}{tram}, the view meets the far side.",
                           f"Looking straight across {road}{tram}."])]
        if v["park"][0]:
            out.append(rng.choice(["Opposite is a park behind a fence, with trees.",
                                   "A fenced park with trees fills the far side."]))
        else:
            out.append(rng.choice([
                f"Opposite stands a {v['levels'][0]}-storey {v['facade']} building with {v['windows']} windows.",
                f"The far side is a {v['facade']} facade, {v['levels'][0]} storeys high, with {v['windows']} windows."]))
    out.append(rng.choice([f"The pavements are {v['pavement']}.", f"The sidewalk paving is {v['pavement']}.",
                           f"{v['pavement'].capitalize()} paving runs along the kerbs."]))
    one_shop = "a shop front with an awning"
    extras = []
    if v["trees"]:
        extras.append("a few street trees" if v["trees"] <= 3 else "many trees")
    if v["shops"]:
        extras.append("shop fronts with awnings" if v["shops"] > 1 else one_shop)
    if extras:
        out.append(f"There {'is' if extras == [one_shop] else 'are'} {' and '.join(extras)}.")
    return out


class SceneRuleBackend:
    """Scene descriptions with no names in them, from facts rather than pixels: the offline stand-in for an LVLM
    (``openai``/``hf``) that describes a street view from the image. ``view_facts`` (``image -> line of
    view_facts.jsonl``, written by a city renderer such as the demo's) gives what each view shows -- road width,
    pavement and facade colours, storeys, parks, trees, tram tracks, shop fronts; the street data
    (``labels.Facts``) gives the street's direction, the streets crossing it and how far, and nearby places by kind.
    A city without view facts gets the map sentences alone. Phrasing varies per view (seeded by its image) and
    reproduces."""

    name = "rule"
    concurrency = 1

    def __init__(self, view_facts: dict[str, dict] | None = None):
        self.view_facts = view_facts or {}

    def generate(self, request) -> str:
        f = request.facts
        rng = _seeded(request.key)
        view = self.view_facts.get(request.key)
        out = view_sentences(view, rng) if view else []
        if f.street_axis:
            out.append(rng.choice([f"The street runs {f.street_axis}.", f"The road here runs {f.street_axis}."]))
        distances = [round(d / 5) * 5 for _, d in f.crossings]
        if len(distances) == 1:
            out.append(f"Another street crosses it about {distances[0]:.0f} metres away.")
        elif distances:
            out.append(f"Two other streets cross it, about {distances[0]:.0f} and {distances[1]:.0f} metres away.")
        elif f.street_axis:  # the street was found in the data, and nothing crosses it nearby
            out.append("No other street crosses it close by.")
        for _, kind, d, direction in f.places[:2]:
            out.append(rng.choice([f"A {kind} lies about {round(d / 5) * 5:.0f} metres to the {direction}.",
                                   f"To the {direction}, roughly {round(d / 5) * 5:.0f} metres away, is a {kind}."]))
        return " ".join(out) or "A city street."


def make_scene_backend(name: str, view_facts: dict[str, dict] | None = None, **options):
    """``rule`` (``view_facts`` only) | ``openai`` | ``hf``: the stage-1 label backends
    (``addressvlm.data.label_backends``), whose clients, retries and concurrency describe scenes as they write
    reasons."""
    if name == "rule":
        return SceneRuleBackend(view_facts)
    return make_backend(name, None, **options)  # a labelling task only shapes the rule backend's reasons


def names_in_text(text: str, names: Iterable[str]) -> list[str]:
    """The names of ``names`` that ``text`` mentions (the stage-1 matcher: normalised, street types expanded)."""
    return [name for name in names if name and mentions_name(text, name)]


# --------------------------------------------------------------------------------------------- city build
@dataclass
class RetrievalBuildReport:
    tiles: int = 0
    tiles_written: int = 0
    image_queries: int = 0
    text_queries: int = 0
    texts_written: int = 0
    texts_rejected: int = 0  # named a street, cross street or district (kept in scene_texts.rejected.jsonl)
    uncovered: list[tuple[str, str]] = field(default_factory=list)  # (location_id, why): no tile, no queries
    failed_texts: list[tuple[str, str]] = field(default_factory=list)  # (image, why): a rerun retries
    by_split: dict[str, int] = field(default_factory=dict)  # tiles per split

    def summary(self) -> str:
        splits = ", ".join(f"{n} {s}" for s, n in self.by_split.items())
        lines = [f"gallery: {self.tiles} tiles ({splits}; {self.tiles_written} cut in this run)",
                 f"queries: {self.image_queries} street views, {self.text_queries} scene texts "
                 f"({self.texts_written} written in this run, {self.texts_rejected} rejected for naming a place)",
                 f"{len(self.uncovered)} locations outside the raster, {len(self.failed_texts)} texts failed"]
        lines += [f"  no tile for {loc}: {why}" for loc, why in self.uncovered[:20]]
        lines += [f"  no text for {image}: {why}" for image, why in self.failed_texts[:20]]
        return "\n".join(lines)


def location_splits(rows: Sequence[Location], path) -> dict[str, str]:
    """``location_id -> split`` from the pinned column; a table without it, or a location in two splits, is an
    error (a tile in two splits would be trained on and tested on)."""
    split_of, image_of = {}, {}
    for row in rows:
        if not row.split:
            raise DataError(path, None, f"image {row.image!r} has no split: retrieval keeps to the pinned splits "
                                        "(python datasets_prep/split_locations.py --locations ...)")
        first = split_of.setdefault(row.location_id, row.split)
        image_of.setdefault(row.location_id, row.image)
        if first != row.split:
            raise DataError(path, None, f"location {row.location_id!r} is in split {first!r} (image "
                                        f"{image_of[row.location_id]!r}) and {row.split!r} (image {row.image!r})")
    return split_of


def build_city_retrieval(city_root, *, size_m: float = 200.0, pixels: int = 336, labels: bool = False,
                         text_backend="rule", backend_options: dict | None = None, texts: bool = True,
                         city_name: str | None = None, raster=None, streets=None, attribution: str | None = None,
                         workers: int | None = None, limit: int | None = None,
                         progress: bool = True) -> RetrievalBuildReport:
    """Cut the tiles, write the scene texts, then ``retrieval/gallery.jsonl`` and ``retrieval/queries.jsonl``.

    ``text_backend`` is ``rule``, ``openai`` or ``hf`` (``backend_options`` go to its constructor) or an object
    with ``name``, ``concurrency`` and ``generate(LabelRequest) -> str``; ``texts=False`` writes street-view
    queries only. ``limit`` bounds the texts asked for in this run. ``labels=True`` draws street names on the tiles
    (the stage-1 look), which a text naming a street could then match by reading.
    """
    city_root = Path(city_root)
    table = city_root / "locations.csv"
    rows = read_locations(table)
    split_of = location_splits(rows, table)
    out = retrieval_dir(city_root)
    tiles_dir = out / TILES_DIR
    crops = crop_city(city_root, tiles_dir, size_m, pixels, 0.0, labels, raster=raster, streets=streets,
                      attribution=attribution, workers=workers, progress=progress)
    report = RetrievalBuildReport(tiles_written=crops.written, uncovered=list(crops.failed))
    index = read_crop_index(tiles_dir)
    first_row: dict[str, Location] = {}
    for row in rows:
        first_row.setdefault(row.location_id, row)

    gallery = []
    for loc, row in first_row.items():
        crop = index.get(loc)
        if crop is None:
            continue
        gallery.append({"tile": loc, "image": f"{RETRIEVAL_DIR}/{TILES_DIR}/{crop['file']}",
                        "lat": crop["center_lat"], "lon": crop["center_lon"], "street": row.street,
                        "district": row.district, "split": split_of[loc]})
    tiles = {t["tile"] for t in gallery}
    id_prefix = city_root.resolve().name  # the stage-2 records' ids: <city folder>/<location_id>/<view>
    views = view_names(rows)
    queries = [{"query_id": f"{id_prefix}/{row.location_id}/{views[row.image]}", "kind": "image",
                "tile": row.location_id, "split": split_of[row.location_id], "image": row.image, "text": None,
                "source": "street_view"} for row in rows if row.location_id in tiles]
    report.image_queries = len(queries)
    if texts:
        scene = _scene_texts(city_root, city_name or id_prefix, [row for row in rows if row.location_id in tiles],
                             text_backend, backend_options, streets, limit, progress, report)
        queries += [{"query_id": f"{id_prefix}/{row.location_id}/{views[row.image]}/text", "kind": "text",
                     "tile": row.location_id, "split": split_of[row.location_id], "image": None,
                     "text": scene[row.image]["text"], "source": scene[row.image]["source"]}
                    for row in rows if row.image in scene and row.location_id in tiles]
        report.text_queries = len(queries) - report.image_queries
    write_gallery(out / GALLERY_FILE, gallery)
    write_retrieval_queries(out / QUERIES_FILE, queries)
    report.tiles = len(gallery)
    report.by_split = {s: sum(t["split"] == s for t in gallery) for s in RETRIEVAL_SPLITS}
    return report


def _scene_texts(city_root: Path, city: str, rows: list[Location], backend, backend_options, streets, limit, progress,
                 report) -> dict[str, dict]:
    """``image -> record`` of every accepted scene text (one per street view of ``rows``), asking ``backend`` for
    the views without one."""
    # The rule backend writes from the city's view facts where a renderer left them (the demo city does).
    facts_path = city_root / VIEW_FACTS_FILE
    view_facts = {rec["image"]: rec for rec in read_view_facts(facts_path)} if facts_path.is_file() else None
    # The queries file says where each text came from: "rule", or the backend and its model ("openai:<model>").
    settings = {"texts": "one per street view"}
    if isinstance(backend, str):
        source = backend if backend == "rule" else f"{backend}:{(backend_options or {}).get('model')}"
        if backend == "rule":
            settings["view_facts"] = view_facts is not None
            backend = make_scene_backend(backend, view_facts)
        else:
            backend = make_scene_backend(backend, **(backend_options or {}))
    else:
        source = getattr(backend, "source", backend.name)
    street_map = optional_street_map(city_root, streets)
    path = retrieval_dir(city_root) / SCENE_TEXTS_FILE
    rejected_log = path.with_name(Path(SCENE_TEXTS_FILE).stem + ".rejected.jsonl")
    with JsonlAppender(path, key="image", required=SCENE_TEXT_KEYS, settings={"source": source, **settings}) \
            as texts, JsonlAppender(rejected_log, key="image") as rejected:
        requests, place_facts = [], {}
        for row in rows:
            if row.image in texts.done:
                continue
            if limit is not None and len(requests) >= limit:
                break
            # The map around a place is the same for each of its views: looked up once, given each view's heading.
            if row.location_id not in place_facts:
                place_facts[row.location_id] = gather_facts(row, city, street_map, radius_m=SCENE_RADIUS_M)
            facts = dataclasses.replace(place_facts[row.location_id], image=row.image, heading=row.heading)
            requests.append(LabelRequest(row.image, [city_root / row.image], SCENE_PROMPT, facts))

        def record(request, text: str) -> None:
            f = request.facts
            named = names_in_text(text, [f.street, f.cross_street, f.district] + [n for n, _ in f.crossings])
            rec = {"image": request.key, "location_id": f.location_id, "text": text, "source": source}
            if text.strip() and not named:
                texts.write(rec)
                report.texts_written += 1
            else:
                rejected.write({**rec, "names": named})
                report.texts_rejected += 1

        report.failed_texts += generate_all(backend, requests, record, f"scene texts ({source})", progress)
    return {rec["image"]: rec for _, rec in read_jsonl(path, SCENE_TEXT_KEYS)}


# --------------------------------------------------------------------------------------------- public datasets
@dataclass
class IngestReport:
    dataset: str
    tiles: int = 0
    image_queries: int = 0
    text_queries: int = 0
    by_split: dict[str, int] = field(default_factory=dict)  # tiles per split
    missing: list[str] = field(default_factory=list)  # annotated images not found on disk: left out

    def summary(self) -> str:
        splits = ", ".join(f"{n} {s}" for s, n in self.by_split.items() if n)
        lines = [f"{self.dataset}: {self.tiles} tiles ({splits}), {self.image_queries} image queries, "
                 f"{self.text_queries} text queries; {len(self.missing)} annotated images not found"]
        lines += [f"  missing {m}" for m in self.missing[:20]]
        return "\n".join(lines)


def _read_json(path: Path):
    if not path.is_file():
        raise DataError(path, None, "annotation file not found")
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(path, exc.lineno, f"invalid JSON: {exc.msg}") from None


def _write_ingested(root: Path, gallery: list[dict], queries: list[dict], report: IngestReport) -> IngestReport:
    out = retrieval_dir(root)
    write_gallery(out / GALLERY_FILE, gallery)
    write_retrieval_queries(out / QUERIES_FILE, queries)
    report.tiles = len(gallery)
    report.image_queries = sum(q["kind"] == "image" for q in queries)
    report.text_queries = sum(q["kind"] == "text" for q in queries)
    report.by_split = {s: sum(t["split"] == s for t in gallery) for s in RETRIEVAL_SPLITS}
    return report


# CVG-Text names each place's files by its coordinates: "<lat>,<lon>..." (the same name in every image folder).
_CVG_COORDINATES = re.compile(r"([-+]?\d+(?:\.\d+)?),([-+]?\d+(?:\.\d+)?)")
CVG_SPLIT_FILES = (("train", "train.json"), ("test", "test.json"))


def _cvg_entries(path: Path) -> list[tuple[str, str]]:
    """``(image name, caption)`` pairs of a CVG-Text annotation file: ``{name: caption}``, or a list of
    ``{"image"|"bev_image": name, "caption": text}``."""
    data = _read_json(path)
    if isinstance(data, dict):
        entries = list(data.items())
    elif isinstance(data, list):
        entries = [(item.get("image", item.get("bev_image")), item.get("caption")) if isinstance(item, dict)
                   else (None, None) for item in data]
    else:
        raise DataError(path, 1, "a CVG-Text annotation file holds {image name: caption} or a list of records")
    for i, (name, caption) in enumerate(entries, start=1):
        if not isinstance(name, str) or not name.strip() or not isinstance(caption, str) or not caption.strip():
            raise DataError(path, None, f"entry {i} ({name!r}) needs an image name and a non-empty caption")
    return [(PurePosixPath(name).name, caption) for name, caption in entries]


def ingest_cvg_text(root, versions: Sequence[str] | None = None) -> IngestReport:
    """CVG-Text as published (``ROOT/CVG-text/<version>/{train,test}.json`` mapping an image name to its scene
    text, and the images of one name in ``ROOT/<version>-satellite/`` and ``ROOT/<version>-ground/``) into
    ``ROOT/retrieval/``: per annotated place its satellite tile (lat/lon from the file name), a text query, and an
    image query where the street view exists. ``versions`` default to every folder under ``ROOT/CVG-text``."""
    root = Path(root)
    annotations = root / "CVG-text"
    if not versions:
        versions = sorted(p.name for p in annotations.iterdir() if p.is_dir()) if annotations.is_dir() else []
        if not versions:
            raise DataError(annotations, None, "no version folders (e.g. NewYork/ with train.json, test.json)")
    report = IngestReport("CVG-Text")
    gallery, queries = [], []
    for version in versions:
        for split, file_name in CVG_SPLIT_FILES:
            path = annotations / version / file_name
            if split == "train" and not path.is_file():
                continue  # a test-only download
            for name, caption in _cvg_entries(path):
                match = _CVG_COORDINATES.match(name)
                if not match:
                    raise DataError(path, None, f"image name {name!r} does not start with '<lat>,<lon>'")
                tile_image = f"{version}-satellite/{name}"
                if not (root / tile_image).is_file():
                    report.missing.append(tile_image)
                    continue
                tile = f"{version}/{name}"
                gallery.append({"tile": tile, "image": tile_image, "lat": float(match[1]), "lon": float(match[2]),
                                "street": "", "district": "", "split": split})
                queries.append({"query_id": f"{tile}/text", "kind": "text", "tile": tile, "split": split,
                                "image": None, "text": caption, "source": "cvg-text"})
                ground = f"{version}-ground/{name}"
                if (root / ground).is_file():
                    queries.append({"query_id": f"{tile}/ground", "kind": "image", "tile": tile, "split": split,
                                    "image": ground, "text": None, "source": "cvg-text"})
    if not gallery:
        raise DataError(annotations, None, f"no annotated satellite image found for versions {list(versions)}")
    return _write_ingested(root, gallery, queries, report)


def ingest_geotext1652(root, test_json: str = "test_951_version.json") -> IngestReport:
    """GeoText-1652 as published (``ROOT/train.json`` and ``ROOT/<test_json>``: records ``{"image_id":
    "<building>/<file>", "image": path under ROOT, "caption": text or list of texts, ...}``) into
    ``ROOT/retrieval/``: every annotated image a gallery entry, every caption a text query for it -- GeoText's own
    text-to-image evaluation. The dataset carries no coordinates, so tiles have lat/lon null (no metre shares)."""
    root = Path(root)
    report = IngestReport("GeoText-1652")
    gallery, queries = [], []
    for split, file_name in (("train", "train.json"), ("test", test_json)):
        path = root / file_name
        if split == "train" and not path.is_file():
            continue
        data = _read_json(path)
        if not isinstance(data, list):
            raise DataError(path, 1, "a GeoText-1652 annotation file holds a list of records")
        for i, ann in enumerate(data, start=1):
            if not isinstance(ann, dict) or not all(isinstance(ann.get(k), str) for k in ("image_id", "image")):
                raise DataError(path, None, f"record {i} needs string 'image_id' and 'image'")
            captions = ann.get("caption")
            captions = [captions] if isinstance(captions, str) else captions
            if not isinstance(captions, list) or not captions or not all(isinstance(c, str) and c.strip()
                                                                         for c in captions):
                raise DataError(path, None, f"record {i} ({ann['image_id']}): 'caption' must be a text or a list "
                                            "of texts")
            if not (root / ann["image"]).is_file():
                report.missing.append(ann["image"])
                continue
            tile = f"{split}/{ann['image_id']}"
            gallery.append({"tile": tile, "image": ann["image"], "lat": None, "lon": None, "street": "",
                            "district": "", "split": split})
            queries += [{"query_id": f"{tile}/{k}", "kind": "text", "tile": tile, "split": split, "image": None,
                         "text": caption, "source": "geotext-1652"} for k, caption in enumerate(captions)]
    if not gallery:
        raise DataError(root, None, f"no annotated image of train.json / {test_json} found under it")
    return _write_ingested(root, gallery, queries, report)
