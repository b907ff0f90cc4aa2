"""The demo-city builder on the bundled Helsinki extract, small: few places, small images, a coarse raster."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from pyproj import Transformer
from shapely.geometry import Point, shape

from addressvlm.demo.city import build_demo_city
from addressvlm.demo.city_map import ATTRIBUTION, load_city, rebuild_district_polygons
from addressvlm.demo.osm import bundled_extract, read_osm_pbf
from addressvlm.core.records import DataError, read_locations

SMALL = dict(seed=3, locations=8, views=2, image_size=(96, 72), metres_per_pixel=4.0, streets=4, progress=False)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def city_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "city"
    build_demo_city(root, **SMALL)
    return root


def test_bundled_extract_is_read_without_network():
    path = bundled_extract()
    assert Path(path).is_file() and Path(path).name == "Helsinki.osm.pbf"
    osm = read_osm_pbf(path)
    west, south, east, north = osm.bbox
    assert 24.9 < west < east < 25.0 and 60.1 < south < north < 60.2
    assert len(osm.nodes) > 10_000 and len(osm.ways) > 1_000


def test_extract_box_keeps_the_files_nanodegrees():
    """The header's box as stored (1e-9 degrees), not rounded to libosmium's 1e-7: the box frames the satellite raster,
    so a millimetre's shift changes every demo city built from it."""
    west, south, east, north = read_osm_pbf(bundled_extract()).bbox
    assert (west, south, east, north) == pytest.approx((24.935176299, 60.164155, 24.953414599, 60.179113), abs=1e-12)


def test_truncated_extract_is_refused_naming_the_file(tmp_path):
    cut = tmp_path / "cut.osm.pbf"
    cut.write_bytes(Path(bundled_extract()).read_bytes()[:3000])
    with pytest.raises(DataError, match=r"^\S*cut\.osm\.pbf: not a readable \.osm\.pbf extract: [^\n]+$"):
        read_osm_pbf(cut)


def test_districts_are_rebuilt_from_cut_boundaries():
    districts, method = rebuild_district_polygons(read_osm_pbf(bundled_extract()))
    assert "boundary relations" in method
    assert {"Kluuvi", "Kamppi", "Kaartinkaupunki", "Kruununhaka"} <= set(districts)
    # Rebuilt districts tile the extract without overlapping.
    names = sorted(districts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert districts[a].intersection(districts[b]).area < 1e-9, (a, b)
    # Known landmarks fall in their real districts (coordinates from OSM).
    assert districts["Kluuvi"].contains(Point(24.9465, 60.1700))  # Aleksanterinkatu / Keskuskatu
    assert districts["Kaartinkaupunki"].contains(Point(24.9480, 60.1660))  # Esplanadi park's south side


def test_city_root_has_every_artefact(city_root: Path):
    rows = read_locations(city_root / "locations.csv")
    assert len({r.location_id for r in rows}) == SMALL["locations"]
    assert len(rows) == SMALL["locations"] * SMALL["views"]
    streets = json.loads((city_root / "streets.geojson").read_text(encoding="utf-8"))
    street_names = {f["properties"]["name"] for f in streets["features"]}
    assert all(f["geometry"]["type"] == "LineString" for f in streets["features"])
    districts = json.loads((city_root / "districts.geojson").read_text(encoding="utf-8"))
    polygons = {f["properties"]["name"]: shape(f["geometry"]) for f in districts["features"]}
    for row in rows:
        assert row.street in street_names
        assert polygons[row.district].contains(Point(row.lon, row.lat)), row
        assert row.heading is not None and 0 <= row.heading < 360
        with Image.open(city_root / row.image) as im:
            im.load()
            assert im.size == SMALL["image_size"] and im.format == "JPEG"
    demo = {f["properties"]["name"] for f in streets["features"] if f["properties"]["demo"]}
    assert {r.street for r in rows} <= demo and len(demo) == SMALL["streets"]


def test_attribution_everywhere(city_root: Path):
    assert ATTRIBUTION in (city_root / "ATTRIBUTION.txt").read_text(encoding="utf-8")
    with rasterio.open(city_root / "satellite.tif") as src:
        assert src.tags()["ATTRIBUTION"] == ATTRIBUTION
    # The attribution strip: the bottom rows of a street view are dark with light text on them.
    first = read_locations(city_root / "locations.csv")[0]
    pixels = np.asarray(Image.open(city_root / first.image).convert("L"), dtype=np.float32)
    strip = pixels[-6:]
    assert strip.mean() < 90 and strip.max() > 150


def test_satellite_is_georeferenced_over_the_locations(city_root: Path):
    with rasterio.open(city_root / "satellite.tif") as src:
        assert src.crs.to_epsg() == 3067 and src.count == 3
        assert src.res == (SMALL["metres_per_pixel"], SMALL["metres_per_pixel"])
        to_raster = Transformer.from_crs("EPSG:4326", src.crs, always_xy=True)
        image = src.read()
        for row in read_locations(city_root / "locations.csv"):
            r, c = src.index(*to_raster.transform(row.lon, row.lat))
            assert 0 <= r < src.height and 0 <= c < src.width
    assert image.std() > 10  # a picture, not a blank raster


def test_two_builds_are_byte_identical(city_root: Path, tmp_path: Path):
    again = tmp_path / "again"
    build_demo_city(again, **SMALL)
    assert _digests(again) == _digests(city_root)


def test_seed_changes_the_places(city_root: Path, tmp_path: Path):
    other = tmp_path / "other"
    build_demo_city(other, **{**SMALL, "seed": SMALL["seed"] + 1})
    before = {(r.lat, r.lon) for r in read_locations(city_root / "locations.csv")}
    after = {(r.lat, r.lon) for r in read_locations(other / "locations.csv")}
    assert before != after


def test_cli_builds_and_rejects_bad_size(tmp_path: Path):
    script = Path(__file__).resolve().parent.parent / "tools" / "build_demo_city.py"
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "cli"), "--locations", "2", "--views", "1",
                           "--streets", "2", "--image-size", "64x48", "--metres-per-pixel", "8", "--quiet"],
                          capture_output=True, text=True, check=True)
    assert "2 locations" in done.stdout and "districts:" in done.stdout
    assert len(read_locations(tmp_path / "cli" / "locations.csv")) == 2
    bad = subprocess.run([sys.executable, str(script), str(tmp_path / "bad"), "--image-size", "tiny"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "image size" in bad.stderr


def test_fallback_partitions_around_place_nodes():
    """pyrosm's second extract (Kouvola) has no district relations: districts come from place=suburb-like nodes."""
    from pyrosm import get_data

    city = load_city(get_data("test_pbf"))
    assert "Voronoi" in city.district_method and len(city.districts) >= 2


def test_the_aerial_shows_the_street_views_codes_from_above():
    """A district's roofs take its roof colour and a demo street's pavements its pavement colour, the codes its
    street views carry, so a cross-view retriever has something to match; other streets keep grey pavements."""
    from addressvlm.demo.render import district_roof, render_satellite, street_paving

    from shapely.geometry import box

    city = load_city()
    inside = box(*city.bounds).buffer(-30)
    streets = [s for s in city.streets if s.name and inside.contains(s.line) and s.line.length > 60]
    coded = next(s for s in streets if s.highway in ("residential", "tertiary", "secondary"))
    plain = next(s for s in streets if s.name != coded.name and s.highway == coded.highway)
    district = max(city.districts, key=lambda name: city.districts[name].area)
    roofs = [b for b in city.buildings if city.districts[district].contains(b.polygon.representative_point())
             and b.polygon.buffer(-4).area > 100]
    pixels = render_satellite(city, 1.0, 0, street_index={coded.name: 5}, district_index={district: 2})
    xmin, _, _, ymax = city.bounds

    def colour_at(point) -> np.ndarray:
        return pixels[int(ymax - point.y), int(point.x - xmin)].astype(float)

    roof_colours = np.array([colour_at(b.polygon.buffer(-4).representative_point()) for b in roofs[:40]])
    assert len(roof_colours) >= 10
    assert np.abs(np.median(roof_colours, axis=0) - district_roof(2)).max() < 20
    width = {"residential": 9, "tertiary": 12, "secondary": 14}[coded.highway]

    def pavement(street) -> np.ndarray:  # just outside the carriageway, on both sides, along the street
        line = street.line
        points = [line.interpolate(f, normalized=True) for f in np.linspace(0.2, 0.8, 7)]
        side = [line.parallel_offset(width / 2 + 2, s) for s in ("left", "right")]
        return np.median([colour_at(o.interpolate(o.project(p))) for p in points for o in side], axis=0)

    assert np.abs(pavement(coded) - street_paving(5)).max() < 20
    assert np.abs(pavement(plain) - street_paving(5)).max() > 30
