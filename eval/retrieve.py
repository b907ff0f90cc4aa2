"""Cross-view retrieval evaluation (docs/retrieval.md): every query's satellite tiles ranked, R@K and metres.

    python eval/retrieve.py --root data/helsinki --config recipes/retrieval/<recipe>.py \
        --checkpoint work_dirs/<recipe> --out eval_results/retrieval/<recipe>
    python eval/retrieve.py --root data/helsinki --embeddings embeddings.npz --out eval_results/retrieval/mine
The gallery is the tiles of --split (default test; --gallery all for every tile), embedded once. Writes
retrieved.jsonl (per query: top-10 tiles, the true tile's rank, metres from the first tile to the truth),
metrics.json (R@1/5/10, within 50/100/150 m, chance R@1, a binomial test) and retrieval.png.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from addressvlm.answering.retrieval_encoders import load_encoder
from addressvlm.answering.retrieval_search import INDEX_KINDS, evaluate_retrieval, load_embeddings
from addressvlm.core.records import DataError, refuse_output_over_inputs, writable_output
from addressvlm.training.checkpoints import CheckpointError
from addressvlm.training.recipes import model_root_options, read_recipe
from addressvlm.training.stage_chain import StageChainError


# --------------------------------------------------------------------------------------------- command line
def build_parser():
    import argparse

    parser = argparse.ArgumentParser(
        description="Rank the satellite tiles of <root>/retrieval/gallery.jsonl for every query of queries.jsonl "
                    "(docs/retrieval.md); write retrieved.jsonl, metrics.json and retrieval.png to --out.")
    parser.add_argument("--root", required=True, help="city or dataset root holding retrieval/")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--split", default="test", help="train, val, test or all (default test)")
    parser.add_argument("--gallery", choices=("split", "all"), default="split",
                        help="rank the tiles of the split (default, as CVG-Text and GeoText-1652 do) or all tiles")
    parser.add_argument("--kinds", default="image,text", help="query kinds: image, text or both (default)")
    source = parser.add_argument_group("embeddings: an encoder (--config, --checkpoint) or --embeddings")
    source.add_argument("--config", help="a recipes/retrieval/*.py config")
    source.add_argument("--checkpoint", help="its trained work_dir or .pth")
    source.add_argument("--model-root", help="local release folder replacing the recipe's model_root / llava_root "
                                             "(CLIP, or LLaVA-Phi3-mini)")
    source.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides")
    source.add_argument("--device", help="cuda, cpu (default: cuda when present)")
    source.add_argument("--batch-size", type=int, default=16, help="images or texts per encoder batch (16)")
    source.add_argument("--embeddings", help="an .npz of query_ids, queries, tile_ids, gallery (precomputed)")
    parser.add_argument("--save-embeddings", help="write the embeddings used to this .npz")
    parser.add_argument("--index", choices=INDEX_KINDS, default="flat",
                        help="flat: a matrix product (default); faiss: IndexFlatIP (pip install faiss-cpu)")
    parser.add_argument("--name", help="the model's name in metrics.json (default: the encoder's)")
    parser.add_argument("--figure-queries", type=int, default=4, help="queries drawn in retrieval.png (0: none)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    if not kinds or any(k not in ("image", "text") for k in kinds):
        parser.error(f"--kinds must name image and/or text, not {args.kinds!r}")
    if bool(args.embeddings) == bool(args.config):
        parser.error("give either --config (with --checkpoint) or --embeddings")

    try:
        writable_output(args.out, "--out", folder=True)  # before the encoder loads and embeds, not after
        if args.save_embeddings:
            writable_output(args.save_embeddings, "--save-embeddings")
            refuse_output_over_inputs(args.save_embeddings, [("--embeddings", args.embeddings)], "--save-embeddings")
        if args.embeddings:
            source = load_embeddings(args.embeddings)
            name = args.name or Path(args.embeddings).stem
        else:
            options = model_root_options(read_recipe(args.config, retrieval=True), args.model_root) \
                if args.model_root else []
            source = load_encoder(args.config, args.checkpoint, cfg_options=options + args.cfg_options or None,
                                  device=args.device)
            name = args.name
        metrics = evaluate_retrieval(args.root, args.out, source, name=name,
                                     split=None if args.split == "all" else args.split,
                                     whole_gallery=args.gallery == "all", kinds=kinds, index=args.index,
                                     batch_size=args.batch_size, figure_queries=args.figure_queries,
                                     save_embeddings=args.save_embeddings)
    except (DataError, ValueError, FileNotFoundError, CheckpointError, StageChainError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"{metrics['model']}: R@1 {metrics['R@1']}%, R@5 {metrics['R@5']}%, R@10 {metrics['R@10']}% of "
          f"{metrics['queries']} queries against {metrics['gallery_size']} tiles (chance R@1 "
          f"{metrics['chance_R@1']}%, binomial p {metrics['binomial_p_R@1']:.3g}); {metrics['tiles_found_R@1']}% of "
          f"{metrics['tiles']} places found first by one of their queries (chance {metrics['chance_tiles_found_R@1']}%, "
          f"p {metrics['p_tiles_found_R@1']:.3g}) -> {args.out}")


if __name__ == "__main__":
    main()
