"""Readiness checks before a long run: preflight, tokenization, an endpoint's answers, a GGUF's tokenizer, and
memory at the releases' sizes.
"""
