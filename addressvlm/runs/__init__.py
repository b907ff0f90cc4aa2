"""Runs: the engine that trains, loads and answers at the demo's scale (``engine``), and the paper's tables filled
by it or by the recipes on GPUs (``paper_tables``).
"""
