"""The retrieval figure: a few queries (a street view, or a scene text) beside their best tiles, the true tile framed
green, so a reader sees what the model confuses."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Mapping, Sequence

from addressvlm.answering.street_distribution import headless_pyplot

TRUE_COLOUR = "#1a9641"
OTHER_COLOUR = "#bbbbbb"


def shown_records(records: Sequence[dict], count: int) -> list[dict]:
    """``count`` records spread evenly over the file, each query kind present when the file has it."""
    kinds = [k for k in ("image", "text") if any(r["kind"] == k for r in records)]
    picked = []
    for i, kind in enumerate(kinds):
        share = count // len(kinds) + (i < count % len(kinds))
        of_kind = [r for r in records if r["kind"] == kind]
        picked += of_kind[::max(1, len(of_kind) // max(1, share))][:share]
    return picked


def draw_retrievals(records: Sequence[dict], queries: Mapping[str, dict], tiles: Mapping[str, dict], root,
                    out_png: str | os.PathLike, queries_shown: int = 4, top: int = 5) -> None:
    """One row per shown query: the query, then its first ``top`` tiles with rank and score."""
    from PIL import Image

    plt = headless_pyplot()
    rows = shown_records(records, queries_shown)
    if not rows:
        return
    root = Path(root)
    fig, axes = plt.subplots(len(rows), top + 1, figsize=(2.0 * (top + 1), 2.2 * len(rows)), squeeze=False)
    for axis_row, record in zip(axes, rows):
        query = queries[record["query_id"]]
        first = axis_row[0]
        if query["kind"] == "image":
            first.imshow(Image.open(root / query["image"]).convert("RGB"))
        else:
            first.text(0.02, 0.98, textwrap.fill(query["text"], 30), va="top", ha="left", fontsize=6,
                       transform=first.transAxes, wrap=True)
        first.set_title(f"{record['query_id'][-28:]}\ntrue rank {record['rank']}", fontsize=7)
        for position, (axis, entry) in enumerate(zip(axis_row[1:], record["top"][:top]), start=1):
            axis.imshow(Image.open(root / tiles[entry["tile"]]["image"]).convert("RGB"))
            truth = entry["tile"] == record["tile"]
            axis.set_title(f"#{position} {entry['score']:.3f}", fontsize=7,
                           color=TRUE_COLOUR if truth else "black")
            for spine in axis.spines.values():
                spine.set_edgecolor(TRUE_COLOUR if truth else OTHER_COLOUR)
                spine.set_linewidth(4 if truth else 1)
        for axis in axis_row:
            axis.set_xticks([])
            axis.set_yticks([])
        for axis in axis_row[1 + len(record["top"][:top]):]:
            axis.set_visible(False)
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
