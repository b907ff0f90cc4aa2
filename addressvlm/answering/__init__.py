"""Answering and scoring: loading a trained model, the chat-model interface and its prefix-sharing decoder, the
answering loop, ranking a city's names, scores, metre errors, figures, the training-time evaluation hook,
retrieval search, and export to Hugging Face.
"""
