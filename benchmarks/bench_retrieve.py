"""Time cross-view retrieval's two costs in one run: searching the gallery (query latency against 10K and 100K
tiles, flat matrix product vs faiss) and embedding it (tiles/s, batched vs one tile at a time).

Search: random unit vectors of the real embedding widths stand in for the embeddings (3072: LLaVA-Phi3-mini's hidden
state, the LVLM retriever; 768: CLIP ViT-L/14's projection, the dual encoder): search cost depends on the count and
width, not on the values. Per gallery size and width: the index build, a batch of queries (ms per query, the best of
--repeats) and single queries one at a time (median ms), the two indexes taking turns so that a passing load hits
both, and faiss's time as a ratio of the flat index's.

Gallery embedding (--config and --root): a recipes/retrieval/ retriever embeds the first --encode-limit tiles of the
city's gallery.jsonl in batches of --batch-size and one at a time, taking turns for --rounds rounds (image loading and
preprocessing included); reported are tiles/s of each, their ratio, the largest difference between the two ways'
embeddings, and the wall time for 10K and 100K tiles projected from the measured throughput. The retriever is a
trained one (--checkpoint), untrained (neither: the released weights), or the published architectures at random
weights (--random-release: CLIP ViT-L/14-336, and Phi-3-mini for the LVLM retriever; no download, timing only).

    python benchmarks/bench_retrieve.py                                   # 10K and 100K tiles, widths 3072 and 768
    python benchmarks/bench_retrieve.py --tiles 10000 --dims 768 --json bench.json
    python benchmarks/bench_retrieve.py --config recipes/retrieval/<recipe>.py --checkpoint work_dirs/<recipe> \\
        --root data/helsinki
    python benchmarks/bench_retrieve.py --embedding-only --config recipes/retrieval/clip_pitts.py --random-release \\
        --root data/helsinki --encode-limit 64 --device cuda --json bench_embed.json
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from addressvlm.core.records import DataError, write_atomic
from addressvlm.answering.retrieval_search import INDEX_KINDS, TOP_KEPT, make_index, normalised


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    return normalised(rng.standard_normal((n, dim), dtype=np.float32), "random")


def time_indexes(indexes: list[str], gallery: np.ndarray, batch: np.ndarray, singles: np.ndarray,
                 repeats: int) -> dict:
    """Per index: build seconds, ms per query of a batch (the best of ``repeats``) and the median ms of a single
    query. The indexes take turns at every measurement, so a load that comes and goes (a shared machine) falls on
    both alike and their ratio stays fair."""
    built, out = {}, {}
    for kind in indexes:
        started = time.perf_counter()
        built[kind] = make_index(gallery, kind)
        out[kind] = {"build_s": round(time.perf_counter() - started, 4)}
    batch_s = {kind: [] for kind in indexes}
    single_ms = {kind: [] for kind in indexes}
    for _ in range(repeats):
        for kind in indexes:
            started = time.perf_counter()
            built[kind].search(batch, TOP_KEPT)
            batch_s[kind].append(time.perf_counter() - started)
    for query in singles:
        for kind in indexes:
            started = time.perf_counter()
            built[kind].search(query[None], TOP_KEPT)
            single_ms[kind].append((time.perf_counter() - started) * 1000)
    for kind in indexes:
        out[kind]["batch_ms_per_query"] = min(batch_s[kind]) * 1000 / len(batch)
        out[kind]["single_query_ms"] = statistics.median(single_ms[kind])
    if {"flat", "faiss"} <= set(indexes):
        out["faiss_over_flat"] = {key: round(out["faiss"][key] / out["flat"][key], 3)
                                  for key in ("batch_ms_per_query", "single_query_ms")}
    for kind in indexes:
        out[kind] = {key: round(value, 6) for key, value in out[kind].items()}
    return out


def bench_search(tiles: list[int], dims: list[int], batch: int, singles: int, indexes: list[str], repeats: int = 3,
                 seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for dim in dims:
        for n in tiles:
            gallery = unit_vectors(rng, n, dim)
            queries = unit_vectors(rng, batch, dim)
            row = {"tiles": n, "dim": dim, "batch": batch,
                   **time_indexes(indexes, gallery, queries, queries[:singles], repeats)}
            rows.append(row)
            print(format_row(row), flush=True)
            del gallery
    return rows


def format_row(row: dict) -> str:
    parts = [f"{row['tiles']:>7,} tiles x {row['dim']:>4}:"]
    for kind in INDEX_KINDS:
        if kind in row:
            r = row[kind]
            parts.append(f"{kind} {r['batch_ms_per_query']:.3f} ms/query in a batch of {row['batch']}, "
                         f"{r['single_query_ms']:.2f} ms alone")
    if "faiss_over_flat" in row:
        ratio = row["faiss_over_flat"]
        parts.append(f"faiss/flat {ratio['batch_ms_per_query']:.2f} (batch), {ratio['single_query_ms']:.2f} (alone)")
    return "  ".join(parts[:1]) + " " + "; ".join(parts[1:])


def bench_encoder(config: str, checkpoint: str | None, root: Path, device: str | None, batch_size: int, limit: int,
                  rounds: int = 2, random_release: bool = False, cfg_options=(), model_root: str | None = None
                  ) -> dict:
    """Gallery tiles embedded per second, batched and one at a time (``encoders.time_gallery_embedding``), by the
    recipe's retriever: trained (``checkpoint``), untrained, or the published architectures at random weights.
    ``model_root`` moves the recipe's model paths there (before ``cfg_options``)."""
    from addressvlm.core.records import read_gallery
    from addressvlm.answering.retrieval_encoders import load_encoder, random_release_encoder, time_gallery_embedding
    from addressvlm.training.recipes import load_recipe, model_root_options

    if model_root:
        cfg_options = model_root_options(load_recipe(config), model_root) + list(cfg_options)
    tiles = read_gallery(root / "retrieval" / "gallery.jsonl")[:limit]
    if random_release:
        encoder, weights = random_release_encoder(config, cfg_options, device=device), "random release"
    else:
        encoder = load_encoder(config, checkpoint, cfg_options, device=device)
        weights = f"checkpoint {checkpoint}" if checkpoint else "untrained"
    result = time_gallery_embedding(encoder, [root / t["image"] for t in tiles], batch_size, rounds)
    return {"recipe": config, "weights": weights, **result}


def format_embedding(result: dict) -> str:
    batched, single = result["batched"], result["one_at_a_time"]
    return (f"gallery embedding, {result['encoder']} ({result['weights']}, {result['device']} {result['dtype']}, "
            f"{result['tiles']} tiles): {batched['tiles_per_s']:.2f} tiles/s in batches of {result['batch_size']}, "
            f"{single['tiles_per_s']:.2f} one at a time, batched/one-at-a-time "
            f"{result['batched_over_one_at_a_time']:.2f}; "
            f"projected for 10K / 100K tiles: {batched['projected_seconds']['10000']:.0f} s / "
            f"{batched['projected_seconds']['100000']:.0f} s batched; largest batched vs one-at-a-time difference "
            f"{result['max_abs_difference']:.1e}")


def cpu_model() -> str:
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(indexes: list[str], encoder: bool) -> dict:
    """What the figures depend on: cores, the load while measuring (a shared machine), library versions, the GPU."""
    versions = {"numpy": np.__version__}
    if "faiss" in indexes:
        import faiss

        versions["faiss"] = faiss.__version__
    if encoder:
        import torch

        versions["torch"] = torch.__version__
        if torch.cuda.is_available():
            versions["gpu"] = torch.cuda.get_device_name()
    return {"processor": cpu_model(), "cpus": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2),
            **versions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, nargs="+", default=[10_000, 100_000], help="gallery sizes")
    parser.add_argument("--dims", type=int, nargs="+", default=[3072, 768], help="embedding widths")
    parser.add_argument("--batch", type=int, default=256, help="queries searched together (256)")
    parser.add_argument("--singles", type=int, default=50, help="queries searched one at a time (50)")
    parser.add_argument("--repeats", type=int, default=3, help="batch searches per index, the best kept (3)")
    parser.add_argument("--index", choices=INDEX_KINDS, nargs="+", default=None,
                        help="indexes to time (default: flat, and faiss when installed)")
    parser.add_argument("--embedding-only", action="store_true", help="time the gallery embedding only, not search")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    encoder = parser.add_argument_group("gallery embedding throughput (optional)")
    encoder.add_argument("--config", help="a recipes/retrieval/*.py recipe")
    encoder.add_argument("--checkpoint", help="its trained work_dir, iter_N.pth or DeepSpeed folder (none: untrained)")
    encoder.add_argument("--random-release", action="store_true",
                         help="the published architectures at random weights instead of a download or checkpoint")
    encoder.add_argument("--model-root", help="the folder holding the recipe's models (as training's --model-root)")
    encoder.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                         help="recipe overrides, as training took them (e.g. the model settings a run trained with)")
    encoder.add_argument("--root", type=Path, help="city root with retrieval/gallery.jsonl")
    encoder.add_argument("--device", help="cuda, cpu (default: cuda when there is one)")
    encoder.add_argument("--batch-size", type=int, default=16, help="tiles embedded together (16)")
    encoder.add_argument("--encode-limit", type=int, default=256, help="tiles embedded each way and round (256)")
    encoder.add_argument("--rounds", type=int, default=2, help="turns of each way, the best kept (2)")
    args = parser.parse_args()
    if args.singles < 1 or args.batch < args.singles:
        parser.error("--singles must be at least 1 and at most --batch")
    if args.embedding_only and not args.config:
        parser.error("--embedding-only needs --config (the retriever to time)")
    if args.config:
        check_encoder_arguments(parser, args)
    indexes = [] if args.embedding_only else args.index
    if indexes is None:
        indexes = ["flat", "faiss"] if importlib.util.find_spec("faiss") else ["flat"]
        if indexes == ["flat"]:
            print("faiss is not installed: timing the flat index only (pip install faiss-cpu)")
    report = {"machine": machine(indexes, bool(args.config))}
    if not args.embedding_only:
        report["search"] = bench_search(args.tiles, args.dims, args.batch, args.singles, indexes, args.repeats)
    if args.config:
        try:
            report["encoder"] = bench_encoder(args.config, args.checkpoint, args.root, args.device, args.batch_size,
                                              args.encode_limit, args.rounds, args.random_release, args.cfg_options,
                                              args.model_root)
        except (OSError, TypeError, ValueError, DataError, RuntimeError) as exc:
            # Missing model folders (OSError from transformers, StageChainError), checkpoints that do not fit.
            raise SystemExit(f"error: {' '.join(str(exc).split())}") from None
        print(format_embedding(report["encoder"]))
    report["machine"]["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    if args.json:
        write_atomic(args.json, json.dumps(report, indent=2) + "\n")


def check_encoder_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not Path(args.config).is_file():
        parser.error(f"recipe {args.config} not found")
    if args.model_root and not Path(args.model_root).is_dir():
        parser.error(f"--model-root {args.model_root} is not a folder")
    if args.random_release and (args.checkpoint or args.model_root):
        parser.error("--random-release times the architectures at random weights: give it or --checkpoint / "
                     "--model-root, not both")
    if args.checkpoint and not Path(args.checkpoint).exists():
        parser.error(f"checkpoint {args.checkpoint} not found (a work_dir, an iter_N.pth or a DeepSpeed folder)")
    if not args.root:
        parser.error("--config needs --root (the city whose tiles are embedded)")
    if not (args.root / "retrieval" / "gallery.jsonl").is_file():
        parser.error(f"{args.root / 'retrieval' / 'gallery.jsonl'} not found (datasets_prep/build_retrieval.py "
                     "writes it)")
    if args.batch_size < 1 or args.encode_limit < 1 or args.rounds < 1:
        parser.error("--batch-size, --encode-limit and --rounds must be at least 1")


if __name__ == "__main__":
    main()
