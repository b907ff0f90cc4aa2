"""Cross-view retrieval evaluation (docs/retrieval.md): rank a gallery of satellite tiles for every query.

The gallery is embedded once; each query's tiles are ranked by inner product of L2-normalised embeddings (cosine
similarity), by a plain matrix product (``flat``) or a faiss ``IndexFlatIP`` (``faiss``, when installed), both
exact. Per query: the best ``TOP_KEPT`` tiles with scores and names, the rank of the true tile (ties broken by
gallery order), and the metres from the first tile's centre to the true one. Metrics: R@1/5/10 and the share of
queries whose first tile lies within 50/100/150 m of the truth (CVG-Text's localisation), in percent, with chance
R@1 and a one-sided binomial test of R@1 against it.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from addressvlm.answering.retrieval_figure import draw_retrievals
from addressvlm.answering.scoring import percent
from addressvlm.core.records import DataError, read_gallery, read_retrieval_queries, write_atomic, write_retrieved

RECALL_KS = (1, 5, 10)
WITHIN_M = (50, 100, 150)
TOP_KEPT = 10
INDEX_KINDS = ("flat", "faiss")
QUERY_CHUNK = 1024  # queries scored per matrix product: bounds memory at QUERY_CHUNK x gallery floats
EARTH_RADIUS_M = 6_371_000.0


def normalised(vectors, what: str) -> np.ndarray:
    """Rows as float32 unit vectors (cosine similarity becomes an inner product); a zero row is an error."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or not array.shape[0]:
        raise ValueError(f"{what} embeddings must be a non-empty [N, D] matrix, not shape {array.shape}")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise ValueError(f"{what} embeddings hold a zero or non-finite row (row {int(np.argmin(norms))})")
    return array / norms


# --------------------------------------------------------------------------------------------- indexes
class FlatIndex:
    """Exact search by matrix product, the top ``k`` picked with ``argpartition``."""

    name = "flat"

    def __init__(self, gallery: np.ndarray):
        self.gallery = np.ascontiguousarray(gallery, dtype=np.float32)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, indices)``, each ``[Q, k]``, best first."""
        k = min(k, len(self.gallery))
        scores_out, indices_out = [], []
        for start in range(0, len(queries), QUERY_CHUNK):
            scores = queries[start:start + QUERY_CHUNK] @ self.gallery.T
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else \
                np.tile(np.arange(scores.shape[1]), (len(scores), 1))
            top_scores = np.take_along_axis(scores, top, axis=1)
            order = np.lexsort((top, -top_scores), axis=1)  # best first, ties by gallery order
            indices_out.append(np.take_along_axis(top, order, axis=1))
            scores_out.append(np.take_along_axis(top_scores, order, axis=1))
        return np.concatenate(scores_out), np.concatenate(indices_out)


class FaissIndex:
    """Exact search by faiss's ``IndexFlatIP`` (its BLAS kernels and heap selection)."""

    name = "faiss"

    def __init__(self, gallery: np.ndarray):
        try:
            import faiss
        except ImportError:
            raise ValueError("--index faiss needs faiss (pip install faiss-cpu); --index flat needs nothing") from None
        self.index = faiss.IndexFlatIP(gallery.shape[1])
        self.index.add(np.ascontiguousarray(gallery, dtype=np.float32))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, self.index.ntotal))


def make_index(gallery: np.ndarray, kind: str = "flat"):
    if kind not in INDEX_KINDS:
        raise ValueError(f"index {kind!r} not in {INDEX_KINDS}")
    return FlatIndex(gallery) if kind == "flat" else FaissIndex(gallery)


def truth_ranks(queries: np.ndarray, gallery: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The 1-based rank of each query's true tile ``truth[i]`` among all tiles: one plus the tiles scoring higher,
    plus those scoring the same that come earlier in the gallery (the indexes' order)."""
    ranks = np.empty(len(queries), dtype=np.int64)
    positions = np.arange(len(gallery))
    for start in range(0, len(queries), QUERY_CHUNK):
        scores = queries[start:start + QUERY_CHUNK] @ gallery.T
        rows = np.arange(len(scores))
        own = truth[start:start + QUERY_CHUNK]
        true_score = scores[rows, own][:, None]
        ahead = (scores > true_score) | ((scores == true_score) & (positions[None, :] < own[:, None]))
        ranks[start:start + QUERY_CHUNK] = 1 + ahead.sum(axis=1)
    return ranks


# --------------------------------------------------------------------------------------------- ranking
def metres_between(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine) in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def select_split(gallery: Sequence[dict], queries: Sequence[dict], split: str | None, whole_gallery: bool = False,
                 kinds: Sequence[str] = ("image", "text")) -> tuple[list[dict], list[dict]]:
    """The tiles and queries one evaluation ranks: the queries of ``split`` (every split: None) and ``kinds``,
    against the tiles of that split (as CVG-Text and GeoText-1652 evaluate) or, with ``whole_gallery``, all."""
    tiles = [t for t in gallery if whole_gallery or split is None or t["split"] == split]
    chosen = [q for q in queries if (split is None or q["split"] == split) and q["kind"] in kinds]
    return tiles, chosen


def rank_queries(query_vectors: np.ndarray, gallery_vectors: np.ndarray, queries: Sequence[dict],
                 tiles: Sequence[dict], index: str = "flat", top_k: int = TOP_KEPT) -> list[dict]:
    """The ``retrieved.jsonl`` record of each query (``records.write_retrieved``): its ``top_k`` tiles best first,
    the rank of its true tile, and the metres from the first tile's centre to the true tile's (null where either
    has no coordinates)."""
    if len(query_vectors) != len(queries) or len(gallery_vectors) != len(tiles):
        raise ValueError(f"{len(query_vectors)} query and {len(gallery_vectors)} gallery embeddings for "
                         f"{len(queries)} queries and {len(tiles)} tiles")
    position = {t["tile"]: i for i, t in enumerate(tiles)}
    missing = [q["query_id"] for q in queries if q["tile"] not in position]
    if missing:
        raise ValueError(f"{len(missing)} queries' true tile is not in the gallery ranked (first: {missing[0]!r})")
    query_vectors = normalised(query_vectors, "query")
    gallery_vectors = normalised(gallery_vectors, "gallery")
    truth = np.array([position[q["tile"]] for q in queries], dtype=np.int64)
    scores, indices = make_index(gallery_vectors, index).search(query_vectors, top_k)
    ranks = truth_ranks(query_vectors, gallery_vectors, truth)
    records = []
    for q, rank, row_scores, row_indices in zip(queries, ranks, scores, indices):
        first, true = tiles[int(row_indices[0])], tiles[position[q["tile"]]]
        located = None not in (first["lat"], first["lon"], true["lat"], true["lon"])
        metres = metres_between(first["lat"], first["lon"], true["lat"], true["lon"]) if located else None
        records.append({
            "query_id": q["query_id"], "kind": q["kind"], "image": q["image"], "tile": q["tile"], "rank": int(rank),
            "metres": None if metres is None else round(metres, 2),
            "top": [{"tile": tiles[int(i)]["tile"], "score": round(float(s), 6), "street": tiles[int(i)]["street"],
                     "district": tiles[int(i)]["district"]} for s, i in zip(row_scores, row_indices)],
        })
    return records


def retrieval_metrics(records: Sequence[dict], gallery_size: int) -> dict:
    """R@K and within-metres shares (percent), chance R@1 and the binomial test's p-value, over ``records``."""
    from scipy.stats import binomtest

    n = len(records)
    hits = sum(r["rank"] == 1 for r in records)
    metrics: dict = {f"R@{k}": percent(sum(r["rank"] <= k for r in records), n) for k in RECALL_KS}
    located = [r["metres"] for r in records if r["metres"] is not None]
    for threshold in WITHIN_M:
        metrics[f"within_{threshold}m"] = percent(sum(m <= threshold for m in located), len(located))
    metrics.update({
        "median_top1_metres": round(float(np.median(located)), 2) if located else None,
        "gallery_size": gallery_size, "queries": n, "located_queries": len(located),
        "chance_R@1": round(100.0 / gallery_size, 4) if gallery_size else None,
        # One-sided: how likely this many first-place hits would be if each query picked a tile at random.
        "binomial_p_R@1": float(binomtest(hits, n, 1.0 / gallery_size, alternative="greater").pvalue)
        if n and gallery_size else None,
    })
    metrics.update(tiles_found_first(records, gallery_size))
    return metrics


def tiles_found_first(records: Sequence[dict], gallery_size: int) -> dict:
    """The binomial test above counts every query, but the street views of one place share its tile and its look,
    so their hits are not independent. Per place instead: the share of true tiles that at least one of their queries
    ranks first, and the chance of at least that many if every query picked a tile at random (a tile with m queries
    is found with probability 1 - (1 - 1/G)^m; the count of found tiles is Poisson-binomial)."""
    queries_of: dict[str, list[int]] = {}
    for r in records:
        queries_of.setdefault(r["tile"], []).append(r["rank"])
    if not queries_of or not gallery_size:
        return {"tiles": len(queries_of), "tiles_found_R@1": None, "chance_tiles_found_R@1": None,
                "p_tiles_found_R@1": None}
    chances = [1.0 - (1.0 - 1.0 / gallery_size) ** len(ranks) for ranks in queries_of.values()]
    found = sum(min(ranks) == 1 for ranks in queries_of.values())
    count = np.zeros(len(chances) + 1)   # count[k]: probability that k tiles are found by chance
    count[0] = 1.0
    for chance in chances:
        count[1:] = count[1:] * (1 - chance) + count[:-1] * chance
        count[0] *= 1 - chance
    return {"tiles": len(chances), "tiles_found_R@1": round(100.0 * found / len(chances), 2),
            "chance_tiles_found_R@1": round(100.0 * sum(chances) / len(chances), 2),
            "p_tiles_found_R@1": float(min(1.0, count[found:].sum()))}


def metrics_by_kind(records: Sequence[dict], gallery_size: int) -> dict:
    """Metrics of all queries, and of each query kind on its own (street views and texts are different tasks)."""
    out = retrieval_metrics(records, gallery_size)
    out["by_kind"] = {kind: retrieval_metrics([r for r in records if r["kind"] == kind], gallery_size)
                      for kind in ("image", "text") if any(r["kind"] == kind for r in records)}
    return out


# --------------------------------------------------------------------------------------------- embeddings
@dataclass
class Embeddings:
    """Query and gallery embeddings with the ids of their rows."""

    query_ids: list[str]
    queries: np.ndarray
    tile_ids: list[str]
    gallery: np.ndarray
    source: str = "embeddings"  # the file they came from, for errors

    def save(self, path: str | os.PathLike) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, query_ids=np.array(self.query_ids), queries=self.queries,
                 tile_ids=np.array(self.tile_ids), gallery=self.gallery)

    def rows_for(self, queries: Sequence[dict], tiles: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
        """The embeddings of ``queries`` and ``tiles``, in their order; an id without a row is an error."""
        out = []
        for ids, matrix, wanted, key in ((self.query_ids, self.queries, queries, "query_id"),
                                         (self.tile_ids, self.gallery, tiles, "tile")):
            row = {value: i for i, value in enumerate(ids)}
            absent = [item[key] for item in wanted if item[key] not in row]
            if absent:
                raise DataError(self.source, None, f"no embedding for {len(absent)} {key}(s), first {absent[0]!r}")
            out.append(matrix[[row[item[key]] for item in wanted]])
        return out[0], out[1]


def load_embeddings(path: str | os.PathLike) -> Embeddings:
    """An ``.npz`` of ``query_ids`` [Q], ``queries`` [Q, D], ``tile_ids`` [N], ``gallery`` [N, D]."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, "embeddings file not found")
    try:
        opened = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:  # numpy takes any other file for a pickle it may not load
        raise DataError(path, None, f"not an .npz of embeddings (numpy.savez's format; --save-embeddings writes "
                                    f"one): {type(exc).__name__}") from None
    if not isinstance(opened, np.lib.npyio.NpzFile):
        raise DataError(path, None, "a single .npy array, not an .npz of query_ids, queries, tile_ids and gallery")
    with opened as data:
        missing = [k for k in ("query_ids", "queries", "tile_ids", "gallery") if k not in data]
        if missing:
            raise DataError(path, None, f"missing array(s) {', '.join(missing)}")
        found = Embeddings([str(v) for v in data["query_ids"]], data["queries"], [str(v) for v in data["tile_ids"]],
                           data["gallery"], str(path))
    if found.queries.ndim != 2 or found.gallery.ndim != 2 or found.queries.shape[1] != found.gallery.shape[1] or \
            len(found.query_ids) != len(found.queries) or len(found.tile_ids) != len(found.gallery):
        raise DataError(path, None, f"queries {found.queries.shape} and gallery {found.gallery.shape} must be "
                                    "[N, D] with one id per row and the same D")
    return found


def embed_with_encoder(encoder, root: Path, queries: Sequence[dict], tiles: Sequence[dict],
                       batch_size: int = 16) -> Embeddings:
    """Embed the gallery once (role ``gallery``), the street views (role ``query``) and the texts with an
    ``addressvlm.answering.retrieval_encoders`` encoder; rows keep the order of ``queries`` and ``tiles``."""
    gallery = encoder.embed_images([root / t["image"] for t in tiles], role="gallery", batch_size=batch_size)
    images = [q for q in queries if q["kind"] == "image"]
    texts = [q for q in queries if q["kind"] == "text"]
    width = gallery.shape[1]
    by_id = {}
    if images:
        vectors = encoder.embed_images([root / q["image"] for q in images], role="query", batch_size=batch_size)
        by_id.update(zip((q["query_id"] for q in images), np.asarray(vectors, dtype=np.float32)))
    if texts:
        vectors = encoder.embed_texts([q["text"] for q in texts], batch_size=batch_size)
        by_id.update(zip((q["query_id"] for q in texts), np.asarray(vectors, dtype=np.float32)))
    ids = [q["query_id"] for q in queries]
    matrix = np.stack([by_id[i] for i in ids]) if ids else np.zeros((0, width), np.float32)
    return Embeddings(ids, matrix, [t["tile"] for t in tiles], np.asarray(gallery, dtype=np.float32))


def evaluate_retrieval(root, out_dir, source, *, name: str | None = None, split: str | None = "test",
                       whole_gallery: bool = False, kinds: Sequence[str] = ("image", "text"), index: str = "flat",
                       batch_size: int = 16, figure_queries: int = 4, save_embeddings=None) -> dict:
    """Evaluate one retriever on ``<root>/retrieval/``: ``source`` is an encoder (``load_encoder``'s) or
    ``Embeddings``. Writes ``retrieved.jsonl``, ``metrics.json`` and ``retrieval.png`` to ``out_dir`` and returns
    the metrics (``metrics_by_kind`` plus the model's name, the selection and the seconds spent)."""
    import json
    import time

    root, out_dir = Path(root), Path(out_dir)
    gallery = read_gallery(root / "retrieval" / "gallery.jsonl")
    queries_path = root / "retrieval" / "queries.jsonl"
    tiles, chosen = select_split(gallery, read_retrieval_queries(queries_path, gallery), split, whole_gallery, kinds)
    if not chosen or not tiles:
        raise DataError(queries_path, None, f"no {'/'.join(kinds)} queries or tiles in split {split or 'all'!r}")
    started = time.perf_counter()
    if isinstance(source, Embeddings):
        query_vectors, gallery_vectors = source.rows_for(chosen, tiles)
    else:
        embedded = embed_with_encoder(source, root, chosen, tiles, batch_size)
        query_vectors, gallery_vectors = embedded.queries, embedded.gallery
        name = name or source.name
    embedded_at = time.perf_counter()
    if save_embeddings:
        Embeddings([q["query_id"] for q in chosen], query_vectors, [t["tile"] for t in tiles],
                   gallery_vectors).save(save_embeddings)
    records = rank_queries(query_vectors, gallery_vectors, chosen, tiles, index)
    ranked_at = time.perf_counter()
    write_retrieved(out_dir / "retrieved.jsonl", records)
    metrics = {"model": name or "embeddings", "split": split or "all", "gallery": "all" if whole_gallery else "split",
               "index": index, **metrics_by_kind(records, len(tiles)),
               "seconds": {"embedding": round(embedded_at - started, 3), "ranking": round(ranked_at - embedded_at, 3)}}
    write_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    if figure_queries > 0:
        draw_retrievals(records, {q["query_id"]: q for q in chosen}, {t["tile"]: t for t in tiles}, root,
                        out_dir / "retrieval.png", queries_shown=figure_queries)
    return metrics
