"""A small byte-level BPE tokenizer in Phi-3's chat format, trained locally: the tokenizer of the tiny
stand-in models and of a release-shaped model at random weights (no download)."""
from __future__ import annotations

from typing import Iterable

# Phi-3's chat tokens must be single tokens, or XTuner's phi3_chat template would encode differently.
CHAT_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
BOS, EOS, UNK = "<s>", "<|endoftext|>", "<unk>"

def train_tokenizer(corpus: Iterable[str], vocab_size: int):
    """A byte-level BPE with Phi-3's special tokens, wrapped as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[UNK, BOS, EOS, *CHAT_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=UNK,
        additional_special_tokens=CHAT_TOKENS, model_max_length=4096, padding_side="right",
    )
