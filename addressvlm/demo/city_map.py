"""The demo city's map from its OSM elements: streets, buildings, addresses, points of interest, water, green,
and district polygons rebuilt from relations cut at the extract's edge."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import shapely
from pyproj import Transformer
from shapely.geometry import LineString, MultiPolygon, Point, Polygon, box
from shapely.ops import linemerge, polygonize, unary_union

from addressvlm.demo.osm import OsmElements, bundled_extract, read_osm_pbf
from addressvlm.core.records import DataError

ATTRIBUTION = "(c) OpenStreetMap contributors, ODbL"
PROJECTED_CRS = "EPSG:3067"  # ETRS-TM35FIN: metres, the national grid of Finland
DEFAULT_LEVELS = 5  # typical of central Helsinki where OSM gives no building:levels

# Highway classes a person would give as a street address (paths and footways are not addresses).
ADDRESS_HIGHWAYS = frozenset({"primary", "secondary", "tertiary", "residential", "unclassified", "living_street",
                              "pedestrian", "primary_link", "secondary_link", "tertiary_link", "service"})
GREEN_TAGS = {"leisure": {"park", "garden", "playground", "pitch"},
              "landuse": {"grass", "recreation_ground", "village_green", "meadow", "cemetery"},
              "natural": {"scrub", "heath", "wood", "wetland", "grassland"}}
WATER_TAGS = {"natural": {"water", "bay"}, "landuse": {"basin", "reservoir"}, "waterway": {"riverbank", "dock"}}
PLACE_KINDS = ("suburb", "quarter", "neighbourhood")


# ============================================================================================ the city map
@dataclass(frozen=True)
class StreetWay:
    """A named (or unnamed) OSM highway way, in projected metres: what the renderers draw (``geo.streets.Street``
    is a street of a city's streets file, in lon/lat)."""

    name: str
    highway: str
    osm_id: int
    line: LineString  # projected metres


@dataclass(frozen=True)
class Building:
    polygon: Polygon
    levels: int
    osm_id: int


@dataclass(frozen=True)
class AddressPoint:
    """An OSM house number on its street, in projected metres (``data.ingest.Address`` is a parsed address
    string)."""

    point: Point
    street: str
    housenumber: str


@dataclass(frozen=True)
class Poi:
    point: Point
    name: str
    kind: str  # shop, amenity, tourism or office value


@dataclass
class CityMap:
    """What the renderers and the location sampler need, in projected metres (``PROJECTED_CRS``)."""

    bounds: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax: the box that the extract fully covers
    streets: list[StreetWay]
    buildings: list[Building]
    addresses: list[AddressPoint]
    pois: list[Poi]
    green: list[Polygon]
    water: list[Polygon]
    paved: list[Polygon]  # pedestrian squares and similar paved areas
    trees: list[Point]
    tram: list[LineString]
    rail: list[LineString]
    districts: dict[str, Polygon]
    district_method: str
    to_wgs84: Callable = field(repr=False)
    from_wgs84: Callable = field(repr=False)


def _has_tag(tags: dict, table: dict[str, set[str]]) -> bool:
    return any(tags.get(k) in values for k, values in table.items())


def _way_coords(osm: OsmElements, refs: list[int]) -> list[tuple[float, float]]:
    return [osm.nodes[r] for r in refs if r in osm.nodes]


def _way_runs(osm: OsmElements, refs: list[int]) -> list[list[tuple[float, float]]]:
    """The runs of consecutive nodes present in the extract (a cut way loses nodes at its ends or middle)."""
    runs, run = [], []
    for ref in refs:
        if ref in osm.nodes:
            run.append(osm.nodes[ref])
        else:
            if len(run) >= 2:
                runs.append(run)
            run = []
    if len(run) >= 2:
        runs.append(run)
    return runs


def _closed_polygon(coords: list[tuple[float, float]]) -> Polygon | None:
    if len(coords) < 4 or coords[0] != coords[-1]:
        return None
    poly = Polygon(coords)
    if not poly.is_valid:
        poly = shapely.make_valid(poly)
        polys = [g for g in getattr(poly, "geoms", [poly]) if isinstance(g, Polygon)]
        poly = max(polys, key=lambda g: g.area) if polys else None
    return poly if poly is not None and poly.area > 0 else None


def _multipolygon_parts(osm: OsmElements, members) -> list[Polygon]:
    """Outer rings of a multipolygon relation minus its inner rings (both assembled from their member ways)."""
    rings = {"outer": [], "inner": []}
    for member_id, member_type, role in members:
        if member_type == "way" and member_id in osm.ways and role in rings:
            coords = _way_coords(osm, osm.ways[member_id][0])
            if len(coords) >= 2:
                rings[role].append(LineString(coords))
    if not rings["outer"]:
        return []
    outer = unary_union(list(polygonize(linemerge(rings["outer"]))))
    if rings["inner"]:
        outer = outer.difference(unary_union(list(polygonize(linemerge(rings["inner"])))))
    return [g for g in getattr(outer, "geoms", [outer]) if isinstance(g, Polygon) and g.area > 0]


def _levels(tags: dict) -> int:
    for key in ("building:levels", "levels"):
        try:
            return max(1, min(20, int(float(tags[key]))))
        except (KeyError, ValueError):
            pass
    try:
        return max(1, min(20, round(float(tags["height"].split()[0]) / 3.2)))
    except (KeyError, ValueError, IndexError):
        return DEFAULT_LEVELS


def load_city(pbf_path: str | Path | None = None) -> CityMap:
    """Read an extract and build the projected city map, districts included."""
    osm = read_osm_pbf(pbf_path or bundled_extract())
    fwd = Transformer.from_crs("EPSG:4326", PROJECTED_CRS, always_xy=True).transform
    inv = Transformer.from_crs(PROJECTED_CRS, "EPSG:4326", always_xy=True).transform

    def proj(geom):
        return shapely.transform(geom, lambda xy: np.column_stack(fwd(xy[:, 0], xy[:, 1])))

    west, south, east, north = osm.bbox
    corners_x, corners_y = fwd([west, east, east, west], [south, south, north, north])
    # The extract is a lon/lat box; in metres it is slightly rotated, so keep the box it covers completely.
    bounds = (max(corners_x[0], corners_x[3]), max(corners_y[0], corners_y[1]),
              min(corners_x[1], corners_x[2]), min(corners_y[2], corners_y[3]))

    streets, buildings, green, water, paved, tram, rail, coast = [], [], [], [], [], [], [], []
    for way_id, (refs, tags) in osm.ways.items():
        coords = _way_coords(osm, refs)
        if len(coords) < 2:
            continue
        if "highway" in tags:
            if tags.get("area") == "yes" or (tags["highway"] == "pedestrian" and refs[0] == refs[-1]):
                poly = _closed_polygon(coords)
                if poly is not None:
                    paved.append(proj(poly))
            elif tags.get("name"):
                streets.append(StreetWay(tags["name"], tags["highway"], way_id, proj(LineString(coords))))
            else:
                streets.append(StreetWay("", tags["highway"], way_id, proj(LineString(coords))))
        if tags.get("railway") == "tram":
            tram.append(proj(LineString(coords)))
        elif tags.get("railway") in ("rail", "light_rail", "subway") and tags.get("tunnel") != "yes":
            rail.append(proj(LineString(coords)))
        if tags.get("natural") == "coastline":
            coast.extend(LineString(run) for run in _way_runs(osm, refs))
            continue
        if len(coords) < len(refs):  # an area cut at the extract's edge: its outline is unknown
            continue
        poly = _closed_polygon(coords)
        if poly is None:
            continue
        if "building" in tags:
            buildings.append(Building(proj(poly), _levels(tags), way_id))
        elif _has_tag(tags, WATER_TAGS):
            water.append(proj(poly))
        elif _has_tag(tags, GREEN_TAGS):
            green.append(proj(poly))
        elif tags.get("amenity") == "parking" or tags.get("place") == "square":
            paved.append(proj(poly))
    for rel_id, (members, tags) in osm.relations.items():
        if tags.get("type") != "multipolygon":
            continue
        parts = [proj(p) for p in _multipolygon_parts(osm, members)]
        if "building" in tags:
            buildings.extend(Building(p, _levels(tags), rel_id) for p in parts)
        elif _has_tag(tags, WATER_TAGS):
            water.extend(parts)
        elif _has_tag(tags, GREEN_TAGS):
            green.extend(parts)
    water.extend(proj(p) for p in _sea_polygons(coast, osm.bbox))

    addresses, pois, trees, places = [], [], [], []
    for node_id, tags in osm.node_tags.items():
        point = Point(fwd(*osm.nodes[node_id]))
        if tags.get("addr:street") and tags.get("addr:housenumber"):
            addresses.append(AddressPoint(point, tags["addr:street"], tags["addr:housenumber"]))
        kind = next((tags[k] for k in ("shop", "amenity", "tourism", "office") if k in tags), None)
        if kind and tags.get("name"):
            pois.append(Poi(point, tags["name"], kind))
        if tags.get("natural") == "tree":
            trees.append(point)
        if tags.get("place") in PLACE_KINDS and tags.get("name"):
            places.append((tags["name"], osm.nodes[node_id]))
    for refs, tags in osm.ways.values():  # addresses drawn on building outlines count too
        if tags.get("addr:street") and tags.get("addr:housenumber"):
            coords = _way_coords(osm, refs)
            if coords:
                centre = LineString(coords).centroid if len(coords) > 1 else Point(coords[0])
                addresses.append(AddressPoint(Point(fwd(centre.x, centre.y)), tags["addr:street"],
                                              tags["addr:housenumber"]))

    districts_ll, method = rebuild_district_polygons(osm)
    if not districts_ll:
        districts_ll, method = voronoi_districts(places, osm.bbox)
    if not districts_ll:
        raise DataError(pbf_path or "bundled extract", None, "no district boundaries and no place=suburb nodes")
    districts = {name: proj(poly) for name, poly in sorted(districts_ll.items())}
    return CityMap(bounds, streets, buildings, addresses, pois, green, water, paved, trees, tram, rail,
                   districts, method, inv, fwd)


def _sea_polygons(coast_runs: list[LineString], bbox) -> list[Polygon]:
    """The faces of (coastline + extract box) on the coastline's right, where OSM puts the water.

    Coastline ways are cut at the extract's edge like the district boundaries: they are extended to the box first.
    """
    frame = box(*bbox)
    pieces = _clip_to_frame([(run, None) for run in coast_runs], frame)
    if not pieces:
        return []
    lines = [line for line, _ in pieces] + [ray for _, ray in _dangling_rays([p for p, _ in pieces], frame)]
    sea = []
    for face in polygonize(unary_union(lines + [frame.exterior])):
        probe = face.representative_point()
        nearest = min((line for line, _ in pieces), key=lambda c: c.distance(probe))
        along = nearest.project(probe)
        a = nearest.interpolate(max(0.0, along - 1e-7))
        b = nearest.interpolate(min(nearest.length, along + 1e-7))
        if (b.x - a.x) * (probe.y - a.y) - (b.y - a.y) * (probe.x - a.x) < 0:
            sea.append(face)
    return sea


def _clip_to_frame(lines: list[tuple[LineString, object]], frame: Polygon) -> list[tuple[LineString, object]]:
    out = []
    for line, payload in lines:
        clipped = line.intersection(frame)
        for part in getattr(clipped, "geoms", [clipped]):
            if isinstance(part, LineString) and not part.is_empty:
                out.append((part, payload))
    return out


def _dangling_rays(lines: list[LineString], frame: Polygon, tolerance: float = 1e-6) -> list[tuple[int, LineString]]:
    """``(line index, ray)`` for each line end that touches neither another line nor the frame: the line was cut at
    the extract's edge, so it goes on, along its last segment, to the frame."""
    rays = []
    for i, line in enumerate(lines):
        others = unary_union([p for j, p in enumerate(lines) if j != i] + [frame.exterior])
        coords = list(line.coords)
        for end, before in ((coords[0], coords[1]), (coords[-1], coords[-2])):
            if Point(end).distance(others) > tolerance:
                ray = _ray_to_frame(end, before, frame)
                if ray is not None:
                    rays.append((i, ray))
    return rays


# ============================================================================================ districts
DISTRICT_ADMIN_LEVEL = "10"  # Helsinki's kaupunginosat; level 11 are their sub-districts


def rebuild_district_polygons(osm: OsmElements, admin_level: str = DISTRICT_ADMIN_LEVEL,
                              tolerance: float = 1e-6) -> tuple[dict[str, Polygon], str]:
    """District polygons from boundary relations cut at the extract's edge.

    The member ways that survive the cut are extended along their last segment to the extract's box; the box and
    these lines are polygonized into faces; a face belongs to the one district whose member ways run along all of
    its boundary that is not the box. Faces that no district (or more than one) explains are left out.
    """
    frame = box(*osm.bbox)
    way_districts: dict[int, set[str]] = {}
    for members, tags in osm.relations.values():
        if tags.get("boundary") == "administrative" and tags.get("admin_level") == admin_level and tags.get("name"):
            for member_id, member_type, _ in members:
                if member_type == "way" and member_id in osm.ways:
                    way_districts.setdefault(member_id, set()).add(tags["name"])
    runs = [(LineString(run), way_districts[way_id]) for way_id in sorted(way_districts)
            for run in _way_runs(osm, osm.ways[way_id][0])]
    pieces = _clip_to_frame(runs, frame)
    if not pieces:
        return {}, ""
    extensions = [(ray, pieces[i][1]) for i, ray in _dangling_rays([line for line, _ in pieces], frame, tolerance)]
    all_lines = pieces + extensions
    faces = list(polygonize(unary_union([line for line, _ in all_lines] + [frame.exterior])))
    lines_of = {name: unary_union([line for line, names in all_lines if name in names])
                for name in sorted(set().union(*way_districts.values()))}
    frame_zone = frame.exterior.buffer(tolerance)
    found: dict[str, list[Polygon]] = {}
    for face in faces:
        inner_edge = face.exterior.difference(frame_zone)
        if inner_edge.length == 0:
            continue
        owners = [name for name, lines in lines_of.items()
                  if inner_edge.intersection(lines.buffer(tolerance)).length >= 0.95 * inner_edge.length]
        if len(owners) == 1:
            found.setdefault(owners[0], []).append(face)
    districts = {name: unary_union(parts) for name, parts in found.items()}
    districts = {name: (max(p.geoms, key=lambda g: g.area) if isinstance(p, MultiPolygon) else p)
                 for name, p in districts.items()}
    method = (f"boundary relations (admin_level={admin_level}) rebuilt into polygons: cut boundary lines "
              f"extended to the extract's box and polygonized")
    return districts, method


def _ray_to_frame(end, before, frame: Polygon) -> LineString | None:
    dx, dy = end[0] - before[0], end[1] - before[1]
    norm = math.hypot(dx, dy)
    if norm == 0:
        return None
    reach = 2 * math.hypot(frame.bounds[2] - frame.bounds[0], frame.bounds[3] - frame.bounds[1])
    far = (end[0] + dx / norm * reach, end[1] + dy / norm * reach)
    hit = LineString([end, far]).intersection(frame.exterior)
    points = [g for g in getattr(hit, "geoms", [hit]) if isinstance(g, Point)]
    if not points:
        return None
    nearest = min(points, key=lambda p: Point(end).distance(p))
    return LineString([end, (nearest.x, nearest.y)])


def voronoi_districts(places: list[tuple[str, tuple[float, float]]], bbox) -> tuple[dict[str, Polygon], str]:
    """Fallback: a Voronoi partition of the extract's box around its ``place=suburb``-like nodes."""
    if not places:
        return {}, ""
    frame = box(*bbox)
    named = {}
    for name, (lon, lat) in sorted(places):
        named.setdefault(name, (lon, lat))  # one seed per name
    seeds = shapely.MultiPoint([Point(xy) for xy in named.values()])
    cells = shapely.voronoi_polygons(seeds, extend_to=frame)
    districts = {}
    for cell in cells.geoms:
        for name, xy in named.items():
            if cell.contains(Point(xy)):
                districts[name] = cell.intersection(frame)
    return districts, f"Voronoi partition around place=({'|'.join(PLACE_KINDS)}) nodes (no usable boundary relations)"
