"""Time eval/retrieve.py's search: query latency against 10K and 100K tiles, flat matrix product vs faiss, in one run.

Random unit vectors of the real embedding widths stand in for the embeddings (3072: LLaVA-Phi3-mini's hidden state,
the LVLM retriever; 768: CLIP ViT-L/14's projection, the dual encoder): search cost depends on the count and width,
not on the values. Per gallery size and width: the index build, a batch of queries (ms per query, the best of
--repeats) and single queries one at a time (median ms), the two indexes taking turns so that a passing load hits
both, and faiss's time as a ratio of the flat index's. With an encoder (--config, --checkpoint, --root) it also
times embedding the city's gallery tiles (tiles/s).

    python eval/bench_retrieve.py                                   # 10K and 100K tiles, widths 3072 and 768
    python eval/bench_retrieve.py --tiles 10000 --dims 768 --json bench.json
    python eval/bench_retrieve.py --config recipes/retrieval/<recipe>.py --checkpoint work_dirs/<recipe> \\
        --root data/helsinki
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from addressvlm.records import write_atomic
from addressvlm.retrieval.search import INDEX_KINDS, TOP_KEPT, make_index, normalised


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
        out[kind]["batch_ms_per_query"] = round(min(batch_s[kind]) * 1000 / len(batch), 4)
        out[kind]["single_query_ms"] = round(statistics.median(single_ms[kind]), 4)
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
            if {"flat", "faiss"} <= set(indexes):
                row["faiss_over_flat"] = {key: round(row["faiss"][key] / row["flat"][key], 3)
                                          for key in ("batch_ms_per_query", "single_query_ms")}
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


def bench_encoder(config: str, checkpoint: str | None, root: Path, device: str | None, batch_size: int,
                  limit: int) -> dict:
    """Gallery tiles embedded per second by a trained encoder (the models' side of the cost)."""
    from addressvlm.records import read_gallery
    from addressvlm.retrieval.encoders import load_encoder

    encoder = load_encoder(config, checkpoint, device=device)
    tiles = read_gallery(root / "retrieval" / "gallery.jsonl")[:limit]
    started = time.perf_counter()
    encoder.embed_images([root / t["image"] for t in tiles], role="gallery", batch_size=batch_size)
    seconds = time.perf_counter() - started
    return {"encoder": encoder.name, "tiles": len(tiles), "seconds": round(seconds, 3),
            "tiles_per_s": round(len(tiles) / seconds, 2)}


def machine(indexes: list[str]) -> dict:
    """What the figures depend on: cores, the load while measuring (a shared machine), library versions."""
    import os
    import platform

    versions = {"numpy": np.__version__}
    if "faiss" in indexes:
        import faiss

        versions["faiss"] = faiss.__version__
    return {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2), **versions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, nargs="+", default=[10_000, 100_000], help="gallery sizes")
    parser.add_argument("--dims", type=int, nargs="+", default=[3072, 768], help="embedding widths")
    parser.add_argument("--batch", type=int, default=256, help="queries searched together (256)")
    parser.add_argument("--singles", type=int, default=50, help="queries searched one at a time (50)")
    parser.add_argument("--repeats", type=int, default=3, help="batch searches per index, the best kept (3)")
    parser.add_argument("--index", choices=INDEX_KINDS, nargs="+", default=None,
                        help="indexes to time (default: flat, and faiss when installed)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    encoder = parser.add_argument_group("gallery embedding throughput (optional)")
    encoder.add_argument("--config", help="a recipes/retrieval/*.py config")
    encoder.add_argument("--checkpoint", help="its trained work_dir or .pth")
    encoder.add_argument("--root", type=Path, help="city root with retrieval/gallery.jsonl")
    encoder.add_argument("--device", help="cuda, cpu")
    encoder.add_argument("--batch-size", type=int, default=16)
    encoder.add_argument("--encode-limit", type=int, default=256, help="tiles embedded (256)")
    args = parser.parse_args()
    if args.singles < 1 or args.batch < args.singles:
        parser.error("--singles must be at least 1 and at most --batch")
    indexes = args.index
    if indexes is None:
        try:
            import faiss  # noqa: F401

            indexes = ["flat", "faiss"]
        except ImportError:
            indexes = ["flat"]
            print("faiss is not installed: timing the flat index only (pip install faiss-cpu)")
    report = {"machine": machine(indexes),
              "search": bench_search(args.tiles, args.dims, args.batch, args.singles, indexes, args.repeats)}
    if args.config:
        if not args.root:
            parser.error("--config needs --root (the city whose tiles are embedded)")
        report["encoder"] = bench_encoder(args.config, args.checkpoint, args.root, args.device, args.batch_size,
                                          args.encode_limit)
        print(f"gallery embedding: {report['encoder']['tiles_per_s']} tiles/s ({report['encoder']['encoder']})")
    if args.json:
        write_atomic(args.json, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
