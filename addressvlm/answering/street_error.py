"""Metre-scale error of street answers: how far the image's true location is from the street the model named.

The distance is to the nearest point of any line of the named street (all the map's ways whose names normalise to
the answer, through the one normaliser), measured in an azimuthal equidistant frame centred on the true location, so
it is in metres anywhere on Earth. An answer that names no street of the map has no distance: it counts beyond every
threshold, and as infinitely far in the median.
"""
from __future__ import annotations

import math
import os
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
from pyproj import Transformer
from shapely.geometry import LineString, Point
from shapely.ops import nearest_points

from addressvlm.answering.scoring import extract_generation, percent
from addressvlm.core.names import normalize_name
from addressvlm.core.records import DataError, Location, read_locations, read_numbered_questions
from addressvlm.geo.local_frame import local_crs
from addressvlm.geo.streets import StreetMap, read_street_map

THRESHOLDS_M = (25, 50, 100, 250)


@dataclass(frozen=True)
class StreetError:
    """One street generation answer placed on the map; ``street`` (the map's spelling), ``distance_m`` and
    ``nearest`` (lon, lat of the street's nearest point) are None when the answer names no street of the map."""

    question_id: str
    image: str
    lat: float
    lon: float
    answer: str | None
    street: str | None
    distance_m: float | None
    nearest: tuple[float, float] | None


class StreetDistances:
    """The map's streets by normalised name, for distances from a point to a named street."""

    def __init__(self, street_map: StreetMap):
        self.lines: dict[str, list[LineString]] = defaultdict(list)
        self.spelling: dict[str, str] = {}
        for street in street_map.streets:
            key = normalize_name(street.name)
            self.lines[key].append(street.line)
            self.spelling.setdefault(key, street.name)

    def nearest(self, answer: str, lat: float, lon: float) -> tuple[str, float, tuple[float, float]] | None:
        """``(street, metres, (lon, lat) of its nearest point)`` for the street ``answer`` names, or None."""
        key = extract_generation(answer)
        if key not in self.lines:
            return None
        crs = local_crs(lat, lon)
        to_local = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
        best: tuple[float, Point] | None = None
        for line in self.lines[key]:
            x, y = to_local.transform(*np.asarray(line.coords).T[:2])
            local = LineString(np.column_stack([x, y]))
            point = nearest_points(local, Point(0.0, 0.0))[0]
            distance = math.hypot(point.x, point.y)
            if best is None or distance < best[0]:
                best = (distance, point)
        to_wgs84 = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        return self.spelling[key], best[0], to_wgs84.transform(best[1].x, best[1].y)


def true_location(places: Mapping[str, Location], question: Mapping, questions_path: str | os.PathLike, line: int,
                  locations_path: str | os.PathLike) -> Location:
    """The city-table row of the question's image (``places``: image -> row); a ``DataError`` naming the questions
    line when the image is not in the table."""
    row = places.get(question["image"])
    if row is None:
        raise DataError(questions_path, line, f"image {question['image']!r} is not in {locations_path}: its true "
                                              "location is unknown")
    return row


def street_errors(numbered_questions: Iterable[tuple[int, dict]], questions_path: str | os.PathLike,
                  answers: Mapping[str, str | None], locations: Iterable[Location],
                  locations_path: str | os.PathLike, street_map: StreetMap) -> list[StreetError]:
    """A ``StreetError`` per street generation question (``answers``: question id -> the reply, None for none);
    a question whose image is not in the city table is a ``DataError`` naming the questions line."""
    where = {row.image: row for row in locations}
    distances = StreetDistances(street_map)
    out = []
    for line, q in numbered_questions:
        if q["level"] != "street" or q["qtype"] != "generation":
            continue
        row = true_location(where, q, questions_path, line, locations_path)
        answer = answers.get(q["question_id"])
        found = distances.nearest(answer, row.lat, row.lon) if answer is not None else None
        street, metres, nearest = found if found else (None, None, None)
        out.append(StreetError(q["question_id"], q["image"], row.lat, row.lon, answer, street, metres, nearest))
    return out


def error_summary(errors: Sequence[StreetError], prefix: str = "street") -> dict:
    """``<prefix>_error_median_m`` (None when there is no question, or when the median answer names no map street)
    and ``<prefix>_within_<T>m`` for ``THRESHOLDS_M`` (percent of the questions)."""
    metres = [math.inf if e.distance_m is None else e.distance_m for e in errors]
    median = statistics.median(metres) if metres else math.inf
    summary: dict = {f"{prefix}_error_median_m": round(median, 2) if math.isfinite(median) else None}
    for threshold in THRESHOLDS_M:
        summary[f"{prefix}_within_{threshold}m"] = percent(sum(m <= threshold for m in metres), len(metres))
    summary[f"{prefix}_error_counts"] = {"questions": len(errors),
                                         "named_map_street": sum(e.distance_m is not None for e in errors)}
    return summary


def street_error_files(questions_path: str | os.PathLike, locations_path: str | os.PathLike,
                       streets_path: str | os.PathLike, answers_by_prefix: Mapping[str, Mapping[str, str | None]]
                       ) -> tuple[dict, dict[str, list[StreetError]]]:
    """``error_summary`` of each set of answers (``prefix -> {question_id: reply}``, e.g. ``"street"`` for the
    generation answers and ``"street_top1"`` for the first ranked names) over the city's files, and the errors."""
    numbered = read_numbered_questions(questions_path)
    locations = read_locations(locations_path)
    street_map = read_street_map(streets_path)
    metrics, errors = {}, {}
    for prefix, answers in answers_by_prefix.items():
        errors[prefix] = street_errors(numbered, questions_path, answers, locations, locations_path, street_map)
        metrics.update(error_summary(errors[prefix], prefix))
    return metrics, errors
