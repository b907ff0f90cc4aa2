"""Satellite crops around street-view locations, with street names drawn along the roads (paper Fig. 3a).

A crop is ``size_m`` ground metres square, north up, ``pixels`` wide; with ``jitter_m`` its centre is moved off the
location by a seeded random offset so the camera is not always in the middle. Names are written along each named
street inside the crop, white with a dark halo, in DejaVu Sans (matplotlib's font, which covers non-ASCII names),
placed so they do not overlap each other or a reserved box (the corner the street view will cover).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from shapely import affinity
from shapely.geometry import LineString, MultiLineString, Polygon, box
from shapely.ops import linemerge

from addressvlm.core.processes import default_workers, worker_pool
from addressvlm.core.records import (DataError, JsonlAppender, location_centroids, read_jsonl, read_locations,
                                     refuse_output_over_inputs)
from addressvlm.geo.local_frame import local_crs
from addressvlm.geo.raster import GeoTiffRaster, RasterError, TileFolderRaster, find_city_raster, open_raster
from addressvlm.geo.streets import StreetMap, find_city_streets, read_street_map

HALO_FILL = (20, 20, 20)
TEXT_FILL = (255, 255, 255)
CROPS_INDEX = "crops.jsonl"
RUN_PARAMS = "params.json"


@lru_cache(maxsize=None)
def label_font(px: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans at ``px`` pixels: shipped with matplotlib, covers Latin, Greek, Cyrillic (ä, ö, å, ß, é...)."""
    from matplotlib import font_manager

    path = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans"), fallback_to_default=False)
    return ImageFont.truetype(path, px)


def default_font_px(pixels: int) -> int:
    return max(10, round(pixels / 28))


def _text_tile(name: str, font: ImageFont.FreeTypeFont, halo: int) -> Image.Image:
    left, top, right, bottom = font.getbbox(name, stroke_width=halo)
    tile = Image.new("RGBA", (right - left, bottom - top), (0, 0, 0, 0))
    ImageDraw.Draw(tile).text((-left, -top), name, font=font, fill=TEXT_FILL + (255,),
                              stroke_width=halo, stroke_fill=HALO_FILL + (255,))
    return tile


def _label_candidates(line: LineString, text_w: float, step: float):
    """(centre x, centre y, angle in degrees) spots where a straight label of ``text_w`` fits along the line,
    from the middle of the line outwards every ``step`` pixels."""
    length = line.length
    if length < text_w * 1.1:
        return
    slack = (length - text_w) / 2
    offsets = [0.0] + [sign * k * step for k in range(1, int(slack // step) + 1) for sign in (1, -1)]
    for offset in offsets:
        mid = length / 2 + offset
        a, b = mid - text_w / 2, mid + text_w / 2
        p, q = line.interpolate(a), line.interpolate(b)
        if math.hypot(q.x - p.x, q.y - p.y) < 0.92 * text_w:
            continue  # the street bends under the label: try elsewhere
        angle = math.degrees(math.atan2(-(q.y - p.y), q.x - p.x))  # image y grows downwards
        if angle > 90:
            angle -= 180
        elif angle <= -90:
            angle += 180
        c = line.interpolate(mid)
        yield c.x, c.y, angle


def draw_street_labels(image: Image.Image, streets: dict[str, list[LineString]], font_px: int,
                       reserved: list[Polygon] = ()) -> list[tuple[str, Polygon]]:
    """Write each street's name once along its longest visible piece. Lines are in image pixel coordinates.

    Returns ``(name, footprint)`` of every label drawn; names that fit nowhere are left out rather than overlapped.
    """
    font = label_font(font_px)
    halo = max(1, round(font_px / 6))
    frame = box(1, 1, image.width - 1, image.height - 1)
    placed: list[tuple[str, Polygon]] = []
    taken = list(reserved)
    # Longest streets first: they carry the layout and have the most room.
    by_length = sorted(streets.items(), key=lambda kv: -max(l.length for l in kv[1]))
    for name, pieces in by_length:
        tile = _text_tile(name, font, halo)
        done = False
        for piece in sorted(pieces, key=lambda l: -l.length):
            for cx, cy, angle in _label_candidates(piece, tile.width, step=max(4.0, tile.height / 2)):
                footprint = affinity.rotate(
                    box(cx - tile.width / 2, cy - tile.height / 2, cx + tile.width / 2, cy + tile.height / 2),
                    -angle, origin=(cx, cy))
                if not frame.contains(footprint) or any(footprint.intersects(t) for t in taken):
                    continue
                rotated = tile.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
                image.paste(rotated, (round(cx - rotated.width / 2), round(cy - rotated.height / 2)), rotated)
                taken.append(footprint)
                placed.append((name, footprint))
                done = True
                break
            if done:
                break
    return placed


def streets_in_pixels(street_map: StreetMap, lat: float, lon: float, size_m: float,
                      pixels: int) -> dict[str, list[LineString]]:
    """Named street pieces inside the crop centred on (lat, lon), in its pixel coordinates, grouped by name."""
    scale = pixels / size_m
    half = size_m / 2
    view = box(-half, -half, half, half)
    # OSM splits a street into many short ways: join them first, or no piece is long enough for its name.
    by_name: dict[str, list[LineString]] = {}
    for street in street_map.near(lat, lon, radius_m=half * math.sqrt(2)):
        by_name.setdefault(street.name, []).append(street.line)
    out: dict[str, list[LineString]] = {}
    for name, lines in by_name.items():
        clipped = linemerge(MultiLineString(lines)).intersection(view)
        for part in getattr(clipped, "geoms", [clipped]):
            if isinstance(part, LineString) and not part.is_empty:
                px = affinity.affine_transform(part, [scale, 0, 0, -scale, half * scale, half * scale])
                out.setdefault(name, []).append(px)
    return out


def render_crop(raster: GeoTiffRaster | TileFolderRaster, street_map: StreetMap | None, lat: float, lon: float,
                size_m: float, pixels: int, labels: bool = True, font_px: int | None = None,
                reserved_box: tuple[float, float, float, float] | None = None,
                attribution: str | None = None) -> tuple[Image.Image, list[str]]:
    """One crop centred on (lat, lon) and the street names written on it.

    ``reserved_box`` (x0, y0, x1, y1 as fractions of the side) stays label-free.
    """
    image = raster.read_square(lat, lon, size_m, pixels)
    placed = []
    if labels:
        if street_map is None:
            raise ValueError("labels=True needs a street map")
        reserved = [box(*(v * pixels for v in reserved_box))] if reserved_box else []
        font_px = font_px or default_font_px(pixels)
        if attribution:
            reserved.append(box(0, pixels - font_px - 4, pixels, pixels))
        placed = draw_street_labels(image, streets_in_pixels(street_map, lat, lon, size_m, pixels), font_px, reserved)
    if attribution:
        font = label_font(max(8, (font_px or default_font_px(pixels)) * 2 // 3))
        ImageDraw.Draw(image).text((3, pixels - 3), attribution, font=font, fill=TEXT_FILL, anchor="ld",
                                   stroke_width=1, stroke_fill=HALO_FILL)
    return image, [name for name, _ in placed]


def jitter_offset(location_id: str, jitter_m: float, seed: int) -> tuple[float, float]:
    """A reproducible (east, north) offset in metres, uniform in the square [-jitter_m, jitter_m]^2."""
    if jitter_m <= 0:
        return 0.0, 0.0
    digest = hashlib.sha256(f"{seed}:{location_id}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    return rng.uniform(-jitter_m, jitter_m), rng.uniform(-jitter_m, jitter_m)


def offset_latlon(lat: float, lon: float, east_m: float, north_m: float) -> tuple[float, float]:
    """The point ``east_m``/``north_m`` metres from (lat, lon) (exact through the local equidistant frame)."""
    from pyproj import Transformer

    lon2, lat2 = Transformer.from_crs(local_crs(lat, lon), "EPSG:4326", always_xy=True).transform(east_m, north_m)
    return lat2, lon2


def crop_file_name(location_id: str) -> str:
    """A file name for a location's crop: readable, filesystem-safe, and distinct for distinct ids."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", location_id).strip("._") or "location"
    if safe != location_id:
        safe += "-" + hashlib.sha1(location_id.encode()).hexdigest()[:8]
    return safe + ".png"


@dataclass
class CropReport:
    written: int = 0
    already_done: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (location_id, reason naming the file)

    def summary(self) -> str:
        lines = [f"crops: {self.written} written, {self.already_done} already done, {len(self.failed)} failed"]
        lines += [f"  failed {loc}: {why}" for loc, why in self.failed]
        return "\n".join(lines)


def check_run_params(out_dir: Path, params: dict, input_paths: tuple[str, ...] = ()) -> None:
    """A rerun into ``out_dir`` must use the settings of the run that wrote what is there, or data gets mixed. The
    ``input_paths`` keys name files: the same file named by a relative and by an absolute path is the same setting."""
    path = out_dir / RUN_PARAMS
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))

        def comparable(recorded: dict) -> dict:
            return {key: os.path.realpath(value) if key in input_paths and value else value
                    for key, value in recorded.items()}

        if comparable(previous) != comparable(params):
            raise ValueError(f"{path}: outputs here were made with {previous}, not {params}; "
                             "use another output folder or delete this one")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(params, indent=1, sort_keys=True) + "\n", encoding="utf-8")


CROP_CHUNK = 16  # locations per pool task: enough to amortise the round trip, few enough to balance two workers


_OPEN_SOURCES: dict[tuple[str, str | None], tuple] = {}


def _sources(raster_path: str, street_path: str | None):
    """The raster and street map this process renders from, opened once per process (a pool worker's first task)."""
    key = (raster_path, street_path)
    if key not in _OPEN_SOURCES:
        _OPEN_SOURCES[key] = (open_raster(raster_path), read_street_map(street_path) if street_path else None)
    return _OPEN_SOURCES[key]


def _close_sources() -> None:
    for raster, _ in _OPEN_SOURCES.values():
        raster.close()
    _OPEN_SOURCES.clear()


def _render_chunk(tasks: list[tuple[str, float, float, float, float]], out_dir: Path, raster_path: str,
                  street_path: str | None, size_m: float, pixels: int, labels: bool, font_px: int | None,
                  reserved_box, attribution: str | None) -> list[tuple[str, dict | None, str | None]]:
    """Render and save the crops of ``(location_id, lat, lon, east, north)`` tasks: ``(location_id, index record,
    None)`` for each one written, ``(location_id, None, error)`` for each the raster does not cover."""
    source, street_map = _sources(raster_path, street_path)
    results = []
    for loc, lat, lon, east, north in tasks:
        # The crop centre moves by the offset; the location sits at -offset from the centre.
        clat, clon = offset_latlon(lat, lon, east, north)
        try:
            image, drawn = render_crop(source, street_map, clat, clon, size_m, pixels, labels, font_px,
                                       reserved_box, attribution)
        except RasterError as exc:
            results.append((loc, None, str(exc)))
            continue
        target = out_dir / crop_file_name(loc)
        tmp = target.with_name(f".{target.name}.tmp")
        image.save(tmp, format="PNG")
        os.replace(tmp, target)
        results.append((loc, {"location_id": loc, "file": target.name, "lat": lat, "lon": lon,
                              "center_lat": clat, "center_lon": clon, "location_east_m": -east,
                              "location_north_m": -north, "size_m": size_m, "pixels": pixels,
                              "street_labels": drawn}, None))
    return results


def crop_city(city_root, out_dir, size_m: float, pixels: int, jitter_m: float = 0, labels: bool = True,
              seed: int = 0, *, raster=None, streets=None, font_px: int | None = None,
              reserved_box: tuple[float, float, float, float] | None = None, attribution: str | None = None,
              progress: bool = True, workers: int | None = None) -> CropReport:
    """One crop per ``location_id`` of ``<city_root>/locations.csv`` into ``out_dir/<crop_file_name(id)>``, rendered
    by ``workers`` processes (default: the usable cores).

    Resumable and idempotent: ``out_dir/crops.jsonl`` records each finished crop (with its centre and the
    location's offset from it) and a rerun skips those. A location the raster does not cover is reported, not fatal.
    """
    if jitter_m * 2 >= size_m:
        raise ValueError(f"jitter_m={jitter_m} would move the location out of a {size_m} m crop")
    city_root, out_dir = Path(city_root), Path(out_dir)
    locations = location_centroids(read_locations(city_root / "locations.csv"))
    raster_path = Path(raster) if raster else find_city_raster(city_root)
    street_path = (Path(streets) if streets else find_city_streets(city_root)) if labels else None
    refuse_output_over_inputs(out_dir, [("--raster", raster_path), ("--streets", street_path)], "--out-dir")
    check_run_params(out_dir, {"size_m": size_m, "pixels": pixels, "jitter_m": jitter_m, "labels": labels,
                            "seed": seed, "raster": str(raster_path), "streets": str(street_path or ""),
                            "font_px": font_px, "reserved_box": list(reserved_box) if reserved_box else None,
                            "attribution": attribution}, input_paths=("raster", "streets"))
    sources = (str(raster_path), str(street_path) if street_path else None)
    _sources(*sources)  # bad inputs fail here, before any worker starts
    report = CropReport()
    try:
        _crop_all(locations, out_dir, sources, report, size_m, pixels, jitter_m, labels, seed, font_px, reserved_box,
                  attribution, progress, workers)
    finally:
        _close_sources()
    return report


def _crop_all(locations, out_dir, sources, report, size_m, pixels, jitter_m, labels, seed, font_px, reserved_box,
              attribution, progress, workers) -> None:
    from tqdm import tqdm

    with JsonlAppender(out_dir / CROPS_INDEX, key="location_id") as index:
        todo = [loc for loc in locations if loc not in index.done or not (out_dir / crop_file_name(loc)).is_file()]
        report.already_done = len(locations) - len(todo)
        tasks = [(loc, *locations[loc], *jitter_offset(loc, jitter_m, seed)) for loc in todo]
        chunks = [tasks[i:i + CROP_CHUNK] for i in range(0, len(tasks), CROP_CHUNK)]
        args = (out_dir, *sources, size_m, pixels, labels, font_px, reserved_box, attribution)
        workers = max(1, min(workers or default_workers(), len(chunks) or 1))
        with tqdm(total=len(todo), desc="satellite crops", unit="crop", disable=not progress) as bar:
            def collect(results):
                for loc, record, error in results:
                    if record is None:
                        report.failed.append((loc, error))
                    else:
                        index.write(record)
                        report.written += 1
                bar.update(len(results))

            if workers == 1:
                for chunk in chunks:
                    collect(_render_chunk(chunk, *args))
            else:
                # A raster handle must not cross a fork (the workers would share its file offset): each worker
                # opens its own. In order, so the index lists the crops in the same order whatever the worker count.
                _close_sources()
                with worker_pool(workers) as pool:
                    for results in pool.map(_render_chunk, chunks, *[[a] * len(chunks) for a in args]):
                        collect(results)


def read_crop_index(crops_dir) -> dict[str, dict]:
    """``location_id -> record`` of ``crops.jsonl`` (where each crop is centred, where its location lies in it)."""
    path = Path(crops_dir) / CROPS_INDEX
    if not path.is_file():
        raise DataError(path, None, "crop index not found: run datasets_prep/crop_satellite.py first")
    return {rec["location_id"]: rec for _, rec in read_jsonl(path, ("location_id", "file"))}
