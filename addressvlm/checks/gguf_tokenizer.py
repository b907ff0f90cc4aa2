"""Real tokenizers offline: a Hugging Face tokenizer from the vocabulary GGUF files llama.cpp ships.

The llama-cpp-python source distribution carries ``vendor/llama.cpp/models/ggml-vocab-phi-3.gguf`` (and Qwen2's);
transformers reads them with ``gguf_file=`` (through the ``gguf`` package). For SentencePiece (Llama-style)
vocabularies, transformers 4.48's conversion drops the normalizer that puts "▁" before words: without it
"Hello world" encodes as ``H ellow orld``. ``tokenizer_from_gguf`` restores it, so the result gives the reference ids.
"""
from __future__ import annotations

import gzip
import json
import shutil
import tempfile
from pathlib import Path

SENTENCEPIECE_NORMALIZER = {"type": "Sequence", "normalizers": [
    {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}


def tokenizer_from_gguf(gguf: str | Path, out: str | Path, compress: bool = False) -> Path:
    """Write the tokenizer of ``gguf`` to the folder ``out`` (``tokenizer.json``, or ``tokenizer.json.gz`` with
    ``compress``), the SentencePiece normalizer restored where the conversion lost it. Returns ``out``."""
    from transformers import AutoTokenizer

    gguf, out = Path(gguf), Path(out)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        spec = json.loads((Path(tmp) / "tokenizer.json").read_text(encoding="utf-8"))
        if spec.get("model", {}).get("type") == "BPE" and spec.get("normalizer") is None and \
                spec.get("decoder", {}).get("type") == "Sequence" and "▁" in json.dumps(spec["decoder"], ensure_ascii=False):
            spec["normalizer"] = SENTENCEPIECE_NORMALIZER
        out.mkdir(parents=True, exist_ok=True)
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(Path(tmp) / name, out / name)
    text = json.dumps(spec, ensure_ascii=False)
    if compress:
        with gzip.open(out / "tokenizer.json.gz", "wt", encoding="utf-8", compresslevel=9) as f:
            f.write(text)
    else:
        (out / "tokenizer.json").write_text(text, encoding="utf-8")
    return out
