"""The candidate answers of closed-set answering: the city's districts, streets and (street, district) pairs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from addressvlm import templates
from addressvlm.names import normalize_name
from addressvlm.records import GazetteerEntry, Location


@dataclass(frozen=True)
class Gazetteer:
    """The candidate answers of each generation level, one spelling per normalised name (the city table's first)."""

    districts: tuple[str, ...]
    streets: tuple[str, ...]
    addresses: tuple[str, ...]  # "STREET, DISTRICT" as the address question's gold answers are written

    def names_for(self, level: str) -> tuple[str, ...]:
        return {"district": self.districts, "street": self.streets, "address": self.addresses}[level]


def _unique_by_normal_form(names: Iterable[tuple[tuple[str, ...], str]]) -> tuple[str, ...]:
    kept: dict[tuple[str, ...], str] = {}
    for key, name in names:
        kept.setdefault(key, name)
    return tuple(kept.values())


def build_gazetteer(locations: Iterable[Location], extra: Iterable[GazetteerEntry] = ()) -> Gazetteer:
    """The districts, streets and (street, district) pairs of the city table, then those of ``extra``."""
    entries = [GazetteerEntry(row.street, row.district) for row in locations] + list(extra)
    districts = _unique_by_normal_form(((normalize_name(e.district),), e.district) for e in entries if e.district)
    streets = _unique_by_normal_form(((normalize_name(e.street),), e.street) for e in entries if e.street)
    addresses = _unique_by_normal_form(
        ((normalize_name(e.street), normalize_name(e.district)), templates.address_answer(e.street, e.district))
        for e in entries if e.street and e.district)
    return Gazetteer(districts, streets, addresses)
