"""Ingest: real dataset layouts (AddressCLIP addresses, SF-XL names, UTM, Pitts250k .mat) to locations.csv."""
import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.integrate import quad
from scipy.io import savemat

from addressvlm.data.ingest import (IngestOptions, find_unreadable, group_locations, ingest_table, parse_address,
                                    parse_column_map, parse_sfxl_name, parse_utm_zone, read_pitts_mat, utm_to_latlon)
from addressvlm.core.records import DataError, read_locations

REPO = Path(__file__).resolve().parent.parent
SFXL_NAME = "@0551316.72@4182391.40@10@S@037.78744@-122.41719@WAtR6hFyt6bDjOj8BX0kTA@@135@@@@201311@@.jpg"


# ------------------------------------------------------------------------------------------- address strings
def test_address_with_cross_street():
    a = parse_address("Forbes Ave & Craig St, Oakland")
    assert (a.street, a.cross_streets, a.district) == ("Forbes Ave", ("Craig St",), "Oakland")


def test_address_extra_spaces_and_several_cross_streets():
    a = parse_address("  Forbes   Ave &Craig St&  S Bouquet St ,   North  Oakland  ")
    assert (a.street, a.cross_streets, a.district) == ("Forbes Ave", ("Craig St", "S Bouquet St"), "North Oakland")


def test_address_without_cross_street_drops_city_parts():
    a = parse_address("Penn Ave, Strip District, Pittsburgh, PA")
    assert (a.street, a.cross_streets, a.district) == ("Penn Ave", (), "Strip District")


@pytest.mark.parametrize("text,message", [
    ("Forbes Ave & Craig St", "no district"),
    ("Forbes Ave,  ", "no district"),
    (" , Oakland", "no street"),
    ("Forbes Ave & , Oakland", "empty cross street"),
])
def test_malformed_addresses_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_address(text)


# ------------------------------------------------------------------------------------------- coordinates
def test_sfxl_name_fields():
    name = parse_sfxl_name("raw/train/" + SFXL_NAME)
    assert (name.utm_east, name.utm_north, name.utm_zone, name.utm_band) == (551316.72, 4182391.40, 10, "S")
    assert (name.lat, name.lon, name.pano_id, name.heading) == (37.78744, -122.41719, "WAtR6hFyt6bDjOj8BX0kTA", 135.0)


def test_sfxl_name_coordinates_agree_with_its_utm_fields():
    name = parse_sfxl_name(SFXL_NAME)
    lat, lon = utm_to_latlon(name.utm_east, name.utm_north, name.utm_zone, name.utm_band)
    assert abs(lat - name.lat) < 1e-4 and abs(lon - name.lon) < 1e-4


@pytest.mark.parametrize("bad", ["000000_pitch1_yaw1.jpg", "@abc@4182496.95@10@S@037.7@-122.4@p@@0@@@@@@.jpg"])
def test_non_sfxl_names_are_refused(bad):
    with pytest.raises(ValueError, match="SF-XL"):
        parse_sfxl_name(bad)


def _meridian_arc(lat_deg: float) -> float:
    """Distance along the WGS84 meridian from the equator, integrated from the ellipsoid's definition."""
    a, f = 6378137.0, 1 / 298.257223563
    e2 = f * (2 - f)
    return quad(lambda p: a * (1 - e2) / (1 - e2 * math.sin(p) ** 2) ** 1.5, 0, math.radians(lat_deg))[0]


def test_utm_on_the_central_meridian_matches_the_scaled_meridian_arc():
    # On a zone's central meridian (easting 500 km) UTM northing is exactly 0.9996 x the meridian arc.
    lat, lon = utm_to_latlon(500000.0, 0.9996 * _meridian_arc(40.0), 17, "T")
    assert lat == pytest.approx(40.0, abs=1e-7) and lon == pytest.approx(-81.0, abs=1e-7)
    lat, lon = utm_to_latlon(500000.0, 10_000_000.0 - 0.9996 * _meridian_arc(33.0), 56, "H")  # Sydney's zone, south
    assert lat == pytest.approx(-33.0, abs=1e-7) and lon == pytest.approx(153.0, abs=1e-7)


def test_utm_zone_parsing_knows_bands_from_hemispheres():
    assert parse_utm_zone("17T") == (17, "T")
    assert parse_utm_zone("10 S") == (10, "S")  # band S lies north of the equator
    assert utm_to_latlon(500000.0, 4_000_000.0, 10, "S")[0] > 0
    for bad in ("T17", "99T", "17", "17I"):
        with pytest.raises(ValueError):
            parse_utm_zone(bad)


def _pitts_mat(path: Path, images: list[str], utm: np.ndarray) -> None:
    """A specification file laid out like NetVLAD's pitts250k_*.mat."""
    cells = np.empty((len(images), 1), dtype=object)
    for i, name in enumerate(images):
        cells[i, 0] = name
    queries = np.empty((1, 1), dtype=object)
    queries[0, 0] = "queries_real/000/000000_pitch1_yaw1.jpg"
    savemat(path, {"dbStruct": {
        "whichSet": "train", "dbImageFns": cells, "utmDb": utm, "qImageFns": queries,
        "utmQ": np.array([[585000.0], [4478000.0]]), "numImages": len(images), "numQueries": 1,
        "posDistThr": 25.0, "posDistSqThr": 625.0, "nonTrivPosDistSqThr": 100.0,
    }})


def test_pitts_mat_reads_database_and_query_coordinates(tmp_path):
    _pitts_mat(tmp_path / "p.mat", ["000/000000_pitch1_yaw1.jpg", "000/000001_pitch1_yaw1.jpg"],
               np.array([[584000.0, 584100.0], [4477000.0, 4477050.0]]))
    db = read_pitts_mat(tmp_path / "p.mat")
    assert db == {"000/000000_pitch1_yaw1.jpg": (584000.0, 4477000.0), "000/000001_pitch1_yaw1.jpg": (584100.0, 4477050.0)}
    assert read_pitts_mat(tmp_path / "p.mat", "q") == {"queries_real/000/000000_pitch1_yaw1.jpg": (585000.0, 4478000.0)}
    savemat(tmp_path / "other.mat", {"x": np.zeros(2)})
    with pytest.raises(DataError, match="dbStruct"):
        read_pitts_mat(tmp_path / "other.mat")


# ------------------------------------------------------------------------------------------- tables
def _image(root: Path, rel: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (120, 30, 200)).save(path, format="JPEG")


def _csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_column_map_and_addresses_with_grouping(tmp_path):
    city = tmp_path / "city"
    for i in range(4):
        _image(city, f"img/{i}.jpg")
    table = _csv(tmp_path / "src.csv", ["file", "latitude", "longitude", "addr"], [
        ["img/0.jpg", 40.4442, -79.9531, "Forbes Ave & Craig St, Oakland"],
        ["img/1.jpg", 40.444200001, -79.9531, "Forbes Ave & Craig St,  Oakland"],  # same place, 0.1 mm away
        ["img/2.jpg", 40.4442, -79.9531, "Craig St, Oakland"],  # same point, another street: another location
        ["img/3.jpg", 40.4500, -79.9400, "Penn Ave, Strip District"],
    ])
    options = IngestOptions(columns=parse_column_map("image=file,lat=latitude,lon=longitude,address=addr"))
    rows = ingest_table(table, city / "locations.csv", options)
    assert [r.location_id for r in rows] == ["0", "0", "1", "2"]
    assert (rows[0].street, rows[0].cross_street, rows[0].district) == ("Forbes Ave", "Craig St", "Oakland")
    assert read_locations(city / "locations.csv") == rows


def test_ingest_never_writes_over_its_source_table(tmp_path):
    city = tmp_path / "city"
    _image(city, "img/0.jpg")
    table = _csv(city / "locations.csv", ["file", "latitude", "longitude", "addr"],
                 [["img/0.jpg", 40.4442, -79.9531, "Forbes Ave, Oakland"]])
    before = table.read_bytes()
    options = IngestOptions(columns=parse_column_map("image=file,lat=latitude,lon=longitude,address=addr"))
    with pytest.raises(DataError, match="--out is the --table input itself"):
        ingest_table(table, table, options)
    assert table.read_bytes() == before


def test_grouping_is_transitive_within_tolerance_and_separates_beyond():
    metre = 1 / 111_320.0
    ids = group_locations([(0.0, 0.0, "A", "D"), (0.8 * metre, 0.0, "A", "D"), (1.6 * metre, 0.0, "A", "D"),
                           (5 * metre, 0.0, "A", "D")], tolerance_m=1.0)
    assert ids == ["0", "0", "0", "1"]


def test_sfxl_names_give_coordinates_and_heading(tmp_path):
    city = tmp_path / "sf"
    rel = "raw/" + SFXL_NAME
    _image(city, rel)
    table = tmp_path / "sf.jsonl"
    table.write_text(json.dumps({"path": rel, "address": "Market St & 5th St, Union Square"}) + "\n")
    rows = ingest_table(table, city / "locations.csv", IngestOptions(columns={"image": "path"}, coords="auto"))
    assert (rows[0].lat, rows[0].lon, rows[0].heading) == (37.78744, -122.41719, 135.0)


def test_utm_columns_with_zone(tmp_path):
    city = tmp_path / "c"
    _image(city, "a.jpg")
    table = _csv(tmp_path / "t.csv", ["image", "utm_e", "utm_n", "street", "district"],
                 [["a.jpg", 500000.0, 0.9996 * _meridian_arc(40.0), "Main St", "Centre"]])
    rows = ingest_table(table, city / "locations.csv", IngestOptions(columns={}, utm_zone="17T"))
    assert (rows[0].lat, rows[0].lon) == (40.0, -81.0)


def test_pitts_mat_coordinates_joined_on_image(tmp_path):
    city = tmp_path / "pitts"
    images = [f"000/000000_pitch1_yaw{k}.jpg" for k in (1, 2)] + ["000/000001_pitch1_yaw1.jpg"]
    for rel in images:
        _image(city, rel)
    _pitts_mat(tmp_path / "pitts250k_train.mat", images,
               np.array([[584000.0, 584000.0, 584200.0], [4477000.0, 4477000.0, 4477000.0]]))
    table = _csv(tmp_path / "ial.csv", ["image", "address"], [[images[0], "Forbes Ave, Oakland"],
                                                              [images[1], "Forbes Ave, Oakland"],
                                                              [images[2], "Forbes Ave, Oakland"]])
    options = IngestOptions(columns={}, coords="pitts-mat", pitts_mat=str(tmp_path / "pitts250k_train.mat"),
                            utm_zone="17T")
    rows = ingest_table(table, city / "locations.csv", options)
    assert [r.location_id for r in rows] == ["0", "0", "1"]
    lat, lon = utm_to_latlon(584000.0, 4477000.0, 17, "T")
    assert rows[0].lat == pytest.approx(lat, abs=1e-7) and rows[0].lon == pytest.approx(lon, abs=1e-7)


def test_image_root_outside_city_root_is_made_relative(tmp_path):
    city = tmp_path / "data" / "city"
    _image(city, "images/x.jpg")
    table = _csv(tmp_path / "t.csv", ["image", "lat", "lon", "street", "district", "location_id"],
                 [["x.jpg", 1.0, 2.0, "S", "D", "L1"]])
    rows = ingest_table(table, city / "locations.csv", IngestOptions(columns={}, image_root=str(city / "images")))
    assert rows[0].image == "images/x.jpg" and rows[0].location_id == "L1"


GOOD = ["a.jpg", 40.0, -80.0, "Main St", "Centre"]


@pytest.mark.parametrize("header,rows,line,message", [
    (["image", "lat", "lon", "street"], [GOOD[:4]], 1, "'district' columns or an 'address'"),
    (["image", "lat", "street", "district"], [["a.jpg", 40.0, "Main St", "Centre"]], 1, "need column"),
    (["image", "lat", "lon", "street", "district"], [GOOD, ["b.jpg", 40, -80, " ", "Centre"]], 3, "empty 'street'"),
    (["image", "lat", "lon", "street", "district"], [GOOD, ["b.jpg", 40, -80, "Main St", ""]], 3, "empty 'district'"),
    (["image", "lat", "lon", "street", "district"], [["a.jpg", 91.0, -80, "Main St", "C"]], 2, "latitude 91.0 out of range"),
    (["image", "lat", "lon", "street", "district"], [["a.jpg", 40.0, -181, "Main St", "C"]], 2, "longitude -181.0 out of"),
    (["image", "lat", "lon", "street", "district"], [["a.jpg", "north", -80, "Main St", "C"]], 2, "not a number"),
    (["image", "lat", "lon", "street", "district"], [GOOD, GOOD], 3, "duplicate image 'a.jpg'"),
    (["image", "lat", "lon", "street", "district"], [GOOD, ["missing.jpg", 40, -80, "Main St", "C"]], 3, "does not exist"),
    (["image", "lat", "lon", "address"], [GOOD[:3] + ["Main St & Oak St"]], 2, "no district"),
    (["image", "lat", "lon", "street", "district", "split"], [GOOD + ["dev"]], 2, "split 'dev'"),
    (["image", "lat", "lon", "street", "district", "location_id"], [GOOD + ["a/b"]], 2, "free of '/'"),
])
def test_bad_rows_fail_with_file_and_line(tmp_path, header, rows, line, message):
    city = tmp_path / "city"
    _image(city, "a.jpg")
    _image(city, "b.jpg")
    table = _csv(tmp_path / "bad.csv", header, rows)
    with pytest.raises(DataError, match=message) as info:
        ingest_table(table, city / "locations.csv", IngestOptions(columns={}))
    assert str(info.value).startswith(f"{table}:{line}:")
    assert not (city / "locations.csv").exists()


def test_json_list_errors_name_the_record(tmp_path):
    table = tmp_path / "t.json"
    table.write_text(json.dumps([{"image": "a.jpg", "lat": 1, "lon": 2, "street": "S", "district": ""}]))
    with pytest.raises(DataError, match=r"t\.json: record 1: empty 'district'"):
        ingest_table(table, tmp_path / "c" / "locations.csv", IngestOptions(columns={}, check_files=False))


def test_column_map_errors():
    with pytest.raises(ValueError, match="unknown field 'colour'"):
        parse_column_map("colour=c")
    with pytest.raises(ValueError, match="FIELD=COLUMN"):
        parse_column_map("image")


def test_mapped_column_absent_from_table(tmp_path):
    table = _csv(tmp_path / "t.csv", ["image"], [["a.jpg"]])
    with pytest.raises(DataError, match=r"t\.csv:1: column 'path' \(for 'image'\) not in the table"):
        ingest_table(table, tmp_path / "locations.csv", IngestOptions(columns={"image": "path"}))


# ------------------------------------------------------------------------------------------- image decoding
def test_find_unreadable_lists_truncated_and_missing_images(tmp_path):
    for i in range(3):
        _image(tmp_path, f"{i}.jpg")
    data = (tmp_path / "1.jpg").read_bytes()
    (tmp_path / "1.jpg").write_bytes(data[: len(data) // 2])
    images = ["0.jpg", "1.jpg", "2.jpg", "gone.jpg"]
    bad = find_unreadable(tmp_path, images, workers=2, progress=False)
    assert [img for img, _ in bad] == ["1.jpg", "gone.jpg"]
    assert find_unreadable(tmp_path, images, workers=1, progress=False) == bad


def test_cli_ingest_then_validate(tmp_path):
    city = tmp_path / "city"
    _image(city, "a.jpg")
    _image(city, "b.jpg")
    table = _csv(tmp_path / "t.csv", ["img", "lat", "lon", "address"],
                 [["a.jpg", 40.0, -80.0, "Main St, Centre"], ["b.jpg", 40.0, -80.0, "Main St, Centre"]])
    run = subprocess.run([sys.executable, str(REPO / "datasets_prep/ingest.py"), "--table", str(table),
                          "--columns", "image=img", "--out", str(city / "locations.csv")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "2 images, 1 locations" in run.stdout
    (city / "b.jpg").write_bytes(b"not a jpeg")
    run = subprocess.run([sys.executable, str(REPO / "datasets_prep/validate.py"), "--locations",
                          str(city / "locations.csv"), "--workers", "2", "--report", str(tmp_path / "bad.txt")],
                         capture_output=True, text=True)
    assert run.returncode == 1
    assert (tmp_path / "bad.txt").read_text().startswith("b.jpg\tUnidentifiedImageError")
