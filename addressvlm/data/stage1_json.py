"""The stage-1 training JSON: one LLaVA record per labelled stage-1 image, in ``locations.csv`` order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from addressvlm.core.records import DataError, read_jsonl, read_locations, refuse_output_over_inputs, write_llava_json
from addressvlm.data.graft import select_rows
from addressvlm.data.labels import LABEL_KEYS
from addressvlm.data.vqa import view_names


@dataclass
class Stage1Report:
    records: int = 0
    unlabelled: list[str] = field(default_factory=list)  # street views of the selected splits without a label
    outside_splits: int = 0  # labels of images no longer in the selected splits, left out

    def summary(self) -> str:
        return (f"stage-1 records: {self.records}; {len(self.unlabelled)} street views without a label; "
                f"{self.outside_splits} labels outside the selected splits left out")


def build_stage1_json(city_root, labels_jsonl=None, out_json=None, *, variant: str = "grafted",
                      image_root=None, splits: tuple[str, ...] | None = ("train",)) -> Stage1Report:
    """Write the stage-1 LLaVA JSON: one record per labelled stage-1 image, in ``locations.csv`` order.

    Human turn: ``"<image>\\n"`` (twice for "separate") + the question without the hint; gpt turn: the reason.
    ``image`` paths are relative to ``image_root`` (default: the city root, the same image folder as stage 2).
    """
    city_root = Path(city_root)
    labels_jsonl = Path(labels_jsonl) if labels_jsonl else city_root / "stage1" / "labels.jsonl"
    out_json = Path(out_json) if out_json else city_root / "stage1" / "train.json"
    refuse_output_over_inputs(out_json, [("--labels", labels_jsonl), ("city table", city_root / "locations.csv")],
                              "--out")
    image_root = Path(image_root) if image_root else city_root
    rows = select_rows(read_locations(city_root / "locations.csv"), splits)
    labels: dict[str, dict] = {}
    for line, rec in read_jsonl(labels_jsonl, LABEL_KEYS):
        if rec["variant"] != variant:
            raise DataError(labels_jsonl, line, f"label made for the {rec['variant']!r} input, not {variant!r}")
        labels[rec["image"]] = rec
    report = Stage1Report()
    wanted = {r.image for r in rows}
    report.outside_splits = sum(1 for image in labels if image not in wanted)
    city = city_root.resolve().name
    views = view_names(rows)  # the same view names (and so ids) as the stage-2 records
    records = []
    for row in rows:
        rec = labels.get(row.image)
        if rec is None:
            report.unlabelled.append(row.image)
            continue
        paths = []
        for p in rec["images"]:
            absolute = Path(p) if os.path.isabs(p) else city_root / p
            if not absolute.is_file():
                raise DataError(labels_jsonl, None, f"image {absolute} of label {row.image!r} not found")
            paths.append(os.path.relpath(absolute, image_root))
        records.append({
            "id": f"{city}/{row.location_id}/{views[row.image]}",
            "image": paths[0] if len(paths) == 1 else paths,
            "conversations": [{"from": "human", "value": "<image>\n" * len(paths) + rec["question"]},
                              {"from": "gpt", "value": rec["reason"]}],
        })
    if not records:
        raise DataError(labels_jsonl, None, f"no label matches a street view of splits {splits}")
    write_llava_json(out_json, records)
    report.records = len(records)
    return report
