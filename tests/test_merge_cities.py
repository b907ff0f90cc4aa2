"""Table 5's training data: two small cities' stage-1 and stage-2 data merged into one city root."""
import os
from pathlib import Path

import pytest
from PIL import Image

from addressvlm.data.graft import SEPARATE_SUFFIXES, grafted_name
from addressvlm.data.stage1_json import build_stage1_json
from addressvlm.data.labels import make_labels
from addressvlm.core.records import DataError, read_llava_json, read_locations, read_questions, write_locations
from addressvlm.data.vqa import build_vqa, merge_city_roots, pin_splits

from synthetic_city import city_rows, write_images


def write_city(root: Path, seed: int, origin: tuple[float, float]) -> Path:
    """A city root with stage-2 VQA data and stage-1 data of the "separate" variant (two images per record), its
    stage-1 images standing in for graft.py's output."""
    rows = city_rows(n_locations=10, views=2, n_streets=5, n_districts=4, seed=seed, origin=origin)
    write_images(root, rows)
    write_locations(root / "locations.csv", rows)
    pin_splits(root / "locations.csv", seed)
    build_vqa(root / "locations.csv", root / "vqa", seed=seed)
    train = [row for row in read_locations(root / "locations.csv") if row.split == "train"]
    for row in train:
        for suffix in SEPARATE_SUFFIXES:
            path = (root / "stage1" / "separate" / grafted_name(row.image)).with_suffix(suffix)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8)).save(path)
    make_labels(root, root / "stage1" / "separate", root / "stage1" / "labels.jsonl", "rule", variant="separate",
                progress=False)
    build_stage1_json(root, variant="separate")
    return root


def images_of(record: dict) -> list[str]:
    return record["image"] if isinstance(record["image"], list) else [record["image"]]


@pytest.fixture(scope="module")
def cities(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    return {"pitts": write_city(data / "pitts", 1, (40.44, -79.99)), "sf": write_city(data / "sf", 2, (37.77, -122.42)),
            "data": data}


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): os.readlink(p) if p.is_symlink() else p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_symlink() or p.is_file()}


def test_stage1_and_stage2_merge_into_one_city_root(cities):
    out = cities["data"] / "pitts_sf"
    stats = merge_city_roots([("pitts", cities["pitts"]), ("sf", cities["sf"])], out)
    stage1 = read_llava_json(out / "stage1" / "train.json")
    parts = {name: read_llava_json(cities[name] / "stage1" / "train.json") for name in ("pitts", "sf")}
    assert len(stage1) == sum(map(len, parts.values())) == sum(stats["stage1"].values())
    assert stats["stage1"] == {name: len(records) for name, records in parts.items()}
    for name in ("train", "val"):
        merged = read_llava_json(out / "vqa" / f"{name}.json")
        assert len(merged) == sum(len(read_llava_json(cities[c] / "vqa" / f"{name}.json")) for c in ("pitts", "sf"))
        assert len({r["id"] for r in merged}) == len(merged)
    assert len({r["id"] for r in stage1}) == len(stage1)
    questions = read_questions(out / "vqa" / "val_questions.jsonl")
    # Every image of every merged file resolves under the merged root, into the city its id names.
    for record in [*stage1, *read_llava_json(out / "vqa" / "train.json"), *questions]:
        key = record.get("id") or record["question_id"]
        for image in images_of(record):
            assert (out / image).is_file(), image
            assert image.split("/")[0] == key.split("/")[0]  # the link named after the city (its folder)
    assert all(len(r["image"]) == 2 for r in stage1)
    assert os.readlink(out / "pitts") == "../pitts"  # relative: the data folder can move

    before = snapshot(out)
    merge_city_roots([("pitts", cities["pitts"]), ("sf", cities["sf"])], out)
    assert snapshot(out) == before


def test_merging_refuses_what_it_cannot_merge_cleanly(cities, tmp_path):
    pitts, sf = cities["pitts"], cities["sf"]
    with pytest.raises(DataError, match="is a VQA folder: give the city root"):
        merge_city_roots([("pitts", pitts / "vqa"), ("sf", sf)], tmp_path / "a")
    with pytest.raises(ValueError, match="appear in two cities"):
        merge_city_roots([("one", pitts), ("two", pitts)], tmp_path / "b")
    with pytest.raises(ValueError, match="must be one folder name"):
        merge_city_roots([("vqa", pitts), ("sf", sf)], tmp_path / "c")
    # A third city without stage-1 data: named, nothing written.
    bare = tmp_path / "oslo"
    write_locations(bare / "locations.csv", city_rows(n_locations=8, views=1, n_streets=6, n_districts=4))
    build_vqa(bare / "locations.csv", bare / "vqa")
    with pytest.raises(DataError, match=r"oslo/stage1/train.json: stage-1 data not found"):
        merge_city_roots([("pitts", pitts), ("sf", sf), ("oslo", bare)], tmp_path / "d")
    assert not (tmp_path / "d").exists()
    # A name taken by something that is not the city's link: refused before any link is made.
    (tmp_path / "e" / "sf").mkdir(parents=True)
    with pytest.raises(DataError, match="is not a link to"):
        merge_city_roots([("pitts", pitts), ("sf", sf)], tmp_path / "e")
    assert [p.name for p in (tmp_path / "e").iterdir()] == ["sf"]
    # An output that is, holds or lies inside a city it reads: refused before anything is written.
    before = snapshot(pitts)
    for out, relation in ((pitts, "is the --city pitts input itself"), (cities["data"], "holds the --city pitts"),
                          (pitts / "merged", "lies inside the --city pitts")):
        with pytest.raises(DataError, match=relation):
            merge_city_roots([("pitts", pitts), ("sf", sf)], out)
    assert snapshot(pitts) == before and not (pitts / "merged").exists()
