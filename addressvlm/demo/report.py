"""The demo's report.md: the Table-2-style comparison, each accuracy tested against guessing, pictures, step times."""
from __future__ import annotations

from addressvlm.answering.scoring import METRICS, binomial_p_value, chance_accuracy, metric_headers
from addressvlm.core.records import DEFAULT_LEVEL_NAMES
from addressvlm.demo.retrieval import LABELS as RETRIEVER_LABELS

TESTED = {"A_d_J": "judgment", "A_d_M": "multiple_choice", "A_s_J": "judgment", "A_s_M": "multiple_choice"}
LABELS = {"zero_shot": "zero-shot (no tuning)", "stage2_only": "Baseline (stage 2 only)",
          "stage1_stage2": "AddressVLM (stage 1 + stage 2)", "stage3": "AddressVLM + stage 3 (GRPO)"}


def _cell(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def headers_of(metrics: dict[str, dict]) -> dict[str, str]:
    """The metric headers in the words of the city the models were scored on (A_d, A_s for the paper's)."""
    return metric_headers(next(iter(metrics.values()), {}).get("level_names", DEFAULT_LEVEL_NAMES))


def comparison_table(metrics: dict[str, dict]) -> str:
    headers = headers_of(metrics)
    lines = ["| model | " + " | ".join(headers[m] for m in METRICS) + " |",
             "|---|" + "---:|" * len(METRICS)]
    for name, m in metrics.items():
        lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(_cell(m[k]) for k in METRICS) + " |")
    return "\n".join(lines)


# "Far above chance": a tuned model's accuracy on every kind of question, tested against guessing.
TARGET_P = 1e-3
SIGNIFICANT_P = 0.01


def chance_tests(metrics: dict[str, dict], majority: dict[str, float]):
    """(model, metric, counts, chance, one-sided binomial p) for each of the six level x type accuracies."""
    for name, m in metrics.items():
        for key in ("A_d_G", "A_d_J", "A_d_M", "A_s_G", "A_s_J", "A_s_M"):
            count = m["counts"][key]
            chance = majority.get(key) if key in ("A_d_G", "A_s_G") else chance_accuracy(TESTED[key])
            if count["total"] and chance is not None:
                yield name, key, count, chance, binomial_p_value(count["correct"], count["total"], chance)


def significance_table(metrics: dict[str, dict], majority: dict[str, float]) -> str:
    headers = headers_of(metrics)
    lines = ["| model | metric | correct / total | accuracy % | chance % | one-sided binomial p |",
             "|---|---|---:|---:|---:|---:|"]
    for name, key, count, chance, p in chance_tests(metrics, majority):
        lines.append(f"| {LABELS.get(name, name)} | {headers[key]} | {count['correct']} / {count['total']} | "
                     f"{_cell(metrics[name][key])} | {100 * chance:.0f} | {p:.2e}"
                     f"{' (significant)' if p < SIGNIFICANT_P else ''} |")
    return "\n".join(lines)


def learning_targets(metrics: dict[str, dict], majority: dict[str, float], reading: dict | None) -> list[dict]:
    """What the demo must show on any machine and seed: the warm-up reached its reading target, and each tuned
    model answers every kind of question at both levels far above guessing (one-sided binomial p < TARGET_P)."""
    headers = headers_of(metrics)
    targets = []
    if reading is not None:
        settings = reading["settings"]
        targets.append({"target": f"reading warm-up: every question kind >= {settings['target']:g} % on its probe",
                        "figure": f"{'reached' if reading['reached_target'] else 'not reached'} after "
                                  f"{reading['steps']} of at most {settings['max_steps']} steps",
                        "met": bool(reading["reached_target"])})
    for name, key, count, chance, p in chance_tests({n: m for n, m in metrics.items() if n != "zero_shot"},
                                                    majority):
        targets.append({"target": f"{LABELS.get(name, name)}: {headers[key]} above chance (p < {TARGET_P:g})",
                        "figure": f"{metrics[name][key]:.1f} % ({count['correct']}/{count['total']}), chance "
                                  f"{100 * chance:.0f} %, p {p:.1e}", "met": p < TARGET_P})
    return targets


def targets_summary(targets: list[dict]) -> str:
    """The lines `make demo` ends with: every target checked, and a loud last line when one was missed."""
    missed = [t for t in targets if not t["met"]]
    lines = ["learning targets:"] + [f"  [{'ok' if t['met'] else 'MISSED'}] {t['target']}: {t['figure']}"
                                     for t in targets]
    lines.append(f"all {len(targets)} learning targets met" if not missed else
                 f"!!! {len(missed)} of {len(targets)} LEARNING TARGETS MISSED on this machine: the figures above "
                 "are not the demo's evidence (report it, with the machine's CPU flags and the seed) !!!")
    return "\n".join(lines)


def paired_table(compared: dict[str, dict], headers: dict[str, str], first: str = "AddressVLM",
                 second: str = "Baseline") -> str:
    """Model ``first`` against model ``second``, question by question, per metric (``scoring.paired_comparison``)."""
    from scipy.stats import binomtest

    lines = [f"| metric | questions | only {first} right | only {second} right | difference (points) | "
             "exact McNemar p | difference needed for p < 0.01 |", "|---|---:|---:|---:|---:|---:|---:|"]
    for key, c in compared.items():
        discordant = c["only_first"] + c["only_second"]
        # The least lopsided split of these discordant questions that the test would call significant.
        needed = next((k for k in range((discordant + 1) // 2, discordant + 1)
                       if binomtest(k, discordant, 0.5).pvalue < SIGNIFICANT_P), None) if discordant else None
        needed_cell = "-" if needed is None else f"{100 * (2 * needed - discordant) / c['questions']:.1f}"
        p = c["mcnemar_p"]
        lines.append(f"| {headers[key]} | {c['questions']} | {c['only_first']} | {c['only_second']} | "
                     f"{100 * (c['only_first'] - c['only_second']) / c['questions']:+.1f} | {p:.2g}"
                     f"{' (significant)' if p < SIGNIFICANT_P else ''} | {needed_cell} |")
    return "\n".join(lines)


SPREAD = (("district", "judgment"), ("district", "multiple_choice"), ("street", "judgment"),
          ("street", "multiple_choice"))


def answer_spread(scored) -> dict[str, dict[str, int]]:
    """How often each answer was given to each kind of judgment and choice question, from ``score_each``'s
    extracted answers ("none" where no answer could be read)."""
    from collections import Counter

    spread: dict[str, Counter] = {f"{level} {qtype}": Counter() for level, qtype in SPREAD}
    for item in scored:
        key = f"{item.question['level']} {item.question['qtype']}"
        if key in spread:
            spread[key]["none" if item.extracted is None else str(item.extracted)] += 1
    return {key: dict(sorted(counts.items())) for key, counts in spread.items()}


def spread_table(spreads: dict[str, dict[str, dict[str, int]]]) -> str:
    lines = ["| model | " + " | ".join(f"{level} {qtype.replace('_', ' ')}" for level, qtype in SPREAD) + " |",
             "|---|" + "---|" * len(SPREAD)]
    for name, spread in spreads.items():
        cells = [", ".join(f"{answer} {n}" for answer, n in spread[f"{level} {qtype}"].items()) or "-"
                 for level, qtype in SPREAD]
        lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reading_table(reading: dict) -> str:
    """The reading warm-up's held-out accuracy per question kind (``reading_warmup.json``)."""
    accuracy = reading["accuracy"]
    return "\n".join(["| " + " | ".join(kind.replace("_", " ") for kind in accuracy) + " |",
                      "|" + "---:|" * len(accuracy),
                      "| " + " | ".join(f"{value:.1f}" for value in accuracy.values()) + " |"])


def paired_verdict(compared: dict[str, dict], headers: dict[str, str], with_what: str) -> str:
    better = [headers[k] for k, c in compared.items() if c["mcnemar_p"] < SIGNIFICANT_P and c["only_first"] > c["only_second"]]
    worse = [headers[k] for k, c in compared.items() if c["mcnemar_p"] < SIGNIFICANT_P and c["only_first"] < c["only_second"]]
    return (f"Significantly better with {with_what} (p < {SIGNIFICANT_P:g}): {', '.join(better) or 'none'}; "
            f"significantly worse: {', '.join(worse) or 'none'}. Every other difference is within what these "
            "questions can tell apart from noise.")


def stage1_effect(metrics: dict[str, dict], compared: dict[str, dict] | None) -> str:
    if not compared:
        return ""
    headers = headers_of(metrics)
    verdict = paired_verdict(compared, headers, "stage 1")
    return ("Each model's answers to the same held-out questions, paired: a question both answered alike says "
            "nothing about which is better.\n\n" + paired_table(compared, headers) + "\n\n" + verdict +
            " The paper's gain (+9 A_sd on Pitts) rests on a pretrained LVLM that reads the street names drawn on "
            "the map; this tiny model never saw a rendered letter, so the alignment task can only tie the street "
            "view's look to the aerial's roofs and pavements and to the reason's words.")


def stage3_section(metrics: dict[str, dict], stage3: dict) -> list[str]:
    """What GRPO adds to AddressVLM: the paired test and the reward curve."""
    headers = headers_of(metrics)
    return [
        "## What stage 3 adds: GRPO with the street-level reward",
        "",
        f"{stage3['steps']} steps of TRL's GRPOTrainer from AddressVLM (recipes/stage3/helsinki.yaml: LoRA on the "
        "LLM, eight rollouts of one training question a step by plain generation, KL to the stage-2 model), "
        "rewarded by addressvlm/answering/reward.py (hierarchical credit with the metre distance of the street "
        f"named), in {stage3['seconds']:.0f} s with its export and the way back. Its row is in the results above; "
        "here it is paired with AddressVLM question by question:",
        "",
        paired_table(stage3["compared"], headers, "stage 3", "AddressVLM"),
        "",
        paired_verdict(stage3["compared"], headers, "stage 3"),
        "",
        f"![stage-3 reward](pictures/{stage3['picture']})",
        "",
    ]


CLOSED_SET_COLUMNS = (
    ("district_top1", "district top-1"), ("district_top5", "district top-5"), ("street_top1", "street top-1"),
    ("street_top5", "street top-5"), ("address_top1", "address top-1"),
    ("street_error_median_m", "median error m (generated)"), ("street_within_25m", "<= 25 m"),
    ("street_within_100m", "<= 100 m"), ("street_top1_error_median_m", "median error m (top-1 ranked)"),
    ("street_top1_within_25m", "<= 25 m"), ("street_top1_within_100m", "<= 100 m"),
)


def closed_set_table(closed_set: dict[str, dict]) -> str:
    """Top-k accuracy of the ranked names and the metre error of the street answers, per model."""
    lines = ["| model | " + " | ".join(header for _, header in CLOSED_SET_COLUMNS) + " |",
             "|---|" + "---:|" * len(CLOSED_SET_COLUMNS)]
    for name, m in closed_set.items():
        lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(_cell(m.get(key)) for key, _ in CLOSED_SET_COLUMNS)
                     + " |")
    return "\n".join(lines)


def retrieval_section(retrieved: dict) -> list[str]:
    """Both retrievers' R@K (each kind of query against the test split's tiles, with the binomial test of R@1
    against chance), and AddressVLM's ranking among the retrieved tiles' names beside its ranking over the city."""
    lines = ["## Cross-view retrieval: which satellite tile is this?", "",
             "Two retrievers trained here on the training locations (docs/retrieval.md): the tiny LLaVA-Phi3-mini "
             "turned retriever (the hidden state of a summarising prompt's last token, LoRA, InfoNCE) and a tiny "
             "random CLIP dual encoder, each on both kinds of query. Each query is a test street view, or the scene "
             "text of one: what the view shows (road width, pavement and facade colours, storeys, parks, trees, tram "
             "tracks) and the map around it, written by the rule backend from the city's view facts -- the offline "
             "stand-in for an LVLM describing the photo, naming no street or district. The gallery is the test "
             "split's label-free tiles. Percent; p (R@1): one-sided binomial test of R@1 against picking a tile at "
             "random. The four views of a place (and their four texts) share its tile, so their hits are not "
             "independent; the stricter test counts places: the tiles that at least one of their queries ranks "
             "first, against chance (p: the Poisson-binomial tail).", "",
             "| retriever | queries | n | gallery | R@1 | R@5 | R@10 | chance R@1 | p (R@1) | places found first "
             "(chance) | p (places) | top-1 within 100 m |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def p_cell(p: float) -> str:
        return f"{p:.1e}{' (significant)' if p < 0.01 else ''}"

    for name, metrics in retrieved["retrievers"].items():
        for kind, m in metrics["by_kind"].items():
            lines.append(f"| {RETRIEVER_LABELS.get(name, name)} | {'street view' if kind == 'image' else 'scene text'} "
                         f"| {m['queries']} | {m['gallery_size']} | {_cell(m['R@1'])} | {_cell(m['R@5'])} | "
                         f"{_cell(m['R@10'])} | {m['chance_R@1']:.1f} | {p_cell(m['binomial_p_R@1'])} | "
                         f"{_cell(m['tiles_found_R@1'])} ({m['chance_tiles_found_R@1']:.1f}) | "
                         f"{p_cell(m['p_tiles_found_R@1'])} | {_cell(m['within_100m'])} |")
    k, restricted, full = retrieved["candidates_k"], retrieved["restricted"], retrieved["unrestricted"]
    lines += ["", f"Retrieved candidates for AddressVLM: its closed-set ranking of each test street view restricted "
              f"to the streets and districts of the top {k} tiles of the "
              f"{RETRIEVER_LABELS[retrieved['candidates_retriever']]} (eval/rank.py --candidates), "
              "against its ranking over every name of the city. A restriction can only help where the retriever "
              "keeps the truth among its candidates.", "",
              "| AddressVLM ranking among | district top-1 | street top-1 | address top-1 |", "|---|---:|---:|---:|"]
    for label, m in ((f"the names of {k} retrieved tiles", restricted), ("every name of the city", full)):
        if m:
            lines.append(f"| {label} | {_cell(m.get('district_top1'))} | {_cell(m.get('street_top1'))} | "
                         f"{_cell(m.get('address_top1'))} |")
    lines += ["", " ".join(f"![retrieval {name}](retrieval/{name}/retrieval.png)" for name in retrieved["retrievers"]),
              ""]
    return lines


def render_report(metrics: dict[str, dict], times: dict[str, float], pictures: dict[str, list[str]],
                  distribution: list[str], settings: dict, district_method: str, attribution: str,
                  majority: dict[str, float], spreads: dict[str, dict[str, dict[str, int]]],
                  reading: dict | None = None, closed_set: dict[str, dict] | None = None,
                  retrieved: dict | None = None, compared: dict[str, dict] | None = None,
                  targets: list[dict] | None = None, stage3: dict | None = None) -> str:
    parts = [
        "# AddressVLM demo: central Helsinki, on CPU",
        "",
        "The whole method on a small real city: OpenStreetMap streets and districts, rendered street views and a "
        "pseudo-aerial raster, stage-1 cross-view alignment (labelled crops with the street view grafted in, rule "
        "reasons), stage-2 address VQA, stage-3 GRPO with a street-level reward, and four tiny LLaVA-Phi3-mini "
        "models (an LLM warmed up on text, random vision weights, trained here) answering the same single-turn "
        "test questions of held-out locations.",
        "",
    ]
    if reading:
        parts += [
            "## The tiny LLM's reading warm-up",
            "",
            f"Before any image, the tiny LLM trained on text-only conversations in the stage-2 question forms, with "
            "a street and a district name, paired at random, in a passage of random tokens where the image goes: "
            "the stand-in for the language a real LVLM arrives with (addressvlm/standins/reading_warmup.py). The "
            "demo starts from the one the repository ships (addressvlm/demo/pretrained_llm, the same on every "
            "machine and seed, as a released model is) unless run with --warm-up-here. It trained until every "
            f"question kind reached {reading['settings']['target']:g} % on a held-out probe (at most "
            f"{reading['settings']['max_steps']} steps): {reading['steps']} steps, target "
            f"{'reached' if reading['reached_target'] else 'NOT reached'}. Its accuracy % on a second held-out set "
            "of passages, first answer token:",
            "",
            reading_table(reading),
            "",
            "It reads names and compares them; which name fits a street view it learns only from the images.",
            "",
        ]
    if targets:
        parts += ["## Learning targets", "", "What this demo must show on any machine and seed (`make demo` prints "
                  "the same list at its end):", "", "| target | figure | met |", "|---|---|---|"]
        parts += [f"| {t['target']} | {t['figure']} | {'yes' if t['met'] else '**NO**'} |" for t in targets] + [""]
    parts += [
        "## Results (accuracy %, Table 2's columns)",
        "",
        comparison_table(metrics),
        "",
        "## Better than guessing?",
        "",
        "Judgment questions are guessed right half of the time, 4-way multiple choice a quarter. For generation the "
        "reference is always giving the test set's most common answer (a guess that knows the answer distribution).",
        "",
        significance_table(metrics, majority),
        "",
        "Which answers each model gave: the right ones are spread evenly (Yes and No half each, the right letter "
        "drawn uniformly), so a model that answers the same whatever the image, or spreads its answers evenly "
        "without looking, scores what guessing scores.",
        "",
        spread_table(spreads),
        "",
        "## What stage 1 adds",
        "",
        stage1_effect(metrics, compared),
        "",
    ]
    if stage3:
        parts += stage3_section(metrics, stage3)
    if closed_set:
        parts += [
            "## Beyond exact match: ranking the city's names, and how far off a wrong street is",
            "",
            "For each generation question the model scored every district, street and address of the city by its "
            "log-likelihood as the answer (eval/rank.py): top-1/top-5 accuracy % of that ranking. The metre error is "
            "the distance from the image's true location to the nearest point of the street named, generated or "
            "ranked first (eval/score.py --streets); an answer naming no street of the map counts beyond every "
            "threshold.",
            "",
            closed_set_table(closed_set),
            "",
            " ".join(f"![district confusion](pictures/district_confusion_{name}.png) "
                     f"![street errors](pictures/street_errors_{name}.png)" for name in closed_set),
            "",
        ]
    if retrieved:
        parts += retrieval_section(retrieved)
    parts += [
        "## Pictures",
        "",
    ]
    for title, files in pictures.items():
        if files:
            parts += [f"**{title}**", "", " ".join(f"![{title}](pictures/{f})" for f in files), ""]
    if distribution:
        parts += ["**street distribution (Fig. 5)**: 100 answers at temperature 0.8 per image; the top three "
                  "streets in red, orange, yellow; the true location marked. Before: the zero-shot model choosing "
                  "among the tuned model's top four streets, shuffled per image, with the option letters it chose "
                  "under its bars. After: AddressVLM's stage 2 (the paper's is the stage-1 model, docs/eval.md).",
                  ""]
        parts += [f"![street distribution](pictures/{f})" for f in distribution] + [""]
    parts += ["## Time of each step", "", "| step | seconds |", "|---|---:|"]
    parts += [f"| {name} | {seconds:.1f} |" for name, seconds in times.items()]
    parts += ["", "## Settings", "", "```", *(f"{k} = {v}" for k, v in settings.items()), "```", "",
              f"Districts: {district_method}.", "", f"Map data {attribution}.", ""]
    return "\n".join(parts)
