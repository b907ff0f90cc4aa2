"""Tokenization of a LLaVA recipe's records with a real tokenizer: training and answering must agree.

Training tokenizes through XTuner (``llava_map_fn`` -> the recipe's template -> ``encode_fn``); ``eval/infer.py``
builds its prompts itself (``addressvlm.training.image_prompts.split_at_image``). With a SentencePiece tokenizer such as
Phi-3's, prefix spaces and the text encoded on each side of ``<image>`` can make the two differ where a byte-level test
tokenizer does not. For every record this checks that the answering prompt of its first question is exactly the start of
the training sequence, that the labelled tokens are exactly the answers (each with the template's suffix), and measures
its length against ``max_length``.
"""
from __future__ import annotations

import copy
import gzip
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from addressvlm.training.image_prompts import image_turn, split_at_image

SHIPPED_PHI3_TOKENIZER = Path(__file__).resolve().parents[2] / "tests" / "data" / "phi3_tokenizer"


def load_tokenizer(folder: str | Path):
    """A tokenizer folder; a ``tokenizer.json.gz`` (as shipped for the tests) is unpacked to a temporary copy."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not (folder / "tokenizer.json.gz").is_file():
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    with tempfile.TemporaryDirectory() as tmp:
        for path in folder.iterdir():
            if path.name != "tokenizer.json.gz":
                shutil.copy(path, tmp)
        with gzip.open(folder / "tokenizer.json.gz") as packed, open(Path(tmp) / "tokenizer.json", "wb") as out:
            shutil.copyfileobj(packed, out)
        return AutoTokenizer.from_pretrained(tmp)


@dataclass
class TokenReport:
    records: int = 0
    prompt_mismatches: list[str] = field(default_factory=list)
    label_mismatches: list[str] = field(default_factory=list)
    over_max_length: list[str] = field(default_factory=list)
    longest: tuple[int, str] = (0, "")

    @property
    def ok(self) -> bool:
        return not (self.prompt_mismatches or self.label_mismatches)


def labelled_spans(labels: list[int], ignore_index: int) -> list[list[int]]:
    spans, current = [], []
    for label in labels:
        if label == ignore_index:
            if current:
                spans.append(current)
            current = []
        else:
            current.append(label)
    return spans + ([current] if current else [])


def check_records(records: list[dict], tokenizer, template, max_length: int, image_tokens: int,
                  progress: bool = False) -> TokenReport:
    """Check every record (LLaVA JSON conversations with one ``<image>``); see the module docstring."""
    from tqdm import tqdm

    from xtuner.dataset.map_fns import llava_map_fn, template_map_fn_factory
    from xtuner.dataset.utils import encode_fn, get_bos_eos_token_ids
    from xtuner.utils import IGNORE_INDEX, IMAGE_TOKEN_INDEX

    to_template = template_map_fn_factory(template)
    bos_ids, _ = get_bos_eos_token_ids(tokenizer)
    report = TokenReport()
    for record in tqdm(records, desc="tokenizing", unit="record", disable=not progress, mininterval=1.0):
        rid = str(record.get("id", report.records))
        report.records += 1
        example = to_template(llava_map_fn(copy.deepcopy(record)))
        encoded = encode_fn(example, tokenizer, max_length=10 ** 9, input_ids_with_output=True,
                            with_image_token=True)
        input_ids, labels = encoded["input_ids"], encoded["labels"]
        question = next(t["value"] for t in record["conversations"] if t["from"] == "human")
        before, after = split_at_image(tokenizer, template.INSTRUCTION.format(input=image_turn(question), round=1),
                                       bos_ids)
        prompt = before + [IMAGE_TOKEN_INDEX] + after
        if input_ids[:len(prompt)] != prompt:
            report.prompt_mismatches.append(rid)
        answers = [t["value"] + template.get("SUFFIX", "") for t in record["conversations"] if t["from"] == "gpt"]
        decoded = [tokenizer.decode(span).strip() for span in labelled_spans(labels, IGNORE_INDEX)]
        if decoded != [answer.strip() for answer in answers]:
            report.label_mismatches.append(rid)
        length = len(input_ids) - 1 + image_tokens  # the image token stands for image_tokens features
        if len(input_ids) > max_length:
            report.over_max_length.append(rid)
        report.longest = max(report.longest, (length, rid))
    return report
