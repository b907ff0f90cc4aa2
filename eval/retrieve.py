"""Cross-view retrieval evaluation (docs/retrieval.md): every query's satellite tiles ranked, R@K and metres.

    python eval/retrieve.py --root data/helsinki --config recipes/retrieval/<recipe>.py \
        --checkpoint work_dirs/<recipe> --out eval_results/retrieval/<recipe>
    python eval/retrieve.py --root data/helsinki --embeddings embeddings.npz --out eval_results/retrieval/mine
The gallery is the tiles of --split (default test; --gallery all for every tile), embedded once. Writes
retrieved.jsonl (per query: top-10 tiles, the true tile's rank, metres from the first tile to the truth),
metrics.json (R@1/5/10, within 50/100/150 m, chance R@1, a binomial test) and retrieval.png.
"""
from __future__ import annotations

from addressvlm.retrieval.search import main

if __name__ == "__main__":
    main()
