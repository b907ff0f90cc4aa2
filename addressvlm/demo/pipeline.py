"""`make demo`: AddressVLM's whole method on the embedded Helsinki demo city, on CPU.

city -> pinned splits -> stage-2 VQA -> stage-1 crops, grafts, rule reasons -> tiny model -> stage 1 -> stage 2
(and the stage-2-only Baseline) -> answers of three models -> scores -> street distribution -> report.

Every step reuses the project's own tools and skips what a previous run finished, so an interrupted demo resumes.
"""
from __future__ import annotations

import json
import shutil
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from pathlib import Path

from addressvlm.answering.error_figures import district_confusion, draw_district_confusion, draw_street_errors
from addressvlm.answering.export import export_hf
from addressvlm.answering.ranking import rank_questions
from addressvlm.answering.scoring import paired_comparison, read_ranked_names, top_k_accuracy
from addressvlm.answering.street_distribution import (count_streets, draw_street_distribution, model_sampler,
                                                      pick_test_images, read_sampled_answers, sample_before_and_after)
from addressvlm.answering.street_error import street_error_files
from addressvlm.core.records import (as_recorded, file_digest, read_llava_json, read_locations, read_predictions,
                                     read_questions, read_run_record, write_atomic, write_run_record)
from addressvlm.data.gazetteer import build_gazetteer
from addressvlm.data.graft import city_pairs, graft_batch, grafted_name, reserved_fraction
from addressvlm.data.labels import make_labels
from addressvlm.data.stage1_json import build_stage1_json
from addressvlm.data.vqa import build_vqa, pin_splits
from addressvlm.demo import retrieval
from addressvlm.demo.city import build_demo_city
from addressvlm.demo.report import LABELS, answer_spread, learning_targets, render_report, targets_summary
from addressvlm.geo.crop import crop_city
from addressvlm.geo.streets import read_street_map
from addressvlm.runs.engine import (STAGE3, DemoSettings, Paths, answer_and_score, drop_stale, held_out_questions,
                                    load_model, stage3_folder, train_recipe)
from addressvlm.runs.grpo import REWARD_CURVE
from addressvlm.runs.stage3 import convert, draw_reward_curve, launch, prepare_prompts, read_recipe
from addressvlm.standins.reading_warmup import ReadingWarmup, names_from_locations, read_warmup_result
from addressvlm.standins.tiny import TinySize, add_tiny_vision, copy_llm, llm_differences, make_tiny_llm
from addressvlm.training.checkpoints import weights_identity

ATTRIBUTION = "(c) OpenStreetMap contributors, ODbL"
MODELS = ("zero_shot", "stage2_only", "stage1_stage2", STAGE3)
TUNED = MODELS[1:]
TARGETS_FILE = "targets.json"
PAIRED_STAGE3_FILE = "paired_stage3.json"  # the stage-3 model against AddressVLM, question by question
# The demo's warmed-up tiny LLM and its tokenizer (tools/make_demo_llm.py made it; its README says how and where).
PRETRAINED_LLM = Path(__file__).resolve().parent / "pretrained_llm"
# The exit status of a demo that finished but missed a learning target: apart from 1, which a refusal (another
# demo holding the folders, other settings) exits with before anything ran.
MISSED_TARGETS_EXIT = 3
RUN_NAMES = {"stage1_helsinki": "stage 1", "retrieval": "retrieval data and both retrievers (beside stage 1)",
             "stage1_stage2": "stage 2 after stage 1 (AddressVLM)", "stage2_only": "stage 2 only (Baseline)"}


class Steps:
    """Numbered, timed steps with a line each, so progress is visible and the report can show the times."""

    def __init__(self, total: int):
        self.total, self.done, self.times = total, 0, {}

    def run(self, name: str, fn, *args, **kwargs):
        self.done += 1
        print(f"[{self.done}/{self.total}] {name} ...", flush=True)
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.times[name] = time.perf_counter() - start
        print(f"[{self.done}/{self.total}] {name}: done in {self.times[name]:.1f} s", flush=True)
        return result


SETTINGS_FILE = "demo_settings.json"


@contextmanager
def held_alone(folders: list[Path]):
    """An exclusive lock on each folder for the demo's whole run: a second demo into the same city, runs or output
    would train and write over the first one's files."""
    import fcntl

    with ExitStack() as stack:
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            lock = stack.enter_context(open(folder / ".demo.lock", "w"))
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SystemExit(f"{folder}: another demo is running with this folder; wait for it to finish or "
                                 "give other folders") from None
        yield


def claim_city(paths: Paths, s: DemoSettings) -> None:
    """Refuse a city folder that holds a city built with another seed, location count or view count."""
    city_json = paths.city / "city.json"
    if city_json.is_file():
        city = json.loads(city_json.read_text(encoding="utf-8"))
        made = {key: city.get(key) for key in ("seed", "locations", "views")}
        if made != {"seed": s.seed, "locations": s.locations, "views": s.views}:
            raise SystemExit(f"{city_json}: the city was built with {made}, this demo asks for seed {s.seed}, "
                             f"{s.locations} locations, {s.views} views: give another --city or remove it")


def claim_folders(paths: Paths, s: DemoSettings) -> None:
    """Refuse to resume into folders that a demo with other settings (another --seed, or a version of the demo
    whose defaults changed) filled: its city, models and runs would be kept and reported as this run's."""
    wanted = json.loads(json.dumps(asdict(s)))
    claim_city(paths, s)
    for folder in (paths.out, paths.work):
        recorded = folder / SETTINGS_FILE
        if not recorded.is_file() and any(entry.name != ".demo.lock" for entry in folder.iterdir()):
            raise SystemExit(f"{folder}: filled by an older demo that recorded no settings: `make clean-demo` (or "
                             "remove it) to start afresh")
        made = json.loads(recorded.read_text(encoding="utf-8")) if recorded.is_file() else wanted
        if made != wanted:
            differing = sorted(k for k, v in made.items() if wanted.get(k) != v)
            raise SystemExit(f"{recorded}: made by a demo with other settings ({', '.join(differing)} differ): give "
                             f"another folder, or `make clean-demo` to start afresh")
        write_atomic(recorded, json.dumps(wanted, indent=2) + "\n")


# --------------------------------------------------------------------------------------------- data
def build_city(paths: Paths, s: DemoSettings):
    if (paths.city / "city.json").is_file() and (paths.city / "locations.csv").is_file():
        return "kept the city built earlier"
    return build_demo_city(paths.city, seed=s.seed, locations=s.locations, views=s.views)


def build_stage2_data(paths: Paths, s: DemoSettings):
    return build_vqa(paths.city / "locations.csv", paths.city / "vqa", seed=s.seed,
                     single_turn=s.single_turn)["splits"]["train"]


def build_stage1_data(paths: Paths, s: DemoSettings):

    stage1 = paths.city / "stage1"
    delta = 0.5
    # No street name under the grafted street view (4:3), as the crops of Table 9's other deltas: the rows then
    # differ in delta alone.
    crop_city(paths.city, stage1 / "crops", size_m=s.crop_metres, pixels=336, seed=s.seed,
              reserved_box=reserved_fraction((4, 3), delta, "upper_right"), attribution=ATTRIBUTION, progress=True)
    graft_batch(city_pairs(paths.city, stage1 / "crops"), stage1 / "grafted", delta=delta, size=336)
    report = make_labels(paths.city, stage1 / "grafted", stage1 / "labels.jsonl", backend="rule",
                         crops_dir=stage1 / "crops", city_name="Helsinki")
    build_stage1_json(paths.city, stage1 / "labels.jsonl", stage1 / "train.json")
    return report


def tiny_size(s: DemoSettings) -> TinySize:
    # Four heads, as the measured runs had, each 32 wide, the narrowest vLLM's CPU attention takes, so `make
    # check-vllm` serves the demo's own models. Three heads of 32 (hidden / 32) left the warm-up's choices at guessing
    # for longer (docs/experiments.md, "Heads of 32 and a warm-up in two workers").
    return TinySize(hidden=s.hidden, layers=s.layers, heads=4, head_dim=32, intermediate=2 * s.hidden, vocab=2048,
                    image_size=s.image_size, vision_hidden=s.hidden, vision_layers=2)


def make_model(paths: Paths, s: DemoSettings):
    """The tiny LLaVA-Phi3-mini: the shipped warmed-up LLM (``s.pretrained_llm``) or one made and warmed up here on
    reading the city's names, and a random vision tower and projector of the seed."""
    if (paths.models / "projector" / "config.json").is_file():
        return "kept the model made earlier"
    size, warmup = tiny_size(s), reading_warmup(s)
    names = names_from_locations([paths.city / "locations.csv"])
    if s.pretrained_llm:
        differences = llm_differences(PRETRAINED_LLM, size, names, warmup)
        if differences:
            raise SystemExit(f"{PRETRAINED_LLM}: the shipped LLM does not fit this demo's settings ("
                             f"{'; '.join(differences)}): pass --warm-up-here to make one")
        copy_llm(PRETRAINED_LLM, paths.models)
    else:
        make_tiny_llm(paths.models, size, city_corpus(paths), seed=s.seed, names=names, warmup=warmup)
    return add_tiny_vision(paths.models, size, seed=s.seed)


def staging_folder(out: Path) -> Path:
    """Where ``make_demo_llm`` builds the LLM that replaces ``out``: its ``.partial`` sibling."""
    return out.with_name(out.name + ".partial")


def make_demo_llm(paths: Paths, s: DemoSettings, out: Path) -> dict:
    """What ``addressvlm/demo/pretrained_llm`` holds, made anew (``tools/make_demo_llm.py``): the city's data, then
    the tiny LLM warmed up on reading its names, in ``staging_folder(out)``, which replaces ``out`` only once
    its warm-up reached the target. Returns the warm-up's result."""
    claim_city(paths, s)
    steps = Steps(5)
    build_data(paths, s, steps)
    partial = staging_folder(out)
    shutil.rmtree(partial, ignore_errors=True)
    steps.run("tiny LLM, warmed up on reading the city's names", make_tiny_llm, partial, tiny_size(s),
              city_corpus(paths), seed=s.seed, names=names_from_locations([paths.city / "locations.csv"]),
              warmup=reading_warmup(s))
    result = read_warmup_result(partial)
    if result["reached_target"]:
        if out.exists():
            shutil.rmtree(out)
        partial.rename(out)
    return result


def reading_warmup(s: DemoSettings) -> ReadingWarmup:
    # The passage stands where the image's tokens go, as many as the tiny CLIP's patches.
    return ReadingWarmup(max_steps=s.reading_max_steps, passage_tokens=(s.image_size // tiny_size(s).patch_size) ** 2,
                         seed=s.seed, processes=s.reading_processes)


def city_corpus(paths: Paths) -> list[str]:
    """The texts of the city's training conversations, which the tiny tokenizer is trained on."""
    return [turn["value"] for name in ("vqa/train.json", "stage1/train.json")
            for record in read_llava_json(paths.city / name) for turn in record["conversations"]]


# --------------------------------------------------------------------------------------------- training
def train_stage(paths: Paths, s: DemoSettings, stage: int, name: str, init_from: Path | None, threads: int,
                bar_row: int = 0):
    return train_recipe(paths, s, paths.recipes / f"stage{stage}_helsinki.py", name,
                        "stage1/train.json" if stage == 1 else "vqa/train.json",
                        s.stage1_epochs if stage == 1 else s.stage2_epochs, init_from, threads, bar_row,
                        stage2=stage == 2)


def train_side_by_side(paths: Paths, s: DemoSettings) -> dict[str, float]:
    """Stage 1 beside the retrieval lane (its data and both retrievers), then AddressVLM's stage 2 (from stage 1)
    beside the Baseline's (stage 2 alone), each run on ``threads_per_run``: a model this small keeps one core busier
    than it keeps two, so two runs together finish sooner than one after the other. Returns each lane's seconds."""
    from concurrent.futures import ThreadPoolExecutor

    def timed(fn, *args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        return result, time.perf_counter() - start

    def retrieval_lane():
        retrieval.build_data(paths, ATTRIBUTION)
        return retrieval.train(paths, s.retrieval, s.seed, bar_row=1)

    with ThreadPoolExecutor(max_workers=1) as pool:
        retrievers = pool.submit(timed, retrieval_lane)
        stage1, stage1_seconds = timed(train_stage, paths, s, 1, "stage1_helsinki", None, s.threads_per_run)
        retrieval_seconds = retrievers.result()[1]
    with ThreadPoolExecutor(max_workers=1) as pool:
        baseline = pool.submit(timed, train_stage, paths, s, 2, "stage2_only", None, s.threads_per_run, bar_row=1)
        _, stage2_seconds = timed(train_stage, paths, s, 2, "stage1_stage2", stage1, s.threads_per_run)
        baseline_seconds = baseline.result()[1]
    return {"stage1_helsinki": stage1_seconds, "retrieval": retrieval_seconds, "stage1_stage2": stage2_seconds,
            "stage2_only": baseline_seconds}


def train_stage3(paths: Paths, s: DemoSettings) -> float:
    """Stage 3 from AddressVLM: its stage-2 run exported as a Hugging Face folder, ``s.stage3_steps`` steps of GRPO
    with the street-level reward (recipes/stage3/helsinki.yaml: TRL in .venv-modern, rollouts by plain generation),
    the result as a folder transformers 4.48 loads. A run recorded with the same settings and the same AddressVLM is
    kept. Returns its seconds."""
    run, export = paths.work / STAGE3, paths.work / "exports" / "stage1_stage2"
    recipe_path = paths.recipes / "stage3" / "helsinki.yaml"
    # The reward logged at 20 points of the run (the recipe's every 10 steps would leave a short run without one).
    trained = {"max_steps": s.stage3_steps, "logging_steps": max(1, s.stage3_steps // 20), "seed": s.seed,
               "lora_r": s.lora_rank, "lora_alpha": 2 * s.lora_rank}
    # The recipe by content: an edited recipe trains again.
    settings = {"recipe": file_digest(recipe_path), "overrides": trained,
                "from": weights_identity(paths.work / "stage1_stage2")}
    record = read_run_record(run) if run.is_dir() else None
    finished = (stage3_folder(paths) / "model.safetensors").is_file()
    if record and record["settings"] == as_recorded(settings) and finished:
        return record["seconds"]
    shutil.rmtree(run, ignore_errors=True)
    started = time.perf_counter()
    export_hf(paths.recipes / "stage2_helsinki.py", paths.work / "stage1_stage2", export, dtype="float32",
              model_root=paths.models, replace=True)
    overrides = {"model_name_or_path": export, "city": paths.city, "streets": paths.city / "streets.geojson",
                 "output_dir": run, **trained}
    recipe = {**read_recipe(recipe_path), **overrides}
    try:
        prepare_prompts(recipe)
        status = launch(recipe_path, overrides=overrides)
    except FileNotFoundError as missing:  # the modern environment: `make demo` builds it
        raise SystemExit(f"stage 3: {missing}") from None
    if status:
        raise SystemExit(f"{run}: the GRPO trainer stopped (exit {status}); its output is above")
    convert(recipe)
    seconds = time.perf_counter() - started
    write_run_record(run, settings, seconds)
    return seconds


# --------------------------------------------------------------------------------------------- answers and scores
def rank_and_measure(paths: Paths, s: DemoSettings, name: str) -> dict:
    """Beyond exact match, for one tuned model: every district, street and address of the city ranked by the model's
    likelihood for each generation question (top-1/top-5), the metre error of the street it generated and of its
    top-ranked street, and two pictures (the district confusion, the error map). Returns the metrics."""
    questions_path = held_out_questions(paths)
    ranked_path = paths.out / "predictions" / f"{name}.ranked.jsonl"
    model_settings = drop_stale(ranked_path, paths, name)
    gazetteer = build_gazetteer(read_locations(paths.city / "locations.csv"))
    rank_questions(load_model(paths, s, name), read_questions(questions_path), gazetteer, ranked_path,
                   image_folder=paths.city, model_settings=model_settings)
    questions, rankings = read_ranked_names(questions_path, ranked_path)
    metrics = top_k_accuracy(questions, rankings)
    generated = {qid: text for qid, (_, text) in read_predictions(paths.out / "predictions" / f"{name}.jsonl").items()}
    top1 = {qid: names[0] for qid, names in rankings.items()}
    errors, placed = street_error_files(questions_path, paths.city / "locations.csv", paths.city / "streets.geojson",
                                        {"street": generated, "street_top1": top1})
    metrics.update(errors)
    pictures = paths.out / "pictures"
    draw_district_confusion(district_confusion(questions, generated, gazetteer.districts),
                            pictures / f"district_confusion_{name}.png", title=f"{LABELS[name]}: districts named")
    draw_street_errors(read_street_map(paths.city / "streets.geojson"), placed["street"],
                       pictures / f"street_errors_{name}.png", title=f"{LABELS[name]}: streets named")
    write_atomic(paths.out / "metrics" / f"{name}.closed_set.json",
                 json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    return metrics


def retrieve_and_restrict(paths: Paths, s: DemoSettings) -> dict:
    """Both retrievers' R@K on the test split, and AddressVLM's closed-set ranking restricted to the names of one
    retriever's top tiles per street view (``candidates_retriever``), beside its ranking over every name of the city."""
    results = retrieval.evaluate(paths, s.retrieval, s.seed)
    questions_path = paths.city / "vqa" / "test_questions.jsonl"
    ranked_path = paths.out / "predictions" / "stage1_stage2.ranked_retrieved.jsonl"
    model_settings = drop_stale(ranked_path, paths, "stage1_stage2")
    k = s.retrieval.candidates_k
    rank_questions(load_model(paths, s, "stage1_stage2"), read_questions(questions_path),
                   build_gazetteer(read_locations(paths.city / "locations.csv")), ranked_path,
                   image_folder=paths.city, model_settings=model_settings,
                   candidates=(paths.out / "retrieval" / s.retrieval.candidates_retriever / "retrieved.jsonl", k))
    questions, restricted_names = read_ranked_names(questions_path, ranked_path)
    restricted = top_k_accuracy(questions, restricted_names)
    # The same questions ranked over every name of the city (rank_and_measure ranked all held-out questions).
    _, every_name = read_ranked_names(held_out_questions(paths), paths.out / "predictions" / "stage1_stage2.ranked.jsonl")
    unrestricted = top_k_accuracy(questions, {q["question_id"]: every_name[q["question_id"]] for q in questions
                                              if q["question_id"] in every_name})
    write_atomic(paths.out / "metrics" / "stage1_stage2.closed_set_retrieved.json",
                 json.dumps({"restricted": restricted, "unrestricted": unrestricted}, indent=2) + "\n")
    return {"retrievers": results, "restricted": restricted, "unrestricted": unrestricted, "candidates_k": k,
            "candidates_retriever": s.retrieval.candidates_retriever}


def street_distribution(paths: Paths, s: DemoSettings) -> list[Path]:
    """Fig. 5 for a few test images (Appendix D.1, ``street_distribution.sample_before_and_after``): the zero-shot
    model's choices among the streets the tuned model named, the options shuffled. The paper's "after" model is the
    stage-1 model; here it is AddressVLM's stage 2, since the tiny stage-1 model answers in reasons, not names."""
    rows = read_locations(paths.city / "locations.csv")
    chosen = pick_test_images(rows, s.street_images)
    street_map = read_street_map(paths.city / "streets.geojson")
    city_streets = sorted({r.street for r in rows})
    samples = paths.out / "street_samples"
    for stale in samples.glob("*.jsonl"):  # the models may have been retrained since
        stale.unlink()
    after_path, before_path = sample_before_and_after(
        [row.image for row in chosen], model_sampler(load_model(paths, s, "stage1_stage2"), paths.city, seed=s.seed),
        model_sampler(load_model(paths, s, "zero_shot"), paths.city, seed=s.seed), city_streets, samples,
        s.street_samples, s.seed)
    after = {r["image"]: count_streets(r["answers"], city_streets) for r in read_sampled_answers(after_path)}
    before = {r["image"]: count_streets(r["answers"], city_streets, r["options"])
              for r in read_sampled_answers(before_path)}
    pictures = []
    for i, row in enumerate(chosen):
        png = paths.out / "pictures" / f"street_distribution_{i}.png"
        draw_street_distribution(street_map, [("before alignment: zero-shot, options shuffled", before[row.image]),
                                              ("after: stage 1 + 2 (AddressVLM)", after[row.image])],
                                 row.lat, row.lon, png, title=f"{row.image}: true street {row.street}")
        write_atomic(png.with_suffix(".json"), json.dumps({"image": row.image, "street": row.street,
                                                           "before": before[row.image].as_dict(),
                                                           "after": after[row.image].as_dict()},
                                                          indent=2, ensure_ascii=False) + "\n")
        pictures.append(png)
    return pictures


# --------------------------------------------------------------------------------------------- report
def copy_pictures(paths: Paths) -> dict[str, list[str]]:
    """A few inputs for the report: street views, a labelled crop, grafted samples."""
    pictures = paths.out / "pictures"
    pictures.mkdir(parents=True, exist_ok=True)
    rows = [r for r in read_locations(paths.city / "locations.csv") if r.split == "train"][:3]
    chosen: dict[str, list[str]] = {"street views": [], "labelled crop": [], "grafted": []}
    for i, row in enumerate(rows):
        target = pictures / f"street_view_{i}.jpg"
        shutil.copyfile(paths.city / row.image, target)
        chosen["street views"].append(target.name)
        grafted = paths.city / "stage1" / "grafted" / grafted_name(row.image)
        if grafted.is_file():
            shutil.copyfile(grafted, pictures / f"grafted_{i}.jpg")
            chosen["grafted"].append(f"grafted_{i}.jpg")
    crop = sorted((paths.city / "stage1" / "crops").glob("*.png")) + sorted((paths.city / "stage1" / "crops").glob("*.jpg"))
    if crop:
        shutil.copyfile(crop[0], pictures / f"labelled_crop{crop[0].suffix}")
        chosen["labelled crop"].append(f"labelled_crop{crop[0].suffix}")
    return chosen


def majority_shares(questions: list[dict]) -> dict[str, float]:
    """Accuracy of always giving the most common test answer, per generation level: a guess that even knows the
    test set's answer distribution."""
    from collections import Counter

    shares = {}
    for level, key in (("district", "A_d_G"), ("street", "A_s_G")):
        answers = Counter(q["answer"] for q in questions if q["level"] == level and q["qtype"] == "generation")
        if answers:
            shares[key] = answers.most_common(1)[0][1] / sum(answers.values())
    return shares


def write_report(paths: Paths, s: DemoSettings, metrics: dict[str, dict], spreads: dict[str, dict], steps: Steps,
                 pictures: dict, distribution: list[Path], district_method: str, closed_set: dict[str, dict],
                 retrieved: dict | None = None) -> tuple[Path, list[dict]]:
    """report.md, with AddressVLM and the Baseline paired by question (metrics/paired.json) and the learning
    targets checked (metrics/targets.json). Returns the report and the targets."""
    questions = read_questions(held_out_questions(paths))
    reading = read_warmup_result(paths.models)
    majority = majority_shares(questions)
    answers = {name: {qid: text for qid, (_, text) in read_predictions(paths.out / "predictions" / f"{name}.jsonl")
                      .items()} for name in TUNED}
    compared = paired_comparison(questions, answers["stage1_stage2"], answers["stage2_only"])
    compared_stage3 = paired_comparison(questions, answers[STAGE3], answers["stage1_stage2"])
    targets = learning_targets(metrics, majority, reading)
    write_atomic(paths.out / "metrics" / "paired.json", json.dumps(compared, indent=2) + "\n")
    write_atomic(paths.out / "metrics" / PAIRED_STAGE3_FILE, json.dumps(compared_stage3, indent=2) + "\n")
    stage3 = {"compared": compared_stage3, "picture": draw_reward_curve(
        paths.work / STAGE3 / REWARD_CURVE, paths.out / "pictures" / "stage3_reward.png").name, "steps": s.stage3_steps,
              "seconds": read_run_record(paths.work / STAGE3)["seconds"]}
    write_atomic(paths.out / "metrics" / TARGETS_FILE, json.dumps(targets, indent=2, ensure_ascii=False) + "\n")
    text = render_report(metrics, steps.times, pictures, [p.name for p in distribution], asdict(s),
                         district_method, ATTRIBUTION, majority, spreads, reading, closed_set, retrieved, compared,
                         targets, stage3)
    report = paths.out / "report.md"
    write_atomic(report, text)
    return report, targets


def read_targets(out: str | Path) -> list[dict]:
    """The learning targets a demo run into ``out`` checked (``write_report``)."""
    path = Path(out) / "metrics" / TARGETS_FILE
    targets = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(targets, list) or any(not isinstance(t, dict) or {"target", "figure", "met"} - set(t)
                                            for t in targets):
        raise ValueError(f"{path}: not a list of learning targets (each with target, figure, met)")
    return targets


def run_demo(out: str | Path = "demo_output", city: str | Path = "data/helsinki",
             work: str | Path = "work_dirs/demo_helsinki", settings: DemoSettings = DemoSettings()) -> Path:
    import torch

    paths = Paths(Path(out), Path(city), Path(work))
    torch.set_num_threads(settings.threads)  # the answers; training runs and the warm-up's workers set their own
    with held_alone([paths.out, paths.city, paths.work]):
        return _run_steps(paths, settings)


def build_data(paths: Paths, s: DemoSettings, steps: Steps):
    """The city and both stages' training data, as ``steps`` 1-4; returns the city's summary."""
    summary = steps.run("build the Helsinki demo city", build_city, paths, s)
    steps.run("pin location-disjoint splits (7:2:1)", pin_splits, paths.city / "locations.csv", s.seed)
    steps.run("stage-2 VQA (templates of Tables B4/B5)", build_stage2_data, paths, s)
    steps.run("stage-1 data: labelled crops, grafts, rule reasons", build_stage1_data, paths, s)
    return summary


def _run_steps(paths: Paths, settings: DemoSettings) -> Path:
    # The data (4), the model, training, stage 3, an answering step per model, a ranking step per tuned model,
    # retrieval, the street distribution and the report.
    steps = Steps(10 + len(MODELS) + len(TUNED))
    s = settings
    claim_folders(paths, s)
    summary = build_data(paths, s, steps)
    steps.run("tiny LLaVA-Phi3-mini", make_model, paths, s)
    runs = steps.run("train stage 1, then stage 2 (AddressVLM) beside stage 2 only (Baseline)", train_side_by_side,
                     paths, s)
    steps.times.update({f"  of which {RUN_NAMES[name]}": seconds for name, seconds in runs.items()})
    steps.run("stage 3: GRPO from AddressVLM with the street-level reward (TRL, .venv-modern)", train_stage3, paths, s)
    scored = {name: steps.run(f"answer and score: {name}", answer_and_score, paths, s, name) for name in MODELS}
    metrics = {name: result[0] for name, result in scored.items()}
    spreads = {name: answer_spread(result[1]) for name, result in scored.items()}
    closed_set = {name: steps.run(f"rank the city's names, metre errors: {name}", rank_and_measure, paths, s, name)
                  for name in TUNED}
    retrieved = steps.run("retrieval: R@K of both retrievers; AddressVLM ranking among retrieved names",
                          retrieve_and_restrict, paths, s)
    distribution = steps.run("street distribution (Fig. 5)", street_distribution, paths, s)
    pictures = copy_pictures(paths)
    method = json.loads((paths.city / "city.json").read_text()).get("district_method", "") \
        if (paths.city / "city.json").is_file() else getattr(summary, "district_method", "")
    report, targets = steps.run("report", write_report, paths, s, metrics, spreads, steps, pictures, distribution,
                                method, closed_set, retrieved)
    print(f"report: {report}")
    print(targets_summary(targets), flush=True)
    return report
