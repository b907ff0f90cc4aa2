"""Named street lines and named places of a city, read from GeoJSON or an OpenStreetMap ``.osm.pbf``.

One reader (``read_street_map``) for both; geometry stays in WGS84 lon/lat and is projected on demand into a
local metric frame (``StreetMap.near``), so distances are in metres anywhere on Earth.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from pyproj import Transformer
from shapely.geometry import LineString, MultiLineString, Point, shape
from shapely.strtree import STRtree

from addressvlm.geo.local_frame import local_crs
from addressvlm.core.records import DataError

METRES_PER_DEGREE_LAT = 111_320.0


@dataclass(frozen=True)
class Street:
    name: str
    line: LineString  # lon/lat


@dataclass(frozen=True)
class Place:
    name: str
    kind: str  # the OSM tag value (suburb, square, church, cafe...) or the GeoJSON "kind"/"place"
    lon: float
    lat: float


@dataclass
class LocalStreet:
    """A street projected into a local frame: metres east (x) and north (y) of the frame's centre."""

    name: str
    line: LineString
    distance_m: float  # from the frame's centre


@dataclass
class StreetMap:
    streets: list[Street]
    places: list[Place] = field(default_factory=list)
    source: str = ""

    def __post_init__(self):
        self._tree = STRtree([s.line for s in self.streets])

    def near(self, lat: float, lon: float, radius_m: float) -> list[LocalStreet]:
        """Streets within ``radius_m`` of (lat, lon), in a local metric frame centred there, nearest first."""
        dlat = radius_m / METRES_PER_DEGREE_LAT
        dlon = radius_m / (METRES_PER_DEGREE_LAT * max(math.cos(math.radians(lat)), 1e-6))
        hits = self._tree.query(shapely.box(lon - dlon, lat - dlat, lon + dlon, lat + dlat))
        to_local = Transformer.from_crs("EPSG:4326", local_crs(lat, lon), always_xy=True)
        out = []
        for i in sorted(hits):
            street = self.streets[i]
            x, y = to_local.transform(*np.asarray(street.line.coords).T)
            line = LineString(np.column_stack([x, y]))
            d = line.distance(Point(0, 0))
            if d <= radius_m:
                out.append(LocalStreet(street.name, line, d))
        out.sort(key=lambda s: s.distance_m)
        return out

    def places_near(self, lat: float, lon: float, radius_m: float) -> list[tuple[Place, float, float]]:
        """``(place, east_m, north_m)`` for named places within ``radius_m``, nearest first."""
        to_local = Transformer.from_crs("EPSG:4326", local_crs(lat, lon), always_xy=True)
        out = []
        for p in self.places:
            if abs(p.lat - lat) * METRES_PER_DEGREE_LAT > radius_m:
                continue
            x, y = to_local.transform(p.lon, p.lat)
            if math.hypot(x, y) <= radius_m:
                out.append((p, x, y))
        out.sort(key=lambda t: math.hypot(t[1], t[2]))
        return out


def _lines_of(geometry) -> list[LineString]:
    if isinstance(geometry, LineString):
        return [geometry]
    if isinstance(geometry, MultiLineString):
        return list(geometry.geoms)
    return []


def _read_geojson(path: Path) -> StreetMap:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(path, exc.lineno, f"invalid JSON: {exc.msg}") from None
    features = doc.get("features") if isinstance(doc, dict) else None
    if not isinstance(features, list):
        raise DataError(path, None, "a GeoJSON FeatureCollection with 'features' is expected")
    crs_name = ((doc.get("crs") or {}).get("properties") or {}).get("name", "")
    if crs_name and not any(k in crs_name.upper() for k in ("CRS84", "4326")):
        raise DataError(path, None, f"coordinates must be WGS84 lon/lat (RFC 7946); file declares {crs_name!r}")
    streets, places = [], []
    for i, feature in enumerate(features):
        props = (feature or {}).get("properties") or {}
        name = " ".join(str(props.get("name") or "").split())
        if not name or not feature.get("geometry"):
            continue
        try:
            geometry = shape(feature["geometry"])
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise DataError(path, None, f"feature {i} ({name!r}): bad geometry: {exc}") from None
        if isinstance(geometry, Point):
            places.append(Place(name, str(props.get("kind") or props.get("place") or "place"), geometry.x, geometry.y))
            continue
        for line in _lines_of(geometry):
            lon, lat = np.asarray(line.coords).T[:2]
            if np.abs(lat).max() > 90 or np.abs(lon).max() > 180:
                raise DataError(path, None, f"feature {i} ({name!r}): coordinates are not lon/lat degrees")
            streets.append(Street(name, line))
    if not streets:
        raise DataError(path, None, "no LineString feature with a 'name' property")
    return StreetMap(streets, places, str(path))


PLACE_TAGS = ("place", "amenity", "tourism", "shop", "historic", "leisure")


def _read_osm_pbf(path: Path) -> StreetMap:
    import pyrosm  # heavy import (geopandas), only for .pbf input

    osm = pyrosm.OSM(str(path))
    network = osm.get_network(network_type="all")
    if network is None or "name" not in network:
        raise DataError(path, None, "no named highway ways in this extract")
    streets = [Street(" ".join(str(n).split()), line)
               for n, geom in zip(network["name"], network.geometry) if isinstance(n, str) and n.strip()
               for line in _lines_of(geom)]
    pois = osm.get_pois(custom_filter={tag: True for tag in PLACE_TAGS})
    places = []
    if pois is not None and "name" in pois:
        for _, row in pois.iterrows():
            name = row.get("name")
            if not isinstance(name, str) or not name.strip() or row.geometry is None:
                continue
            kind = next((str(row[t]) for t in PLACE_TAGS if t in row and isinstance(row[t], str)), "place")
            c = row.geometry.centroid
            places.append(Place(" ".join(name.split()), kind, c.x, c.y))
    if not streets:
        raise DataError(path, None, "no named highway ways in this extract")
    return StreetMap(streets, places, str(path))


def read_street_map(path: str | os.PathLike) -> StreetMap:
    """Streets (named lines) and places (named points) from ``.geojson``/``.json`` or ``.osm.pbf``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, "street data not found")
    if path.name.endswith(".pbf"):
        return _read_osm_pbf(path)
    return _read_geojson(path)


def find_city_streets(city_root: str | os.PathLike) -> Path:
    """The city's streets per docs/design.md: ``streets.geojson``, else a single ``*.osm.pbf`` in the city root."""
    root = Path(city_root)
    if (root / "streets.geojson").is_file():
        return root / "streets.geojson"
    pbfs = sorted(root.glob("*.osm.pbf"))
    if len(pbfs) == 1:
        return pbfs[0]
    raise DataError(root, None, "no streets.geojson (or single *.osm.pbf) in the city root; pass the streets file")


def optional_street_map(city_root: str | os.PathLike, streets: str | os.PathLike | None = None) -> StreetMap | None:
    """``streets`` read, or when None the city's own streets (``find_city_streets``); None for a city without a
    streets file, whose facts then leave the streets out."""
    if streets is None:
        try:
            streets = find_city_streets(city_root)
        except DataError:
            return None
    return read_street_map(streets)
