"""Tokenize a recipe's data with a real tokenizer and check training and answering agree (docs/real_models.md).

    python tools/check_tokenization.py data/pitts/stage1/train.json data/pitts/vqa/train.json \
        --recipe recipes/stage1_pitts.py --tokenizer ./models/llava-phi-3-mini-xtuner
"""
from addressvlm.token_check import main

if __name__ == "__main__":
    main()
