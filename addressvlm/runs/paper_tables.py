"""The paper's tables by name: each row's recipes, the data variant they train on, the paper's own numbers, and the
runs that fill a table on a city (``tools/paper_table.py``).

A row is a stage-2 recipe (what is scored) and the stage-1 recipe it continues, both files in ``recipes/``; the data
a recipe trains on is read from the recipe itself (its ``data_path`` under its ``data_root``), so a table needs no
second list of files. On a CPU every run is the demo's scale (``addressvlm.demo.pipeline``: the tiny model, its
epochs and batch), two runs side by side on one thread each; with ``device="gpu"`` the recipes run as written,
through ``xtuner train`` on the given GPUs. A finished run is reused only when the record beside it
(``<run>.settings.json``) holds the settings it would be trained with now (the recipe, its overrides, the model, the
city's resolved path, its data's digest, the run it continues); one trained otherwise is refused, before any work,
naming what changed. Answers are kept while the weights that gave them are unchanged.
"""
from __future__ import annotations

import json
import os
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from addressvlm.answering.answering import answer_questions
from addressvlm.answering.loading import load_release_model, load_xtuner_model
from addressvlm.answering.scoring import HEADERS, METRICS, score
from addressvlm.core.records import (
    DataError, as_recorded, read_predictions, read_questions, read_run_record, replace_generated_block, write_atomic,
    write_run_record,
)
from addressvlm.data.graft import city_pairs, graft_batch, reserved_fraction
from addressvlm.data.labels import make_labels
from addressvlm.data.stage1_json import build_stage1_json
from addressvlm.data.vqa import build_vqa
from addressvlm.geo.crop import crop_city
from addressvlm.runs.engine import Paths, answer_and_score, planned_run, train_recipe
from addressvlm.training.checkpoints import weights_identity
from addressvlm.training.launcher import finished_run, has_finished, run_inputs, train
from addressvlm.training.recipes import load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
MAIN_STAGE1, MAIN_STAGE2 = "stage1_pitts.py", "stage2_pitts.py"
BASELINE = "ablations/table2_baseline_stage2.py"
ZERO_SHOT = None  # a row without a recipe: the untuned release (Table 2's first row)


@dataclass(frozen=True)
class Change:
    """How an ablation recipe differs from its parent: in words (its header and docs/paper_tables.md say them) and as
    the settings it gives the resolved config, dotted keys to values (its work_dir besides), which
    tests/test_recipes.py holds the recipe to."""
    parent: str                    # relative to recipes/
    says: str
    settings: dict


@dataclass(frozen=True)
class Row:
    label: str
    stage2: str | None             # the scored recipe, relative to recipes/ (None: the untuned release)
    stage1: str | None = None      # the recipe whose run stage 2 continues (None: stage 2 starts from the release)
    paper: dict = field(default_factory=dict)   # the paper's Pitts-VQA numbers: metric key -> percent
    stage1_change: Change | None = None         # how an ablation stage 1 differs from its parent (None: not one)
    stage2_change: Change | None = None

    @property
    def name(self) -> str:
        return Path(self.stage2).stem if self.stage2 else "zero_shot"


@dataclass(frozen=True)
class PaperTable:
    key: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[Row, ...]


def _paper(values: str, columns=METRICS) -> dict:
    return {k: float(v) for k, v in zip(columns, values.split()) if v != "-"}


MAIN_DATA_ROOT = "./data/pitts/"
MERGED_DATA_ROOT = "./data/pitts_sf/"  # Table 5's two cities, merged by merge_cities.py
WORK_ROOT = "./work_dirs/llava_phi3_mini/"


def _trains_on(data_file: str, **more) -> dict:
    return {"train_dataloader.dataset.data_path": MAIN_DATA_ROOT + data_file, **more}


def _merged_root(data_file: str) -> dict:
    return {"data_root": MERGED_DATA_ROOT, "train_dataloader.dataset.data_path": MERGED_DATA_ROOT + data_file,
            "train_dataloader.dataset.image_folder": MERGED_DATA_ROOT}


def _continuing(stage1: str, says: str = "", settings: dict | None = None) -> Change:
    """The paper's stage 2 started from an ablation's stage-1 run, with ``settings`` (``says``) besides."""
    return Change(MAIN_STAGE2, f"starts from {Path(stage1).name}'s work_dir" + (f"; {says}" if says else ""),
                  {"model.init_from_work_dir": WORK_ROOT + Path(stage1).stem, **(settings or {})})


def _stage1_row(label: str, name: str, says: str, settings: dict, paper: dict) -> Row:
    """A row whose stage 1 is an ablation (``ablations/<name>_stage1.py``) and whose stage 2 is the paper's,
    continuing it."""
    stage1 = f"ablations/{name}_stage1.py"
    return Row(label, f"ablations/{name}_stage2.py", stage1, paper, stage1_change=Change(MAIN_STAGE1, says, settings),
               stage2_change=_continuing(stage1))


def _stage2_row(label: str, name: str, says: str, settings: dict, paper: dict | None = None) -> Row:
    """A row that continues the paper's own stage 1 with an ablation stage 2 (``ablations/<name>_stage2.py``)."""
    return Row(label, f"ablations/{name}_stage2.py", MAIN_STAGE1, paper or {},
               stage2_change=Change(MAIN_STAGE2, says, settings))


OURS_PITTS = "88.73 93.54 95.16 92.70 72.51 91.70 93.98 87.46 90.02 69.60"
OURS = Row("AddressVLM (grafted, delta 0.5, labelled satellite)", MAIN_STAGE2, MAIN_STAGE1, _paper(OURS_PITTS))
SHORT = ("A", "A_sd")
BASELINE_ROW = Row("Baseline", BASELINE, None, {"A_d_G": 84.51, "A": 87.27, "A_sd": 60.52}, stage2_change=Change(
    MAIN_STAGE2, "no init_from_work_dir: training starts from the release itself and opens the LoRA adapters fresh "
                 "(stage_chain applies only to a stage started from another)", {"model.init_from_work_dir": None}))
DELTA_03 = _stage1_row("delta 0.3", "table9_d03", "the stage-1 JSON of street views grafted with overlap ratio "
                       "delta = 0.3", _trains_on("stage1/train_d03.json"),
                       _paper("87.32 92.93 94.59 92.05 71.61 91.04 93.27 86.78 89.32 68.98"))
# Table 4: the projector is trained in both stages of every row; the rows differ in the VE's and the LLM's LoRA.
TABLE4_AB = "ablations/table4_AB_stage1.py"
TABLE4_CD = "ablations/table4_CD_stage1.py"
TABLE4_AB_STAGE1 = Change(MAIN_STAGE1, "no LoRA on the LLM and none on CLIP: its checkpoint holds the projector alone",
                          {"model.llm_lora": None, "model.visual_encoder_lora": None})
TABLE4_CD_STAGE1 = Change(MAIN_STAGE1, "no LoRA on CLIP: its checkpoint holds the LLM's LoRA and the projector",
                          {"model.visual_encoder_lora": None})


def _table4_row(label: str, row: str, stage1: str, stage1_change: Change | None, says: str, settings: dict,
                paper: dict) -> Row:
    change = _continuing(stage1, says, settings) if stage1_change else Change(MAIN_STAGE2, says, settings)
    return Row(label, f"ablations/table4_{row}_stage2.py", stage1, paper, stage1_change=stage1_change,
               stage2_change=change)


TABLES = {t.key: t for t in (
    PaperTable("1", "Table 1: three ways of combining the satellite and street views in stage 1", METRICS, (
        _stage1_row("Two images stitched", "table1_stitched", "the stage-1 JSON of the street view and the satellite "
                    "crop side by side in one image", _trains_on("stage1/train_stitched.json"),
                    _paper("85.73 92.39 93.42 90.95 67.36 91.05 92.17 85.78 87.91 66.45")),
        _stage1_row("Two images input separately", "table1_two_images",
                    "the crop and the street view as two images, each its own block of 576 visual tokens in one "
                    "sequence: the \"separate\" stage-1 data (image lists), the dataset and collate function for "
                    "several images per sample (addressvlm/training/dataset.py) and max_length 2048 - 2 x 576 for the "
                    "text; XTuner's LLaVA model already fills several image positions of a sequence in order",
                    _trains_on("stage1/train_separate.json", **{
                        "train_dataloader.dataset.type": "addressvlm.training.dataset.CityMultiImageLLaVADataset",
                        "train_dataloader.dataset.images_per_sample": 2, "images_per_sample": 2,
                        "max_length": 2048 - 2 * 576, "train_dataloader.dataset.max_length": 2048 - 2 * 576,
                        "train_dataloader.collate_fn.type": "addressvlm.training.dataset.multi_image_collate_fn"}),
                    _paper("86.52 92.90 94.15 91.33 68.29 90.84 92.71 86.67 88.14 67.39")),
        replace(OURS, label="Two images grafted (ours)"))),
    PaperTable("2", "Table 2: zero-shot, Baseline (stage 2 only), GeoReasoner-style stage 1, AddressVLM", METRICS, (
        Row("LLaVA-Phi3-mini (zero-shot)", ZERO_SHOT, None,
            _paper("26.64 60.22 37.81 45.52 0.00 56.23 34.62 36.69 41.01 0.00")),
        BASELINE_ROW,
        _stage1_row("GeoReasoner", "table2_georeasoner", "GeoReasoner's reasoning tuning (Appendix C) in place of "
                    "cross-view alignment: street views alone, answered with district-level reasoning (Fig. B1's "
                    "prompt); the trained parts are stage 1's own, so the row differs from ours in data only",
                    _trains_on("georeasoner/train.json"), {"A_d_G": 83.29, "A": 86.03, "A_sd": 57.78}),
        replace(OURS, label="AddressVLM"))),
    PaperTable("3", "Table 3: overlap ratio delta and satellite type in stage 1", SHORT, (
        _stage1_row("Satellite w/o road, delta 0.3", "table3_noroad_d03", "the stage-1 JSON of crops without street "
                    "names, grafted with delta = 0.3", _trains_on("stage1/train_noroad_d03.json"),
                    {"A": 88.36, "A_sd": 64.05}),
        replace(DELTA_03, label="Satellite, delta 0.3", paper={"A": 89.32, "A_sd": 68.98}),
        _stage1_row("Satellite w/o road, delta 0.5", "table3_noroad_d05", "the stage-1 JSON of crops without street "
                    "names, grafted with delta = 0.5", _trains_on("stage1/train_noroad_d05.json"),
                    {"A": 88.06, "A_sd": 64.63}),
        replace(OURS, label="Satellite, delta 0.5 (ours)"))),
    PaperTable("4", "Table 4: which of the vision encoder (VE) and the LLM each stage trains", SHORT, (
        _table4_row("A: stage 1 -, stage 2 LLM", "A", TABLE4_AB, TABLE4_AB_STAGE1,
                    "no LoRA on CLIP, and the LLM's LoRA opened fresh (stage_chain llm_lora=\"open\": stage 1 "
                    "trained none); the projector is continued",
                    {"model.visual_encoder_lora": None, "model.stage_chain.llm_lora": "open"},
                    {"A": 86.58, "A_sd": 63.21}),
        _table4_row("B: stage 1 -, stage 2 VE + LLM", "B", TABLE4_AB, TABLE4_AB_STAGE1,
                    "the LoRA of the LLM and of CLIP opened fresh (stage_chain \"open\": stage 1 trained neither); "
                    "the projector is continued",
                    {"model.stage_chain.llm_lora": "open", "model.stage_chain.visual_encoder_lora": "open"},
                    {"A": 86.42, "A_sd": 62.95}),
        _table4_row("C: stage 1 LLM, stage 2 LLM", "C", TABLE4_CD, TABLE4_CD_STAGE1,
                    "no LoRA on CLIP; the LLM's LoRA and the projector are continued",
                    {"model.visual_encoder_lora": None}, {"A": 87.48, "A_sd": 63.03}),
        _table4_row("D: stage 1 LLM, stage 2 VE + LLM", "D", TABLE4_CD, TABLE4_CD_STAGE1,
                    "CLIP's LoRA opened fresh (stage_chain visual_encoder_lora=\"open\": stage 1 trained none); the "
                    "LLM's LoRA and the projector are continued",
                    {"model.stage_chain.visual_encoder_lora": "open"}, {"A": 89.53, "A_sd": 66.37}),
        _table4_row("E: stage 1 VE + LLM, stage 2 LLM", "E", MAIN_STAGE1, None,
                    "CLIP's LoRA from stage 1 carried frozen (stage_chain visual_encoder_lora=\"frozen\": loaded and "
                    "applied, not trained, saved unchanged with stage 2's checkpoint); the LLM's LoRA and the "
                    "projector are continued",
                    {"model.stage_chain.visual_encoder_lora": "frozen"}, {"A": 87.37, "A_sd": 63.52}),
        replace(OURS, label="Ours: stage 1 VE + LLM, stage 2 VE + LLM"))),
    PaperTable("5", "Table 5: one model trained on two cities (tested on this city)", METRICS, (
        replace(OURS, label="this city alone"),
        Row("Pitts + SF", "ablations/table5_pitts_sf_stage2.py", "ablations/table5_pitts_sf_stage1.py",
            _paper("89.24 93.17 95.16 92.66 72.90 92.77 94.34 88.18 90.37 70.63"),
            stage1_change=Change(MAIN_STAGE1, "the merged data root data/pitts_sf (its pitts/ and sf/ link to the two "
                                 "city roots: merge_cities.py)", _merged_root("stage1/train.json")),
            stage2_change=_continuing("ablations/table5_pitts_sf_stage1.py", "the merged data root data/pitts_sf",
                                      _merged_root("vqa/train.json"))))),
    PaperTable("6", "Table 6: general instruction data (llava_v1_5_mix665k) mixed into stage 2, general:address",
               ("A_d", "A_s", "A", "A_sd"), tuple(
        _stage2_row(f"w/ llava_v1_5_mix665k ({n}:1)", f"table6_general{n}", f"{n} general record(s) of "
                    "llava_v1_5_mix665k per address record (mix_general.py); images resolve from data/, holding "
                    "pitts/ and llava/", _trains_on(f"vqa_general{n}/train.json",
                                                    **{"train_dataloader.dataset.image_folder": "./data/"}),
                    _paper(values, ("A_d", "A_s", "A", "A_sd")))
        for n, values in ((5, "84.38 75.70 79.95 42.08"), (1, "87.97 79.08 83.43 50.53"))) + (
        replace(OURS, label="w/o llava_v1_5_mix665k"),)),
    PaperTable("8", "Table 8: with and without stage 1 (the paper's Tokyo rows; run on any city)", METRICS, (
        replace(OURS, label="AddressVLM", paper=_paper("73.85 89.49 88.62 84.99 63.52 88.28 86.03 81.57 82.28 65.81")),
        replace(BASELINE_ROW, label="AddressVLM w/o stage1",
                paper=_paper("70.63 86.22 85.93 83.14 58.06 85.39 84.72 78.37 80.76 56.37")))),
    PaperTable("9", "Table 9: overlap ratio delta of the grafted street view", METRICS, (
        DELTA_03,
        replace(OURS, label="delta 0.5 (ours)"),
        _stage1_row("delta 0.7", "table9_d07", "the stage-1 JSON of street views grafted with overlap ratio "
                    "delta = 0.7", _trains_on("stage1/train_d07.json"),
                    _paper("86.58 92.33 93.86 91.22 70.35 90.49 92.65 85.81 88.49 68.07")))),
    PaperTable("fig7", "Fig. 7: density of street views (per location) and of locations in stage 2", SHORT, (
        replace(OURS, label="100 % views, 100 % locations", paper={}),
        *(_stage2_row(f"{pct} % of each location's views", f"fig7_views{tag}", f"the stage-2 training JSON keeps "
                      f"{pct} % of each training location's street views (the test questions are the full set's)",
                      _trains_on(f"vqa_views{tag}/train.json"))
          for pct, tag in (("50", "50"), ("25", "25"), ("12.5", "12"))),
        *(_stage2_row(f"{pct} % of the locations", f"fig7_locations{pct}", f"the stage-2 training JSON keeps {pct} % "
                      "of the training locations (the test questions are the full set's)",
                      _trains_on(f"vqa_locations{pct}/train.json"))
          for pct in ("75", "50", "25")))),
)}

# Beyond the paper: rows with recipes of their own that tools/paper_table.py does not fill (their questions differ).
HINT_QUESTIONS = "vqa_hint5/val_questions.jsonl"
BEYOND_THE_PAPER = PaperTable("hint", "Beyond the paper: retrieved names as a hint in the stage-2 prompt, "
                              "docs/retrieval.md section 6", SHORT, (
    _stage2_row("AddressVLM + retrieved hint (k = 5)", "retrieval_hint", "the training JSON and the address-metrics "
                "hook's validation questions are data/pitts/vqa_hint5's: build_vqa's questions (the same seed and "
                "splits as vqa/) with the street and district names of the 5 best retrieved satellite tiles after each",
                _trains_on("vqa_hint5/train.json", address_eval_questions=HINT_QUESTIONS,
                           **{"default_hooks.address_metrics.questions": HINT_QUESTIONS})),))


# --------------------------------------------------------------------------------------------- the rows, written out
# The ablation recipes' headers and docs/paper_tables.md's table of rows are written from the rows above
# (tools/write_paper_rows.py); tests/test_paper_tables.py fails when a committed one differs.
ROWS_DOC = RECIPES.parent / "docs" / "paper_tables.md"
ROWS_BEGIN = ("<!-- The rows: written by tools/write_paper_rows.py from addressvlm/runs/paper_tables.py; edit them "
              "there. -->")
ROWS_END = "<!-- End of the rows. -->"
GPU_RUN = "--city data/pitts --device gpu --gpus 8"


def _every_table() -> tuple[PaperTable, ...]:
    return (*TABLES.values(), BEYOND_THE_PAPER)


def _stages(row: Row):
    """(recipe, change, stage) of each recipe of the row."""
    return ((row.stage1, row.stage1_change, 1), (row.stage2, row.stage2_change, 2))


def ablations() -> dict[str, Change]:
    """Every ablation recipe the rows name (relative to recipes/) and how it differs from its parent; a recipe that
    several rows name must be described the same way by each."""
    found: dict[str, Change] = {}
    for table in _every_table():
        for row in table.rows:
            for recipe, change, _ in _stages(row):
                if change is not None and found.setdefault(recipe, change) != change:
                    raise ValueError(f"{recipe}: the rows that name it describe it differently")
    return found


def _naming(recipe: str) -> list[tuple[PaperTable, list[Row], int]]:
    """The tables whose rows name ``recipe``, those rows, and the stage it is in them."""
    found = []
    for table in _every_table():
        rows = [row for row in table.rows if recipe in (row.stage1, row.stage2)]
        if rows:
            found.append((table, rows, 1 if rows[0].stage1 == recipe else 2))
    return found


def run_command(recipe: str) -> str:
    """The one command that runs an ablation recipe: its table's rows that need it (data, both stages, answers and
    scores), or, beyond the paper's tables, its training."""
    table, rows, _ = _naming(recipe)[0]
    if table.key not in TABLES:
        return (f"NPROC_PER_NODE=8 xtuner train recipes/{recipe} --deepspeed deepspeed_zero2 "
                f"(after recipes/{MAIN_STAGE1})")
    merged = any("data_root" in change.settings for row in rows for _, change, _ in _stages(row) if change)
    merged_city = " --merged-city data/pitts_sf" if merged else ""
    names = ",".join(row.name for row in rows)
    return f"python tools/paper_table.py --table {table.key} {GPU_RUN}{merged_city} --rows {names}"


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, 118, initial_indent="# ", subsequent_indent="# ", break_long_words=False,
                         break_on_hyphens=False)


def recipe_header(recipe: str) -> str:
    """An ablation recipe's header: its table and row, what it changes from its parent, the command that runs it."""
    change = ablations()[recipe]
    naming = _naming(recipe)
    tables = ", and of ".join(
        "{} ({}), row{} {}".format(*table.title.split(": ", 1), "s" if len(rows) > 1 else "",
                                   ", ".join(f'"{row.label}"' for row in rows)) for table, rows, _ in naming)
    lines = [*_comment(f"Stage {naming[0][2]} of {tables}."),
             *_comment(f"Changes from recipes/{change.parent}: {change.says}."),
             f"# Run: {run_command(recipe)}",
             "# By hand, and the data tools/paper_table.py does not build: docs/paper_tables.md, \"By hand\"."]
    return "\n".join(lines) + "\n"


def _recipe_cell(recipe: str | None, empty: str = "-") -> str:
    return f"`{recipe}`" if recipe else empty


def rows_doc() -> str:
    """docs/paper_tables.md's table of rows, between its markers."""
    lines = [ROWS_BEGIN, "",
             "| table | row | stage 1 recipe | stage 2 recipe | what the row changes | data it trains on |",
             "|---|---|---|---|---|---|"]
    for table in _every_table():
        for row in table.rows:
            changes = [f"stage {stage}: {change.says}" for _, change, stage in _stages(row) if change]
            data = [change.settings["train_dataloader.dataset.data_path"] for _, change, _ in _stages(row)
                    if change and "train_dataloader.dataset.data_path" in change.settings]
            stage2 = _recipe_cell(row.stage2, "the release (`eval/infer.py --zero-shot`)")
            paper_own = "the paper's own recipes" if row.stage2 == MAIN_STAGE2 else "-"
            lines.append(f"| {table.title.split(':')[0]} | {row.label} | {_recipe_cell(row.stage1)} | {stage2} | "
                         f"{'; '.join(changes) or paper_own} | {', '.join(f'`{d}`' for d in data)} |")
    return "\n".join([*lines, "", ROWS_END])


def _with_header(recipe: str, text: str) -> str:
    lines = text.splitlines(keepends=True)
    body = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    return recipe_header(recipe) + "".join(lines[body:])


def written_from_rows() -> dict[Path, str]:
    """Every file the rows write, with the text they give it: docs/paper_tables.md and each ablation recipe."""
    try:
        texts = {ROWS_DOC: replace_generated_block(ROWS_DOC.read_text(encoding="utf-8"), ROWS_BEGIN, ROWS_END,
                                                   rows_doc())}
    except ValueError as exc:
        raise DataError(ROWS_DOC, None, str(exc)) from None
    for recipe in ablations():
        path = RECIPES / recipe
        texts[path] = _with_header(recipe, path.read_text(encoding="utf-8"))
    return texts


def stale_from_rows() -> dict[Path, str]:
    """The files whose text differs from what the rows write, with the text they write."""
    return {path: text for path, text in written_from_rows().items() if path.read_text(encoding="utf-8") != text}


# --------------------------------------------------------------------------------------------- data variants
@dataclass(frozen=True)
class Stage1Variant:
    """Stage-1 data other than the main grafts: Table 1's layouts, Tables 3/9's delta and unlabelled crops."""
    variant: str = "grafted"
    delta: float = 0.5
    map_labels: bool = True


# Files a recipe may train on, relative to its data root, that tools/paper_table.py builds when missing. Others
# (the main stage-1 and stage-2 files, Table 5's merged cities, Table 6's mix) come from the commands in
# docs/paper_tables.md, "By hand".
STAGE1_VARIANTS = {
    "stage1/train_stitched.json": Stage1Variant(variant="stitched"),
    "stage1/train_separate.json": Stage1Variant(variant="separate"),
    "stage1/train_d03.json": Stage1Variant(delta=0.3),
    "stage1/train_d07.json": Stage1Variant(delta=0.7),
    "stage1/train_noroad_d03.json": Stage1Variant(delta=0.3, map_labels=False),
    "stage1/train_noroad_d05.json": Stage1Variant(delta=0.5, map_labels=False),
}
VQA_DENSITIES = {f"vqa_views{tag}/train.json": {"view_fraction": fraction}
                 for tag, fraction in (("50", 0.5), ("25", 0.25), ("12", 0.125))}
VQA_DENSITIES.update({f"vqa_locations{pct}/train.json": {"location_fraction": int(pct) / 100}
                      for pct in ("75", "50", "25")})


@dataclass(frozen=True)
class RecipeData:
    recipe: Path
    data_file: str            # relative to the recipe's data root, e.g. "stage1/train_d03.json"
    image_folder: str         # relative to the data root ("." for the city root)
    init_from: str | None     # the work_dir a stage 2 continues, else None
    work_dir: str
    data_root: str            # the recipe's city root, e.g. "./data/pitts/" (Table 5's: the merged "./data/pitts_sf/")


def recipe_data(recipe: str | Path) -> RecipeData:
    """What a recipe trains on, relative to its data root, and which run it continues."""
    path = RECIPES / recipe
    cfg = load_recipe(str(path))
    root = cfg.data_root
    dataset = cfg.train_dataloader.dataset
    if not dataset.data_path.startswith(root):
        raise ValueError(f"{path}: data_path {dataset.data_path!r} is not under data_root {root!r}")
    return RecipeData(path, dataset.data_path[len(root):], os.path.relpath(dataset.image_folder, root),
                      cfg.model.get("init_from_work_dir"), cfg.work_dir, root)


def city_roots(city: Path, merged_city: Path | None = None) -> dict[str, Path]:
    """Where each recipe data root lives here: the main recipes' on ``city``, Table 5's merged one on
    ``merged_city`` (``merge_cities.py``'s output)."""
    return {MAIN_DATA_ROOT: Path(city), **({MERGED_DATA_ROOT: Path(merged_city)} if merged_city else {})}


def city_of(data: RecipeData, roots: dict[str, Path]) -> Path:
    if data.data_root not in roots:
        raise ValueError(f"{data.recipe.name} trains on the data root {data.data_root!r} (merged cities, Table 5): give "
                         "the merged city root (tools/paper_table.py --merged-city, built by merge_cities.py)")
    return roots[data.data_root]


def build_stage1_variant(city: Path, data_file: str, label_backend: str = "rule", backend_options: dict | None = None,
                         crop_metres: float = 240.0, seed: int = 0) -> Path:
    """The crops, grafts, alignment reasons and JSON of one stage-1 variant, each step resumable."""
    spec = STAGE1_VARIANTS[data_file]
    tag = Path(data_file).stem[len("train_"):]
    stage1 = city / "stage1"
    if spec.map_labels and spec.delta == 0.5:
        crops = stage1 / "crops"            # the main crops, as the main stage-1 steps made them
    else:
        # The main crops' ground size, jitter and attribution, so that only the variant's own setting differs.
        main = stage1 / "crops" / "params.json"
        made = json.loads(main.read_text()) if main.is_file() else {}
        crops = stage1 / (f"crops_d{tag[-2:]}" if spec.map_labels else "crops_noroad")
        reserved = reserved_fraction((4, 3), spec.delta, "upper_right") if spec.map_labels else None
        crop_city(city, crops, size_m=made.get("size_m", crop_metres), pixels=336, jitter_m=made.get("jitter_m", 0),
                  seed=made.get("seed", seed), labels=spec.map_labels, font_px=made.get("font_px"),
                  reserved_box=reserved, attribution=made.get("attribution"), progress=True)
    images = stage1 / (spec.variant if spec.variant != "grafted" else f"grafted_{tag}")
    graft_batch(city_pairs(city, crops), images, delta=spec.delta, size=336, variant=spec.variant)
    labels = stage1 / f"labels_{tag}.jsonl"
    make_labels(city, images, labels, backend=label_backend, crops_dir=crops, variant=spec.variant,
                map_labels=spec.map_labels, backend_options=backend_options)
    build_stage1_json(city, labels, city / data_file, variant=spec.variant)
    return city / data_file


def ensure_data(city: Path, data: RecipeData, label_backend: str, backend_options: dict | None,
                seed: int = 0) -> None:
    """Build the recipe's data file on ``city`` when it is a variant this module knows; otherwise it must exist."""
    target = city / data.data_file
    if target.is_file():
        return
    if data.data_file in STAGE1_VARIANTS:
        build_stage1_variant(city, data.data_file, label_backend, backend_options, seed=seed)
    elif data.data_file in VQA_DENSITIES:
        build_vqa(city / "locations.csv", target.parent, seed=seed, **VQA_DENSITIES[data.data_file])
    else:
        raise DataError(target, None, f"missing: {data.recipe.relative_to(RECIPES.parent)} trains on it, and "
                                      "docs/paper_tables.md (\"By hand\") names the commands that build it")


# --------------------------------------------------------------------------------------------- runs
def run_name(recipe: str) -> str:
    return Path(recipe).stem


def plan_runs(table: PaperTable, rows: list[Row]) -> tuple[list[str], list[Row]]:
    """The stage-1 recipes to train (each once, however many rows continue it) and the rows whose stage 2 trains."""
    stage1 = list(dict.fromkeys(row.stage1 for row in rows if row.stage1))
    return stage1, [row for row in rows if row.stage2]


def check_chain(row: Row) -> None:
    """A row's stage 2 must continue the run of the stage 1 it names (the recipes' own work_dirs)."""
    stage2 = recipe_data(row.stage2)
    expected = recipe_data(row.stage1).work_dir if row.stage1 else None
    if stage2.init_from != expected:
        raise ValueError(f"{row.stage2} continues {stage2.init_from!r}, but its table row names {row.stage1} "
                         f"(work_dir {expected!r})")


def select_rows(table: PaperTable, names: list[str] | None) -> list[Row]:
    if not names:
        return list(table.rows)
    known = {row.name: row for row in table.rows}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"error: table {table.key} has no row(s) {', '.join(unknown)}; its rows: {', '.join(known)}")
    return [known[n] for n in names]


# The demo's own runs of the paper's recipes (`make demo` trains them under these names): a table on the demo city
# links them instead of training them again. Same recipes, data, settings and seed, so the same models (Table 4's
# Ours row trained under its recipe's name equalled the demo's AddressVLM: docs/experiments.md).
DEMO_RUNS = {"stage1_pitts": "stage1_helsinki", "stage2_pitts": "stage1_stage2", run_name(BASELINE): "stage2_only"}


class DemoScale:
    """Runs at the demo's scale on a CPU: the tiny model in ``model_root`` (``tools/paper_table.py`` makes it as the
    demo does), ``settings`` (``DemoSettings``) for epochs and batch, two
    runs side by side on one thread each; runs under ``work/<recipe name>``, each recorded beside it
    (``engine.train_recipe``). ``demo_work``: the work folder of a `make demo`, whose runs of the paper's own
    recipes are linked rather than trained again when their records show the same training."""

    parallel = 2

    def __init__(self, city: Path, out: Path, work: Path, settings, model_root: Path | None = None,
                 demo_work: Path | None = None):
        self.paths, self.settings = Paths(Path(out), Path(city), Path(work)), settings
        self.demo_work = Path(demo_work) if demo_work else None
        if model_root is not None:
            self.paths.models = Path(model_root)

    def _arguments(self, recipe: str, continues: str | None, is_stage2: bool, city: Path):
        """``engine.train_recipe``'s paths and arguments for one run on ``city``."""
        data, s = recipe_data(recipe), self.settings
        paths = replace(self.paths, city=city)
        paths.models = self.paths.models
        return paths, dict(recipe=data.recipe, data_file=data.data_file,
                           epochs=s.stage2_epochs if is_stage2 else s.stage1_epochs,
                           init_from=self.paths.work / run_name(continues) if continues else None,
                           image_folder=(city / data.image_folder).resolve(), stage2=is_stage2)

    def plan(self, recipe: str, continues: str | None, is_stage2: bool, city: Path) -> tuple[Path, dict]:
        """The run's work_dir and the settings recorded beside it (``engine.planned_run``)."""
        paths, arguments = self._arguments(recipe, continues, is_stage2, city)
        return self.paths.work / run_name(recipe), planned_run(paths, self.settings, **arguments)[1]

    def train(self, recipe: str, continues: str | None, is_stage2: bool, bar_row: int, city: Path) -> float | None:
        """Train one run, or reuse the finished one with the same settings (returning the seconds it took then)."""
        work_dir, settings = self.plan(recipe, continues, is_stage2, city)
        earlier = finished_run(work_dir, settings)
        if earlier is None:
            earlier = self.link_demo_run(run_name(recipe), settings)
        if earlier is not None:
            return earlier
        paths, arguments = self._arguments(recipe, continues, is_stage2, city)
        train_recipe(paths, self.settings, name=run_name(recipe), threads=self.settings.threads_per_run,
                     bar_row=bar_row, **arguments)
        return None

    def link_demo_run(self, name: str, settings: dict) -> float | None:
        """Link the demo's run of this recipe when its record shows the same training (everything but the recipe's
        file, which for the demo is the city's child of the same recipe); return the seconds it took."""
        demo_run = self.demo_work / DEMO_RUNS[name] if self.demo_work and name in DEMO_RUNS else None
        target = self.paths.work / name
        if demo_run is None or target.exists() or not has_finished(demo_run):
            return None
        record, wanted = read_run_record(demo_run), as_recorded(settings)
        if record is None or {k: v for k, v in record["settings"].items() if k != "recipe"} != \
                {k: v for k, v in wanted.items() if k != "recipe"}:
            print(f"{name}: the demo's run {demo_run} was trained otherwise; training it here", flush=True)
            return None
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(demo_run.resolve(), target_is_directory=True)
        write_run_record(target, settings, record["seconds"])
        print(f"{name}: the demo's run {demo_run}", flush=True)
        return record["seconds"]

    def answer(self, row: Row) -> dict:
        return answer_and_score(self.paths, self.settings, row.name, RECIPES / row.stage2 if row.stage2 else None)[0]


class RecipeScale:
    """Runs as the recipes are written (their models, Table A1's settings) on ``gpus`` GPUs through ``xtuner
    train`` with DeepSpeed; only the data paths move to ``city``. Runs under ``work/<recipe name>``, each recorded
    beside it (the recipe, GPUs, DeepSpeed config and ``launcher.run_inputs``)."""

    parallel = 1

    def __init__(self, city: Path, out: Path, work: Path, gpus: int = 8, deepspeed: str = "deepspeed_zero2"):
        self.city, self.out, self.work, self.gpus, self.deepspeed = Path(city), Path(out), Path(work), gpus, deepspeed

    def _overrides(self, recipe: str, continues: str | None, is_stage2: bool, city: Path) -> dict:
        data = recipe_data(recipe)
        overrides = {"train_dataloader.dataset.data_path": str(city / data.data_file),
                     "train_dataloader.dataset.image_folder": str((city / data.image_folder).resolve()) + "/"}
        if is_stage2:
            overrides["model.init_from_work_dir"] = str(self.work / run_name(continues)) if continues else None
        return overrides

    def plan(self, recipe: str, continues: str | None, is_stage2: bool, city: Path) -> tuple[Path, dict]:
        data, overrides = recipe_data(recipe), self._overrides(recipe, continues, is_stage2, city)
        return self.work / run_name(recipe), {
            "recipe": str(data.recipe), "gpus": self.gpus, "deepspeed": self.deepspeed,
            **run_inputs(city, data.data_file, overrides["train_dataloader.dataset.image_folder"],
                         overrides.get("model.init_from_work_dir"))}

    def train(self, recipe: str, continues: str | None, is_stage2: bool, bar_row: int, city: Path) -> float | None:
        work_dir, settings = self.plan(recipe, continues, is_stage2, city)
        earlier = finished_run(work_dir, settings)
        if earlier is not None:
            return earlier
        started = time.perf_counter()
        train(str(recipe_data(recipe).recipe), work_dir, device="gpu",
              overrides=self._overrides(recipe, continues, is_stage2, city), progress=True, name=run_name(recipe),
              gpus=self.gpus, deepspeed=self.deepspeed)
        write_run_record(work_dir, settings, time.perf_counter() - started)
        return None

    def answer(self, row: Row) -> dict:
        recipe = str(RECIPES / (row.stage2 or MAIN_STAGE2))
        run = self.work / row.name
        model = load_xtuner_model(recipe, run) if row.stage2 else load_release_model(recipe)
        questions = read_questions(self.city / "vqa" / "test_questions.jsonl")
        predictions = self.out / "predictions" / f"{row.name}.jsonl"
        answer_questions(model, questions, predictions, image_folder=self.city,
                         model_settings={"weights": weights_identity(run)} if row.stage2 else None)
        return score(questions, {qid: text for qid, (_, text) in read_predictions(predictions).items()})


def default_folder(city: Path, quick: bool = False) -> str:
    """The name of a city's default output and work folders: the city folder's name and a short hash of its resolved
    path (so ``/x/helsinki`` and ``data/helsinki`` share no runs), ``_quick`` at the quick scale."""
    import hashlib

    resolved = Path(city).resolve()
    return f"{resolved.name}-{hashlib.sha256(str(resolved).encode()).hexdigest()[:8]}" + ("_quick" if quick else "")


def fill_table(table: PaperTable, city: Path, out: Path, runner, rows: list[str] | None = None,
               label_backend: str = "rule", backend_options: dict | None = None, seed: int = 0,
               merged_city: Path | None = None) -> Path:
    """Every chosen row of ``table`` on ``city`` with ``runner`` (``DemoScale`` or ``RecipeScale``): the data
    variants, each stage 1 once, the stage-2 runs, answers and scores (every row on ``city``'s test questions);
    writes ``out/table_<key>.md`` and ``.json``. Table 5's runs train on ``merged_city``."""
    chosen = select_rows(table, rows)
    for row in chosen:
        if row.stage2:
            check_chain(row)
    timings: dict[str, float] = {}
    earlier: dict[str, float] = {}  # steps an earlier run did: the seconds they took then
    start = time.perf_counter()
    stage1, stage2_rows = plan_runs(table, chosen)
    roots = city_roots(city, merged_city)
    waves = ([(recipe, None, False) for recipe in stage1], [(row.stage2, row.stage1, True) for row in stage2_rows])
    for recipe, continues, is_stage2 in waves[0] + waves[1]:
        # Before any work: a finished run trained otherwise is refused now, not after the runs before it.
        data = recipe_data(recipe)
        if (city_of(data, roots) / data.data_file).is_file():
            finished_run(*runner.plan(recipe, continues, is_stage2, city_of(data, roots)))
    for recipe in stage1 + [row.stage2 for row in stage2_rows]:
        data = recipe_data(recipe)
        ensure_data(city_of(data, roots), data, label_backend, backend_options, seed=seed)
    timings["data"] = time.perf_counter() - start

    def timed_train(run: tuple[str, str | None, bool], bar_row: int) -> tuple[float, float | None]:
        began = time.perf_counter()
        reused = runner.train(*run, bar_row, city_of(recipe_data(run[0]), roots))
        return time.perf_counter() - began, reused

    for wave in waves:
        with ThreadPoolExecutor(max_workers=runner.parallel) as pool:
            bars = [i % runner.parallel for i in range(len(wave))]
            for (recipe, _, _), (seconds, reused) in zip(wave, pool.map(timed_train, wave, bars)):
                timings[f"train {run_name(recipe)}"] = seconds
                if reused is not None:
                    earlier[f"train {run_name(recipe)}"] = reused
    results = {}
    for row in chosen:
        began = time.perf_counter()
        results[row.name] = runner.answer(row)
        timings[f"answer {row.name}"] = time.perf_counter() - began
    timings["total"] = time.perf_counter() - start
    out = Path(out)
    report = out / f"table_{table.key}.md"
    write_atomic(report, render_table(table, chosen, results, timings, Path(city), earlier))
    write_atomic(out / f"table_{table.key}.json", json.dumps(
        {"table": table.key, "city": str(city), "rows": [row.name for row in chosen], "metrics": results,
         "seconds": timings, "reused": earlier}, indent=2) + "\n")
    return report


def _cell(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def render_table(table: PaperTable, rows: list[Row], results: dict[str, dict], timings: dict[str, float],
                 city: Path, earlier: dict[str, float] | None = None) -> str:
    """The table in the paper's columns: this city's numbers, and beneath them the paper's Pitts-VQA ones; the time
    of each step, where ``earlier`` names the steps an earlier run did (with the seconds they took then)."""
    earlier = earlier or {}

    def took(step: str, seconds: float) -> str:
        return f"reused (trained in {earlier[step]:.0f} s)" if step in earlier else f"{seconds:.0f}"

    header = "| row | recipe | " + " | ".join(HEADERS[c] for c in table.columns) + " |"
    rule = "|---|---|" + "---:|" * len(table.columns)
    ours = [f"| {row.label} | `{row.stage2 or 'release (zero-shot)'}` | "
            + " | ".join(_cell(results[row.name].get(c)) for c in table.columns) + " |" for row in rows]
    paper = [f"| {row.label} | paper | " + " | ".join(_cell(row.paper.get(c)) for c in table.columns) + " |"
             for row in rows if row.paper]
    lines = [f"# {table.title}", "", f"On `{city}` (tools/paper_table.py; accuracies in percent):", "", header, rule,
             *ours, "", "The paper's numbers (Pitts-VQA; Table 8: Tokyo) for reference, where it gives them:", "",
             header, rule, *paper, "", "Seconds per step (this machine):", "", "| step | seconds |", "|---|---:|",
             *(f"| {name} | {took(name, seconds)} |" for name, seconds in timings.items()), ""]
    return "\n".join(lines)
