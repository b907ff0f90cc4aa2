"""Pictures of the errors next to the metrics: the district confusion matrix of district generation answers, and a
map of street errors (a line from each true location to the nearest point of the street the model named, coloured by
its length)."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from addressvlm.answering.scoring import extract_generation
from addressvlm.answering.street_distribution import OSM_ATTRIBUTION, headless_pyplot
from addressvlm.answering.street_error import StreetError, THRESHOLDS_M
from addressvlm.core.names import normalize_name
from addressvlm.geo.streets import StreetMap

OTHER = "(no city district)"


@dataclass(frozen=True)
class Confusion:
    """``counts[i][j]``: district generation questions whose truth is ``districts[i]`` answered with column ``j``
    (``districts`` then ``OTHER``, for replies naming no district of the city)."""

    districts: tuple[str, ...]
    counts: tuple[tuple[int, ...], ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return self.districts + (OTHER,)


def district_confusion(questions: Iterable[dict], answers: dict[str, str | None],
                       districts: Sequence[str]) -> Confusion:
    """The confusion of district generation answers over the city's ``districts`` (its spellings, in this order)."""
    districts = tuple(districts)
    column = {normalize_name(d): j for j, d in enumerate(districts)}
    counts = [[0] * (len(districts) + 1) for _ in districts]
    for q in questions:
        if q["level"] != "district" or q["qtype"] != "generation":
            continue
        truth = column.get(normalize_name(q["district"]))
        if truth is None:
            raise ValueError(f"question {q['question_id']!r}: district {q['district']!r} is not a city district")
        answer = answers.get(q["question_id"])
        named = column.get(extract_generation(answer)) if answer is not None else None
        counts[truth][len(districts) if named is None else named] += 1
    return Confusion(districts, tuple(tuple(row) for row in counts))


def draw_district_confusion(confusion: Confusion, out_png: str | os.PathLike, title: str = "") -> None:
    plt = headless_pyplot()
    n = len(confusion.districts)
    fig, ax = plt.subplots(figsize=(2.2 + 0.7 * (n + 1), 1.8 + 0.6 * n))
    ax.imshow(confusion.counts, cmap="Blues", aspect="auto")
    peak = max((max(row) for row in confusion.counts), default=0)
    for i, row in enumerate(confusion.counts):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=9,
                    color="white" if count > peak / 2 else "black")
    ax.set_xticks(range(n + 1), confusion.columns, rotation=40, ha="right", fontsize=9)
    ax.set_yticks(range(n), confusion.districts, fontsize=9)
    ax.set_xlabel("district named")
    ax.set_ylabel("true district")
    ax.set_title(title or "district generation answers", fontsize=11)
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def draw_street_errors(street_map: StreetMap, errors: Sequence[StreetError], out_png: str | os.PathLike,
                       title: str = "") -> None:
    """The city's streets in grey, each true location a dot, and a line to the nearest point of the named street
    coloured by its length (log scale up to the largest threshold and beyond); answers naming no map street are
    counted in the legend."""
    from matplotlib.collections import LineCollection
    from matplotlib.colors import LogNorm

    plt = headless_pyplot()
    fig, ax = plt.subplots(figsize=(8.0, 7.0))
    ax.add_collection(LineCollection([list(s.line.coords) for s in street_map.streets], colors="#c0c0c0",
                                     linewidths=0.8, zorder=1))
    placed = [e for e in errors if e.distance_m is not None]
    norm = LogNorm(vmin=1.0, vmax=THRESHOLDS_M[-1] * 4)
    segments = [[(e.lon, e.lat), e.nearest] for e in placed]
    lines = LineCollection(segments, array=[max(e.distance_m, 1.0) for e in placed], cmap="RdYlGn_r", norm=norm,
                           linewidths=2.0, zorder=3)
    ax.add_collection(lines)
    ax.scatter([e.lon for e in errors], [e.lat for e in errors], s=14, color="#2454c4", zorder=4,
               label="true location")
    colorbar = fig.colorbar(lines, ax=ax, shrink=0.8)
    colorbar.set_label("metres to the named street")
    colorbar.set_ticks([1, *THRESHOLDS_M, THRESHOLDS_M[-1] * 4])
    colorbar.set_ticklabels(["0-1", *map(str, THRESHOLDS_M), f">{THRESHOLDS_M[-1] * 4}"])
    ax.autoscale_view()
    mid_lat = sum(e.lat for e in errors) / len(errors) if errors else 0.0
    ax.set_aspect(1.0 / max(math.cos(math.radians(mid_lat)), 1e-6))  # metres east and north drawn alike
    ax.set_xticks([])
    ax.set_yticks([])
    ax.plot([], [], color="none", label=f"{len(errors) - len(placed)} of {len(errors)} answers name no map street")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=2, fontsize=9, frameon=False)
    ax.set_title(title or "street answers: true location -> named street", fontsize=11)
    fig.text(0.99, 0.005, OSM_ATTRIBUTION, ha="right", va="bottom", fontsize=7, color="#555555")
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
