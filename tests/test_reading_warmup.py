"""The tiny LLM's reading warm-up: its conversations are the recipes' encoding with a passage in the image's place,
their answers can be read from the passage, and training on them teaches a random LLM to read."""
import json
import random
import re
import shutil

import pytest

from addressvlm.standins.reading_warmup import (RESULT_FILE, CityNames, ReadingExamples, ReadingWarmup,
                                       length_grouped_batches, read_warmup_result, reading_accuracy, reading_record,
                                       warm_up_reading)
from synthetic_city import DISTRICT_NAMES, street_names

NAMES = CityNames(tuple(street_names(5)), tuple(DISTRICT_NAMES[:4]))


@pytest.fixture(scope="module")
def tokenizer(tiny_llava):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llava)


def test_an_example_is_the_chat_layout_with_the_passage_where_the_image_goes(tokenizer):
    examples = ReadingExamples(tokenizer, NAMES, passage_tokens=6)
    rng = random.Random(3)
    for _ in range(20):
        record, kind, street, district = reading_record(NAMES, rng)
        passage = examples.passage(street, district, rng, 6)
        ids, labels = examples.encode(record, passage)
        question, answer = (turn["value"] for turn in record["conversations"])
        expected = (f"<s><|user|>\n{tokenizer.decode(passage)}\n{question.removeprefix('<image>').strip()}"
                    f"<|end|>\n<|assistant|>\n{answer}<|end|>\n")
        assert tokenizer.decode(ids) == expected
        assert tokenizer.decode([t for t in labels if t != -100]) == answer + "<|end|>"
        assert len(passage) == 6 + len(examples.name_ids[street]) + len(examples.name_ids[district])


def test_length_grouped_batches_pad_less_and_keep_every_example(tokenizer):
    examples = ReadingExamples(tokenizer, NAMES, passage_tokens=64)
    grouped = list(length_grouped_batches(examples, random.Random(5), batch_size=4, steps=11, pool=8))
    assert [len(batch) for batch in grouped] == [4] * 11
    # The first pool is the first 32 draws, regrouped: nothing lost, nothing repeated.
    rng = random.Random(5)
    drawn = [examples.sample(rng) for _ in range(8 * 4)]
    assert sorted(ids for batch in grouped[:8] for ids, _, _ in batch) == sorted(ids for ids, _, _ in drawn)

    def padding(batches):
        return sum(max(len(ids) for ids, _, _ in b) * len(b) - sum(len(ids) for ids, _, _ in b) for b in batches)

    ungrouped = [drawn[i:i + 4] for i in range(0, 32, 4)]
    assert padding(grouped[:8]) < padding(ungrouped) / 3


def test_every_answer_can_be_read_from_the_passage():
    rng = random.Random(0)
    kinds = set()
    for _ in range(300):
        record, kind, street, district = reading_record(NAMES, rng)
        kinds.add(kind)
        question, answer = (turn["value"] for turn in record["conversations"])
        level, qtype = kind.split("/")
        truth = {"street": street, "district": district}.get(level)
        if level == "address":
            assert answer == f"{street}, {district}"
        elif qtype == "generation":
            assert answer == truth
        elif qtype == "judgment":
            asked = re.search(r"taken (?:on|in) (.+), Yes or No\?", question).group(1)
            assert asked in NAMES.level(level)
            assert answer == ("Yes" if asked == truth else "No")
        else:
            options = dict(re.findall(r"\(([ABCD])\) (.+?)(?= \([ABCD]\)|\. Please)", question))
            assert sorted(options) == ["A", "B", "C", "D"] and len(set(options.values())) == 4
            assert options[answer] == truth and set(options.values()) <= set(NAMES.level(level))
    assert len(kinds) == 7  # both levels x three types, and the address


def test_a_city_with_too_few_names_is_refused(tokenizer):
    with pytest.raises(ValueError, match="4 names per level"):
        ReadingExamples(tokenizer, CityNames(("A street", "B street"), DISTRICT_NAMES[:4]), 4)


def test_warm_up_teaches_a_random_llm_to_read_the_names(tiny_llava, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    llm_dir = tmp_path / "llm"
    shutil.copytree(tiny_llava, llm_dir)
    examples = ReadingExamples(tokenizer, NAMES, passage_tokens=6)
    before = reading_accuracy(AutoModelForCausalLM.from_pretrained(llm_dir), examples, 600, seed=0)
    result = warm_up_reading(llm_dir, NAMES, ReadingWarmup(steps=500, batch_size=32, lr=3e-3, passage_tokens=6),
                             eval_examples=600, progress=False)
    after = reading_accuracy(AutoModelForCausalLM.from_pretrained(llm_dir), examples, 600, seed=0)
    assert read_warmup_result(llm_dir)["accuracy"] == result["accuracy"]
    # Naming is what a few hundred steps teach; the random model names nothing (4 districts: guessing is 25 %).
    assert before["district/generation"] <= 25.0
    assert after["district/generation"] >= 80.0 and after["street/generation"] >= 60.0  # 5 streets: 20 %
    assert after == result["accuracy"]


def test_a_warm_up_result_without_accuracy_is_refused_with_its_path(tmp_path):
    assert read_warmup_result(tmp_path) is None  # a model that was not warmed up
    (tmp_path / RESULT_FILE).write_text(json.dumps({"settings": {}, "final_loss": 0.1}))
    with pytest.raises(ValueError, match=f"{RESULT_FILE}.*lacks accuracy"):
        read_warmup_result(tmp_path)
