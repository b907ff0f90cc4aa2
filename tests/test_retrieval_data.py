"""Cross-view retrieval data: a city's gallery and queries (tiles without names, scene texts that name no place,
location-disjoint splits, resume), and the CVG-Text and GeoText-1652 layouts ingested from fixtures written in
their published shape."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from addressvlm.geo.crop import read_crop_index
from addressvlm.data.label_backends import LabelBackendError
from addressvlm.core.names import mentions_name
from addressvlm.core.records import (
    VIEW_FACTS_FILE, DataError, read_gallery, read_locations, read_retrieval_queries, read_view_facts,
    write_locations, write_view_facts,
)
from addressvlm.data.retrieval_data import SCENE_PROMPT, build_city_retrieval, ingest_cvg_text, ingest_geotext1652
from helpers import ScriptedServer, make_street_view_city

REPO = Path(__file__).resolve().parent.parent
SMALL_TILES = dict(size_m=120, pixels=48, workers=1, progress=False, city_name="Helsinki")


class ScriptedScenes:
    """A scene-text backend as the label backends are driven: names the street for ``naming``, fails for
    ``failing``, and records what it was asked."""

    name = "scripted"
    source = "openai:scripted"
    concurrency = 2

    def __init__(self, naming=(), failing=()):
        self.naming, self.failing, self.asked = set(naming), set(failing), []

    def generate(self, request) -> str:
        self.asked.append((request.key, [p.name for p in request.images], request.prompt))
        if request.key in self.failing:
            raise LabelBackendError("server gave up")
        if request.key in self.naming:
            return f"A wide road, {request.facts.street}, with trees."
        return "A wide road with trees on both sides and a square to the north."


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("retrieval") / "helsinki"
    make_street_view_city(root, with_raster=True)
    return root


def test_city_gallery_and_queries(city):
    report = build_city_retrieval(city, **SMALL_TILES)
    gallery = read_gallery(city / "retrieval" / "gallery.jsonl")
    queries = read_retrieval_queries(city / "retrieval" / "queries.jsonl", gallery)
    assert (report.tiles, report.image_queries, report.text_queries) == (4, 8, 8)
    assert report.by_split == {"train": 3, "val": 0, "test": 1}
    # One tile per location, centred on it, split as its location; no street name drawn on it.
    index = read_crop_index(city / "retrieval" / "tiles")
    assert [t["tile"] for t in gallery] == ["loc0", "loc1", "loc2", "loc3"]
    for tile in gallery:
        crop = index[tile["tile"]]
        assert (tile["lat"], tile["lon"]) == pytest.approx((crop["lat"], crop["lon"]), abs=1e-9)
        assert crop["street_labels"] == [] and Image.open(city / tile["image"]).size == (48, 48)
    assert {t["tile"]: t["split"] for t in gallery}["loc3"] == "test"
    # Every street view retrieves its location's tile, in the same split; ids are the stage-2 ids.
    views = [q for q in queries if q["kind"] == "image"]
    assert {(q["image"], q["tile"], q["split"]) for q in views} == {
        (f"views/{i}/{v}.jpg", f"loc{i}", "test" if i == 3 else "train") for i in range(4) for v in range(2)}
    assert views[0]["query_id"] == "helsinki/loc0/0" and views[0]["source"] == "street_view"
    # A scene text per street view (the rule stand-in): without view facts, the street data around the place, and
    # no street or place named.
    texts = {q["query_id"]: q for q in queries if q["kind"] == "text"}
    assert set(texts) == {f"helsinki/loc{i}/{v}/text" for i in range(4) for v in range(2)}
    assert {(q["tile"], q["split"]) for q in texts.values()} == {(f"loc{i}", "test" if i == 3 else "train")
                                                                for i in range(4)}
    first = texts["helsinki/loc0/0/text"]
    assert first["source"] == "rule" and "runs east-west" in first["text"]
    assert "crosses it about" in first["text"] and "square" in first["text"]
    for q in texts.values():
        assert not any(mentions_name(q["text"], n) for n in ("Mannerheimintie", "Yrjönkatu", "Kluuvi", "Kaivopiha"))
    # A rerun cuts and writes nothing new and writes the same files.
    before = [(city / "retrieval" / f).read_bytes() for f in ("gallery.jsonl", "queries.jsonl")]
    again = build_city_retrieval(city, **SMALL_TILES)
    assert (again.tiles_written, again.texts_written) == (0, 0)
    assert [(city / "retrieval" / f).read_bytes() for f in ("gallery.jsonl", "queries.jsonl")] == before


def test_lvlm_texts_naming_a_street_are_rejected_and_a_rerun_asks_only_for_the_rest(city, tmp_path):
    import shutil

    root = tmp_path / "helsinki"
    shutil.copytree(city, root, ignore=shutil.ignore_patterns("retrieval"))
    backend = ScriptedScenes(naming={"views/1/0.jpg"}, failing={"views/2/1.jpg"})
    report = build_city_retrieval(root, text_backend=backend, **SMALL_TILES)
    assert (report.texts_written, report.texts_rejected) == (6, 1)
    assert report.failed_texts == [("views/2/1.jpg", "server gave up")]
    # The backend saw each street view on its own, with the retrieval prompt, as CVG-Text's texts were written.
    assert sorted(backend.asked)[:2] == [("views/0/0.jpg", ["0.jpg"], SCENE_PROMPT),
                                         ("views/0/1.jpg", ["1.jpg"], SCENE_PROMPT)]
    queries = read_retrieval_queries(root / "retrieval" / "queries.jsonl")
    assert {q["query_id"] for q in queries if q["kind"] == "text"} == {
        f"helsinki/loc{i}/{v}/text" for i, v in ((0, 0), (0, 1), (1, 1), (2, 0), (3, 0), (3, 1))}
    assert {q["source"] for q in queries if q["kind"] == "text"} == {"openai:scripted"}
    rejected = [json.loads(line) for line in (root / "retrieval" / "scene_texts.rejected.jsonl").open()]
    assert (rejected[0]["image"], rejected[0]["location_id"]) == ("views/1/0.jpg", "loc1")
    assert rejected[0]["names"] == ["Mannerheimintie"]
    retry = ScriptedScenes()
    build_city_retrieval(root, text_backend=retry, **SMALL_TILES)
    assert sorted(key for key, _, _ in retry.asked) == ["views/1/0.jpg", "views/2/1.jpg"]
    # Texts made by another backend are not mixed into the same file.
    with pytest.raises(DataError, match="other settings"):
        build_city_retrieval(root, text_backend="rule", **SMALL_TILES)


class SceneServer(ScriptedServer):
    """An OpenAI-compatible endpoint that describes every street view alike."""

    def respond(self, body):
        with self.lock:
            self.requests.append(body)
        return 200, "A wide road with ochre buildings and trees on both sides."


def test_openai_scene_texts_come_from_a_server_by_name(city, tmp_path):
    """``--backend openai`` as build_retrieval.py passes it (a backend name and its options), not a backend object:
    the stage-1 client is made without a labelling task and asked once per street view."""
    import shutil

    root = tmp_path / "helsinki"
    shutil.copytree(city, root, ignore=shutil.ignore_patterns("retrieval"))
    server = SceneServer()
    try:
        report = build_city_retrieval(root, text_backend="openai", backend_options=dict(
            model="scene-lvlm", base_url=server.url, api_key="k", concurrency=2, backoff_s=0.01), **SMALL_TILES)
    finally:
        server.close()
    assert (report.texts_written, report.failed_texts) == (8, [])
    assert {body["model"] for body in server.requests} == {"scene-lvlm"} and len(server.requests) == 8
    texts = [q for q in read_retrieval_queries(root / "retrieval" / "queries.jsonl") if q["kind"] == "text"]
    assert {q["source"] for q in texts} == {"openai:scene-lvlm"} and len(texts) == 8


def _view_facts(place: int) -> list[dict]:
    """An along view (both sides: a facade and a park) and an across view for ``make_street_view_city``'s ``loc{place}``."""
    return [{"image": f"views/{place}/0.jpg", "location_id": f"loc{place}", "view": "along", "road_m": 16,
             "pavement": "reddish", "facade": "ochre", "windows": "arched", "levels": [5, 3], "park": [False, True],
             "trees": 4, "tram": True, "shops": 1},
            {"image": f"views/{place}/1.jpg", "location_id": f"loc{place}", "view": "across", "road_m": 9,
             "pavement": "reddish", "facade": "ochre", "windows": "arched", "levels": [4], "park": [False],
             "trees": 0, "tram": False, "shops": 0}]


def test_rule_texts_say_what_each_view_shows(city, tmp_path):
    import shutil

    root = tmp_path / "helsinki"
    shutil.copytree(city, root, ignore=shutil.ignore_patterns("retrieval"))
    write_view_facts(root / VIEW_FACTS_FILE, [fact for place in range(4) for fact in _view_facts(place)])
    build_city_retrieval(root, **SMALL_TILES)
    texts = {q["query_id"]: q["text"] for q in read_retrieval_queries(root / "retrieval" / "queries.jsonl")
             if q["kind"] == "text"}
    along, across = texts["helsinki/loc0/0/text"], texts["helsinki/loc0/1/text"]
    # What the view shows: road width, tram tracks, the facade's colour, windows and storeys, the park side, trees,
    # the pavement's colour; then the map around it (direction, crossings, places), as without view facts.
    for words in ("wide street", "16 metres", "tram tracks", "5-storey ochre buildings with arched windows",
                  "fenced park", "many trees", "reddish", "shop front", "runs east-west", "crosses it about"):
        assert words in along, (words, along)
    assert "narrow street" in across and "ochre" in across and "4" in across and "park" not in across
    assert "tram" not in across and "trees" not in across and "reddish" in across
    assert len(set(texts.values())) == len(texts)  # views of one place are told apart
    # A city whose texts were written without view facts is not topped up with texts written from them.
    plain = tmp_path / "plain"
    shutil.copytree(city, plain, ignore=shutil.ignore_patterns("retrieval"))
    build_city_retrieval(plain, limit=2, **SMALL_TILES)
    shutil.copy(root / VIEW_FACTS_FILE, plain / VIEW_FACTS_FILE)
    with pytest.raises(DataError, match="other settings"):
        build_city_retrieval(plain, **SMALL_TILES)


def test_view_facts_are_checked_with_file_and_line(tmp_path):
    facts = _view_facts(0)
    write_view_facts(tmp_path / VIEW_FACTS_FILE, facts)
    assert read_view_facts(tmp_path / VIEW_FACTS_FILE) == facts
    one_side = [facts[0], {**facts[1], "view": "along"}]
    with pytest.raises(DataError, match=r"view_facts.jsonl:2: levels \[4\]: an along view needs 2"):
        write_view_facts(tmp_path / VIEW_FACTS_FILE, one_side)
    (tmp_path / VIEW_FACTS_FILE).write_text(json.dumps({**facts[0], "tram": "yes"}) + "\n")
    with pytest.raises(DataError, match=r"view_facts.jsonl:1: tram 'yes' is not true or false"):
        read_view_facts(tmp_path / VIEW_FACTS_FILE)


def test_demo_city_views_are_described_in_the_render_s_colours_and_never_named(tmp_path):
    """The demo city records, per street view, the words of the colours it drew (the sign's pavement code, the
    district's facades); the rule texts written from them name no street or district of the city."""
    from addressvlm.demo.city import build_demo_city
    from addressvlm.demo.render import district_words, street_paving_words

    root = tmp_path / "demo"
    build_demo_city(root, seed=3, locations=8, views=2, image_size=(96, 72), metres_per_pixel=4.0, streets=4,
                    progress=False)
    info = json.loads((root / "city.json").read_text(encoding="utf-8"))
    street_index = {s["name"]: i for i, s in enumerate(info["streets"])}
    district_index = {name: i for i, name in enumerate(info["districts"])}
    rows = read_locations(root / "locations.csv")
    facts = {f["image"]: f for f in read_view_facts(root / VIEW_FACTS_FILE)}
    assert set(facts) == {row.image for row in rows}
    for row in rows:
        fact = facts[row.image]
        assert fact["location_id"] == row.location_id
        assert fact["pavement"] == street_paving_words(street_index[row.street])
        assert (fact["facade"], fact["windows"]) == district_words(district_index[row.district])
    write_locations(root / "locations.csv", [row.__class__(**{**row.__dict__, "split": "train"}) for row in rows])
    report = build_city_retrieval(root, **SMALL_TILES)
    assert report.text_queries == len(rows) and report.texts_rejected == 0
    names = list(street_index) + list(district_index) + [row.cross_street for row in rows if row.cross_street]
    for q in read_retrieval_queries(root / "retrieval" / "queries.jsonl"):
        if q["kind"] == "text":
            _, location_id, view, _ = q["query_id"].split("/")
            fact = facts[f"images/{location_id}/{view}.jpg"]
            assert fact["pavement"] in q["text"].lower() and not any(mentions_name(q["text"], n) for n in names)


def test_splits_must_be_pinned_and_location_disjoint(city, tmp_path):
    import shutil

    root = tmp_path / "c"
    shutil.copytree(city, root, ignore=shutil.ignore_patterns("retrieval"))
    rows = read_locations(root / "locations.csv")
    write_locations(root / "locations.csv", [r.__class__(**{**r.__dict__, "split": ""}) for r in rows])
    with pytest.raises(DataError, match="has no split"):
        build_city_retrieval(root, **SMALL_TILES)
    mixed = [r.__class__(**{**r.__dict__, "split": "val" if r.image == "views/0/1.jpg" else r.split})
             for r in rows]
    write_locations(root / "locations.csv", mixed)
    with pytest.raises(DataError, match=r"location 'loc0' is in split 'train' \(image 'views/0/0.jpg'\) and 'val'"):
        build_city_retrieval(root, **SMALL_TILES)


# ------------------------------------------------------------------------------------------ public layouts
def _image(path: Path, colour=(90, 120, 60)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


def write_cvg_text(root: Path) -> None:
    """CVG-Text as published: CVG-text/<version>/{train,test}.json ({image name: text}), <version>-satellite/ and
    <version>-ground/ holding one file per name, the name starting with the place's '<lat>,<lon>'."""
    train = {"40.7411,-73.9897_0.jpg": "A wide avenue with a glass tower.", "40.7420,-73.9880_1.jpg": "A park."}
    test = {"40.7500,-73.9900_2.jpg": "Brick houses along a narrow one-way street."}
    for split, entries in (("train", train), ("test", test)):
        target = root / "CVG-text" / "NewYork" / f"{split}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(entries, indent=1))
        for name in entries:
            _image(root / "NewYork-satellite" / name)
    _image(root / "NewYork-ground" / "40.7411,-73.9897_0.jpg")


def test_cvg_text_layout_is_ingested(tmp_path):
    root = tmp_path / "CVG-Text"
    write_cvg_text(root)
    report = ingest_cvg_text(root)
    assert (report.tiles, report.text_queries, report.image_queries) == (3, 3, 1)
    gallery = read_gallery(root / "retrieval" / "gallery.jsonl")
    queries = read_retrieval_queries(root / "retrieval" / "queries.jsonl", gallery)
    first = gallery[0]
    assert first == {"tile": "NewYork/40.7411,-73.9897_0.jpg", "image": "NewYork-satellite/40.7411,-73.9897_0.jpg",
                     "lat": 40.7411, "lon": -73.9897, "street": "", "district": "", "split": "train"}
    assert [t["split"] for t in gallery] == ["train", "train", "test"]
    ground = next(q for q in queries if q["kind"] == "image")
    assert (ground["image"], ground["tile"]) == ("NewYork-ground/40.7411,-73.9897_0.jpg", first["tile"])
    text = next(q for q in queries if q["tile"] == gallery[2]["tile"])
    assert (text["text"], text["split"], text["source"]) == (
        "Brick houses along a narrow one-way street.", "test", "cvg-text")
    (root / "CVG-text" / "NewYork" / "test.json").write_text(json.dumps({"no_coordinates.jpg": "x"}))
    with pytest.raises(DataError, match=r"test\.json: image name 'no_coordinates.jpg' does not start with"):
        ingest_cvg_text(root, ["NewYork"])


def write_geotext(root: Path) -> None:
    """GeoText-1652 as published: train.json (a caption per record) and test_951_version.json (a list of captions
    per record), records naming "<building>/<file>" and the image's path under the root."""
    train = [{"image_id": "0839/image-43.jpeg", "image": "train/0839/image-43.jpeg", "caption": "A large office.",
              "sentences": ["A street."], "bboxes": [[0.4, 0.6, 0.3, 0.6]]},
             {"image_id": "0839/0839.jpg", "image": "train/0839/0839.jpg", "caption": "Roofs from above.",
              "sentences": [], "bboxes": []}]
    test = [{"image_id": "0001/image-01.jpeg", "image": "test/gallery_no_train(250)/0001/image-01.jpeg",
             "caption": ["A stadium.", "An oval field with stands."], "sentences": [], "bboxes": []}]
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.json").write_text(json.dumps(train))
    (root / "test_951_version.json").write_text(json.dumps(test))
    for rec in train + test:
        _image(root / rec["image"])


def test_geotext1652_layout_is_ingested(tmp_path):
    root = tmp_path / "GeoText1652_Dataset"
    write_geotext(root)
    report = ingest_geotext1652(root)
    assert (report.tiles, report.text_queries, report.image_queries) == (3, 4, 0)
    gallery = read_gallery(root / "retrieval" / "gallery.jsonl")
    queries = read_retrieval_queries(root / "retrieval" / "queries.jsonl", gallery)
    assert gallery[2] == {"tile": "test/0001/image-01.jpeg", "image": "test/gallery_no_train(250)/0001/image-01.jpeg",
                          "lat": None, "lon": None, "street": "", "district": "", "split": "test"}
    assert [(q["query_id"], q["text"]) for q in queries if q["split"] == "test"] == [
        ("test/0001/image-01.jpeg/0", "A stadium."), ("test/0001/image-01.jpeg/1", "An oval field with stands.")]
    # Coordinates are both known or both null: a tile with one of them is a broken row.
    half = root / "half.jsonl"
    half.write_text(json.dumps({**gallery[0], "lon": 24.9}) + "\n")
    with pytest.raises(DataError, match=r"half\.jsonl:1: lat None is not a number"):
        read_gallery(half)
    (root / "train.json").write_text(json.dumps([{"image_id": "0839/x.jpeg", "image": "train/0839/x.jpeg"}]))
    with pytest.raises(DataError, match=r"train\.json: record 1 \(0839/x.jpeg\): 'caption' must be"):
        ingest_geotext1652(root)


def test_cli_reports_and_names_bad_input(tmp_path):
    root = tmp_path / "CVG-Text"
    write_cvg_text(root)
    script = [sys.executable, str(REPO / "datasets_prep" / "build_retrieval.py")]
    done = subprocess.run(script + ["--cvg-text", str(root), "--version", "NewYork"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "CVG-Text: 3 tiles (2 train, 1 test), 1 image queries, 3 text queries" in done.stdout
    (root / "CVG-text" / "NewYork" / "train.json").write_text("{\n  \"a.jpg\": \n")
    bad = subprocess.run(script + ["--cvg-text", str(root)], capture_output=True, text=True)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith(
        f"error: {root / 'CVG-text' / 'NewYork' / 'train.json'}:3: invalid JSON")


def test_labelling_and_retrieval_scripts_read_the_backend_options_alike():
    """One set of backend options (``label_backends.add_backend_arguments``): the retrieval data builder takes
    --backoff as the labelling scripts do; only the default answer length differs (a scene text is shorter)."""
    import argparse

    from addressvlm.data.label_backends import add_label_arguments, backend_options
    from scripts import script

    flags = ["--backend", "openai", "--model", "m", "--base-url", "http://x/v1", "--backoff", "2.5"]
    retrieval_parser = script("datasets_prep/build_retrieval.py").build_parser()
    labels_parser = argparse.ArgumentParser()
    add_label_arguments(labels_parser)
    retrieval = backend_options(retrieval_parser, retrieval_parser.parse_args(["--city", "c", *flags]))
    labels = backend_options(labels_parser, labels_parser.parse_args(flags))
    assert retrieval["backoff_s"] == labels["backoff_s"] == 2.5
    assert retrieval == {**labels, "max_tokens": 300} and labels["max_tokens"] == 400


def test_a_city_without_streets_has_no_street_map(city, tmp_path):
    """The labels and the retrieval texts read the city's streets through one function: its file when there is
    one, None when there is none."""
    import shutil

    from addressvlm.geo.streets import StreetMap, optional_street_map

    assert isinstance(optional_street_map(city), StreetMap)
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(city / "locations.csv", bare / "locations.csv")
    assert optional_street_map(bare) is None
