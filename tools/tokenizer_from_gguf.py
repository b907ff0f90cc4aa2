"""A Hugging Face tokenizer folder from a llama.cpp vocabulary GGUF (how tests/data/phi3_tokenizer was made).

    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 && tar xzf llama_cpp_python-0.3.36.tar.gz
    python tools/tokenizer_from_gguf.py llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-phi-3.gguf \
        tests/data/phi3_tokenizer --compress
"""
from __future__ import annotations

from pathlib import Path

from addressvlm.checks.gguf_tokenizer import tokenizer_from_gguf


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="A Hugging Face tokenizer folder from a llama.cpp vocabulary GGUF "
                                                 "(e.g. ggml-vocab-phi-3.gguf of the llama-cpp-python sdist).")
    parser.add_argument("gguf", type=Path)
    parser.add_argument("out", type=Path, help="tokenizer folder to write")
    parser.add_argument("--compress", action="store_true", help="write tokenizer.json.gz (as tests/data ships it)")
    args = parser.parse_args(argv)
    if not args.gguf.is_file():
        raise SystemExit(f"error: {args.gguf} not found")
    print(f"wrote {tokenizer_from_gguf(args.gguf, args.out, args.compress)}")


if __name__ == "__main__":
    main()
