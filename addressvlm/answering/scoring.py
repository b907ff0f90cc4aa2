"""Scoring of test predictions: the paper's Table 2 metrics (docs/design.md section 3, docs/metrics.md).

Two steps, kept apart as in lm-evaluation-harness: *extraction* turns raw model text into an answer of the
question's kind (one function per question type: ``extract_generation``, ``extract_judgment``,
``extract_choice``, ``extract_address``), then the *metric* compares it with the ground truth and averages.

Every question scores 0 or 1. The ten columns are accuracies per level and type, micro-averages per level
(``A_d``, ``A_s``: judgment weighs twice because the test set asks it twice per image), the overall micro-average
``A`` over district and street questions, and ``A_sd`` over the ``address`` questions.
"""
from __future__ import annotations

import gc
import json
import os
import re
import unicodedata
from contextlib import contextmanager
from functools import lru_cache
from typing import Iterable, Mapping, NamedTuple

from addressvlm.core.names import normalize_name
from addressvlm.core.records import (
    DEFAULT_LEVEL_NAMES, DataError, question_level_names, read_numbered_questions, read_predictions, read_ranked,
    write_atomic,
)

# ------------------------------------------------------------------------------------------ extraction
def extract_generation(prediction: str) -> str:
    """The whole answer, normalised: a generation question asks for a single word or phrase."""
    return normalize_name(prediction)


_YES_NO = re.compile(r"\b(yes|no)\b")


@lru_cache(maxsize=4096)  # replies repeat ("Yes", "No."): most are answered from the cache
def extract_judgment(prediction: str) -> str | None:
    """``"Yes"``/``"No"`` from the first yes/no word (``"No, it is not"`` -> No); None when there is none."""
    found = _YES_NO.search(unicodedata.normalize("NFKC", prediction).casefold())
    return found.group(1).capitalize() if found else None


@lru_cache(maxsize=64)
def _letter_patterns(letters: str) -> tuple[re.Pattern, ...]:
    """The accepted ways to write an option letter, for one set of letters (usually ABCD).

    A lone lower-case "a" is usually an article, so forms embedded in a sentence need the upper-case letter
    unless brackets or the word "option" make the intent plain.
    """
    cls = f"[{letters}]"
    return (
        re.compile(rf"\(?({cls})\)?[.:)]?", re.IGNORECASE),                    # whole answer: B, (B), B., b
        re.compile(rf"\(({cls})\)", re.IGNORECASE),                             # (B) anywhere
        re.compile(rf"\boption\s*\(?({cls})\)?(?![A-Za-z])", re.IGNORECASE),    # Option B, option (b)
        re.compile(rf"^({cls})[.:)]\s"),                                        # B. Forbes Avenue
        re.compile(rf"(?i:\banswer)(?:\s+is)?\s*[:\-]?\s*({cls})(?![A-Za-z])"),  # The answer is B
    )


def _contains_words(haystack: str, needle: str) -> bool:
    return bool(needle) and f" {needle} " in f" {haystack} "


_INNER_PUNCTUATION = re.compile(r"[,;:!?()\[\]{}\"]")


def extract_choice(prediction: str, options: Mapping[str, str]) -> str | None:
    """The option letter a multiple-choice reply names, or None when it names none or several.

    Letters first (``B``, ``(B)``, ``B.``, ``Option B``, ``The answer is B``); without any, the reply may name
    exactly one option by its text (equal after normalisation, or contained in the reply as whole words; an
    option contained only inside a longer named option does not count).
    """
    text = unicodedata.normalize("NFKC", prediction).strip()
    whole, *embedded = _letter_patterns("".join(sorted(options)))
    alone = whole.fullmatch(text)
    if alone:
        return alone.group(1).upper()
    found = {letter.upper() for pattern in embedded for letter in pattern.findall(text)}
    if found:
        return found.pop() if len(found) == 1 else None

    reply = normalize_name(_INNER_PUNCTUATION.sub(" ", prediction))
    names = {letter: normalize_name(name) for letter, name in options.items()}
    equal = [letter for letter, name in names.items() if name == reply]
    if equal:
        return equal[0] if len(equal) == 1 else None
    named = [letter for letter, name in names.items() if _contains_words(reply, name)]
    outermost = [a for a in named if not any(b != a and _contains_words(names[b], names[a]) for b in named)]
    return outermost[0] if len(outermost) == 1 else None


_ADDRESS_SEPARATORS = re.compile(r"[,;\n]")


def extract_address(prediction: str) -> tuple[str, ...]:
    """The normalised parts of a "STREET, DISTRICT" reply, split at commas, semicolons and line breaks."""
    parts = (normalize_name(p) for p in _ADDRESS_SEPARATORS.split(prediction))
    return tuple(p for p in parts if p)


# ------------------------------------------------------------------------------------------ metric
def is_correct(question: Mapping, extracted) -> bool:
    """Whether an extracted answer (from the extractor ``extract_answer`` picks) matches the question's truth.

    An address question is right when one run of consecutive parts of the reply is the street and another,
    not overlapping it, the district, in either order; extra parts (a city, a country) are allowed. Runs rather than
    single parts, so a name that holds the separator itself ("Main Street, North") is still found whole.
    """
    if extracted is None:
        return False
    if question["level"] == "address" and question["qtype"] == "generation":
        street, district = normalize_name(question["street"]), normalize_name(question["district"])
        runs = [(i, j, ", ".join(extracted[i:j])) for i in range(len(extracted))
                for j in range(i + 1, len(extracted) + 1)]
        return any(text == street and any(other == district and (end <= k or stop <= start)
                                          for k, stop, other in runs)
                   for start, end, text in runs)
    if question["qtype"] == "generation":
        return extracted == normalize_name(question["answer"])
    return extracted == question["answer"]


def extract_answer(question: Mapping, prediction: str | None):
    """Dispatch to the extractor of the question's kind; a missing prediction extracts to None."""
    if prediction is None:
        return None
    qtype = question["qtype"]
    if qtype == "generation":
        return extract_address(prediction) if question["level"] == "address" else extract_generation(prediction)
    if qtype == "judgment":
        return extract_judgment(prediction)
    return extract_choice(prediction, question["options"])


class ScoredQuestion(NamedTuple):
    question: dict
    prediction: str | None  # None: no prediction (counted wrong under allow_missing)
    extracted: object
    correct: bool

    def as_record(self) -> dict:
        q = self.question
        extracted = list(self.extracted) if isinstance(self.extracted, tuple) else self.extracted
        return {"question_id": q["question_id"], "level": q["level"], "qtype": q["qtype"], "answer": q["answer"],
                "prediction": self.prediction, "extracted": extracted, "correct": int(self.correct)}


def score_each(questions: Iterable[dict], predictions: Mapping[str, str]) -> list[ScoredQuestion]:
    """Per-sample scores; a question without a prediction scores 0."""
    out = []
    for q in questions:
        prediction = predictions.get(q["question_id"])
        extracted = extract_answer(q, prediction)
        out.append(ScoredQuestion(q, prediction, extracted, is_correct(q, extracted)))
    return out


# Table 2's columns: name, printed header, and the (level, qtype) pairs it averages over.
_LEVEL_TYPES = {
    "A_d_G": [("district", "generation")], "A_d_J": [("district", "judgment")],
    "A_d_M": [("district", "multiple_choice")],
    "A_s_G": [("street", "generation")], "A_s_J": [("street", "judgment")],
    "A_s_M": [("street", "multiple_choice")],
}
_LEVEL_TYPES["A_d"] = _LEVEL_TYPES["A_d_G"] + _LEVEL_TYPES["A_d_J"] + _LEVEL_TYPES["A_d_M"]
_LEVEL_TYPES["A_s"] = _LEVEL_TYPES["A_s_G"] + _LEVEL_TYPES["A_s_J"] + _LEVEL_TYPES["A_s_M"]
_LEVEL_TYPES["A"] = _LEVEL_TYPES["A_d"] + _LEVEL_TYPES["A_s"]
_LEVEL_TYPES["A_sd"] = [("address", qtype) for qtype in ("generation", "judgment", "multiple_choice")]
METRICS = ("A_d_G", "A_d_J", "A_d_M", "A_d", "A_s_G", "A_s_J", "A_s_M", "A_s", "A", "A_sd")


def metric_headers(level_names: Mapping[str, str] = DEFAULT_LEVEL_NAMES) -> dict[str, str]:
    """Each metric's printed header. A level the city calls by its key keeps the paper's letter (A_d, A_s); one
    called otherwise is written with its word (Tokyo's chome level: A_chome^G ... mean A_chome)."""
    mark = {level: level[0] if word == level else word for level, word in level_names.items()}
    d, s = mark["district"], mark["street"]
    return dict(zip(METRICS, (f"A_{d}^G", f"A_{d}^J", f"A_{d}^M", f"mean A_{d}", f"A_{s}^G", f"A_{s}^J",
                              f"A_{s}^M", f"mean A_{s}", "mean A", "A_sd")))


HEADERS = metric_headers()


def level_worded(key: str, level_names: Mapping[str, str]) -> str:
    """A metric key that starts with a level key, printed with the city's word: ``district_top1`` ->
    ``chome_top1``."""
    level, sep, rest = key.partition("_")
    return f"{level_names[level]}{sep}{rest}" if level in level_names else key


def percent(correct: int, total: int) -> float | None:
    return round(100.0 * correct / total, 2) if total else None


def _accuracies(tally: Mapping[str, list[int]]) -> dict[str, dict]:
    return {name: {"accuracy": percent(c, n), "correct": c, "total": n} for name, (c, n) in sorted(tally.items())}


def aggregate(scored: Iterable[ScoredQuestion]) -> dict:
    """The ten metrics (percentages, two decimals; None where no question counts), with counts, the accuracy per
    district (over district-level questions) and per street (over street-level questions), and the questions'
    ``level_names`` (what the city calls its levels, for the reports' headers)."""
    tally: dict[tuple[str, str], list[int]] = {}
    by_place: dict[str, dict[str, list[int]]] = {"district": {}, "street": {}}
    scored = list(scored)
    for s in scored:
        level = s.question["level"]
        counters = [tally.setdefault((level, s.question["qtype"]), [0, 0])]
        if level in by_place:
            counters.append(by_place[level].setdefault(s.question[level], [0, 0]))
        for t in counters:
            t[0] += s.correct
            t[1] += 1
    metrics: dict = {}
    counts: dict = {}
    for name in METRICS:
        correct = sum(tally.get(k, (0, 0))[0] for k in _LEVEL_TYPES[name])
        total = sum(tally.get(k, (0, 0))[1] for k in _LEVEL_TYPES[name])
        metrics[name] = percent(correct, total)
        counts[name] = {"correct": correct, "total": total}
    metrics["counts"] = counts
    metrics["per_district"] = _accuracies(by_place["district"])
    metrics["per_street"] = _accuracies(by_place["street"])
    metrics["level_names"] = question_level_names(s.question for s in scored)
    return metrics


def id_mismatches(question_ids: Iterable[str], prediction_ids: Iterable[str]) -> tuple[list[str], list[str]]:
    """``(unknown, missing)``: predicted ids that are no question, and question ids without a prediction,
    each in the order given."""
    if isinstance(question_ids, Mapping) and isinstance(prediction_ids, Mapping) \
            and question_ids.keys() == prediction_ids.keys():
        return [], []  # the usual case, decided in one set comparison
    question_ids, prediction_ids = list(question_ids), list(prediction_ids)
    asked, answered = set(question_ids), set(prediction_ids)
    return [i for i in prediction_ids if i not in asked], [i for i in question_ids if i not in answered]


def score(questions: list[dict], predictions: Mapping[str, str], allow_missing: bool = False) -> dict:
    """Metrics for in-memory questions and ``{question_id: prediction}``; see ``aggregate``.

    An unknown question id is a ValueError, and so is a missing prediction unless ``allow_missing`` (then it
    counts wrong).
    """
    unknown, missing = id_mismatches((q["question_id"] for q in questions), predictions)
    if unknown:
        raise ValueError(f"{len(unknown)} prediction(s) for unknown question ids, first {unknown[0]!r}")
    if missing and not allow_missing:
        raise ValueError(f"{len(missing)} question(s) without a prediction, first {missing[0]!r}")
    return aggregate(score_each(questions, predictions))


@contextmanager
def _collector_paused():
    """Reading a test set makes about a million small objects and no reference cycles; the cyclic garbage
    collector's passes over them cost a third of the scoring time (measured on 200K predictions)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def score_files(questions_path: str | os.PathLike, predictions_path: str | os.PathLike,
                allow_missing: bool = False) -> tuple[dict, list[ScoredQuestion]]:
    """``score`` over the two files, with errors (``DataError``) that name the file and line to fix."""
    with _collector_paused():
        return _score_files(questions_path, predictions_path, allow_missing)


def _score_files(questions_path, predictions_path, allow_missing: bool) -> tuple[dict, list[ScoredQuestion]]:
    numbered = read_numbered_questions(questions_path)
    if not numbered:
        raise DataError(questions_path, None, "no questions: nothing to score")
    predicted = read_predictions(predictions_path)
    question_line = {q["question_id"]: line for line, q in numbered}
    unknown, missing = id_mismatches(question_line, predicted)
    if unknown:
        raise DataError(predictions_path, predicted[unknown[0]][0],
                        f"unknown question_id {unknown[0]!r}: not in {questions_path}"
                        f" ({len(unknown)} unknown id(s) in all)")
    if missing and not allow_missing:
        raise DataError(questions_path, question_line[missing[0]],
                        f"no prediction for question_id {missing[0]!r} in {predictions_path}"
                        f" ({len(missing)} missing in all; --allow-missing counts them wrong)")
    scored = score_each((q for _, q in numbered), {qid: text for qid, (_, text) in predicted.items()})
    return aggregate(scored), scored


# ------------------------------------------------------------------------------------------ ranked names
# Top-k accuracy of closed-set answering (eval/rank.py), per level: comparable with AddressCLIP's SA-1/SA-5.
TOP_K = {"district_top1": ("district", 1), "district_top5": ("district", 5), "street_top1": ("street", 1),
         "street_top5": ("street", 5), "address_top1": ("address", 1)}


def first_correct_position(question: Mapping, names: Iterable[str]) -> int | None:
    """The 1-based position of the first name that is a right answer to the generation ``question`` (each name read
    as a reply by the question's extractor and judged by ``is_correct``), or None when none is."""
    for position, name in enumerate(names, start=1):
        if is_correct(question, extract_answer(question, name)):
            return position
    return None


def top_k_accuracy(questions: Iterable[dict], rankings: Mapping[str, list[str]]) -> dict:
    """``TOP_K``'s percentages over the generation questions of each level (a question without a ranking counts
    wrong), with ``counts``."""
    positions: dict[str, list[int | None]] = {}
    for q in questions:
        if q["qtype"] == "generation":
            ranking = rankings.get(q["question_id"])
            positions.setdefault(q["level"], []).append(
                None if ranking is None else first_correct_position(q, ranking))
    metrics: dict = {"counts": {}}
    for key, (level, k) in TOP_K.items():
        found = positions.get(level, [])
        correct = sum(p is not None and p <= k for p in found)
        metrics[key] = percent(correct, len(found))
        metrics["counts"][key] = {"correct": correct, "total": len(found)}
    return metrics


def read_ranked_names(questions_path: str | os.PathLike, ranked_path: str | os.PathLike,
                      allow_missing: bool = False) -> tuple[list[dict], dict[str, list[str]]]:
    """The questions and ``question_id -> names best first``; a ranking for an unknown or a non-generation question,
    or (unless ``allow_missing``) a generation question without one, is a ``DataError`` naming file and line."""
    numbered = read_numbered_questions(questions_path)
    ranked = read_ranked(ranked_path)
    question_at = {q["question_id"]: (line, q) for line, q in numbered}
    for qid, (line, _) in ranked.items():
        if qid not in question_at:
            raise DataError(ranked_path, line, f"unknown question_id {qid!r}: not in {questions_path}")
        if question_at[qid][1]["qtype"] != "generation":
            raise DataError(ranked_path, line, f"question_id {qid!r} is a {question_at[qid][1]['qtype']} question: "
                                               "only generation questions are ranked")
    missing = [(line, q["question_id"]) for line, q in numbered
               if q["qtype"] == "generation" and q["question_id"] not in ranked]
    if missing and not allow_missing:
        raise DataError(questions_path, missing[0][0], f"no ranking for question_id {missing[0][1]!r} in "
                        f"{ranked_path} ({len(missing)} missing in all; --allow-missing counts them wrong)")
    return [q for _, q in numbered], {qid: [r["name"] for r in ranking] for qid, (_, ranking) in ranked.items()}


def write_per_sample(path: str | os.PathLike, scored: Iterable[ScoredQuestion]) -> None:
    lines = [json.dumps(s.as_record(), ensure_ascii=False) for s in scored]
    write_atomic(path, "".join(line + "\n" for line in lines))


def format_table(metrics: Mapping) -> str:
    """Table 2's columns as text: accuracy (%) over correct/total, headed with the metrics' ``level_names``."""
    headers = metric_headers(metrics.get("level_names", DEFAULT_LEVEL_NAMES))
    cells = [(headers[m], "-" if metrics[m] is None else f"{metrics[m]:.2f}",
              f"{metrics['counts'][m]['correct']}/{metrics['counts'][m]['total']}") for m in METRICS]
    widths = [max(len(c) for c in column) + 2 for column in cells]
    rows = []
    for label, index in (("", 0), ("acc %", 1), ("correct", 2)):
        rows.append(f"{label:<8}" + "".join(f"{column[index]:>{w}}" for column, w in zip(cells, widths)))
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------ chance level
def chance_accuracy(qtype: str, n_options: int = 4) -> float | None:
    """Accuracy of guessing: 1/2 for judgment, 1/n_options for multiple choice. None for generation, where
    a guess is not drawn uniformly from a known list (1/number-of-names would be a meaningless floor)."""
    if qtype == "judgment":
        return 0.5
    if qtype == "multiple_choice":
        return 1.0 / n_options
    if qtype == "generation":
        return None
    raise ValueError(f"unknown qtype {qtype!r}")


def binomial_p_value(correct: int, total: int, chance: float) -> float:
    """One-sided p-value that ``correct`` of ``total`` is no better than guessing at ``chance``."""
    from scipy.stats import binomtest  # scipy takes a while to import; only the demo report needs it

    return float(binomtest(correct, total, chance, alternative="greater").pvalue)


def mcnemar_exact_p(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value for two models answering the same questions: ``only_first`` questions the
    first got right and the second wrong, ``only_second`` the reverse (questions both or neither got right carry no
    information about which is better). 1.0 when they never disagree."""
    from scipy.stats import binomtest

    discordant = only_first + only_second
    return 1.0 if discordant == 0 else float(binomtest(only_first, discordant, 0.5).pvalue)


# Metrics that are each one pool of questions (A_d, A_s and A average accuracies of pools of different sizes).
PAIRED_METRICS = ("A_d_G", "A_d_J", "A_d_M", "A_s_G", "A_s_J", "A_s_M", "A_sd")


def paired_comparison(questions: list[dict], first: Mapping[str, str], second: Mapping[str, str]) -> dict:
    """Two models' predictions for the same ``questions``, paired by question per metric: how many only the first
    got right, how many only the second, and the exact McNemar p-value of that split."""
    right = [{s.question["question_id"]: s.correct for s in score_each(questions, predictions)}
             for predictions in (first, second)]
    compared = {}
    for name in PAIRED_METRICS:
        ids = [q["question_id"] for q in questions if (q["level"], q["qtype"]) in _LEVEL_TYPES[name]]
        only_first = sum(right[0][i] and not right[1][i] for i in ids)
        only_second = sum(right[1][i] and not right[0][i] for i in ids)
        compared[name] = {"questions": len(ids), "only_first": only_first, "only_second": only_second,
                          "mcnemar_p": mcnemar_exact_p(only_first, only_second)}
    return compared
