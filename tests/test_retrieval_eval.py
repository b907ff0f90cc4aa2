"""eval/retrieve.py on a constructed case: hand-made embeddings whose every rank is known give exact R@K, metre
shares, chance and binomial p; flat and faiss indexes agree; the per-query file and its checks."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from PIL import Image

from addressvlm.core.records import DataError, read_retrieved, write_gallery, write_retrieval_queries, write_retrieved
from addressvlm.answering.retrieval_search import (Embeddings, metrics_by_kind, rank_queries, select_split,
                                                   truth_ranks)
from scripts import script

# Tiles on one meridian, DISTANCES_M metres north of the first: the metres between two are their difference.
DISTANCES_M = [0, 40, 90, 140, 300, 500, 520, 700, 800, 1000, 1200, 1500]
LAT0, LON0 = 60.0, 25.0
# (kind, true tile, the first tiles of its ranking; the rest follow in gallery order) -> rank, metres to the truth
CASES = [
    ("image", 0, [0], 1, 0),
    ("image", 1, [0, 1], 2, 40),
    ("image", 2, [3, 4, 2], 3, 50),
    ("image", 4, [3, 4], 2, 160),
    ("text", 3, [1, 3], 2, 100),
    ("text", 3, [3], 1, 0),
    ("image", 11, [], 12, 1500),
    ("text", 5, [2, 0, 1, 3, 4, 5], 6, 410),
    ("image", 0, [3, 0], 2, 140),
]

main = script("eval/retrieve.py").main


def constructed_case():
    """The tiles, queries and embeddings: tile i is the unit vector e_i, a query weighs the tiles in its order."""
    n = len(DISTANCES_M)
    tiles = [{"tile": f"t{i}", "image": f"tiles/t{i}.png", "lat": LAT0 + math.degrees(d / 6_371_000.0),
              "lon": LON0, "street": f"Street {i}", "district": f"District {i % 3}", "split": "test"}
             for i, d in enumerate(DISTANCES_M)]
    queries, vectors = [], []
    for k, (kind, truth, first, _, _) in enumerate(CASES):
        order = first + [i for i in range(n) if i not in first]
        weights = np.zeros(n)
        weights[order] = np.arange(n, 0, -1) * 3.0  # not unit length: retrieval normalises
        vectors.append(weights)
        queries.append({"query_id": f"q{k}", "kind": kind, "tile": f"t{truth}", "split": "test",
                        "image": f"views/q{k}.png" if kind == "image" else None,
                        "text": f"scene {k}" if kind == "text" else None, "source": "constructed"})
    return tiles, queries, np.array(vectors, np.float32), np.eye(n, dtype=np.float32) * 2.0


def test_exact_ranks_recalls_and_metres():
    tiles, queries, query_vectors, gallery_vectors = constructed_case()
    records = rank_queries(query_vectors, gallery_vectors, queries, tiles)
    assert [r["rank"] for r in records] == [case[3] for case in CASES]
    assert [r["metres"] for r in records] == pytest.approx([case[4] for case in CASES], abs=0.01)
    assert [t["tile"] for t in records[2]["top"]] == ["t3", "t4", "t2", "t0", "t1", "t5", "t6", "t7", "t8", "t9"]
    assert records[2]["top"][0] == {"tile": "t3", "score": pytest.approx(36 / np.linalg.norm(
        np.arange(12, 0, -1) * 3.0), abs=1e-6), "street": "Street 3", "district": "District 0"}
    metrics = metrics_by_kind(records, len(tiles))
    # Ranks 1,2,3,2,2,1,12,6,2 and metres 0,40,50,160,100,0,1500,410,140 over 9 queries and 12 tiles.
    assert {k: metrics[k] for k in ("R@1", "R@5", "R@10", "within_50m", "within_100m", "within_150m")} == {
        "R@1": 22.22, "R@5": 77.78, "R@10": 88.89, "within_50m": 44.44, "within_100m": 55.56, "within_150m": 66.67}
    assert (metrics["gallery_size"], metrics["queries"], metrics["chance_R@1"]) == (12, 9, 8.3333)
    p = 1 / 12  # P(at least 2 first-place hits of 9) under random picks
    assert metrics["binomial_p_R@1"] == pytest.approx(1 - (1 - p) ** 9 - 9 * p * (1 - p) ** 8, rel=1e-9)
    assert metrics["median_top1_metres"] == 100
    # Per true tile: t0 and t3 have two queries each (one of them ranks it first), t1, t2, t4, t5, t11 one each
    # (none first): 2 of 7 tiles found; by chance each is found with 1 - (11/12)^m, m its queries.
    chances = [1 - (11 / 12) ** 2] * 2 + [1 / 12] * 5
    by_subset = [np.prod([c if i in found else 1 - c for i, c in enumerate(chances)])
                 for size in range(2, 8) for found in itertools.combinations(range(7), size)]
    assert (metrics["tiles"], metrics["tiles_found_R@1"]) == (7, 28.57)
    assert metrics["chance_tiles_found_R@1"] == pytest.approx(100 * sum(chances) / 7, abs=0.01)
    assert metrics["p_tiles_found_R@1"] == pytest.approx(sum(by_subset), rel=1e-9)
    text = metrics["by_kind"]["text"]
    assert (text["R@1"], text["R@5"], text["R@10"], text["queries"]) == (33.33, 66.67, 100.0, 3)
    assert metrics["by_kind"]["image"]["queries"] == 6


def test_faiss_ranks_as_the_flat_index():
    pytest.importorskip("faiss")
    tiles, queries, query_vectors, gallery_vectors = constructed_case()
    flat = rank_queries(query_vectors, gallery_vectors, queries, tiles, "flat")
    faiss = rank_queries(query_vectors, gallery_vectors, queries, tiles, "faiss")
    assert [[t["tile"] for t in r["top"]] for r in faiss] == [[t["tile"] for t in r["top"]] for r in flat]
    assert [r["rank"] for r in faiss] == [r["rank"] for r in flat]
    # On random vectors of a real width too, with the truth's rank counted over the whole gallery.
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((500, 768)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    noisy = gallery[:40] + 0.05 * rng.standard_normal((40, 768)).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    from addressvlm.answering.retrieval_search import make_index

    for index in ("flat", "faiss"):
        scores, indices = make_index(gallery, index).search(noisy, 10)
        assert indices[:, 0].tolist() == list(range(40))
        assert np.all(np.diff(scores, axis=1) <= 1e-6)
    assert truth_ranks(noisy, gallery, np.arange(40)).tolist() == [1] * 40


def tile_colour(i: int) -> tuple[int, int, int]:
    return 20 * i, 255 - 20 * i, 67 * i % 256


def write_constructed_root(root):
    """The constructed case as files: tile i and the street views whose truth it is painted ``tile_colour(i)``;
    one more tile, of the train split."""
    tiles, queries, _, _ = constructed_case()
    for rec in tiles + [q for q in queries if q["image"]]:
        (root / rec["image"]).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), tile_colour(int(rec["tile"][1:]))).save(root / rec["image"])
    extra = {**tiles[0], "tile": "train_tile", "split": "train"}
    write_gallery(root / "retrieval" / "gallery.jsonl", tiles + [extra])
    write_retrieval_queries(root / "retrieval" / "queries.jsonl", queries)
    return tiles, extra


def test_cli_with_precomputed_embeddings(tmp_path):
    tiles, queries, query_vectors, gallery_vectors = constructed_case()
    root = tmp_path / "city"
    _, extra = write_constructed_root(root)
    npz = tmp_path / "embeddings.npz"
    Embeddings([q["query_id"] for q in queries], query_vectors, [t["tile"] for t in tiles], gallery_vectors).save(npz)
    out = tmp_path / "out"
    main(["--root", str(root), "--embeddings", str(npz), "--out", str(out), "--figure-queries", "2"])
    records = read_retrieved(out / "retrieved.jsonl")
    assert [r["rank"] for r in records] == [case[3] for case in CASES]
    assert records[0]["image"] == "views/q0.png" and records[4]["image"] is None
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["model"], metrics["R@1"], metrics["gallery_size"]) == ("embeddings", 22.22, 12)
    assert Image.open(out / "retrieval.png").size[0] > 300
    # Text queries alone; the train tile is not ranked against test queries unless asked, then it needs a row.
    main(["--root", str(root), "--embeddings", str(npz), "--out", str(out), "--kinds", "text", "--figure-queries",
          "0"])
    assert json.loads((out / "metrics.json").read_text())["R@10"] == 100.0
    with pytest.raises(SystemExit, match=r"embeddings\.npz: no embedding for 1 tile\(s\), first 'train_tile'"):
        main(["--root", str(root), "--embeddings", str(npz), "--out", str(out), "--gallery", "all"])
    assert [t["tile"] for t in select_split(tiles + [extra], queries, "test", whole_gallery=True)[0]][-1] == \
        "train_tile"


def test_outputs_are_checked_before_embedding(tmp_path):
    """`--out` naming an existing file (and `--save-embeddings` naming the embeddings read) is one line, before
    anything is embedded or written."""
    tiles, queries, query_vectors, gallery_vectors = constructed_case()
    root = tmp_path / "city"
    write_constructed_root(root)
    npz = tmp_path / "embeddings.npz"
    Embeddings([q["query_id"] for q in queries], query_vectors, [t["tile"] for t in tiles], gallery_vectors).save(npz)
    before = npz.read_bytes()
    (tmp_path / "taken").write_text("mine")
    for extra, message in ((["--out", str(tmp_path / "taken")], f"error: {tmp_path / 'taken'}: --out is a file, not a "
                                                                 "folder"),
                           (["--out", str(tmp_path / "out"), "--save-embeddings", str(npz)],
                            f"error: {npz}: --save-embeddings is the --embeddings input itself")):
        with pytest.raises(SystemExit) as refused:
            main(["--root", str(root), "--embeddings", str(npz), *extra])
        assert str(refused.value).startswith(message) and "\n" not in str(refused.value)
    assert (tmp_path / "taken").read_text() == "mine" and npz.read_bytes() == before
    assert not (tmp_path / "out").exists()


def test_embeddings_that_are_not_an_npz_are_named(tmp_path):
    import numpy as np

    root = tmp_path / "city"
    write_constructed_root(root)
    text = tmp_path / "embeddings.txt"
    text.write_text("query_ids,queries\nq0,0.1 0.2\n")
    with pytest.raises(SystemExit, match=r"^error: .*embeddings\.txt: not an \.npz of embeddings \(numpy\.savez's "
                                         r"format; --save-embeddings writes one\): ValueError$"):
        main(["--root", str(root), "--embeddings", str(text), "--out", str(tmp_path / "out")])
    single = tmp_path / "one.npy"
    np.save(single, np.zeros((2, 3)))
    with pytest.raises(SystemExit, match=r"one\.npy: a single \.npy array, not an \.npz"):
        main(["--root", str(root), "--embeddings", str(single), "--out", str(tmp_path / "out")])


def test_retrieved_file_checks(tmp_path):
    good = {"query_id": "q", "kind": "image", "image": "a.jpg", "tile": "t1", "rank": 1, "metres": 0.0,
            "top": [{"tile": "t1", "score": 0.9, "street": "A", "district": "B"},
                    {"tile": "t2", "score": 0.5, "street": "C", "district": "B"}]}
    path = tmp_path / "retrieved.jsonl"
    write_retrieved(path, [good])
    assert read_retrieved(path) == [good]
    for bad, message in (({**good, "rank": 0}, "rank 0 is not"), ({**good, "top": good["top"][::-1]}, ".*best first"),
                         ({**good, "metres": -1}, "metres -1")):
        path.write_text(json.dumps(good | {"query_id": "ok"}) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(DataError, match=rf"retrieved\.jsonl:2: {message}"):
            read_retrieved(path)


class MeanColourEncoder:
    """The encoder interface (``addressvlm.answering.retrieval_encoders``) at its simplest: an image is its mean colour,
    a text the colour its last word numbers; it records each call."""

    name = "mean_colour"

    def __init__(self):
        self.calls = []

    def embed_images(self, paths, role, batch_size=16):
        import torch

        self.calls.append((role, len(paths)))
        return torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32).mean(axis=(0, 1))
                                          for p in paths]))

    def embed_texts(self, texts, batch_size=16):
        import torch

        self.calls.append(("text", len(texts)))
        return torch.tensor([tile_colour(int(t.split()[-1]) % 12) for t in texts], dtype=torch.float32)


def test_an_encoder_embeds_the_gallery_once_and_each_query_by_its_kind(tmp_path):
    from addressvlm.answering.retrieval_search import evaluate_retrieval

    root = tmp_path / "city"
    write_constructed_root(root)
    encoder = MeanColourEncoder()
    metrics = evaluate_retrieval(root, tmp_path / "out", encoder, figure_queries=0)
    assert encoder.calls == [("gallery", 12), ("query", 6), ("text", 3)]
    # Street views share their tile's colour: every one retrieves it. Texts "scene 4/5/7" name tiles 4, 5, 7,
    # whose truths are 3, 3, 5.
    assert (metrics["model"], metrics["by_kind"]["image"]["R@1"], metrics["by_kind"]["text"]["R@1"]) == (
        "mean_colour", 100.0, 0.0)
    records = {r["query_id"]: r for r in read_retrieved(tmp_path / "out" / "retrieved.jsonl")}
    assert [records[f"q{k}"]["top"][0]["tile"] for k in (4, 5, 7)] == ["t4", "t5", "t7"]


def test_bench_times_both_indexes_in_one_run(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("faiss")
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_retrieve.py"
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(script), "--tiles", "300", "--dims", "16", "--batch", "4",
                           "--singles", "2", "--repeats", "1", "--json", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "faiss/flat" in done.stdout
    (row,) = json.loads(out.read_text())["search"]
    assert (row["tiles"], row["dim"]) == (300, 16)
    assert row["faiss_over_flat"]["batch_ms_per_query"] == pytest.approx(
        row["faiss"]["batch_ms_per_query"] / row["flat"]["batch_ms_per_query"], rel=0.01, abs=0.002)
