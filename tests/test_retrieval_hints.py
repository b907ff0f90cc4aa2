"""Retrieved names as a stage-2 hint (addressvlm/data/retrieval_hints.py, build_vqa --hints) on a small generated city
with a hand-written retrieved.jsonl whose candidates are known by construction."""
import json
import re
import sys
from pathlib import Path

import pytest

from addressvlm.core.records import DataError, read_llava_json, read_locations, read_questions, write_retrieved
from addressvlm.data.vqa import build_vqa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_city import make_city  # noqa: E402

K = 3


def _tile(street: str, district: str, score: float) -> dict:
    return {"tile": f"{street}|{district}", "score": score, "street": street, "district": district}


def _top(row, streets: list[str], districts: list[str], hit: bool) -> list[dict]:
    """Five tiles, best first: the true place first when ``hit``; others o1, o1 (a repeat), o2, o3. The first K=3
    tiles name [truth, o1] (hit) or [o1, o2] (miss) of each level; o2 (hit) and o3 never get in."""
    other_streets = [s for s in streets if s not in (row.street, row.cross_street)]
    other_districts = [d for d in districts if d != row.district]
    tiles = [(other_streets[0], other_districts[0]), (other_streets[0], other_districts[0]),
             (other_streets[1], other_districts[1]), (other_streets[2], other_districts[2])]
    if hit:
        tiles.insert(0, (row.street, row.district))
    return [_tile(s, d, 1.0 - 0.1 * i) for i, (s, d) in enumerate(tiles)]


def _expected(row, streets, districts, hit: bool, level: str) -> list[str]:
    others = ([s for s in streets if s not in (row.street, row.cross_street)] if level == "street"
              else [d for d in districts if d != row.district])
    return [getattr(row, level), others[0]] if hit else [others[0], others[1]]


def _sentence(street_names: list[str], district_names: list[str]) -> str:
    return f"Candidate street names: {', '.join(street_names)}. Candidate district names: {', '.join(district_names)}."


@pytest.fixture(scope="module")
def hinted(tmp_path_factory):
    """A city, its default build, and a hinted build from a retrieved.jsonl where every training image's truth is
    retrieved and half the validation and test locations' (even location numbers) are."""
    root = tmp_path_factory.mktemp("hints")
    city = make_city(root / "tinyburg", images=False, n_locations=30, views=2, n_streets=8, n_districts=5)
    rows = read_locations(city)
    streets, districts = sorted({r.street for r in rows}), sorted({r.district for r in rows})
    default = build_vqa(city, root / "vqa", seed=1)
    split_of = {}
    for q in read_questions(root / "vqa" / "test_questions.jsonl"):
        split_of[q["image"]] = "test"
    for name in ("train", "val"):
        for record in read_llava_json(root / "vqa" / f"{name}.json"):
            split_of[record["image"]] = name
    hit = {r.image: split_of[r.image] == "train" or int(r.location_id) % 2 == 0 for r in rows}
    retrieved = root / "retrieved.jsonl"
    write_retrieved(retrieved, [{"query_id": r.image, "kind": "image", "image": r.image, "tile": r.location_id,
                                 "rank": 1 if hit[r.image] else 9, "metres": 0.0,
                                 "top": _top(r, streets, districts, hit[r.image])} for r in rows])
    stats = build_vqa(city, root / "vqa_hint", seed=1, hints=[retrieved], hint_k=K)
    return root, city, rows, streets, districts, hit, split_of, default, stats


def test_held_out_questions_end_with_their_images_candidates_in_order(hinted):
    root, _, rows, streets, districts, hit, _, _, _ = hinted
    by_image = {r.image: r for r in rows}
    for name in ("test_questions.jsonl", "val_questions.jsonl"):
        plain, hinted_qs = read_questions(root / "vqa" / name), read_questions(root / "vqa_hint" / name)
        assert len(plain) == len(hinted_qs) > 0
        for before, after in zip(plain, hinted_qs):
            row = by_image[before["image"]]
            hint = _sentence(_expected(row, streets, districts, hit[row.image], "street"),
                             _expected(row, streets, districts, hit[row.image], "district"))
            # The question text gains the hint after Table B4/B5's; answers, options and ids stay (scoring unchanged).
            assert after == dict(before, question=f"{before['question']} {hint}")


def test_training_hints_are_thinned_to_the_validation_recall(hinted):
    root, _, rows, streets, districts, hit, split_of, _, stats = hinted
    by_image = {r.image: r for r in rows}
    recall = stats["hints"]["candidate_recall"]
    train_images = sum(split_of[r.image] == "train" for r in rows)
    for level in ("street", "district"):
        val_share = 100.0 * sum(hit[r.image] for r in rows if split_of[r.image] == "val") / \
            sum(split_of[r.image] == "val" for r in rows)
        assert recall["val"][level] == {"retrieved": round(val_share, 2), "hinted": round(val_share, 2)}
        assert recall["train"][level]["retrieved"] == 100.0
        assert abs(recall["train"][level]["hinted"] - val_share) <= 100.0 / train_images
    thinned = {"street": 0, "district": 0}
    for before, after in zip(read_llava_json(root / "vqa" / "train.json"),
                             read_llava_json(root / "vqa_hint" / "train.json")):
        row = by_image[before["image"]]
        names = {}
        for level in ("street", "district"):
            kept = _expected(row, streets, districts, True, level)
            dropped = _expected(row, streets, districts, False, level)  # as if the true tile had ranked below k
            hint_part = after["conversations"][0]["value"].split(f"Candidate {level} names: ")[1].split(".")[0]
            assert hint_part in (", ".join(kept), ", ".join(dropped))
            names[level] = kept if hint_part == ", ".join(kept) else dropped
            thinned[level] += names[level] is dropped
        hint = _sentence(names["street"], names["district"])
        assert [t["value"] for t in after["conversations"]] == [
            f"{t['value']} {hint}" if t["from"] == "human" else t["value"] for t in before["conversations"]]
    # The files hold what stats.json says they hold.
    assert {level: round(100.0 * (train_images - n) / train_images, 2) for level, n in thinned.items()} == \
        {level: recall["train"][level]["hinted"] for level in thinned}


def test_default_build_is_untouched_by_the_hint_option(hinted, tmp_path):
    root, city, *_ , default, stats = hinted
    assert "hints" not in default and json.loads((root / "vqa" / "stats.json").read_text()) == default
    assert {k: v for k, v in stats.items() if k != "hints"} == default
    build_vqa(city, tmp_path / "again", seed=1, hints=None)
    for name in ("train.json", "val.json", "test_questions.jsonl", "val_questions.jsonl", "stats.json"):
        assert (tmp_path / "again" / name).read_bytes() == (root / "vqa" / name).read_bytes()


def test_an_image_without_retrieval_is_refused_naming_its_line(hinted, tmp_path):
    root, city, rows, *_ = hinted
    test_images = {q["image"] for q in read_questions(root / "vqa" / "test_questions.jsonl")}
    lines = (root / "retrieved.jsonl").read_text().splitlines()
    missing = next(r for r in rows if r.image in test_images)
    partial = tmp_path / "partial.jsonl"
    partial.write_text("".join(line + "\n" for line in lines if json.loads(line)["image"] != missing.image))
    line = 2 + [r.image for r in rows].index(missing.image)
    with pytest.raises(DataError, match=re.escape(f"locations.csv:{line}: test image '{missing.image}' has no "
                                                  f"street-view retrieval in {partial}")):
        build_vqa(city, tmp_path / "vqa", seed=1, hints=[partial], hint_k=K)
    with pytest.raises(DataError, match="retrieved here and in"):
        build_vqa(city, tmp_path / "vqa", seed=1, hints=[root / "retrieved.jsonl", root / "retrieved.jsonl"])
