"""The demo's cross-view retrieval (docs/retrieval.md): both retrievers trained on the demo city through their
recipes, scored by R@K on the test split, and their top tiles given to AddressVLM as candidates.

The retrieval data and the two trainings run in one lane beside stage 1 (``pipeline.train_side_by_side``), on one
thread; evaluating them comes after the stage-2 runs.
"""
from __future__ import annotations

import json
from pathlib import Path

from addressvlm.answering.retrieval_encoders import load_encoder
from addressvlm.answering.retrieval_search import evaluate_retrieval
from addressvlm.core.records import VIEW_FACTS_FILE, read_retrieval_queries, write_atomic
from addressvlm.data.retrieval_data import build_city_retrieval
from addressvlm.runs.engine import RetrievalSettings
from addressvlm.standins.tiny_clip import make_tiny_clip
from addressvlm.training.launcher import train as train_recipe
from addressvlm.training.recipes import local_run_options

RETRIEVERS = ("lvlm_last_token", "clip_dual_encoder")
RECIPES = {"lvlm_last_token": "retrieval/lvlm_helsinki.py", "clip_dual_encoder": "retrieval/clip_helsinki.py"}
LABELS = {"lvlm_last_token": "LVLM retriever (LLaVA-Phi3-mini, last token)",
          "clip_dual_encoder": "CLIP dual encoder"}


def build_data(paths, attribution: str) -> str:
    """The retrieval data, its scene texts written by the rule backend from the city's view facts; a rerun keeps the
    tiles and texts made earlier (the build resumes) and refuses texts made otherwise."""
    if not (paths.city / VIEW_FACTS_FILE).is_file():
        raise SystemExit(f"{paths.city}: no {VIEW_FACTS_FILE} (a city built before the street views' facts were "
                         "recorded; the scene texts are written from them): remove it to rebuild")
    try:
        # One worker: this runs beside stage 1, which has the other core.
        return build_city_retrieval(paths.city, attribution=attribution, workers=1, progress=False).summary()
    except ValueError as exc:  # DataError, or tiles cut with other parameters (crop.check_run_params): named, one line
        raise SystemExit(str(exc)) from None


def clip_root(paths) -> Path:
    return paths.out / "models" / "clip-vit-large-patch14"


def make_clip(paths, r: RetrievalSettings, seed: int) -> Path:
    """A tiny random CLIP whose tokenizer is trained on the training split's scene texts."""
    root = clip_root(paths)
    if (root / "config.json").is_file():
        return root
    texts = [q["text"] for q in read_retrieval_queries(paths.city / "retrieval" / "queries.jsonl")
             if q["kind"] == "text" and q["split"] == "train"]
    return make_tiny_clip(root, corpus=texts, image_size=r.clip_image_size, vocab=512, seed=seed)


def run_overrides(name: str, paths, r: RetrievalSettings, seed: int) -> dict:
    iters, batch, lr = ((r.lvlm_iters, r.lvlm_batch, r.lvlm_lr) if name == "lvlm_last_token"
                        else (r.clip_iters, r.clip_batch, r.clip_lr))
    overrides = {"train_dataloader.dataset.data_root": str(paths.city), "train_dataloader.batch_size": batch,
                 "optim_wrapper.optimizer.lr": lr, "train_cfg.max_epochs": None, "train_cfg.max_iters": iters,
                 # Warm-up for the first tenth, then the rate held (eta_min = lr): too few steps to anneal.
                 "param_scheduler.0.end": 0.1, "param_scheduler.1.begin": 0.1, "param_scheduler.1.eta_min": lr,
                 "default_hooks.checkpoint.interval": iters, "default_hooks.logger.interval": 5,
                 "randomness.seed": seed}
    if name == "lvlm_last_token":
        overrides.update({"model.freeze_projector": False, "model.use_activation_checkpointing": False})
    else:
        # A random CLIP at the pretrained one's temperature (0.01) starts with a loss near 20.
        overrides["model.temperature"] = 0.07
    return overrides


def model_root(name: str, paths) -> Path:
    return paths.models if name == "lvlm_last_token" else clip_root(paths)


def train(paths, r: RetrievalSettings, seed: int, bar_row: int = 1) -> dict[str, Path]:
    """Both retrievers, one after the other on one thread; finished runs are kept."""
    make_clip(paths, r, seed)
    runs = {}
    for name in RETRIEVERS:
        work_dir = paths.work / "retrieval" / name
        if not (work_dir / "last_checkpoint").is_file():
            train_recipe(str(paths.recipes / RECIPES[name]), work_dir, str(model_root(name, paths)),
                         overrides=run_overrides(name, paths, r, seed), progress=True, name=name, threads=1,
                         bar_row=bar_row)
        runs[name] = work_dir
    return runs


def evaluate(paths, r: RetrievalSettings, seed: int) -> dict[str, dict]:
    """R@K of each retriever on the test split (its 24 tiles the gallery), street views and texts; writes
    ``metrics/retrieval.json`` (``<retriever>``: street view -> tile; ``<retriever>/scene_text``: scene text -> tile)
    and each one's files."""
    results = {}
    for name in RETRIEVERS:
        recipe = str(paths.recipes / RECIPES[name])
        # The model as it was trained: its folder, the CPU switches, the demo's model settings.
        options = local_run_options(recipe, str(model_root(name, paths)), overrides={
            k: v for k, v in run_overrides(name, paths, r, seed).items() if k.startswith("model.")})
        encoder = load_encoder(recipe, str(paths.work / "retrieval" / name), options, device="cpu")
        results[name] = evaluate_retrieval(paths.city, paths.out / "retrieval" / name, encoder, name=name,
                                           split="test", figure_queries=3)
    summary = {}
    for name, m in results.items():
        for kind, label in (("image", name), ("text", f"{name}/scene_text")):
            summary[label] = {key: m["by_kind"][kind][key] for key in ("R@1", "R@5", "R@10", "gallery_size", "queries")}
    write_atomic(paths.out / "metrics" / "retrieval.json", json.dumps(summary, indent=2) + "\n")
    return results
