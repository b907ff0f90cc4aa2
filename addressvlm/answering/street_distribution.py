"""Where a model thinks a street view is (paper Fig. 4-5, Appendix D.1).

A model answers one street question many times (N=100 at temperature 0.8) about the same street view; counting
the city streets it names approximates its belief over the city. Fig. 5 draws the top three on the city's road
map. The model without stage 1 rarely names a valid street, so Appendix D.1 asks it a multiple-choice question
over the streets the other model named instead (Fig. 4).

Which two models (Appendix D.1, docs/eval.md): *after* cross-view alignment tuning is the stage-1 model (D.1
explains feeding it street views although stage 1 trained it on grafted images, which only that model needs),
answering free-form; *before* is the zero-shot release the recipe starts from ("the model without any downstream
fine-tuning"), choosing among the after-model's streets. The options are shuffled (seeded per image): in rank order
the after-model's favourite would always be option A, and an untuned model that answers "A" to everything would
seem to know the street. The figure shows how often each letter was chosen beside the counts.

The steps are apart so that any sampler can feed them: ``street_question``/``street_choice_question`` build the
prompts, ``sample_street_answers`` drives a sampler the caller passes in and stores the answers resumably,
``count_streets`` counts valid streets (normalised as eval/score.py normalises), ``draw_street_distribution``
draws the map.
"""
from __future__ import annotations

import math
import os
import random
import string
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from addressvlm.answering.answering import sample_answers
from addressvlm.answering.scoring import extract_choice, extract_generation
from addressvlm.core.names import normalize_name
from addressvlm.core.records import DataError, JsonlAppender, Location, read_jsonl
from addressvlm.core.templates import STREET_TEMPLATES, level_question
from addressvlm.geo.streets import StreetMap

SAMPLES_PER_IMAGE = 100  # Appendix D.1
CHOICE_OPTIONS = 4  # the before-model's options: the after-model's top streets, as many as Table B5's A-D
SAMPLING_TEMPERATURE = 0.8  # Appendix D.1: raised from 0.1 "to encourage output variability"
TOP_COLOURS = ("#d7191c", "#f28e1c", "#ffd92f")  # red, orange, yellow: Fig. 5's top three
OSM_ATTRIBUTION = "Streets: \u00a9 OpenStreetMap contributors, ODbL"

# (image, prompt, n) -> n sampled answers. The image is as locations.csv names it (relative to the city root).
Sampler = Callable[[str, str, int], list[str]]


# ------------------------------------------------------------------------------------------ prompts (Fig. 4)
# Fig. 4's wording is not printed in the paper; one of the Table B4 street phrasings stands in for it.
FREE_FORM_TEMPLATE = STREET_TEMPLATES.index("What's the name of this street shown in the photo?")


def street_question(template_index: int = FREE_FORM_TEMPLATE) -> str:
    """The free-form street question asked of the aligned model: a Table B4 street template and Table B5's
    generation prompt. Without "<image>": inference adds the image token, as for the test questions."""
    return level_question("street", "generation", template_index)


def choice_options(streets: Iterable[str], rng: random.Random, pad_from: Sequence[str] = (),
                   size: int = 0) -> dict[str, str]:
    """Letters A, B, ... for distinct streets (same normalised name once) in an order shuffled by ``rng``, so that
    the letter hints neither at how often the other model named a street nor at its name. Fewer than ``size``
    streets are padded with others drawn from ``pad_from`` (the city's streets)."""
    by_name: dict[str, str] = {}
    for street in streets:
        by_name.setdefault(normalize_name(street), street)
    spare = sorted({normalize_name(s): s for s in pad_from if normalize_name(s) not in by_name}.items())
    for key, street in rng.sample(spare, min(len(spare), max(0, size - len(by_name)))):
        by_name[key] = street
    ordered = sorted(by_name.values(), key=normalize_name)
    rng.shuffle(ordered)
    if len(ordered) > len(string.ascii_uppercase):
        raise ValueError(f"{len(ordered)} streets: a multiple-choice question can list at most 26")
    if not ordered:
        raise ValueError("no street to choose from")
    return dict(zip(string.ascii_uppercase, ordered))


def street_choice_question(options: Mapping[str, str]) -> str:
    """The multiple-choice street question asked of the model without alignment (Appendix D.1): Table B5's
    multiple-choice wording over any number of lettered streets (``choice_options``)."""
    letters = sorted(options)
    listed = " ".join(f"({letter}) {options[letter]}" for letter in letters)
    return (f"Which of the following street correctly represents the location shown in the image? {listed}. "
            f"Please select the correct option ({'/'.join(letters)}).")


# ------------------------------------------------------------------------------------------ sampling
def sample_street_answers(images: Sequence[str], sampler: Sampler, out_path: str | os.PathLike,
                          n: int = SAMPLES_PER_IMAGE, options_by_image: Mapping[str, Mapping[str, str]] | None = None
                          ) -> None:
    """Ask each image's street question ``n`` times through ``sampler`` and append
    ``{"image", "prompt", "answers"[, "options"]}`` to ``out_path``; a rerun skips images already written.

    With ``options_by_image`` the image gets the multiple-choice form over its options, else the free form.
    """
    from tqdm import tqdm

    with JsonlAppender(out_path, key="image", required=("answers",)) as out:
        todo = [image for image in images if image not in out.done]
        for image in tqdm(todo, desc="sampling street answers", unit="image"):
            options = (options_by_image or {}).get(image)
            prompt = street_choice_question(options) if options else street_question()
            answers = list(sampler(image, prompt, n))
            if len(answers) != n or not all(isinstance(a, str) for a in answers):
                raise ValueError(f"sampler returned {len(answers)} answers for {image!r}; expected {n} strings")
            record = {"image": image, "prompt": prompt, "answers": answers}
            if options:
                record["options"] = dict(options)
            out.write(record)


def read_sampled_answers(path: str | os.PathLike) -> list[dict]:
    """Records of ``sample_street_answers`` (or any JSONL of ``{"image", "answers": [...], "options"?}``)."""
    records, seen = [], {}
    for line, rec in read_jsonl(path, required=("image", "answers")):
        answers, options = rec["answers"], rec.get("options")
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise DataError(path, line, "'answers' must be a list of strings")
        if options is not None and (not isinstance(options, dict) or not options
                                    or not all(isinstance(v, str) for v in options.values())):
            raise DataError(path, line, "'options' must map letters to street names")
        if rec["image"] in seen:
            raise DataError(path, line, f"duplicate image {rec['image']!r} (first on line {seen[rec['image']]})")
        seen[rec["image"]] = line
        records.append(rec)
    return records


# ------------------------------------------------------------------------------------------ counting
@dataclass
class StreetCounts:
    counts: Counter  # the city's spelling of a street -> times named
    invalid: int  # answers that named no street of the city (or no single option)
    total: int
    positions: Counter | None = None  # multiple choice: option letter (or "none") -> times chosen

    def top(self, k: int = 3) -> list[tuple[str, int]]:
        """The ``k`` most named streets, ties broken by name so the figure does not depend on answer order."""
        return sorted(self.counts.items(), key=lambda item: (-item[1], normalize_name(item[0])))[:k]

    def as_dict(self) -> dict:
        out = {"counts": dict(self.top(len(self.counts))), "invalid": self.invalid, "total": self.total}
        if self.positions is not None:
            out["positions"] = dict(sorted(self.positions.items()))
        return out


def count_streets(answers: Iterable[str], city_streets: Iterable[str],
                  options: Mapping[str, str] | None = None) -> StreetCounts:
    """Count the city streets named in ``answers``: free-form answers are matched after score.py's
    normalisation ("Forbes Ave." counts for Forbes Avenue); with ``options`` the answers are multiple-choice
    replies and the chosen option's street counts."""
    city = {normalize_name(s): s for s in city_streets}
    counts: Counter = Counter()
    positions = None if options is None else Counter({letter: 0 for letter in options})
    total = invalid = 0
    for answer in answers:
        total += 1
        if options is not None:
            letter = extract_choice(answer, options)
            positions[letter or "none"] += 1
            key = normalize_name(options[letter]) if letter else None
        else:
            key = extract_generation(answer)
        street = city.get(key)
        if street is None:
            invalid += 1
        else:
            counts[street] += 1
    return StreetCounts(counts, invalid, total, positions)


# ------------------------------------------------------------------------------------------ before and after
def image_seed(seed: int, image: str) -> int:
    """A sampling seed per image, independent of which other images are sampled."""
    return zlib.crc32(f"{seed}:{image}".encode())


def model_sampler(model, image_folder: str | os.PathLike, temperature: float = SAMPLING_TEMPERATURE,
                  seed: int = 0, max_new_tokens: int = 32) -> Sampler:
    """A ``Sampler`` answering with a loaded model (``addressvlm.answering.loading``), images relative to
    ``image_folder``."""
    def sample(image: str, prompt: str, n: int) -> list[str]:
        return sample_answers(model, Path(image_folder) / image, prompt, n, temperature, max_new_tokens,
                              seed=image_seed(seed, image))

    return sample


def pick_test_images(rows: Sequence[Location], k: int) -> list[Location]:
    """``k`` test views spread over the city table's test split (the order of the table)."""
    test = [r for r in rows if r.split == "test"]
    if not test:
        raise ValueError("the city table has no test rows (pin the splits first)")
    return test[:: max(1, len(test) // k)][:k]


def sample_before_and_after(images: Sequence[str], after: Sampler, before: Sampler, city_streets: Sequence[str],
                            out_dir: str | os.PathLike, n: int = SAMPLES_PER_IMAGE, seed: int = 0
                            ) -> tuple[Path, Path]:
    """Fig. 5's samples (Appendix D.1): ``after`` (the aligned model) answers the free-form street question ``n``
    times per image; ``before`` (the zero-shot model) the multiple-choice question over the after-model's top
    streets, shuffled with a seed per image (padded from ``city_streets`` to four). Writes and returns
    ``out_dir/after_alignment.jsonl`` and ``out_dir/before_alignment.jsonl`` (resumable)."""
    out_dir = Path(out_dir)
    after_path, before_path = out_dir / "after_alignment.jsonl", out_dir / "before_alignment.jsonl"
    sample_street_answers(images, after, after_path, n)
    wanted = set(images)
    options = {}
    for record in read_sampled_answers(after_path):
        if record["image"] in wanted:
            named = [name for name, _ in count_streets(record["answers"], city_streets).top(CHOICE_OPTIONS)]
            options[record["image"]] = choice_options(named, random.Random(f"options:{seed}:{record['image']}"),
                                                      city_streets, CHOICE_OPTIONS)
    sample_street_answers(images, before, before_path, n, options_by_image=options)
    return after_path, before_path


# ------------------------------------------------------------------------------------------ drawing
def _draw_panel(map_ax, bar_ax, street_map: StreetMap, counts: StreetCounts, true_lat: float, true_lon: float,
                label: str, k: int) -> None:
    from matplotlib.collections import LineCollection

    def lines(names: set[str]) -> list:
        return [list(s.line.coords) for s in street_map.streets if s.name in names]

    top = counts.top(k)
    map_ax.add_collection(LineCollection(lines({s.name for s in street_map.streets}), colors="#b0b0b0",
                                         linewidths=0.8, zorder=1, capstyle="round"))
    for rank, (name, n) in enumerate(top):
        # A dark casing under the colour keeps yellow visible on white; one collection per street keeps the
        # many OSM ways of one street reading as one line.
        map_ax.add_collection(LineCollection(lines({name}), colors="#333333", linewidths=5.5,
                                             zorder=2 + 2 * (k - rank), capstyle="round"))
        map_ax.add_collection(LineCollection(lines({name}), colors=TOP_COLOURS[rank], linewidths=3.5,
                                             zorder=3 + 2 * (k - rank), capstyle="round",
                                             label=f"{rank + 1}. {name} ({n})"))
    map_ax.autoscale_view()
    map_ax.plot(true_lon, true_lat, marker="*", markersize=18, color="#2454c4", markeredgecolor="white",
                markeredgewidth=1.5, linestyle="none", zorder=10, label="true location")
    map_ax.plot([], [], color="#b0b0b0", linewidth=0.8, label="other streets")
    map_ax.set_aspect(1.0 / max(math.cos(math.radians(true_lat)), 1e-6))  # metres east and north drawn alike
    map_ax.margins(0.04)
    map_ax.set_xticks([])
    map_ax.set_yticks([])
    map_ax.set_title(label, fontsize=12)
    map_ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=2, fontsize=9, frameon=False)

    # Rank 1 on the top row; bars share the sample count as their scale, so panels compare by length.
    rows = [k - 1 - rank for rank in range(len(top))]
    bar_ax.barh(rows, [n for _, n in top], color=TOP_COLOURS[:len(top)], edgecolor="#333333")
    for row, (_, n) in zip(rows, top):
        bar_ax.text(n + counts.total * 0.01, row, str(n), va="center", fontsize=9)
    bar_ax.set_yticks(rows, [name for name, _ in top], fontsize=9)
    bar_ax.set_xlim(0, max(counts.total, 1))
    bar_ax.set_ylim(-0.6, k - 0.4)
    label = f"times named in {counts.total} samples ({counts.invalid} named no city street)"
    if counts.positions is not None:
        label += "\noption letters chosen: " + ", ".join(f"{letter} {n}" for letter, n in counts.positions.items())
    bar_ax.set_xlabel(label, fontsize=9)
    bar_ax.spines[["top", "right"]].set_visible(False)
    if not top:
        bar_ax.text(0.5, 0.5, "no valid street named", transform=bar_ax.transAxes, ha="center", va="center")


def headless_pyplot():
    """``matplotlib.pyplot`` drawing to files only: servers have no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_street_distribution(street_map: StreetMap, panels: Sequence[tuple[str, StreetCounts]], true_lat: float,
                             true_lon: float, out_png: str | os.PathLike, title: str = "", top_k: int = 3,
                             attribution: str = OSM_ATTRIBUTION) -> None:
    """Fig. 5 for one street view: per panel (a model), the city's streets in grey, its ``top_k`` streets in red,
    orange and yellow, a bar per top street proportional to its count, and the true location as a blue star."""
    plt = headless_pyplot()
    if not 1 <= top_k <= len(TOP_COLOURS):
        raise ValueError(f"top_k must be 1..{len(TOP_COLOURS)}")
    fig, axes = plt.subplots(2, len(panels), figsize=(6.2 * len(panels), 8.0), squeeze=False,
                             gridspec_kw={"height_ratios": [4.2, 1.0]})
    for column, (label, counts) in enumerate(panels):
        _draw_panel(axes[0][column], axes[1][column], street_map, counts, true_lat, true_lon, label, top_k)
    if title:
        fig.suptitle(title, fontsize=13)
    fig.text(0.99, 0.005, attribution, ha="right", va="bottom", fontsize=7, color="#555555")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
