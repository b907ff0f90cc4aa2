"""Tiny stand-ins for the released models, for tests, the demo and CPU runs: a LLaVA-Phi3-mini in XTuner's layout
(``tiny``), MiniCPM-V 2.6 with its hub code's file layout (``tiny_minicpmv``, from ``training/minicpmv_code``), and the
tiny LLM's reading warm-up (``reading_warmup``).

Nothing in the library imports this package.
"""
