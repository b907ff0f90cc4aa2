"""Retrieved names as a hint in the stage-2 prompt (docs/retrieval.md, section 6): the street and district names of
a street view's k best retrieved satellite tiles, said after every question about it.

The hint is one sentence appended to the question, after the Table B4/B5 text, which stays as it was:
"Candidate street names: A, B, C. Candidate district names: X, Y." -- each level's distinct names in the order of
the tiles that carry them, best first (spelling variants of one name count once, the first spelling kept), named by
the city's words for its levels.

Training hints are made as uninformative as held-out ones. The retriever trained on the training locations, so it
finds their true tile far more often than a held-out one's, and a model trained on those hints would learn to trust
them more than test hints deserve. Per level, the share of training images whose true name is among their
candidates is thinned to the validation images' share (locations the retriever never saw; the test split is
never looked at): for a seeded choice of the training images whose true name is there, the hint is made from the
retrieved tiles without those that carry it -- as if every tile of the true name had ranked below k.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from addressvlm.core.names import normalize_name
from addressvlm.core.records import DEFAULT_LEVEL_NAMES, DataError, Location, read_retrieved

# Hint levels in the order the sentence says them.
HINT_LEVELS = ("street", "district")
# The split whose candidate recall the training hints are thinned to: held out from the retriever, not the test.
RECALL_REFERENCE_SPLIT = "val"


def hint_names(top: Sequence[dict], level: str, k: int, excluded: str = "") -> list[str]:
    """The distinct ``level`` names of the first ``k`` tiles of ``top`` (best first) that do not carry the name
    ``excluded`` (compared normalised), in the order of the first tile carrying each."""
    names, seen = [], set()
    kept = [tile for tile in top if not excluded or normalize_name(tile[level]) != normalize_name(excluded)]
    for tile in kept[:k]:
        key = normalize_name(tile[level])
        if key not in seen:
            seen.add(key)
            names.append(tile[level])
    return names


def hint_sentence(names: Mapping[str, Sequence[str]], level_names: Mapping[str, str] = DEFAULT_LEVEL_NAMES) -> str:
    """ "Candidate street names: A, B. Candidate district names: X." for ``names`` {level: names}."""
    return " ".join(f"Candidate {level_names[level]} names: {', '.join(names[level])}." for level in HINT_LEVELS)


def read_street_view_retrievals(paths: Sequence[str | Path]) -> dict[str, tuple[list[dict], Path]]:
    """image -> (its retrieved tiles best first, the file) over eval/retrieve.py's ``retrieved.jsonl`` files; only
    street-view queries count. An image retrieved in two files is an error: which one to trust is not ours to pick."""
    out: dict[str, tuple[list[dict], Path]] = {}
    for path in map(Path, paths):
        images = 0
        for record in read_retrieved(path):
            if record["kind"] != "image":
                continue
            images += 1
            if record["image"] in out:
                raise DataError(path, None, f"image {record['image']!r} (query {record['query_id']!r}) is "
                                            f"retrieved here and in {out[record['image']][1]}: give each split once")
            out[record["image"]] = (record["top"], path)
        if not images:
            raise DataError(path, None, "holds no street-view query: retrieve with --kinds image")
    return out


def name_recall(rows: Iterable[Location], names: Mapping[str, Mapping[str, Sequence[str]]], level: str) -> float:
    """Percent of ``rows`` whose true ``level`` name is among its candidates ``names[image][level]``."""
    rows = list(rows)
    hits = sum(normalize_name(getattr(r, level)) in {normalize_name(n) for n in names[r.image][level]} for r in rows)
    return round(100.0 * hits / len(rows), 2) if rows else 0.0


class RetrievedHints:
    """The hint sentence of every image of a build, from ``retrieved.jsonl`` files covering all of them.

    ``rows_by_split`` are the rows that get questions (``train``, ``val``, ``test``); ``lines`` maps each image to
    its line in ``locations_csv``, so an image without a retrieval is refused naming it. ``sentence[image]`` is the
    hint; ``stats`` the candidate recall per split and level (``retrieved``: of the k best tiles; ``hinted``: of the
    hint, after thinning the training split's)."""

    def __init__(self, retrieved: Sequence[str | Path], k: int, rows_by_split: Mapping[str, Sequence[Location]],
                 seed: int, locations_csv: str | Path, lines: Mapping[str, int],
                 level_names: Mapping[str, str] = DEFAULT_LEVEL_NAMES):
        if k < 1:
            raise ValueError(f"hint k must be at least 1, not {k}")
        if not rows_by_split.get(RECALL_REFERENCE_SPLIT):
            raise ValueError(f"hints need {RECALL_REFERENCE_SPLIT} images: their candidates' recall is what the "
                             "training hints are thinned to")
        retrievals = read_street_view_retrievals(retrieved)
        names: dict[str, dict[str, list[str]]] = {}
        for split, rows in rows_by_split.items():
            for row in rows:
                if row.image not in retrievals:
                    raise DataError(locations_csv, lines.get(row.image),
                                    f"{split} image {row.image!r} has no street-view retrieval in "
                                    f"{', '.join(map(str, retrieved))}: run eval/retrieve.py --split {split} "
                                    "--kinds image for it")
                names[row.image] = {level: hint_names(retrievals[row.image][0], level, k) for level in HINT_LEVELS}
        self.stats = {split: {level: {"retrieved": name_recall(rows, names, level)} for level in HINT_LEVELS}
                      for split, rows in rows_by_split.items()}
        train = {r.image: r for r in rows_by_split.get("train", ())}
        for level in HINT_LEVELS:
            target = self.stats[RECALL_REFERENCE_SPLIT][level]["retrieved"]
            hits = sorted(image for image, r in train.items() if normalize_name(getattr(r, level)) in
                          {normalize_name(n) for n in names[image][level]})
            surplus = len(hits) - round(target / 100.0 * len(train))
            for image in random.Random(f"hints:{seed}:{level}").sample(hits, max(0, surplus)):
                names[image][level] = hint_names(retrievals[image][0], level, k,
                                                 excluded=getattr(train[image], level))
        for split, rows in rows_by_split.items():
            for level in HINT_LEVELS:
                self.stats[split][level]["hinted"] = name_recall(rows, names, level)
        self.sentence = {image: hint_sentence(by_level, level_names) for image, by_level in names.items()}

    def question(self, image: str, text: str) -> str:
        """The question text followed by the image's hint."""
        return f"{text} {self.sentence[image]}"

    def record(self, record: dict) -> dict:
        """A LLaVA conversation record with the hint after each of its questions (human turns)."""
        turns = [dict(turn, value=self.question(record["image"], turn["value"])) if turn["from"] == "human"
                 else turn for turn in record["conversations"]]
        return dict(record, conversations=turns)
