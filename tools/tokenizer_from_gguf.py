"""A Hugging Face tokenizer folder from a llama.cpp vocabulary GGUF (how tests/data/phi3_tokenizer was made).

    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 && tar xzf llama_cpp_python-0.3.36.tar.gz
    python tools/tokenizer_from_gguf.py llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-phi-3.gguf \
        tests/data/phi3_tokenizer --compress
"""
from addressvlm.gguf_tokenizer import main

if __name__ == "__main__":
    main()
