"""Builders the tests share (the shared fixtures are in conftest.py): the reference recipe's options for a model
folder and a synthetic checkpoint of it, a city of the nine question kinds, a GeoTIFF and street map around central
Helsinki, four places of street views along its streets, an OpenAI-compatible endpoint that answers from a script,
and an address where no server listens."""
import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine
from PIL import Image
from pyproj import Transformer

from addressvlm.geo.crop import offset_latlon
from addressvlm.core.records import Location, write_locations, write_questions
from addressvlm.training.checkpoints import build_recipe_model

REPO = Path(__file__).resolve().parent.parent
RECIPE = str(REPO / "recipes" / "stage2_pitts.py")

# ------------------------------------------------------------------------------ the tiny model and its questions
QUESTION_TEXTS = [
    "Tell me the district where this image was captured.",
    "Which district is this?",
    "Is this image taken in Kallio, Yes or No?",
    "Identify the street in this image, please.",
    "Is this image taken on Forbes Avenue? Answer the question using a single word or phrase.",
    "Which of the following street correctly represents the location shown in the image? (A) Main (B) Craig "
    "(C) Forbes (D) Fifth. Please select the correct option (A/B/C/D).",
    "What street?",
    "Where was this street view captured? Tell me the street and the district.",
    "What colour is this image?",
]


def model_options(model_root: Path, recipe: str = RECIPE) -> list[str]:
    from addressvlm.training.recipes import load_recipe, model_root_options

    return model_root_options(load_recipe(recipe), str(model_root))


def write_synthetic_checkpoint(work_dir: Path, options: list[str], seed: int = 0, recipe: str = RECIPE) -> Path:
    """An ``iter_3.pth`` as training saves it (the trained tensors under ``state_dict``) plus ``last_checkpoint``;
    the same file whatever ran before (LoRA starts from the global generator)."""
    torch.manual_seed(seed)
    _, model = build_recipe_model(recipe, options)
    generator = torch.Generator().manual_seed(seed)
    state = {k: v + 0.05 * torch.randn(v.shape, generator=generator) for k, v in model.state_dict().items()}
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / "iter_3.pth"
    torch.save({"meta": {}, "state_dict": state}, path)
    (work_dir / "last_checkpoint").write_text(str(path))
    return path


def write_city_questions(root: Path, images: int = 3) -> Path:
    """``images`` pictures (not square, different contents) with the nine questions each."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    questions = []
    for i in range(images):
        image = f"images/{i}.png"
        picture = Image.new("RGB", (64, 40), (40 + 50 * i, 200 - 40 * i, 90))
        picture.paste((250, 250, 250), (8 * i, 0, 8 * i + 16, 20))
        picture.save(root / image)
        for j, text in enumerate(QUESTION_TEXTS):
            questions.append({"question_id": f"city/{i}/q{j}", "image": image, "level": "street",
                              "qtype": "generation", "question": text, "answer": "Forbes Avenue",
                              "street": "Forbes Avenue", "district": "Oakland"})
    path = root / "vqa" / "test_questions.jsonl"
    write_questions(path, questions)
    return path


# What a resume refuses after a retrain into the same path (eval/infer.py, eval/rank.py).
RETRAINED = (r"holds records made with other settings \(weights: 'iter_3\.pth: \d+ bytes, modified [^']+' then, "
             r"'iter_3\.pth: \d+ bytes, modified [^']+' now\): choose another output, or delete it to start over")


# ------------------------------------------------------------------------------ a city around central Helsinki
LAT, LON = 60.1699, 24.9384  # central Helsinki, UTM zone 35N
GREY = (100, 110, 120)
RED = (255, 0, 0)


def write_geotiff(path, crs, ground_m_per_px, half_extent_m, markers=((LAT, LON),), marker_m=4.0):
    """A grey GeoTIFF around (LAT, LON) in ``crs`` with red squares of ``marker_m`` ground metres at ``markers``.

    Pixel size in CRS units is scaled so one pixel is ``ground_m_per_px`` on the ground at LAT (Web Mercator
    units are 1/cos(lat) larger than ground metres).
    """
    to_crs = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    stretch = 1 / math.cos(math.radians(LAT)) if "3857" in str(crs) else 1.0
    unit = ground_m_per_px * stretch
    cx, cy = to_crs.transform(LON, LAT)
    n = int(2 * half_extent_m / ground_m_per_px)
    transform = Affine(unit, 0, cx - n / 2 * unit, 0, -unit, cy + n / 2 * unit)
    data = np.empty((3, n, n), np.uint8)
    data[:] = np.array(GREY, np.uint8)[:, None, None]
    for lat, lon in markers:
        mx, my = to_crs.transform(lon, lat)
        col, row = ~transform @ (mx, my)
        r = marker_m / 2 / ground_m_per_px
        centres = np.arange(n) + 0.5  # paint the pixels whose centres fall inside the square
        rows, cols = np.abs(centres - row) < r, np.abs(centres - col) < r
        data[:, rows[:, None] & cols[None, :]] = np.array(RED, np.uint8)[:, None]
    with rasterio.open(path, "w", driver="GTiff", width=n, height=n, count=3, dtype="uint8", crs=crs,
                       transform=transform) as ds:
        ds.write(data)
    return path


def write_streets(path, extra=()):
    """Two named streets crossing near (LAT, LON) plus a non-ASCII one, as WGS84 GeoJSON."""
    def line(*offsets):
        return [list(reversed(offset_latlon(LAT, LON, e, n))) for e, n in offsets]

    features = [
        {"type": "Feature", "properties": {"name": "Mannerheimintie"},
         "geometry": {"type": "LineString", "coordinates": line((-120, -5), (120, 5))}},
        {"type": "Feature", "properties": {"name": "Yrjönkatu"},
         "geometry": {"type": "LineString", "coordinates": line((-60, -110), (50, 110))}},
        {"type": "Feature", "properties": {"name": "Kaivopiha", "kind": "square"},
         "geometry": {"type": "Point", "coordinates": line((30, 30))[0]}},
        {"type": "Feature", "properties": {"highway": "footway"},  # unnamed: ignored
         "geometry": {"type": "LineString", "coordinates": line((-100, 80), (100, 80))}},
        *extra,
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}), encoding="utf-8")
    return path


def make_street_view_city(root: Path, with_raster=False) -> list[Location]:
    """Four locations along Mannerheimintie / Yrjönkatu, two views each; one location in the test split."""
    root.mkdir(parents=True, exist_ok=True)
    write_streets(root / "streets.geojson")
    spots = [(-40, -1, "Mannerheimintie", "train"), (30, 1, "Mannerheimintie", "train"),
             (-10, -60, "Yrjönkatu", "train"), (60, 2, "Mannerheimintie", "test")]
    rows = []
    for i, (e, n, street, split) in enumerate(spots):
        lat, lon = offset_latlon(LAT, LON, e, n)
        for v, heading in enumerate((90.0, 0.0)):
            rows.append(Location(f"views/{i}/{v}.jpg", f"loc{i}", lat, lon, street, "Kluuvi", heading=heading,
                                 split=split))
            (root / "views" / str(i)).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 48), (30 * i, 40 * v, 90)).save(root / "views" / str(i) / f"{v}.jpg")
    write_locations(root / "locations.csv", rows)
    if with_raster:
        write_geotiff(root / "satellite.tif", "EPSG:32635", 1.0, 250, markers=())
    return rows


def closed_port_url() -> str:
    """An address where nothing listens: a port the system just handed out and took back."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


class ScriptedServer:
    """An OpenAI-compatible chat endpoint on 127.0.0.1: statuses from a script, then answers from the hint."""

    def __init__(self, script=(), delay_s=0.0, wrong_once_for=None):
        self.script, self.delay_s, self.wrong_once_for = list(script), delay_s, wrong_once_for
        self.statuses, self.requests, self.lock = [], [], threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, text = server.respond(body)
                payload = json.dumps(
                    {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": text}}]} if status == 200
                    else {"error": {"message": f"scripted {status}", "type": "server_error"}}).encode()
                time.sleep(server.delay_s)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def respond(self, body):
        with self.lock:
            self.requests.append(body)
            status = self.script.pop(0) if self.script else 200
            self.statuses.append(status)
            content = body["messages"][0]["content"]
            prompt = next(c["text"] for c in content if c["type"] == "text")
            where = re.search(r"stating that it was taken (.+?), then", prompt).group(1)
            if self.wrong_once_for and self.wrong_once_for in where:
                self.wrong_once_for = None
                return status, "It was taken on Some Other Road, judging by the trees."
        return status, f"The street view was taken {where}. The road layout and the labels on the map agree."

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
