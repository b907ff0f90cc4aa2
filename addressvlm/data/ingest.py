"""From an image-address dataset as published to the city table ``locations.csv`` (docs/design.md section 2).

Sources this understands:
- any CSV, JSON (a list of objects) or JSONL table, its columns named through a column map;
- AddressCLIP-style address strings, "Forbes Ave & Craig St, Oakland": main street, cross streets, district;
- coordinates as lat/lon columns, as UTM easting/northing columns with a zone, from SF-XL file names
  (``@utm_e@utm_n@zone@band@lat@lon@pano@tile@heading@...@.jpg``), or from a Pitts250k specification ``.mat``
  (``dbStruct`` with the image names and their UTM coordinates);
- ``location_id`` from a column, or made by grouping images that share coordinates (within a tolerance) and address.

Every error names the source file and line (for JSON lists, the record number), so the row can be fixed.
"""
from __future__ import annotations

import csv
import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Sequence

from tqdm import tqdm

from addressvlm.core.processes import die_with_parent, terminating_on_sigterm
from addressvlm.core.records import (
    DataError, Location, path_inside_root, read_jsonl, refuse_output_over_inputs, write_locations,
)

# Canonical fields a column map may name. The first six plus heading/cross_street/split are locations.csv columns;
# the others are inputs ingest converts.
CANONICAL_FIELDS = (
    "image", "location_id", "lat", "lon", "street", "district", "heading", "cross_street", "split",
    "address", "utm_e", "utm_n", "utm_zone",
)
COORDINATE_SOURCES = ("auto", "columns", "utm", "sfxl-name", "pitts-mat")
CROSS_STREET_SEPARATOR = " & "


def _squash(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------------------------------- address strings
@dataclass(frozen=True)
class Address:
    street: str
    cross_streets: tuple[str, ...]
    district: str


def parse_address(text: str) -> Address:
    """Split an AddressCLIP-style address: "Main St & Cross St & Other St, District[, City, ...]".

    The main street is the first name before the first comma, cross streets follow it after "&", and the district
    is the part after the first comma; later comma parts (city, state) are not address levels we ask about.
    Whitespace is collapsed. A missing street or district raises ``ValueError``.
    """
    parts = [_squash(p) for p in text.split(",")]
    streets = [_squash(s) for s in parts[0].split("&")]
    if not streets[0]:
        raise ValueError(f"address {text!r} has no street before the first comma")
    if len(parts) < 2 or not parts[1]:
        raise ValueError(f"address {text!r} has no district (expected 'Street[ & Cross St], District')")
    empty_cross = [s for s in streets[1:] if not s]
    if empty_cross:
        raise ValueError(f"address {text!r} has an empty cross street around '&'")
    return Address(street=streets[0], cross_streets=tuple(streets[1:]), district=parts[1])


# ------------------------------------------------------------------------------------------- coordinates
@dataclass(frozen=True)
class SfxlName:
    utm_east: float
    utm_north: float
    utm_zone: int
    utm_band: str
    lat: float
    lon: float
    pano_id: str
    heading: float | None


def parse_sfxl_name(path: str) -> SfxlName:
    """Parse an SF-XL image file name: ``@utm_e@utm_n@zone@band@lat@lon@pano@tile@heading@...@.jpg``.

    Only the file name counts (folders are ignored). Raises ``ValueError`` naming what is wrong.
    """
    name = PurePosixPath(str(path).replace(os.sep, "/")).name
    fields = name.split("@")
    if len(fields) < 11 or fields[0] != "":
        raise ValueError(f"{name!r} is not an SF-XL file name (@utm_e@utm_n@zone@band@lat@lon@pano@tile@heading@...)")
    try:
        heading = float(fields[9]) if fields[9].strip() else None
        parsed = SfxlName(
            utm_east=float(fields[1]), utm_north=float(fields[2]), utm_zone=int(fields[3]),
            utm_band=fields[4].strip().upper(), lat=float(fields[5]), lon=float(fields[6]),
            pano_id=fields[7], heading=heading,
        )
    except ValueError as exc:
        raise ValueError(f"SF-XL file name {name!r} has a malformed field: {exc}") from None
    return parsed


def _south_hemisphere(band: str) -> bool:
    """A UTM latitude band letter (C-M south, N-X north) or the words north/south."""
    band = band.strip().upper()
    if band in ("NORTH", "SOUTH"):
        return band == "SOUTH"
    if len(band) == 1 and band in "CDEFGHJKLMNPQRSTUVWX":
        return band < "N"
    raise ValueError(f"UTM band {band!r} is not a latitude band letter (C-X) nor north/south")


def parse_utm_zone(zone: str) -> tuple[int, str]:
    """ "17T" -> (17, "T"); "17N"/"17 north" also name the hemisphere. Note: "S" is band S (north), as in "10S"."""
    text = zone.strip().replace(" ", "")
    digits = "".join(ch for ch in text if ch.isdigit())
    rest = text[len(digits):]
    if not digits or not text.startswith(digits) or not rest:
        raise ValueError(f"UTM zone {zone!r} should look like '17T' (number and band letter) or '17north'")
    number = int(digits)
    if not 1 <= number <= 60:
        raise ValueError(f"UTM zone number {number} out of range 1-60")
    _south_hemisphere(rest)
    return number, rest


@lru_cache(maxsize=None)
def _utm_transformer(zone: int, south: bool):
    from pyproj import Transformer

    epsg = (32700 if south else 32600) + zone  # WGS 84 / UTM zone N or S
    return Transformer.from_crs(f"EPSG:{epsg}", "EPSG:4326", always_xy=True)


def utm_to_latlon(easting, northing, zone: int, band: str):
    """WGS84 (lat, lon) from UTM easting/northing in metres; scalars or equal-length sequences."""
    lon, lat = _utm_transformer(zone, _south_hemisphere(band)).transform(easting, northing)
    return lat, lon


def read_pitts_mat(path: str | os.PathLike, which: str = "db") -> dict[str, tuple[float, float]]:
    """Image name -> (easting, northing) from a Pitts250k/NetVLAD specification file (``dbStruct``).

    ``which`` is "db" (``dbImageFns``/``utmDb``, the database images) or "q" (``qImageFns``/``utmQ``, the queries).
    The UTM coordinates are a 2 x N array (row 0 easting, row 1 northing) in zone 17T for Pittsburgh.
    """
    from scipy.io import loadmat

    path = Path(path)
    if which not in ("db", "q"):
        raise ValueError(f"which must be 'db' or 'q', not {which!r}")
    try:
        mat = loadmat(path, squeeze_me=False, struct_as_record=True)
    except (OSError, ValueError) as exc:
        raise DataError(path, None, f"cannot read MATLAB file: {exc}") from None
    if "dbStruct" not in mat:
        raise DataError(path, None, f"no 'dbStruct' variable (found {', '.join(k for k in mat if not k.startswith('__'))})")
    struct = mat["dbStruct"][0, 0]
    names = struct.dtype.names
    image_field = next((f for f in (f"{which}ImageFns", f"{which}Image") if f in names), None)
    utm_field = f"utm{'Db' if which == 'db' else 'Q'}"
    if image_field is None or utm_field not in names:
        raise DataError(path, None, f"dbStruct lacks {which}ImageFns/{utm_field}; its fields are {', '.join(names)}")
    images = [str(cell.ravel()[0]) for cell in struct[image_field].ravel()]
    utm = struct[utm_field]
    if utm.shape[0] != 2 and utm.shape[-1] == 2:
        utm = utm.T
    if utm.shape != (2, len(images)):
        raise DataError(path, None, f"{utm_field} has shape {utm.shape}, expected (2, {len(images)})")
    return {img: (float(utm[0, i]), float(utm[1, i])) for i, img in enumerate(images)}


# ------------------------------------------------------------------------------------------- tables
def parse_column_map(spec: str) -> dict[str, str]:
    """ "image=path,lat=latitude" -> {"image": "path", "lat": "latitude"} (canonical field -> source column)."""
    mapping: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        field, sep, column = item.partition("=")
        field, column = field.strip(), column.strip()
        if not sep or not field or not column:
            raise ValueError(f"column map entry {item!r} should be FIELD=COLUMN")
        if field not in CANONICAL_FIELDS:
            raise ValueError(f"unknown field {field!r} in column map; known: {', '.join(CANONICAL_FIELDS)}")
        mapping[field] = column
    return mapping


@dataclass(frozen=True)
class SourceRow:
    """One record of the source table: where it is (for errors) and its values by source column."""

    line: int | None
    where: str  # "" for CSV/JSONL (the line says it), "record N: " for a JSON list
    values: dict


def read_table(path: str | os.PathLike) -> tuple[list[str], list[SourceRow]]:
    """Read a CSV, JSON list or JSONL table: (columns, rows). Rows keep their line (record) for error messages."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, "table not found")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            rows = []
            start = 2
            for raw in reader:
                rows.append(SourceRow(start, "", raw))
                start = reader.line_num + 1
        return columns, rows
    if suffix == ".jsonl":
        rows = [SourceRow(line_no, "", rec) for line_no, rec in read_jsonl(path)]
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(path, exc.lineno, f"invalid JSON: {exc.msg}") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DataError(path, None, "a JSON table must be a list of objects")
        rows = [SourceRow(None, f"record {i}: ", rec) for i, rec in enumerate(data, start=1)]
    else:
        raise DataError(path, None, f"unknown table format {suffix!r}; use .csv, .json or .jsonl")
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row.values if k not in columns)
    return columns, rows


# ------------------------------------------------------------------------------------------- ingest
@dataclass
class IngestOptions:
    """How to read a source table. ``columns`` maps canonical fields to source columns (identity by default)."""

    columns: dict[str, str]
    coords: str = "auto"
    utm_zone: str = ""              # "17T": for UTM columns and Pitts .mat coordinates
    pitts_mat: str | None = None
    pitts_which: str = "db"
    image_root: str | None = None   # where source image paths are relative to; default the city root
    group_tolerance_m: float = 1.0  # images closer than this with the same address share a location
    check_files: bool = True
    progress: bool = False          # a tqdm bar over the rows (a Pitts-sized table takes ~20 s)


def _resolve_columns(header: Sequence[str], mapping: dict[str, str], path) -> dict[str, str]:
    """Canonical field -> source column: the explicit map, plus identically named columns."""
    resolved = {f: f for f in CANONICAL_FIELDS if f in header}
    for field, column in mapping.items():
        if column not in header:
            raise DataError(path, 1, f"column {column!r} (for {field!r}) not in the table; columns are {', '.join(header)}")
        resolved[field] = column
    return resolved


def _choose_coordinates(options: IngestOptions, fields: dict[str, str], path) -> str:
    mode = options.coords
    if mode not in COORDINATE_SOURCES:
        raise ValueError(f"coords must be one of {COORDINATE_SOURCES}, not {mode!r}")
    if mode == "auto":
        # One of a pair present means the user meant that source: say the other is missing.
        if "lat" in fields or "lon" in fields:
            mode = "columns"
        elif "utm_e" in fields or "utm_n" in fields:
            mode = "utm"
        elif options.pitts_mat:
            mode = "pitts-mat"
        else:
            mode = "sfxl-name"
    needed = {"columns": ("lat", "lon"), "utm": ("utm_e", "utm_n")}.get(mode, ())
    missing = [f for f in needed if f not in fields]
    if missing:
        raise DataError(path, 1, f"coordinates from {mode} need column(s) {', '.join(missing)} (map them with --columns)")
    if mode == "utm" and not options.utm_zone and "utm_zone" not in fields:
        raise DataError(path, 1, "UTM coordinates need a zone: give --utm-zone (e.g. 17T) or a utm_zone column")
    if mode == "pitts-mat" and not options.pitts_mat:
        raise ValueError("coords 'pitts-mat' needs the .mat file (--pitts-mat)")
    if mode == "pitts-mat" and not options.utm_zone:
        raise ValueError("coords 'pitts-mat' needs --utm-zone (17T for Pittsburgh)")
    return mode


def _text(values: dict, fields: dict[str, str], field: str) -> str:
    column = fields.get(field)
    value = values.get(column) if column else None
    return "" if value is None else _squash(str(value))


def _float(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a number") from None
    if math.isnan(value):
        raise ValueError(f"{what} is NaN")
    return value


def _normalise_image(image: str, image_root: Path, city_root: Path) -> str:
    path = image_root / image.replace("\\", "/")
    return Path(os.path.relpath(path, city_root)).as_posix()


@dataclass
class _ParsedRow:
    """A source row read and checked; ``x``/``y`` are lat/lon, or easting/northing when ``utm_zone`` is set."""

    source: SourceRow
    image: str
    x: float
    y: float
    utm_zone: tuple[int, str] | None
    street: str
    district: str
    cross_street: str
    heading: float | None
    location_id: str
    split: str


class _RowReader:
    """Turns source rows into ``_ParsedRow``s under one set of options; raises ``ValueError`` on a bad row."""

    def __init__(self, table: Path, header: Sequence[str], options: IngestOptions, city_root: Path):
        self.options, self.city_root = options, city_root
        self.image_root = Path(options.image_root).resolve() if options.image_root else city_root
        self.fields = _resolve_columns(header, options.columns, table)
        if "image" not in self.fields:
            raise DataError(table, 1, "missing column 'image' (map it with --columns image=COLUMN)")
        if not ("street" in self.fields and "district" in self.fields) and "address" not in self.fields:
            raise DataError(table, 1, "need 'street' and 'district' columns or an 'address' column "
                                      "(map them with --columns)")
        self.mode = _choose_coordinates(options, self.fields, table)
        self.pitts = read_pitts_mat(options.pitts_mat, options.pitts_which) if self.mode == "pitts-mat" else {}
        self.zone = parse_utm_zone(options.utm_zone) if options.utm_zone else None

    def text(self, row: SourceRow, field: str) -> str:
        return _text(row.values, self.fields, field)

    def parse(self, row: SourceRow) -> _ParsedRow:
        image = self.text(row, "image")
        if not image:
            raise ValueError("empty 'image'")
        rel = path_inside_root(_normalise_image(image, self.image_root, self.city_root), "image")
        street, district = self.text(row, "street"), self.text(row, "district")
        cross = [c for c in self.text(row, "cross_street").split("&") if c.strip()]
        address_text = self.text(row, "address")
        if address_text and not (street and district):
            parsed = parse_address(address_text)
            street, district = street or parsed.street, district or parsed.district
            cross = cross or list(parsed.cross_streets)
        if not street:
            raise ValueError(f"empty 'street' for image {rel!r}")
        if not district:
            raise ValueError(f"empty 'district' for image {rel!r}")
        heading_text = self.text(row, "heading")
        heading = _float(heading_text, "heading") if heading_text else None
        zone = None
        if self.mode == "columns":
            x, y = _float(self.text(row, "lat"), "lat"), _float(self.text(row, "lon"), "lon")
        elif self.mode == "utm":
            zone_text = self.text(row, "utm_zone")
            zone = parse_utm_zone(zone_text) if zone_text else self.zone
            x, y = _float(self.text(row, "utm_e"), "utm_e"), _float(self.text(row, "utm_n"), "utm_n")
        elif self.mode == "pitts-mat":
            key = image.replace("\\", "/")
            if key not in self.pitts:
                raise ValueError(f"image {image!r} is not in {self.options.pitts_mat}")
            (x, y), zone = self.pitts[key], self.zone
        else:
            sfxl = parse_sfxl_name(image)
            x, y = sfxl.lat, sfxl.lon
            heading = heading if heading is not None else sfxl.heading
        location_id = self.text(row, "location_id")
        if "location_id" in self.fields and (not location_id or "/" in location_id):
            raise ValueError(f"location_id {location_id!r} must be non-empty and free of '/'")
        split = self.text(row, "split")
        if split and split not in ("train", "val", "test"):
            raise ValueError(f"split {split!r} is not train, val or test")
        if self.options.check_files and not (self.city_root / rel).is_file():
            raise ValueError(f"image file {self.city_root / rel} does not exist")
        return _ParsedRow(row, rel, x, y, zone, street, district,
                          CROSS_STREET_SEPARATOR.join(_squash(c) for c in cross), heading, location_id, split)


def ingest_table(table: str | os.PathLike, out_csv: str | os.PathLike, options: IngestOptions) -> list[Location]:
    """Convert a source table into ``out_csv`` (the city root is its folder); returns the rows written."""
    table, out_csv = Path(table), Path(out_csv)
    refuse_output_over_inputs(out_csv, [("--table", table), ("--pitts-mat", options.pitts_mat)], "--out")
    header, rows = read_table(table)
    reader = _RowReader(table, header, options, out_csv.resolve().parent)
    parsed: list[_ParsedRow] = []
    seen: dict[str, str] = {}
    for row in tqdm(rows, desc=f"reading {table.name}", unit="row", disable=not options.progress, mininterval=1.0):
        try:
            p = reader.parse(row)
            if p.image in seen:
                raise ValueError(f"duplicate image {p.image!r} (first at {seen[p.image]})")
        except ValueError as exc:
            raise DataError(table, row.line, f"{row.where}{exc}") from None
        seen[p.image] = f"line {row.line}" if row.line else row.where.rstrip(": ")
        parsed.append(p)
    if not parsed:
        raise DataError(table, None, "table has no rows")

    lat_lon = _to_latlon(parsed)
    for p, (lat, lon) in zip(parsed, lat_lon):
        if not (-90.0 <= lat <= 90.0):
            raise DataError(table, p.source.line, f"{p.source.where}latitude {lat} out of range [-90, 90]")
        if not (-180.0 <= lon <= 180.0):
            raise DataError(table, p.source.line, f"{p.source.where}longitude {lon} out of range [-180, 180]")
    if "location_id" in reader.fields:
        location_ids = [p.location_id for p in parsed]
    else:
        location_ids = group_locations([(lat, lon, p.street, p.district) for p, (lat, lon) in zip(parsed, lat_lon)],
                                       options.group_tolerance_m)
    out = [Location(image=p.image, location_id=loc, lat=round(lat, 7), lon=round(lon, 7), street=p.street,
                    district=p.district, heading=p.heading, cross_street=p.cross_street, split=p.split)
           for p, (lat, lon), loc in zip(parsed, lat_lon, location_ids)]
    write_locations(out_csv, out)
    return out


def _to_latlon(parsed: list[_ParsedRow]) -> list[tuple[float, float]]:
    """Each row's (lat, lon); UTM rows are converted in one pyproj call per zone."""
    result: list[tuple[float, float]] = [(p.x, p.y) for p in parsed]
    by_zone: dict[tuple[int, str], list[int]] = defaultdict(list)
    for i, p in enumerate(parsed):
        if p.utm_zone is not None:
            by_zone[p.utm_zone].append(i)
    for (zone, band), idx in by_zone.items():
        lats, lons = utm_to_latlon([parsed[i].x for i in idx], [parsed[i].y for i in idx], zone, band)
        for i, lat, lon in zip(idx, lats, lons):
            result[i] = (float(lat), float(lon))
    return result


def group_locations(points: Sequence[tuple[float, float, str, str]], tolerance_m: float) -> list[str]:
    """Location ids for (lat, lon, street, district) points: points within ``tolerance_m`` metres of each other
    (transitively) and with the same street and district share one id.

    Ids are zero-padded numbers in order of each location's first point, so the same input gives the same ids.
    """
    if tolerance_m <= 0:
        raise ValueError("group tolerance must be positive")
    metres_per_deg = 111_320.0
    lat0 = sum(p[0] for p in points) / len(points)
    kx = metres_per_deg * math.cos(math.radians(lat0))
    parent = list(range(len(points)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    cells: dict[tuple, list[int]] = {}
    for i, (lat, lon, street, district) in enumerate(points):
        x, y = lon * kx, lat * metres_per_deg
        cx, cy = math.floor(x / tolerance_m), math.floor(y / tolerance_m)
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for j in cells.get((street, district, cx + dx, cy + dy), ()):
                    lat_j, lon_j = points[j][0], points[j][1]
                    if math.hypot(x - lon_j * kx, y - lat_j * metres_per_deg) <= tolerance_m:
                        ri, rj = find(i), find(j)
                        if ri != rj:
                            parent[max(ri, rj)] = min(ri, rj)
        cells.setdefault((street, district, cx, cy), []).append(i)
    numbering: dict[int, str] = {}
    width = len(str(len(points)))
    ids = []
    for i in range(len(points)):
        root = find(i)
        if root not in numbering:
            numbering[root] = str(len(numbering)).zfill(width)
        ids.append(numbering[root])
    return ids



# ------------------------------------------------------------------------------------------- image check
def image_decode_error(path: str) -> str | None:
    """None if Pillow fully decodes the image, else the reason (``verify`` alone misses truncated pixel data)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
        return None
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the image is unusable for training
        return f"{type(exc).__name__}: {exc}"


def find_unreadable(city_root: str | os.PathLike, images: Sequence[str], workers: int = 1,
                    progress: bool = True) -> list[tuple[str, str]]:
    """Decode every image (relative to ``city_root``) in ``workers`` processes; returns (image, reason) for each
    one that is missing or does not decode, in input order."""
    from multiprocessing import Pool

    paths = [str(Path(city_root) / img) for img in images]
    bar = tqdm(total=len(paths), desc="decoding images", unit="img", disable=not progress, mininterval=1.0)
    errors: list[str | None] = []
    if workers > 1:
        with terminating_on_sigterm(), Pool(workers, die_with_parent, (os.getpid(),)) as pool:
            for err in pool.imap(image_decode_error, paths, chunksize=64):
                errors.append(err)
                bar.update()
    else:
        for path in paths:
            errors.append(image_decode_error(path))
            bar.update()
    bar.close()
    return [(img, err) for img, err in zip(images, errors) if err is not None]
