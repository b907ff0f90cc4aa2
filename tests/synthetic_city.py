"""Small (or, for the benchmark, Pitts-sized) generated cities: a street grid, districts as Voronoi cells around
chosen locations, several views per location, and optionally real JPEG files written with Pillow.

Used by the tests and by benchmarks/bench_vqa.py, so the benchmarked city and the tested one are alike.
"""
from __future__ import annotations

import math
import random
from pathlib import Path

from addressvlm.core.records import Location, write_locations

_STREET_WORDS = (
    "Ash", "Birch", "Cedar", "Dogwood", "Elm", "Fir", "Ginkgo", "Hawthorn", "Ivy", "Juniper", "Kelp", "Linden",
    "Maple", "Nettle", "Oak", "Pine", "Quince", "Rowan", "Spruce", "Tamarack", "Umber", "Viburnum", "Willow",
    "Yew", "Zelkova", "Forbes", "Craig", "Murray", "Penn", "Liberty",
)
_STREET_TYPES = ("Street", "Avenue", "Way", "Boulevard", "Road", "Lane", "Place")
DISTRICT_NAMES = (
    "Oakland", "Shadyside", "Squirrel Hill", "Bloomfield", "Lawrenceville", "Strip District", "Downtown",
    "Hill District", "Polish Hill", "Garfield", "East Liberty", "Highland Park", "Morningside", "Stanton Heights",
    "Friendship", "Point Breeze", "Regent Square", "Greenfield", "Hazelwood", "South Side Flats",
    "Mount Washington", "Beechview", "Brookline", "Carrick",
)
_METRES_PER_DEGREE = 111_320.0


def street_names(n: int) -> list[str]:
    names = [f"{w} {t}" for t in _STREET_TYPES for w in _STREET_WORDS]
    if n > len(names):
        raise ValueError(f"at most {len(names)} street names")
    return names[:n]


def city_rows(n_locations: int = 40, views: int = 4, n_streets: int = 8, n_districts: int = 4, seed: int = 0,
              origin: tuple[float, float] = (40.44, -79.99), spacing_m: float = 120.0) -> list[Location]:
    """The city table of a generated city. Half the streets run east-west, half north-south, ``spacing_m`` apart;
    location i lies on street ``i % n_streets``; every fifth location sits on an intersection and names its
    cross street."""
    if n_districts > len(DISTRICT_NAMES):
        raise ValueError(f"at most {len(DISTRICT_NAMES)} districts")
    rng = random.Random(seed)
    names = street_names(n_streets)
    n_ew = (n_streets + 1) // 2
    n_ns = n_streets - n_ew
    width, height = max(n_ns, 1) * spacing_m, max(n_ew, 1) * spacing_m
    places = []  # (x, y, street, cross)
    for i in range(n_locations):
        s = i % n_streets
        east_west = s < n_ew
        if i % 5 == 4 and n_ns and n_ew:
            other = rng.randrange(n_ns) + n_ew if east_west else rng.randrange(n_ew)
            along = (other - n_ew + 0.5) * spacing_m if east_west else (other + 0.5) * spacing_m
            cross = names[other]
        else:
            along = rng.uniform(0, width if east_west else height)
            cross = ""
        offset = (s + 0.5) * spacing_m if east_west else (s - n_ew + 0.5) * spacing_m
        x, y = (along, offset) if east_west else (offset, along)
        places.append((x, y, names[s], cross))
    centres = rng.sample(range(n_locations), n_districts)
    lat0, lon0 = origin
    kx = _METRES_PER_DEGREE * math.cos(math.radians(lat0))
    width_digits = max(6, len(str(n_locations)))
    rows = []
    for i, (x, y, street, cross) in enumerate(places):
        d = min(range(n_districts), key=lambda k: math.hypot(x - places[centres[k]][0], y - places[centres[k]][1]))
        loc = str(i).zfill(width_digits)
        for v in range(views):
            rows.append(Location(
                image=f"{i // 1000:03d}/{loc}_yaw{v}.jpg", location_id=loc,
                lat=round(lat0 + y / _METRES_PER_DEGREE, 7), lon=round(lon0 + x / kx, 7),
                street=street, district=DISTRICT_NAMES[d], heading=round(360.0 * v / views, 1), cross_street=cross,
            ))
    return rows


def write_images(root: Path, rows: list[Location], size: tuple[int, int] = (24, 16)) -> None:
    """A small real JPEG per row, coloured by location so views of one place look alike."""
    from PIL import Image

    for row in rows:
        path = root / row.image
        path.parent.mkdir(parents=True, exist_ok=True)
        shade = int(row.location_id) * 37 % 256
        Image.new("RGB", size, (shade, 255 - shade, int(row.heading or 0) % 256)).save(path, format="JPEG")


def make_city(root: str | Path, images: bool = True, **kwargs) -> Path:
    """Write ``root/locations.csv`` (and the images) of a generated city; returns the table's path."""
    root = Path(root)
    rows = city_rows(**kwargs)
    if images:
        write_images(root, rows)
    path = root / "locations.csv"
    write_locations(path, rows)
    return path
