"""Stage-2 address VQA from the city table: splits, training conversations, single-turn test questions, and the
variants the ablations need (view/location subsampling, merged cities, general-data mixing).

Every random choice comes from a ``random.Random`` seeded with a string built from the seed and what is being
decided (the split, a location, an image), so the same input and seed give byte-identical files, and an image
keeps its questions when other images are added or dropped.
"""
from __future__ import annotations

import json
import math
import os
import random
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Sequence

from addressvlm.core import templates
from addressvlm.core.names import normalize_name
from addressvlm.core.records import (DEFAULT_LEVEL_NAMES, DataError, Location, location_centroids, read_level_names,
                                     read_llava_json, read_locations, read_questions, read_text,
                                     refuse_output_over_inputs, replaced_folder, write_atomic, write_level_names,
                                     write_llava_json, write_locations, write_questions)
from addressvlm.data.retrieval_hints import RetrievedHints

SPLITS = ("train", "val", "test")
# The files of a VQA folder (build_vqa, merge_cities): written together, replaced together.
VQA_FILES = ("train.json", "val.json", "test_questions.jsonl", "val_questions.jsonl", "stats.json")
DISTRACTOR_MODES = ("random", "nearest")
# "shuffled": every question type opens some conversations, as every test question is asked first in our test format
# (the paper does not give one). "generation-first": names are asked before a judgment or choice can give them away,
# so later turns of a level can be answered from the conversation instead of the image.
TURN_ORDERS = ("shuffled", "generation-first")
MAX_ROUNDS = 7
# The six level x type questions in a cycle where any three consecutive entries hold one question of each type and
# neighbours alternate levels: an image with r < 6 rounds takes r consecutive entries starting where the previous
# image stopped, so over the file the types stay 1:1:1 and the levels 1:1.
ROUND_CYCLE = (
    ("district", "generation"), ("street", "judgment"), ("district", "multiple_choice"),
    ("street", "generation"), ("district", "judgment"), ("street", "multiple_choice"),
)
IMAGE_TOKEN = "<image>\n"


# ------------------------------------------------------------------------------------------- splits
def parse_split(spec: str) -> tuple[float, float, float]:
    """ "7:2:1" -> (0.7, 0.2, 0.1)."""
    parts = spec.split(":")
    try:
        weights = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"split {spec!r} should be three numbers like 7:2:1") from None
    if len(weights) != 3 or any(not 0 <= w < math.inf for w in weights) or sum(weights) <= 0:
        raise ValueError(f"split {spec!r} should be three non-negative numbers, not all 0, like 7:2:1")
    total = sum(weights)
    return tuple(w / total for w in weights)  # type: ignore[return-value]


def split_option(text: str) -> str:
    """The data tools' ``--split`` as argparse's ``type``: ``text`` when ``parse_split`` reads it, else a usage
    error naming the option."""
    import argparse

    try:
        parse_split(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def assign_splits(rows: Sequence[Location], seed: int, ratios: tuple[float, float, float],
                  path: str | Path = "locations.csv") -> dict[str, str]:
    """location_id -> split. A location keeps the ``split`` its rows name (conflicting names are an error); the
    others are shuffled with the seed and cut by ``ratios``."""
    preset: dict[str, tuple[str, int]] = {}
    for line, row in enumerate(rows, start=2):
        if not row.split:
            continue
        first = preset.setdefault(row.location_id, (row.split, line))
        if first[0] != row.split:
            raise DataError(path, line, f"location {row.location_id!r} is in split {row.split!r} here but in "
                                        f"{first[0]!r} on line {first[1]}: a location cannot straddle splits")
    free = sorted({row.location_id for row in rows} - preset.keys())
    random.Random(f"split:{seed}").shuffle(free)
    n = len(free)
    cut_train = round(n * ratios[0])
    cut_val = round(n * (ratios[0] + ratios[1]))
    assignment = {loc: split for loc, (split, _) in preset.items()}
    for i, loc in enumerate(free):
        assignment[loc] = "train" if i < cut_train else "val" if i < cut_val else "test"
    return assignment


def pin_splits(locations_csv: str | Path, seed: int = 0, split: str = "7:2:1") -> dict[str, int]:
    """Write the location-disjoint split into ``locations.csv``'s ``split`` column (rows that name one keep it), so
    that stage-1 data and stage-2 VQA use the same training locations. Returns locations per split."""
    rows = read_locations(locations_csv)
    assignment = assign_splits(rows, seed, parse_split(split), locations_csv)
    write_locations(locations_csv, [replace(r, split=assignment[r.location_id]) for r in rows])
    return {name: sum(1 for v in assignment.values() if v == name) for name in SPLITS}


def fraction_option(text: str) -> float:
    """The density options' (``--view-fraction``, ``--location-fraction``) argparse ``type``: a decimal like 0.5 or
    a ratio like 13/24, the form in which Table C6 names Fig. 7's runs (View-13/24 keeps 13 of a location's 24
    views, where the text's 50 % keeps 12); else a usage error naming the option."""
    import argparse
    from fractions import Fraction

    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} should be a share like 0.5 or a ratio like 13/24") from None


def _keep_count(fraction: float, n: int) -> int:
    return max(1, math.ceil(fraction * n - 1e-9))


def subsample(rows: Sequence[Location], seed: int, view_fraction: float = 1.0,
              location_fraction: float = 1.0) -> list[Location]:
    """Thin a split for the density ablation (Fig. 7): keep a seeded ``location_fraction`` of its locations and a
    seeded ``view_fraction`` of each kept location's views (at least one of each). Nested: with the same seed the
    rows kept at 1/4 are among those kept at 1/2, because both keep a prefix of one seeded order."""
    for name, f in (("view_fraction", view_fraction), ("location_fraction", location_fraction)):
        if not 0.0 < f <= 1.0:
            raise ValueError(f"{name} must be in (0, 1], not {f}")
    by_location: dict[str, list[Location]] = defaultdict(list)
    for row in rows:
        by_location[row.location_id].append(row)
    locations = sorted(by_location)
    random.Random(f"locations:{seed}").shuffle(locations)
    kept: list[Location] = []
    for loc in locations[: _keep_count(location_fraction, len(locations))]:
        views = sorted(by_location[loc], key=lambda r: r.image)
        random.Random(f"views:{seed}:{loc}").shuffle(views)
        kept.extend(views[: _keep_count(view_fraction, len(views))])
    return sorted(kept, key=lambda r: r.image)


# ------------------------------------------------------------------------------------------- distractors
class Distractors:
    """Wrong answers of a level: other names of that level in the same city, never the image's own name nor one of
    its cross streets (an intersection photo shows both, so asking "No" about the cross street would be false).

    ``random`` draws them uniformly; ``nearest`` takes the three names whose nearest location is closest to the
    image's location, the harder choice (neighbouring streets look alike).
    """

    def __init__(self, rows: Sequence[Location], mode: str, path: str | Path = "locations.csv"):
        if mode not in DISTRACTOR_MODES:
            raise ValueError(f"distractors must be one of {DISTRACTOR_MODES}, not {mode!r}")
        self.mode = mode
        # One spelling per name ("Ash St" and "Ash Street" are one street, never two options): the most used.
        self.spelling: dict[str, dict[str, str]] = {}
        for level in templates.LEVELS:
            counts = Counter(getattr(r, level) for r in rows)
            chosen: dict[str, str] = {}
            for name, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
                chosen.setdefault(normalize_name(name), name)
            self.spelling[level] = {name: chosen[normalize_name(name)] for name in counts}
        self.names = {level: sorted(set(spelling.values())) for level, spelling in self.spelling.items()}
        for level, names in self.names.items():
            if len(names) < 4:
                raise DataError(path, None, f"the city has {len(names)} distinct {level} name(s); multiple-choice "
                                            "questions need the answer and three others")
        if mode == "nearest":
            self._build_nearest(rows)

    def _build_nearest(self, rows: Sequence[Location]) -> None:
        import numpy as np
        from scipy.spatial import cKDTree

        centroids = location_centroids(rows)
        self.location_index = {loc: i for i, loc in enumerate(sorted(centroids))}
        latlon = np.array([centroids[loc] for loc in sorted(centroids)])
        # Local equirectangular metres: at city scale the error is far below the gaps between streets.
        xy = np.column_stack([np.radians(latlon[:, 1]) * math.cos(math.radians(latlon[:, 0].mean())),
                              np.radians(latlon[:, 0])]) * 6_371_000.0
        self.order = {}
        for level, names in self.names.items():
            members: dict[str, set[int]] = defaultdict(set)
            for r in rows:
                members[self.spelling[level][getattr(r, level)]].add(self.location_index[r.location_id])
            distance = np.empty((len(xy), len(names)))
            for j, name in enumerate(names):
                distance[:, j] = cKDTree(xy[sorted(members[name])]).query(xy)[0]
            # Stable sort: ties (two streets through one point) fall back to name order, deterministically.
            self.order[level] = np.argsort(distance, axis=1, kind="stable").tolist()

    def pick(self, level: str, row: Location, rng: random.Random) -> list[str]:
        """Three wrong names of ``level`` for ``row``."""
        names = self.names[level]
        excluded = {normalize_name(getattr(row, level))}
        if level == "street" and row.cross_street:
            excluded.update(normalize_name(s) for s in row.cross_street.split("&") if s.strip())
        available = sum(normalize_name(name) not in excluded for name in names)
        if available < 3:
            raise ValueError(f"image {row.image!r}: only {available} {level} name(s) are neither its own nor a cross "
                             "street; multiple choice needs three")
        if self.mode == "nearest":
            picked = []
            for j in self.order[level][self.location_index[row.location_id]]:
                if normalize_name(names[j]) not in excluded:
                    picked.append(names[j])
                    if len(picked) == 3:
                        break
            rng.shuffle(picked)
            return picked
        picked = []
        while len(picked) < 3:
            name = names[rng.randrange(len(names))]
            if normalize_name(name) not in excluded and name not in picked:
                picked.append(name)
        return picked


# ------------------------------------------------------------------------------------------- questions
def _options(answer: str, wrong: list[str], rng: random.Random) -> tuple[dict[str, str], str]:
    """Four options with the answer at a uniformly drawn letter; returns (options, answer letter)."""
    slot = rng.randrange(4)
    names = list(wrong)
    names.insert(slot, answer)
    return dict(zip(templates.OPTION_LETTERS, names)), templates.OPTION_LETTERS[slot]


def level_qa(level: str, qtype: str, truth: str, wrong: list[str], rng: random.Random,
             judgment_answer: str | None = None, word: str | None = None) -> tuple[str, str, dict | None]:
    """(question, answer, options) for one level x type question whose true answer is ``truth``; ``wrong`` are
    the level's distractors, ``word`` what the city calls the level (the same random draws whatever the word)."""
    template_index = rng.randrange(len(templates.TEMPLATES[level]))
    if qtype == "generation":
        return templates.level_question(level, qtype, template_index, word=word), truth, None
    if qtype == "judgment":
        answer = judgment_answer or ("Yes" if rng.random() < 0.5 else "No")
        name = truth if answer == "Yes" else rng.choice(wrong)
        return templates.level_question(level, qtype, template_index, name=name, word=word), answer, None
    options, letter = _options(truth, wrong, rng)
    return templates.level_question(level, qtype, template_index, options=options, word=word), letter, options


def training_record(row: Location, record_id: str, rounds: int, cycle_start: int, distractors: Distractors,
                    seed: int, turn_order: str = "shuffled", level_names: dict[str, str] = DEFAULT_LEVEL_NAMES
                    ) -> tuple[dict, list[tuple[str, str]]]:
    """One multi-turn LLaVA record for ``row`` and the (level, qtype) of each of its turns.

    ``rounds`` <= 6 takes that many level x type questions from ``ROUND_CYCLE`` starting at ``cycle_start``;
    7 asks all six plus the address question. ``turn_order`` is one of ``TURN_ORDERS`` (checked by ``build_vqa``).
    ``level_names`` are the words the questions call the levels by.
    """
    rng = random.Random(f"{seed}:{row.image}")
    wrong = {level: distractors.pick(level, row, rng) for level in templates.LEVELS}
    chosen = [ROUND_CYCLE[(cycle_start + k) % len(ROUND_CYCLE)] for k in range(min(rounds, len(ROUND_CYCLE)))]
    generation, other = [], []
    for level, qtype in chosen:
        question, answer, _ = level_qa(level, qtype, getattr(row, level), wrong[level], rng,
                                       word=level_names[level])
        (generation if qtype == "generation" else other).append((level, qtype, question, answer))
    if rounds == MAX_ROUNDS:
        generation.append(("address", "generation", templates.address_question(level_names),
                           templates.address_answer(row.street, row.district)))
    if turn_order == "shuffled":
        turns = generation + other
        rng.shuffle(turns)
    else:
        rng.shuffle(generation)
        rng.shuffle(other)
        turns = generation + other
    conversations = []
    for i, (_, _, question, answer) in enumerate(turns):
        conversations.append({"from": "human", "value": (IMAGE_TOKEN if i == 0 else "") + question})
        conversations.append({"from": "gpt", "value": answer})
    record = {"id": record_id, "image": row.image, "conversations": conversations}
    return record, [(level, qtype) for level, qtype, _, _ in turns]


def split_turns(record: dict) -> list[dict]:
    """One single-turn record per round of ``record``, each asking about the image afresh."""
    turns = record["conversations"]
    out = []
    for k in range(0, len(turns), 2):
        question = turns[k]["value"].removeprefix(IMAGE_TOKEN)
        out.append({"id": f"{record['id']}/{k // 2}", "image": record["image"], "conversations": [
            {"from": "human", "value": IMAGE_TOKEN + question}, dict(turns[k + 1])]})
    return out


def single_turn_questions(row: Location, question_prefix: str, distractors: Distractors, seed: int,
                          level_names: dict[str, str] = DEFAULT_LEVEL_NAMES) -> list[dict]:
    """The nine single-turn questions of a test or validation image: per level generation, judgment Yes, judgment No and
    multiple choice, then the address question. The text has no "<image>" token (inference adds it). A level the
    city calls otherwise than its key (``level_names``) is recorded as the key with the word as ``level_name``, so
    metric names stay and reports can say the word."""
    rng = random.Random(f"{seed}:{row.image}")
    out = []

    def add(suffix: str, level: str, qtype: str, question: str, answer: str, options: dict | None) -> None:
        q = {"question_id": f"{question_prefix}/{suffix}", "image": row.image, "level": level, "qtype": qtype,
             "question": question, "answer": answer, "street": row.street, "district": row.district}
        if options is not None:
            q["options"] = options
        if level in level_names and level_names[level] != level:
            q["level_name"] = level_names[level]
        out.append(q)

    for level in templates.LEVELS:
        wrong = distractors.pick(level, row, rng)
        word = level_names[level]
        add(f"{level}_generation", level, "generation",
            *level_qa(level, "generation", getattr(row, level), wrong, rng, word=word))
        for answer in ("Yes", "No"):
            add(f"{level}_judgment_{answer.lower()}", level, "judgment",
                *level_qa(level, "judgment", getattr(row, level), wrong, rng, judgment_answer=answer, word=word))
        add(f"{level}_multiple_choice", level, "multiple_choice",
            *level_qa(level, "multiple_choice", getattr(row, level), wrong, rng, word=word))
    add("address_generation", "address", "generation", templates.address_question(level_names),
        templates.address_answer(row.street, row.district), None)
    return out


def view_names(rows: Sequence[Location]) -> dict[str, str]:
    """image -> its view name inside its location: the file stem, or, where two views of one location share a
    stem (``a/x.jpg``, ``b/x.jpg``; ``x.jpg``, ``x.png``), the whole path with '/' replaced by '__' (ids split on
    '/'), unique because images are."""
    stems: dict[tuple[str, str], int] = Counter((r.location_id, PurePosixPath(r.image).stem) for r in rows)
    names = {}
    for r in rows:
        stem = PurePosixPath(r.image).stem
        names[r.image] = stem if stems[(r.location_id, stem)] == 1 else r.image.replace("/", "__")
    return names


# ------------------------------------------------------------------------------------------- build
def _split_stats(rows: Sequence[Location], level_types: Counter) -> dict:
    questions = sum(level_types.values())
    by_level, by_type = Counter(), Counter()
    for (level, qtype), n in level_types.items():
        by_level[level] += n
        by_type[qtype] += n
    return {
        "locations": len({r.location_id for r in rows}),
        "districts": len({r.district for r in rows}),
        "streets": len({r.street for r in rows}),
        "images": len(rows),
        "questions": questions,
        "questions_per_image": round(questions / len(rows), 4) if rows else 0.0,
        "questions_by_level": {level: by_level[level] for level in (*templates.LEVELS, "address")},
        "questions_by_type": {qtype: by_type[qtype] for qtype in templates.QTYPES},
        "questions_by_level_type": {f"{lv}/{qt}": n for (lv, qt), n in sorted(level_types.items())},
    }


def build_vqa(locations_csv: str | Path, out_dir: str | Path, seed: int = 0, split: str = "7:2:1",
              rounds: int = MAX_ROUNDS, distractors: str = "nearest", view_fraction: float = 1.0,
              location_fraction: float = 1.0, city: str | None = None, progress: bool = False,
              single_turn: bool = False, turn_order: str = "shuffled", level_names: dict[str, str] | None = None,
              hints: Sequence[str | Path] | None = None, hint_k: int = 5) -> dict:
    """Write ``train.json``, ``val.json``, ``test_questions.jsonl``, ``val_questions.jsonl`` and ``stats.json`` into
    ``out_dir``: the validation locations as conversations and, for the metrics logged while training
    (``hooks.AddressMetricsHook``), as single-turn questions in the test questions' format.

    Image paths stay relative to the city root (the folder of ``locations_csv``); ids are
    ``<city>/<location_id>/<view>`` (records) and ``<city>/<location_id>/<view>/<level>_<qtype>[_yes|_no]``
    (test questions), ``city`` defaulting to the city root's folder name. The fractions thin the training split
    only, so ablation runs are scored on the same validation and test questions. ``single_turn`` writes each round
    as a record of its own (ids ``.../<round>``), in the test questions' format: small models trained from scratch
    do not carry what they learn in later turns over to a question asked first. ``turn_order`` orders the turns of
    a conversation (``TURN_ORDERS``). ``level_names`` are the words the questions call the district and street
    levels by (``templates.parse_level_names``): given, they are recorded in the city root's ``levels.json`` for
    the tools that read the city later (serving; building again); not given, that file's words, or the paper's.
    ``hints`` (eval/retrieve.py ``retrieved.jsonl`` files covering every train, val and test image) append the
    street and district names of each image's ``hint_k`` best retrieved tiles to each of its questions
    (``addressvlm.data.retrieval_hints``: the training hints thinned to the validation images' candidate recall);
    stats.json records the files, k and that recall. Returns the statistics.
    """
    locations_csv, out_dir = Path(locations_csv), Path(out_dir)
    refuse_output_over_inputs(out_dir, [("--locations", locations_csv), *(("--hints", path) for path in hints or ())],
                              "--out")
    if not 1 <= rounds <= MAX_ROUNDS:
        raise ValueError(f"rounds must be 1-{MAX_ROUNDS}, not {rounds}")
    if turn_order not in TURN_ORDERS:
        raise ValueError(f"turn_order must be one of {TURN_ORDERS}, not {turn_order!r}")
    ratios = parse_split(split)
    rows = read_locations(locations_csv)
    for line, row in enumerate(rows, start=2):
        if "/" in row.location_id:
            raise DataError(locations_csv, line, f"location_id {row.location_id!r} contains '/', which separates the "
                                                 "fields of question ids")
    city = city or locations_csv.resolve().parent.name
    chosen_level_names = level_names
    level_names = level_names or read_level_names(locations_csv.parent)
    index = Distractors(rows, distractors, locations_csv)
    views = view_names(rows)
    assignment = assign_splits(rows, seed, ratios, locations_csv)
    by_split: dict[str, list[Location]] = {s: [] for s in SPLITS}
    for row in sorted(rows, key=lambda r: r.image):
        by_split[assignment[row.location_id]].append(row)
    by_split["train"] = subsample(by_split["train"], seed, view_fraction, location_fraction)

    stats = {"city": city, "seed": seed, "split": split, "rounds": rounds, "single_turn": single_turn,
             "turn_order": turn_order,
             "distractors": distractors,
             "view_fraction": view_fraction, "location_fraction": location_fraction, "splits": {}}
    if level_names != DEFAULT_LEVEL_NAMES:  # the paper's words add nothing, and earlier stats stay byte-identical
        stats["level_names"] = dict(level_names)
    hinter = None
    if hints:
        lines = {row.image: line for line, row in enumerate(rows, start=2)}
        hinter = RetrievedHints(hints, hint_k, by_split, seed, locations_csv, lines, level_names)
        stats["hints"] = {"retrieved": [str(path) for path in hints], "k": hint_k,
                          "candidate_recall": hinter.stats}
    with replaced_folder(out_dir, VQA_FILES) as staging:
        for name in ("train", "val"):
            records, counts = [], Counter()
            for i, row in enumerate(_progress(by_split[name], f"{city} {name}", progress)):
                try:
                    record, kinds = training_record(row, f"{city}/{row.location_id}/{views[row.image]}", rounds,
                                                    i * rounds, index, seed, turn_order, level_names)
                except ValueError as exc:
                    raise DataError(locations_csv, None, str(exc)) from None
                if hinter:
                    record = hinter.record(record)
                records.extend(split_turns(record) if single_turn else [record])
                counts.update(kinds)
            write_llava_json(staging / f"{name}.json", records)
            stats["splits"][name] = _split_stats(by_split[name], counts)
        questions = {}
        for name in ("test", "val"):
            questions[name], counts = [], Counter()
            for row in _progress(by_split[name], f"{city} {name} questions", progress):
                try:
                    qs = single_turn_questions(row, f"{city}/{row.location_id}/{views[row.image]}", index, seed,
                                               level_names)
                except ValueError as exc:
                    raise DataError(locations_csv, None, str(exc)) from None
                if hinter:
                    qs = [dict(q, question=hinter.question(q["image"], q["question"])) for q in qs]
                questions[name].extend(qs)
                counts.update((q["level"], q["qtype"]) for q in qs)
            write_questions(staging / f"{name}_questions.jsonl", questions[name])
            if name == "test":
                stats["splits"]["test"] = _split_stats(by_split["test"], counts)
        stats["splits"]["test"]["judgment_answers"] = dict(sorted(Counter(
            q["answer"] for q in questions["test"] if q["qtype"] == "judgment").items()))
        write_atomic(staging / "stats.json", json.dumps(stats, indent=2, sort_keys=True) + "\n")
    if chosen_level_names is not None:
        write_level_names(locations_csv.parent, chosen_level_names)
    return stats


def train_split_questions(locations_csv: str | Path, vqa_dir: str | Path) -> list[dict]:
    """Single-turn questions in the test questions' format (nine per image) for the images of the training split of
    ``vqa_dir``: the prompts of stage 3's GRPO (tools/train_stage3.py). The split, seed, distractors and level words
    are those ``build_vqa`` recorded in the folder's stats.json, so the images are the ones stage 2 trained on and
    never a validation or test image."""
    locations_csv, stats_path = Path(locations_csv), Path(vqa_dir) / "stats.json"
    stats = json.loads(read_text(stats_path))
    missing = [key for key in ("city", "seed", "split", "distractors") if key not in stats]
    if missing:
        raise DataError(stats_path, None, f"no {', '.join(missing)}: not a folder build_vqa wrote for one city "
                                          "(datasets_prep/build_vqa.py)")
    rows = read_locations(locations_csv)
    assignment = assign_splits(rows, stats["seed"], parse_split(stats["split"]), locations_csv)
    level_names = stats.get("level_names") or read_level_names(locations_csv.parent)
    index = Distractors(rows, stats["distractors"], locations_csv)
    views = view_names(rows)
    questions = []
    for row in sorted(rows, key=lambda r: r.image):
        if assignment[row.location_id] == "train":
            questions += single_turn_questions(row, f"{stats['city']}/{row.location_id}/{views[row.image]}", index,
                                               stats["seed"], level_names)
    return questions


def _progress(items, desc: str, enabled: bool):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="img", mininterval=1.0)


# ------------------------------------------------------------------------------------------- variants
def _prefixed(record: dict, prefix: str) -> dict:
    """The record with ``prefix`` before its image path (each of them, for a record of several images)."""
    if prefix and "image" in record:
        image = record["image"]
        joined = [f"{prefix.rstrip('/')}/{path}" for path in (image if isinstance(image, list) else [image])]
        record = dict(record, image=joined if isinstance(image, list) else joined[0])
    return record


def _refuse_duplicates(what: str, records: list[dict], key: str) -> None:
    duplicates = [k for k, n in Counter(r[key] for r in records).items() if n > 1]
    if duplicates:
        raise ValueError(f"{what}: {len(duplicates)} id(s) appear in two cities, e.g. {duplicates[0]!r}; "
                         "build each city with a distinct city name")


def merge_cities(cities: Sequence[tuple[str, str | Path]], out_dir: str | Path) -> dict:
    """Merge the VQA folders of several cities (Table 5's Pitts + SF training) into ``out_dir``.

    ``cities`` is ``[(prefix, vqa_dir), ...]``: ``prefix`` is the city root's path relative to the image folder
    the merged files are used with (with ``data/pitts`` and ``data/sf`` and the image folder ``data/``, the
    prefixes are ``pitts`` and ``sf``). Images get that prefix; ids already start with their city. Writes
    train.json, val.json, test_questions.jsonl, val_questions.jsonl and stats.json (counts per city).
    """
    if len(cities) < 2:
        raise ValueError("merging needs at least two cities")
    out_dir = Path(out_dir)
    refuse_output_over_inputs(out_dir, [(f"VQA folder of {prefix}", vqa_dir) for prefix, vqa_dir in cities], "--out")
    stats: dict = {"cities": {}}
    merged: dict[str, list[dict]] = {"train": [], "val": [], "test": [], "val_questions": []}
    for prefix, vqa_dir in cities:
        vqa_dir = Path(vqa_dir)
        counts = {}
        for name in ("train", "val"):
            records = [_prefixed(r, prefix) for r in read_llava_json(vqa_dir / f"{name}.json")]
            merged[name].extend(records)
            counts[name] = len(records)
        for name, file in (("test", "test_questions"), ("val_questions", "val_questions")):
            questions = [_prefixed(q, prefix) for q in read_questions(vqa_dir / f"{file}.jsonl")]
            merged[name].extend(questions)
            counts[file] = len(questions)
        stats["cities"][prefix] = counts
    for name, key in (("train", "id"), ("val", "id"), ("test", "question_id"), ("val_questions", "question_id")):
        _refuse_duplicates(name, merged[name], key)
    with replaced_folder(out_dir, VQA_FILES) as staging:
        write_llava_json(staging / "train.json", merged["train"])
        write_llava_json(staging / "val.json", merged["val"])
        write_questions(staging / "test_questions.jsonl", merged["test"])
        write_questions(staging / "val_questions.jsonl", merged["val_questions"])
        write_atomic(staging / "stats.json", json.dumps(stats, indent=2, sort_keys=True) + "\n")
    return stats


def merge_city_roots(cities: Sequence[tuple[str, str | Path]], out_root: str | Path,
                     stage1_json: str = "stage1/train.json") -> dict:
    """Table 5's training data as one more city root, ``out_root``, that recipes name like any city's.

    ``cities`` is ``[(name, city_root), ...]``. ``out_root/<name>`` becomes a relative link to each city root, and
    every image path gets its ``<name>/`` prefix, so all images resolve under ``out_root``. ``vqa/`` merges the
    cities' VQA folders (``merge_cities``); ``stage1_json`` (a path inside each city root) merges their stage-1
    data when every city has it (when only some do, it is an error naming the missing file). Ids must differ across
    cities (they start with the city). A rerun with the same inputs rewrites the same bytes. Returns
    ``merge_cities``' stats plus ``"stage1"``: records per city, or None when no city has stage-1 data.
    """
    out_root = Path(out_root)
    if len(cities) < 2:
        raise ValueError("merging needs at least two cities")
    names = [name for name, _ in cities]
    taken = {".", "..", "vqa", PurePosixPath(stage1_json).parts[0]}
    for name in names:
        if not name or "/" in name or "\\" in name or name in taken:
            raise ValueError(f"city name {name!r} must be one folder name, none of {sorted(taken)}")
    if len(set(names)) < len(names):
        raise ValueError(f"city names {names} repeat one another")
    roots = [(name, Path(root)) for name, root in cities]
    for name, root in roots:
        if (root / "train.json").is_file() and not (root / "vqa").is_dir():
            raise DataError(root, None, f"is a VQA folder: give the city root ({root.parent}) for {name}")
        if not (root / "vqa").is_dir():
            raise DataError(root / "vqa", None, f"VQA folder of {name} not found: run build_vqa first")
    refuse_output_over_inputs(out_root, [(f"--city {name}", root) for name, root in roots], "--out")
    stage1 = [(name, root / stage1_json) for name, root in roots]
    present = [path.is_file() for _, path in stage1]
    if any(present) and not all(present):
        absent = next(path for (_, path), here in zip(stage1, present) if not here)
        raise DataError(absent, None, "stage-1 data not found, while other cities have theirs: build it first "
                                      "(docs/stage1.md)")
    stage1_records, stage1_counts = [], {}
    if all(present):
        for name, path in stage1:
            records = [_prefixed(r, name) for r in read_llava_json(path)]
            stage1_records.extend(records)
            stage1_counts[name] = len(records)
        _refuse_duplicates(f"stage-1 data {stage1_json}", stage1_records, "id")
    out_root.mkdir(parents=True, exist_ok=True)
    links = {out_root / name: os.path.relpath(root.resolve(), out_root.resolve()) for name, root in roots}
    for link, target in links.items():
        if (link.exists() or link.is_symlink()) and not (link.is_symlink() and os.readlink(link) == target):
            raise DataError(link, None, f"exists and is not a link to {target}: remove it or merge elsewhere")
    for link, target in links.items():
        if not link.is_symlink():
            link.symlink_to(target, target_is_directory=True)
    stats = merge_cities([(name, root / "vqa") for name, root in roots], out_root / "vqa")
    if stage1_records:
        write_llava_json(out_root / stage1_json, stage1_records)
    stats["stage1"] = stage1_counts or None
    return stats


def mix_general(address_json: str | Path, general_json: str | Path, out_json: str | Path,
                general_per_address: float, seed: int = 0, address_prefix: str = "", general_prefix: str = "") -> dict:
    """Mix a general LLaVA JSON (llava_v1_5_mix665k) into address training data, ``general_per_address`` general
    records for each address record, drawing the general records without replacement, seeded.

    Table 6's "5:1" and "1:1" are general:address, i.e. 5 and 1 here: its text reads the 1:1 mix as the one with
    more address data, and that mix scores higher. Pitts-VQA's 177,840 training images (Table B2) need 889,200
    general records at 5, more than llava_v1_5_mix665k's 665K; a mix that needs more records than the general file
    has is refused (never repeated or capped).

    The two sets usually have different image folders: the prefixes make both relative to one folder (e.g.
    ``pitts`` and ``llava``, with their common parent as the recipe's image folder). Text-only general records
    are kept as they are.
    """
    if not 0 <= general_per_address < float("inf"):
        raise ValueError(f"general records per address record must be a number >= 0, not {general_per_address}")
    refuse_output_over_inputs(out_json, [("--address", address_json), ("--general", general_json)], "--out")
    address = [_prefixed(r, address_prefix) for r in read_llava_json(address_json)]
    general = read_llava_json(general_json)
    wanted = round(len(address) * general_per_address)
    if wanted > len(general):
        raise ValueError(f"{general_per_address:g} general records per address record needs {wanted} general records "
                         f"for the {len(address)} address records, but {general_json} has {len(general)} (at most "
                         f"{len(general) / len(address):.2f} per address record without repeating one)")
    rng = random.Random(f"mix:{seed}")
    chosen = [_prefixed(general[i], general_prefix) for i in sorted(rng.sample(range(len(general)), wanted))]
    mixed = address + chosen
    rng.shuffle(mixed)
    write_llava_json(out_json, mixed)
    return {"address_records": len(address), "general_records": len(chosen),
            "general_per_address": general_per_address, "seed": seed}
