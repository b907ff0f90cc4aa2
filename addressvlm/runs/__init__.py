"""Runs: the engine that trains, loads and answers at the demo's scale (``engine``), the paper's tables filled
by it or by the recipes on GPUs (``paper_tables``), stage 3 (``grpo``), and batch answering with vLLM's offline engine
(``vllm_batch``, whose engines are ``vllm_worker`` processes of the modern environment).
"""
