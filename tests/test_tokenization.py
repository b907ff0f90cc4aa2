"""Training and answering tokenize alike with the real Phi-3 tokenizer (SentencePiece), not only the test one."""
import pytest
from addressvlm.training.recipes import load_recipe

from addressvlm.checks.token_check import SHIPPED_PHI3_TOKENIZER, check_records, load_tokenizer
from conftest import REPO

TEMPLATE = load_recipe(str(REPO / "recipes" / "stage1_pitts.py")).train_dataloader.dataset.template_map_fn.template
RECORDS = [
    {"id": "stage1/0", "image": "x.jpg", "conversations": [
        {"from": "human", "value": "<image>\nThe street view in the upper-right corner was taken in this satellite "
                                   "image. Where was it taken, and why?"},
        {"from": "gpt", "value": "The street view was taken on Forbes Avenue near South Bouquet Street in Oakland: "
                                 "the map's road labelled Forbes Avenue runs east-west, like the one in the photo."}]},
    {"id": "stage2/0", "image": "y.jpg", "conversations": [
        {"from": "human", "value": "<image>\nTell me the district where this image was captured."},
        {"from": "gpt", "value": "Kamppi"},
        {"from": "human", "value": "Is this image taken on Annankatu, Yes or No?"},
        {"from": "gpt", "value": "Yes"},
        {"from": "human", "value": "Which street? (A) Annankatu (B) Bulevardi (C) Eerikinkatu (D) Fredrikinkatu"},
        {"from": "gpt", "value": "A"}]},
]


@pytest.fixture(scope="module")
def phi3():
    return load_tokenizer(SHIPPED_PHI3_TOKENIZER)


def test_the_shipped_tokenizer_is_phi3s(phi3):
    assert len(phi3) == 32064
    assert phi3.encode("Hello world", add_special_tokens=False) == [15043, 3186]  # Llama-2 / Phi-3 reference
    assert [phi3.convert_tokens_to_ids(t) for t in ("<|user|>", "<|end|>", "<|assistant|>", "<|system|>")] == \
        [32010, 32007, 32001, 32006]


def test_answering_prompts_and_labels_match_training(phi3):
    report = check_records(RECORDS, phi3, TEMPLATE, max_length=1472, image_tokens=576)
    assert report.records == 2
    assert report.prompt_mismatches == [] and report.label_mismatches == [] and report.over_max_length == []
    assert 576 < report.longest[0] < 700 and report.longest[1] == "stage2/0"  # three rounds


def test_records_past_max_length_are_reported(phi3):
    report = check_records(RECORDS, phi3, TEMPLATE, max_length=20, image_tokens=576)
    assert report.over_max_length == ["stage1/0", "stage2/0"]


def test_a_phi3_gguf_vocabulary_converts_with_its_spaces(tmp_path):
    """transformers' GGUF conversion of a phi3 vocabulary drops the SentencePiece normalizer (spaces vanish);
    tokenizer_from_gguf restores it. The GGUF is a tiny one written here with the gguf package."""
    import gguf
    from transformers import AutoTokenizer

    from addressvlm.checks.gguf_tokenizer import tokenizer_from_gguf

    path = tmp_path / "tiny-phi3.gguf"
    writer = gguf.GGUFWriter(str(path), "phi3")
    writer.add_name("tiny")
    writer.add_context_length(128)
    writer.add_embedding_length(8)
    writer.add_block_count(1)
    writer.add_feed_forward_length(16)
    writer.add_head_count(1)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("llama")
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)] + list("▁Helowrd")
    writer.add_token_list(pieces)
    writer.add_token_scores([0.0] * 259 + [-1.0] * 8)
    writer.add_token_types([2, 3, 3] + [6] * 256 + [1] * 8)
    for add, token in ((writer.add_bos_token_id, 1), (writer.add_eos_token_id, 2), (writer.add_unk_token_id, 0),
                       (writer.add_pad_token_id, 2)):
        add(token)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    def pieces_of(tokenizer):
        return "".join(tokenizer.convert_ids_to_tokens(tokenizer.encode("Hello world", add_special_tokens=False)))

    assert pieces_of(AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)) == "Helloworld"  # the bug
    fixed = AutoTokenizer.from_pretrained(tokenizer_from_gguf(path, tmp_path / "tokenizer"))
    assert pieces_of(fixed) == "▁Hello▁world"
    assert fixed.decode(fixed.encode("Hello world", add_special_tokens=False)) == "Hello world"
