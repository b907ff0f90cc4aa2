"""Satellite crops: metre-true centring in any CRS, XYZ tiles, labels only along roads, batch resume."""
import math

import numpy as np
import pytest
from PIL import Image
from shapely.geometry import LineString, Point

from addressvlm.geo.crop import (crop_city, crop_file_name, draw_street_labels, label_font, offset_latlon,
                                 read_crop_index, render_crop, streets_in_pixels)
from addressvlm.geo.raster import RasterError, open_raster
from addressvlm.geo.streets import read_street_map
from addressvlm.core.records import DataError, Location, write_locations
from helpers import GREY, LAT, LON, RED, write_geotiff, write_streets




def red_centroid(image):
    a = np.asarray(image).astype(int)
    mask = (a[..., 0] > 180) & (a[..., 1] < 80) & (a[..., 2] < 80)
    assert mask.sum() > 0, "marker not in the crop"
    ys, xs = np.nonzero(mask)
    return xs.mean(), ys.mean()


def test_crop_centred_on_known_point_in_utm_and_web_mercator(tmp_path):
    for crs, ground in (("EPSG:32635", 1.0), ("EPSG:3857", 1.0), ("EPSG:32635", 0.2)):
        raster = open_raster(write_geotiff(tmp_path / f"sat_{crs[5:]}_{ground}.tif", crs, ground, half_extent_m=150))
        size_m, pixels = 100.0, 200  # 0.5 m per output pixel
        x, y = red_centroid(raster.read_square(LAT, LON, size_m, pixels))
        assert abs(x - 99.5) <= 1.0 and abs(y - 99.5) <= 1.0, (crs, ground, x, y)
        # Centre the crop 20 m east and 10 m north of the marker: it must appear 40 px left and 20 px down.
        lat2, lon2 = offset_latlon(LAT, LON, 20.0, 10.0)
        x, y = red_centroid(raster.read_square(lat2, lon2, size_m, pixels))
        assert abs(x - (99.5 - 40)) <= 1.0 and abs(y - (99.5 + 20)) <= 1.0, (crs, ground, x, y)
        with pytest.raises(RasterError, match="outside the raster"):
            raster.read_square(LAT + 0.01, LON, size_m, pixels)
        raster.close()


def write_tiles(root, z, marker=(LAT, LON), suffix=".png"):
    """256-px XYZ tiles around the marker at zoom ``z``: grey with a red 6x6 px square on the marker."""
    world = 256 * 2 ** z
    mx = (marker[1] + 180) / 360 * world
    my = (1 - math.asinh(math.tan(math.radians(marker[0]))) / math.pi) / 2 * world
    tx, ty = int(mx // 256), int(my // 256)
    for x in range(tx - 1, tx + 2):
        for y in range(ty - 1, ty + 2):
            a = np.empty((256, 256, 3), np.uint8)
            a[:] = GREY
            px, py = mx - x * 256, my - y * 256
            a[max(0, int(py - 3)):max(0, int(py + 3)), max(0, int(px - 3)):max(0, int(px + 3))] = RED
            (root / str(z) / str(x)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(a).save(root / str(z) / str(x) / f"{y}{suffix}")
    return root


def test_crop_from_xyz_tiles(tmp_path):
    raster = open_raster(write_tiles(tmp_path / "tiles", 18))
    x, y = red_centroid(raster.read_square(LAT, LON, 100.0, 200))
    assert abs(x - 99.5) <= 1.0 and abs(y - 99.5) <= 1.0
    lat2, lon2 = offset_latlon(LAT, LON, -15.0, 0.0)
    x, y = red_centroid(raster.read_square(lat2, lon2, 100.0, 200))
    assert abs(x - (99.5 + 30)) <= 1.0 and abs(y - 99.5) <= 1.0
    with pytest.raises(RasterError, match="no tile"):
        raster.read_square(LAT + 0.05, LON, 100.0, 200)


def test_labels_are_drawn_only_along_roads(tmp_path):
    raster = open_raster(write_geotiff(tmp_path / "sat.tif", "EPSG:32635", 1.0, 200, markers=()))
    streets = read_street_map(write_streets(tmp_path / "streets.geojson"))
    size_m, pixels, font_px = 160.0, 336, 12
    plain = np.asarray(render_crop(raster, streets, LAT, LON, size_m, pixels, labels=False)[0]).astype(int)
    labelled = np.asarray(render_crop(raster, streets, LAT, LON, size_m, pixels, labels=True, font_px=font_px)[0])
    changed = np.abs(labelled.astype(int) - plain).sum(-1) > 30
    assert changed.sum() > 200, "no label was drawn"
    lines = [l for pieces in streets_in_pixels(streets, LAT, LON, size_m, pixels).values() for l in pieces]
    ys, xs = np.nonzero(changed)
    far = max(min(l.distance(Point(x, y)) for l in lines) for x, y in zip(xs, ys))
    # Half a line of text plus the halo and antialiasing: any ink further out is not on a road.
    assert far <= font_px * 0.75 + 3, f"label ink {far:.1f} px from the nearest road"

    placed = draw_street_labels(Image.fromarray(plain.astype(np.uint8)),
                                streets_in_pixels(streets, LAT, LON, size_m, pixels), font_px)
    assert sorted(n for n, _ in placed) == ["Mannerheimintie", "Yrjönkatu"]
    assert not placed[0][1].intersects(placed[1][1]), "labels overlap"
    assert "DejaVuSans" in label_font(font_px).path


def test_reserved_corner_stays_free_of_labels(tmp_path):
    raster = open_raster(write_geotiff(tmp_path / "sat.tif", "EPSG:32635", 1.0, 200, markers=()))
    streets = read_street_map(write_streets(tmp_path / "streets.geojson"))
    reserved = (0.5, 0.0, 1.0, 0.5)
    plain = np.asarray(render_crop(raster, streets, LAT, LON, 160.0, 336, labels=False)[0]).astype(int)
    labelled = np.asarray(render_crop(raster, streets, LAT, LON, 160.0, 336, labels=True, reserved_box=reserved)[0])
    changed = np.abs(labelled.astype(int) - plain).sum(-1) > 30
    assert changed.sum() > 200
    assert changed[:168, 168:].sum() == 0


def test_crop_city_batch_resumes_and_reports_uncovered_locations(tmp_path, monkeypatch):
    city = tmp_path / "city"
    city.mkdir()
    here = offset_latlon(LAT, LON, 30.0, -20.0)
    write_geotiff(city / "satellite.tif", "EPSG:3857", 1.0, 200, markers=(here,), marker_m=3.0)
    write_streets(city / "streets.geojson")
    far = offset_latlon(LAT, LON, 5000.0, 0.0)
    write_locations(city / "locations.csv", [
        Location("img/a_0.jpg", "loc/a", here[0], here[1], "Mannerheimintie", "Kluuvi"),
        Location("img/a_1.jpg", "loc/a", here[0], here[1], "Mannerheimintie", "Kluuvi"),
        Location("img/b_0.jpg", "loc/b", LAT, LON, "Yrjönkatu", "Kamppi"),
        Location("img/c_0.jpg", "loc/c", far[0], far[1], "Nowhere Road", "Elsewhere"),
    ])
    out = city / "stage1" / "crops"
    report = crop_city(city, out, size_m=100, pixels=200, jitter_m=20, seed=3, progress=False)
    assert (report.written, report.already_done) == (2, 0)
    assert len(report.failed) == 1 and report.failed[0][0] == "loc/c" and "satellite.tif" in report.failed[0][1]
    index = read_crop_index(out)
    assert set(index) == {"loc/a", "loc/b"}
    # With jitter the location is off-centre, exactly where the index says.
    rec = index["loc/a"]
    assert math.hypot(rec["location_east_m"], rec["location_north_m"]) > 1.0
    x, y = red_centroid(Image.open(out / crop_file_name("loc/a")))
    assert abs(x - (99.5 + rec["location_east_m"] * 2)) <= 1.5
    assert abs(y - (99.5 - rec["location_north_m"] * 2)) <= 1.5

    again = crop_city(city, out, size_m=100, pixels=200, jitter_m=20, seed=3, progress=False)
    assert (again.written, again.already_done, len(again.failed)) == (0, 2, 1)
    monkeypatch.chdir(city)  # the same raster named by a relative path is the same run, not another one
    by_relative_path = crop_city(city, out, size_m=100, pixels=200, jitter_m=20, seed=3, raster="satellite.tif",
                                 progress=False)
    assert (by_relative_path.written, by_relative_path.already_done) == (0, 2)
    with pytest.raises(ValueError, match="made with"):
        crop_city(city, out, size_m=120, pixels=200, jitter_m=20, seed=3, progress=False)
    assert crop_file_name("loc/a") != crop_file_name("loc_a")
    with pytest.raises(DataError, match="--out-dir holds the --raster input"):
        crop_city(city, city, size_m=100, pixels=200, progress=False)


def test_single_crop_cli(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "datasets_prep" / "crop_satellite.py"
    tif = write_geotiff(tmp_path / "sat.tif", "EPSG:32635", 1.0, 200)
    streets = write_streets(tmp_path / "streets.geojson")
    out = tmp_path / "one.png"
    run = subprocess.run([sys.executable, str(script), "--raster", str(tif), "--streets", str(streets),
                          "--lat", str(LAT), "--lon", str(LON), "--size-m", "100", "--pixels", "200",
                          "--out", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "Mannerheimintie" in run.stdout
    assert Image.open(out).size == (200, 200)
    far = subprocess.run([sys.executable, str(script), "--raster", str(tif), "--no-labels", "--lat", "0",
                          "--lon", "0", "--out", str(tmp_path / "two.png")], capture_output=True, text=True)
    assert far.returncode != 0 and "sat.tif: point lat=0.0, lon=0.0 lies outside the raster" in far.stderr
    raster = tif.read_bytes()
    over = subprocess.run([sys.executable, str(script), "--raster", str(tif), "--no-labels", "--lat", str(LAT),
                           "--lon", str(LON), "--out", str(tif)], capture_output=True, text=True)
    assert over.returncode == 1 and over.stderr == f"error: {tif}: --out is the --raster input itself: choose an " \
                                                   "output apart from the inputs\n"
    assert tif.read_bytes() == raster


def test_crop_city_with_workers_writes_what_one_process_writes(tmp_path):
    """Two worker processes (each opening its own raster) give byte-identical crops and the same index, in the
    same order, as one process."""
    from addressvlm.geo.crop import CROP_CHUNK, crop_city, crop_file_name

    outputs = {}
    for workers in (1, 2):
        city = tmp_path / f"city{workers}"
        city.mkdir()
        write_geotiff(city / "satellite.tif", "EPSG:32635", 1.0, 400)
        write_streets(city / "streets.geojson")
        spots = [offset_latlon(LAT, LON, 3.0 * i, -2.0 * i) for i in range(CROP_CHUNK + 4)]
        write_locations(city / "locations.csv", [
            Location(f"img/{i}.jpg", f"loc/{i}", lat, lon, "Mannerheimintie", "Kluuvi")
            for i, (lat, lon) in enumerate(spots)])
        out = city / "stage1" / "crops"
        report = crop_city(city, out, size_m=60, pixels=120, jitter_m=5, seed=1, progress=False, workers=workers)
        assert (report.written, report.failed) == (len(spots), [])
        outputs[workers] = ((out / "crops.jsonl").read_text(),
                            [(out / crop_file_name(f"loc/{i}")).read_bytes() for i in range(len(spots))])
    assert outputs[1] == outputs[2]
