"""The street-level reward: one number in [0, 1] per answer, for reinforcement learning (GRPO calls ``reward`` per
completion) and for inspection of any predictions file (``eval/score.py --rewards``); docs/eval.md, "The reward".

Judgment and multiple choice, at any level: 1 when the reply is right (``scoring.extract_answer`` and
``is_correct``, exactly as the accuracy counts it), else 0: a yes/no or a letter has no nearer or farther.

Generation questions name places, and a wrong place can be more or less wrong. With D the image's true district, S
its true street and (lat, lon) its true location (its row of the city table):

- district question: 1 when the reply is D, else 0 (the map has no district shapes to measure to);
- street and address questions: ``DISTRICT_WEIGHT * district + STREET_WEIGHT * street``, where
  ``street`` is 1 for S, ``NEAR_WEIGHT * exp(-d / TAU_M)`` for another street of the city's gazetteer whose nearest
  point lies d metres from the true location (``street_error.StreetDistances``, the metres of
  ``eval/score.py --streets``), and 0 for a gazetteer street the map has no line for;
  ``district`` is 1 when the address names D as one of its parts, or when the street question's named street runs
  in D (a (street, D) pair of the gazetteer; S always does), else 0.

A name outside the city's gazetteer (``data/gazetteer.py``: the names of the city table) earns nothing, however
close a street of that name may lie: the reward must not teach names the city's answers never use. An address is
scored by its parts as ``is_correct`` reads it (runs of its comma-separated parts, in either order, extra parts
allowed): the best street run and a district run that does not overlap it; an address ``is_correct`` accepts is 1.

The weights and their reasons:

- ``DISTRICT_WEIGHT`` 0.4 < ``STREET_WEIGHT`` 0.6: the street is the finer and harder target (the paper's A_s and
  A_sd), so it carries more; the exact answer scores 1 and every other answer less.
- ``NEAR_WEIGHT`` 0.5 caps the credit of a wrong street at half a right one, so a wrong street, however near, is
  worth at most 0.6 * 0.5 = 0.3 < ``DISTRICT_WEIGHT``: the hierarchy is strict (a right district with a wrong street
  beats any wrong district), and distance orders answers only within a tier.
- ``TAU_M`` 100 m, about one city block (San Francisco's common block is about 75 x 125 m), and the middle of the
  metre thresholds ``eval/score.py`` reports (25-250 m): a street 25 m away keeps
  78 % of the near credit, one block (100 m) 37 %, 250 m 8 %, 500 m under 1 %, so naming a long street that
  crosses the district somewhere far off earns next to nothing.

Three modes of the one function (``REWARD_MODES``), so that GRPO recipes can measure what each part contributes
(``recipes/stage3/``, docs/eval.md, "The reward"): ``exact``, 1 for an answer the accuracy counts right, else 0;
``hierarchical``, the district and street tiers above with no near credit (a wrong street earns 0, whatever its
distance); ``hierarchical_distance``, all of the above (the default).

``grpo_reward`` is the same function in the shape TRL's ``GRPOTrainer`` calls a reward with.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from addressvlm.answering.scoring import extract_answer, is_correct
from addressvlm.answering.street_error import StreetDistances, true_location
from addressvlm.core.names import normalize_name
from addressvlm.core.records import Location, read_locations, read_numbered_questions
from addressvlm.data.gazetteer import build_gazetteer
from addressvlm.geo.streets import StreetMap, read_street_map

DISTRICT_WEIGHT = 0.4
STREET_WEIGHT = 0.6
NEAR_WEIGHT = 0.5
TAU_M = 100.0
REWARD_MODES = ("exact", "hierarchical", "hierarchical_distance")


@dataclass(frozen=True)
class RewardContext:
    """What the reward needs to know of a city, built once (``reward_context``) and shared by every completion."""

    places: Mapping[str, Location]  # image -> its row of the city table (the true location)
    distances: StreetDistances
    streets: frozenset[str]  # the gazetteer's streets, normalised
    street_districts: Mapping[str, frozenset[str]]  # normalised street -> the normalised districts it runs in


def check_reward_mode(mode: str) -> None:
    """A ``ValueError`` naming the modes unless ``mode`` is one of ``REWARD_MODES``."""
    if mode not in REWARD_MODES:
        raise ValueError(f"reward mode {mode!r}: choose one of {', '.join(REWARD_MODES)}")


def reward_context(locations: Iterable[Location], street_map: StreetMap) -> RewardContext:
    locations = list(locations)
    gazetteer = build_gazetteer(locations)
    districts: dict[str, set[str]] = {}
    for street, district in gazetteer.address_keys:
        districts.setdefault(street, set()).add(district)
    return RewardContext({row.image: row for row in locations}, StreetDistances(street_map),
                         frozenset(normalize_name(s) for s in gazetteer.streets),
                         {street: frozenset(names) for street, names in districts.items()})


def street_credit(name: str, question: Mapping, context: RewardContext, mode: str = "hierarchical_distance") -> float:
    """The street part of the reward for the normalised street ``name``: 1 for the true street, the distance-shaped
    near credit for another gazetteer street on the map (``hierarchical_distance`` mode only), 0 otherwise."""
    if name == normalize_name(question["street"]):
        return 1.0
    if mode != "hierarchical_distance" or name not in context.streets:
        return 0.0
    place = context.places[question["image"]]
    found = context.distances.nearest(name, place.lat, place.lon)
    return 0.0 if found is None else NEAR_WEIGHT * math.exp(-found[1] / TAU_M)


def _hierarchical(district_right: bool, street: float) -> float:
    return DISTRICT_WEIGHT * district_right + STREET_WEIGHT * street


def _address_reward(parts: tuple[str, ...], question: Mapping, context: RewardContext, mode: str) -> float:
    district = normalize_name(question["district"])
    runs = [(i, j, ", ".join(parts[i:j])) for i in range(len(parts)) for j in range(i + 1, len(parts) + 1)]
    district_runs = [(i, j) for i, j, text in runs if text == district]
    best = _hierarchical(bool(district_runs), 0.0)
    for start, end, text in runs:
        credit = street_credit(text, question, context, mode)
        if credit:
            apart = any(stop <= start or end <= first for first, stop in district_runs)
            best = max(best, _hierarchical(apart, credit))
    return best


def reward(question: Mapping, prediction: str | None, context: RewardContext,
           mode: str = "hierarchical_distance") -> float:
    """The reward of one reply (None: no reply, 0) to one test question in ``mode`` (``REWARD_MODES``; the module's
    docstring has the formula). A street or address question whose image is not in ``context`` is a KeyError: its
    true location is unknown."""
    check_reward_mode(mode)
    extracted = extract_answer(question, prediction)
    if is_correct(question, extracted):
        return 1.0
    if mode == "exact" or extracted is None or question["qtype"] != "generation" or question["level"] == "district":
        return 0.0
    if question["level"] == "address":
        return _address_reward(extracted, question, context, mode)
    in_district = normalize_name(question["district"]) in context.street_districts.get(extracted, ())
    return _hierarchical(in_district, street_credit(extracted, question, context, mode))


def grpo_reward(context: RewardContext, mode: str = "hierarchical_distance") -> Callable[..., list[float]]:
    """``reward`` in ``mode`` as TRL's ``GRPOTrainer`` calls a reward function: with the completions of a batch
    (conversational: each a list holding the assistant's message) and the dataset's columns, of which
    ``test_question`` holds each prompt's question record as JSON (``runs.grpo.grpo_dataset``)."""
    check_reward_mode(mode)

    def street_reward(completions: list, test_question: list[str], **_columns) -> list[float]:
        return [reward(json.loads(record), _completion_text(completion), context, mode)
                for completion, record in zip(completions, test_question, strict=True)]

    street_reward.__name__ = f"street_reward_{mode}"  # TRL logs each reward function's mean under its name
    return street_reward


def _completion_text(completion) -> str:
    """The text of a completion: a string, or a conversational completion's last message (its content a string or
    a list of text parts)."""
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


def reward_files(questions_path: str | os.PathLike, locations_path: str | os.PathLike,
                 streets_path: str | os.PathLike, predictions: Mapping[str, str | None],
                 mode: str = "hierarchical_distance") -> list[dict]:
    """``{"question_id", "reward"}`` of every question of the file in ``mode``, in its order (``predictions``:
    question id -> reply, a missing id scoring 0); a question whose image is not in the city table is a
    ``DataError`` naming the questions line."""
    check_reward_mode(mode)
    numbered = read_numbered_questions(questions_path)
    context = reward_context(read_locations(locations_path), read_street_map(streets_path))
    for line, q in numbered:
        true_location(context.places, q, questions_path, line, locations_path)
    return [{"question_id": q["question_id"], "reward": reward(q, predictions.get(q["question_id"]), context, mode)}
            for _, q in numbered]
