"""Place names compared through one normaliser, everywhere: scoring, the reason checks of the label backends,
distractor choice, and the spelling check of ingest and validate ("Ash St", "Ash Street" and "ASH STREET" are one
street)."""
from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from functools import lru_cache
from typing import Iterable

# Typographic quotes survive NFKC; map them to ASCII so the end-stripping below catches them.
_ASCII_QUOTES = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "`": "'", "\u00b4": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u00ab": '"', "\u00bb": '"', "\u2033": '"',
})
_END_PUNCTUATION = " \t\r\n'\".,;:!?()[]{}<>*_-"

# USPS street-suffix abbreviations (Publication 28, Appendix C1) that occur in city street names, plus a few
# title words. The first word of a multi-word name is read differently for the two that are ambiguous there:
# "St Clair St" is Saint Clair Street, "Dr Martin Luther King Jr Way" is Doctor ...
STREET_ABBREVIATIONS = {
    "st": "street", "str": "street", "ave": "avenue", "av": "avenue", "avn": "avenue", "blvd": "boulevard",
    "rd": "road", "dr": "drive", "ln": "lane", "pl": "place", "sq": "square", "ct": "court", "crt": "court",
    "pkwy": "parkway", "pky": "parkway", "hwy": "highway", "ter": "terrace", "terr": "terrace", "cir": "circle",
    "aly": "alley", "expy": "expressway", "fwy": "freeway", "trl": "trail", "plz": "plaza", "cres": "crescent",
    "hts": "heights", "br": "bridge", "brg": "bridge", "tpke": "turnpike", "xing": "crossing", "mt": "mount",
    "ft": "fort", "jr": "junior", "hl": "hill", "pk": "park", "sta": "station", "cv": "cove", "row": "row",
}
FIRST_WORD_ABBREVIATIONS = {
    "st": "saint", "dr": "doctor",
    "n": "north", "s": "south", "e": "east", "w": "west", "ne": "northeast", "nw": "northwest",
    "se": "southeast", "sw": "southwest",
}
# Numbered streets are written both ways ("5th Ave", "Fifth Avenue"); spell the common ones out.
_ORDINAL_WORDS = (
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth fourteenth "
    "fifteenth sixteenth seventeenth eighteenth nineteenth twentieth"
).split()
ORDINALS = {f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}": word
            for n, word in enumerate(_ORDINAL_WORDS, start=1)}


@lru_cache(maxsize=None)
def normalize_name(text: str) -> str:
    """A place name in canonical form: NFKC, case-folded, quotes and punctuation at the ends and a leading
    "the" removed, whitespace collapsed, periods inside words dropped, street-type abbreviations and ordinals
    spelt out. ``normalize_name("'The Forbes Ave.'") == "forbes avenue"``.
    """
    text = unicodedata.normalize("NFKC", text).translate(_ASCII_QUOTES).casefold().strip(_END_PUNCTUATION)
    words = [w.replace(".", "") for w in text.split()]
    words = [w for w in words if w]
    if len(words) > 1 and words[0] == "the":
        words = words[1:]
    out = []
    for i, word in enumerate(words):
        if i == 0 and len(words) > 1 and word in FIRST_WORD_ABBREVIATIONS:
            out.append(FIRST_WORD_ABBREVIATIONS[word])
        else:
            out.append(ORDINALS.get(word) or STREET_ABBREVIATIONS.get(word, word))
    return " ".join(out)


def mentions_name(text: str, name: str) -> bool:
    """Whether free ``text`` (a reason, a sentence) names ``name``: some run of its words normalises to the same
    form as the name, so "near St Clair St." mentions "Saint Clair Street"."""
    target = normalize_name(name)
    size = len(target.split())
    words = re.sub(r"[^\w.'-]+", " ", unicodedata.normalize("NFKC", text)).split()
    return any(normalize_name(" ".join(words[i:i + size])) == target for i in range(len(words) - size + 1))


def spelling_collisions(names: Iterable[str]) -> dict[str, list[str]]:
    """Distinct spellings that normalise to one name: ``{normal form: [spellings]}``, only where there are several."""
    spellings: dict[str, set[str]] = defaultdict(set)
    for name in names:
        spellings[normalize_name(name)].add(name)
    return {form: sorted(group) for form, group in sorted(spellings.items()) if len(group) > 1}


def collision_report(rows) -> list[str]:
    """One line per name of the city table (``Location`` rows) written in several spellings, for ingest and validate."""
    lines = []
    for level in ("street", "district"):
        for form, spellings in spelling_collisions(getattr(r, level) for r in rows).items():
            lines.append(f"{level} spelled {len(spellings)} ways: {' / '.join(repr(s) for s in spellings)} (one name, "
                         f"{form!r}; questions use the most frequent spelling: unify them to choose)")
    return lines
