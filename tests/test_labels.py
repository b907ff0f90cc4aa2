"""Alignment labels: the rule backend end to end, and the openai backend against a local HTTP server
(answers, 429, 500, a wrong street), including a run killed mid-way and resumed."""
import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from addressvlm.geo.crop import crop_city, read_crop_index
from addressvlm.data.graft import city_pairs, graft_batch
from addressvlm.core.names import mentions_name
from addressvlm.data.label_backends import BackendUnavailable, OpenAIBackend
from addressvlm.data.stage1_json import build_stage1_json
from addressvlm.data.labels import hint_prompt, make_labels, training_question
from addressvlm.core.records import DataError, Location, read_jsonl, read_llava_json, write_locations
from helpers import ScriptedServer, closed_port_url, make_street_view_city

ROOT = Path(__file__).resolve().parents[1]


def test_prompts():
    q = training_question()
    hint = hint_prompt("Forbes Avenue", "Ross Street", "Downtown", "Pittsburgh")
    assert hint.startswith(q) and "Hint" not in q and "Forbes" not in q
    assert "taken on Forbes Avenue near Ross Street in Downtown, Pittsburgh" in hint
    assert "upper-right corner" in q and "street names" in q
    assert "street names" not in training_question(map_labels=False)
    assert mentions_name("It was taken on Forbes Ave. near Ross St", "Forbes Avenue")
    assert mentions_name("ON YRJÖNKATU, clearly", "Yrjönkatu")
    assert not mentions_name("It was taken on Forbes Avenue East", "Forbes Avenue West")


def test_rule_backend_end_to_end(tmp_path):
    city = tmp_path / "helsinki"
    rows = make_street_view_city(city, with_raster=True)
    assert crop_city(city, city / "stage1" / "crops", 120, 168, progress=False).written == 4
    report = graft_batch(city_pairs(city, city / "stage1" / "crops"), city / "stage1" / "grafted", workers=1,
                         progress=False)
    assert report.written == 6 and not report.failed  # train split only: 3 locations x 2 views
    labels = city / "stage1" / "labels.jsonl"
    rep = make_labels(city, city / "stage1" / "grafted", labels, "rule", city_name="Helsinki", progress=False)
    assert (rep.written, rep.rejected, rep.missing, rep.failed) == (6, 0, [], [])
    got = {rec["image"]: rec for _, rec in read_jsonl(labels)}
    assert set(got) == {r.image for r in rows if r.split == "train"}
    first = got["views/0/0.jpg"]["reason"]
    # The cross street comes from the street geometry (the table has none); the camera sits west of the crossing.
    assert first.startswith("The street view in the upper-right corner was taken on Mannerheimintie near "
                            "Yrjönkatu in Kluuvi, Helsinki.")
    assert re.search(r"meets Yrjönkatu about \d+ metres away", first)
    assert "east-west" in first and "faces east, looking along Mannerheimintie" in first
    assert "Kaivopiha (square)" in first or "Kaivopiha, a square" in first
    assert "faces north, across Mannerheimintie" in got["views/0/1.jpg"]["reason"]
    # "labelled on the map" is said only of names the crop step really wrote on that crop.
    drawn = read_crop_index(city / "stage1" / "crops")["loc0"]["street_labels"]
    assert "Mannerheimintie" in drawn
    assert ("labelled on the map" in first) == ("Yrjönkatu" in drawn)
    assert got["views/2/0.jpg"]["reason"].startswith("The street view in the upper-right corner was taken on "
                                                     "Yrjönkatu near Mannerheimintie")
    # Deterministic: a fresh run writes the same reasons; a rerun into the same file does nothing.
    make_labels(city, city / "stage1" / "grafted", tmp_path / "again.jsonl", "rule", city_name="Helsinki",
                progress=False)
    assert {r["image"]: r["reason"] for _, r in read_jsonl(tmp_path / "again.jsonl")} == \
        {k: v["reason"] for k, v in got.items()}
    rerun = make_labels(city, city / "stage1" / "grafted", labels, "rule", city_name="Helsinki", progress=False)
    assert (rerun.written, rerun.already_done) == (0, 6)

    stage1 = build_stage1_json(city)
    assert stage1.records == 6 and stage1.unlabelled == []
    table = (city / "locations.csv").read_bytes()
    with pytest.raises(DataError, match="--out is the --labels input itself"):
        build_stage1_json(city, out_json=labels)
    with pytest.raises(DataError, match="--out is the city table input itself"):
        make_labels(city, city / "stage1" / "grafted", city / "locations.csv", "rule", progress=False)
    assert (city / "locations.csv").read_bytes() == table
    records = read_llava_json(city / "stage1" / "train.json")
    rec = next(r for r in records if r["id"] == "helsinki/loc0/0")
    assert rec["image"] == "stage1/grafted/views/0/0.jpg" and (city / rec["image"]).is_file()
    human, gpt = rec["conversations"]
    assert human["value"] == "<image>\n" + training_question()
    assert gpt["value"] == first


@pytest.fixture
def grafted_city(tmp_path):
    """A city whose stage-1 images exist (tiny JPEGs where grafting would put them)."""
    city = tmp_path / "city"
    rows = make_street_view_city(city)
    for r in rows:
        out = city / "stage1" / "grafted" / r.image
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (200, 10, 10)).save(out)
    return city, [r for r in rows if r.split == "train"]


def test_openai_backend_answers_retries_429_and_500_and_rejects(grafted_city):
    city, train = grafted_city
    server = ScriptedServer(script=[200, 429, 500], wrong_once_for="on Yrjönkatu")
    try:
        labels = city / "stage1" / "labels.jsonl"
        options = dict(model="test-lvlm", base_url=server.url, api_key="k", concurrency=3, backoff_s=0.01)
        report = make_labels(city, city / "stage1" / "grafted", labels, "openai", backend_options=options,
                             progress=False)
        assert server.statuses[:3] == [200, 429, 500]
        assert len(server.requests) == len(train) + 2  # two retried
        assert (report.written, report.rejected, report.failed) == (len(train) - 1, 1, [])
        rejected = [r for _, r in read_jsonl(labels.with_name("labels.rejected.jsonl"))]
        assert [r["street"] for r in rejected] == ["Yrjönkatu"]
        body = server.requests[0]
        assert body["model"] == "test-lvlm"
        image_part = body["messages"][0]["content"][0]["image_url"]["url"]
        assert base64.b64decode(image_part.split(",", 1)[1])[:2] == b"\xff\xd8"  # the JPEG itself
        # The rejected image is retried on the next run and now gets a valid label.
        again = make_labels(city, city / "stage1" / "grafted", labels, "openai", backend_options=options,
                            progress=False)
        assert (again.written, again.already_done, again.rejected) == (1, len(train) - 1, 0)
        got = [r["image"] for _, r in read_jsonl(labels)]
        assert sorted(got) == sorted(r.image for r in train)
    finally:
        server.close()


def test_openai_backend_gives_up_on_persistent_errors_and_stops_on_auth_errors(grafted_city):
    city, train = grafted_city
    server = ScriptedServer(script=[503] * 50)
    try:
        backend = OpenAIBackend("m", base_url=server.url, concurrency=1, max_retries=2, backoff_s=0.001)
        report = make_labels(city, city / "stage1" / "grafted", city / "l.jsonl", backend, limit=2, progress=False)
        assert report.written == 0 and len(report.failed) == 2 and "after 3 attempts" in report.failed[0][1]
        server.script = [401]
        import openai
        with pytest.raises(openai.AuthenticationError):
            make_labels(city, city / "stage1" / "grafted", city / "l.jsonl", backend, progress=False)
    finally:
        server.close()


def test_a_refused_connection_stops_the_run_at_once_in_one_line(grafted_city):
    """No server listening: the first request stops the run instead of six retries with backoff per image (a
    minute each), and the tool says so in one line; ``reach`` finds it before any request."""
    city, train = grafted_city
    url = closed_port_url()
    backend = OpenAIBackend("m", base_url=url, concurrency=2, max_retries=6, backoff_s=1.0)
    started = time.perf_counter()
    with pytest.raises(BackendUnavailable, match="connection refused"):
        make_labels(city, city / "stage1" / "grafted", city / "l.jsonl", backend, progress=False)
    assert time.perf_counter() - started < 5
    with pytest.raises(BackendUnavailable, match=f"no OpenAI-compatible server answers at {url}.*Connection refused"):
        backend.reach()
    done = subprocess.run([sys.executable, str(ROOT / "datasets_prep" / "make_alignment_labels.py"), "--city",
                           str(city), "--backend", "openai", "--base-url", url, "--model", "m"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {url}/: connection refused"), done.stderr


def test_interrupted_run_resumes_without_duplicates_or_losses(grafted_city):
    city, train = grafted_city
    labels = city / "stage1" / "labels.jsonl"
    server = ScriptedServer(delay_s=0.4)
    cmd = [sys.executable, str(ROOT / "datasets_prep" / "make_alignment_labels.py"), "--city", str(city),
           "--backend", "openai", "--base-url", server.url, "--model", "m", "--concurrency", "1"]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ))
        deadline = time.time() + 60
        while time.time() < deadline and (not labels.is_file() or labels.read_text().count("\n") < 2):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = {r["image"]: r["reason"] for _, r in read_jsonl(labels)}
        assert 2 <= len(before) < len(train), "the run was not interrupted mid-way"
        with open(labels, "a", encoding="utf-8") as f:
            f.write('{"image": "views/9/9.jpg", "reas')  # a torn last line, as a crash mid-write leaves
        server.delay_s = 0.0
        report = make_labels(city, city / "stage1" / "grafted", labels, "openai",
                             backend_options=dict(model="m", base_url=server.url, concurrency=2), progress=False)
        assert report.already_done == len(before) and report.written == len(train) - len(before)
        images = [r["image"] for _, r in read_jsonl(labels)]
        assert len(images) == len(set(images)) == len(train)
        assert {r["image"]: r["reason"] for _, r in read_jsonl(labels) if r["image"] in before} == before
    finally:
        server.close()


def test_stage1_ids_of_views_differing_only_by_extension_are_distinct(tmp_path):
    city = tmp_path / "city"
    images = ["img/x.jpg", "img/x.png", "img/y.jpg"]
    (city / "stage1" / "grafted" / "img").mkdir(parents=True)
    for image in images:
        (city / "stage1" / "grafted" / (image + ".jpg")).write_bytes(b"\xff\xd8\xff\xd9")
    write_locations(city / "locations.csv", [
        Location(image=image, location_id="l1", lat=40.4, lon=-79.9, street="Ash Street", district="Hill",
                 split="train") for image in images])
    (city / "stage1" / "labels.jsonl").write_text("".join(json.dumps({
        "image": image, "location_id": "l1", "variant": "grafted", "images": [f"stage1/grafted/{image}.jpg"],
        "question": "Where?", "hint_prompt": "Where? Hint", "reason": "On Ash Street.", "backend": "rule"}) + "\n"
        for image in images))
    build_stage1_json(city)
    ids = [r["id"] for r in read_llava_json(city / "stage1" / "train.json")]
    assert len(set(ids)) == 3
