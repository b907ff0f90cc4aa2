"""The candidate answers of closed-set answering: the city's districts, streets and (street, district) pairs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from addressvlm.core import templates
from addressvlm.core.names import normalize_name
from addressvlm.core.records import GazetteerEntry, Location


@dataclass(frozen=True)
class Gazetteer:
    """The candidate answers of each generation level, one spelling per normalised name (the city table's first)."""

    districts: tuple[str, ...]
    streets: tuple[str, ...]
    addresses: tuple[str, ...]  # "STREET, DISTRICT" as the address question's gold answers are written
    # (normalised street, normalised district) of each address, in the same order: what a pair is, without
    # splitting the address text at a separator that names may contain.
    address_keys: tuple[tuple[str, str], ...]

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
    pairs: dict[tuple[str, str], str] = {}
    for e in entries:
        if e.street and e.district:
            pairs.setdefault((normalize_name(e.street), normalize_name(e.district)),
                             templates.address_answer(e.street, e.district))
    return Gazetteer(districts, streets, tuple(pairs.values()), tuple(pairs))


def restrict_gazetteer(gazetteer: Gazetteer, entries: Iterable[GazetteerEntry]) -> Gazetteer:
    """The part of ``gazetteer`` that ``entries`` name (retrieved candidates): its districts and streets whose
    normal form an entry gives, and its addresses whose (street, district) pair an entry gives, spelt and ordered as
    in ``gazetteer``."""
    entries = list(entries)
    districts = {normalize_name(e.district) for e in entries if e.district}
    streets = {normalize_name(e.street) for e in entries if e.street}
    pairs = {(normalize_name(e.street), normalize_name(e.district)) for e in entries if e.street and e.district}
    kept = [(address, key) for address, key in zip(gazetteer.addresses, gazetteer.address_keys) if key in pairs]
    return Gazetteer(tuple(d for d in gazetteer.districts if normalize_name(d) in districts),
                     tuple(s for s in gazetteer.streets if normalize_name(s) in streets),
                     tuple(address for address, _ in kept), tuple(key for _, key in kept))
