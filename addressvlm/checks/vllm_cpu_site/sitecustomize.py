"""Imported at the start of every process of the vLLM server that ``addressvlm.checks.vllm_check`` starts on vLLM's CPU
build (this folder leads its PYTHONPATH); nothing else imports it.

The modern environment's torch is PyPI's 2.13.0, a CUDA build (PyPI serves no ``+cpu`` wheel). On a machine without an
NVIDIA driver, ``torch.cuda.is_current_stream_capturing()`` of that build raises ("CUDA driver version is insufficient")
instead of answering False, and vLLM 0.31's MiniCPM-V resampler calls it on every image, CPU or not
(``vllm/model_executor/models/minicpmv.py``, ``Resampler2_5.forward``). Where no CUDA device is available no stream
can be capturing a graph, so the answer is False, given without asking the driver.
"""
import torch

if not torch.cuda.is_available():
    torch.cuda.is_current_stream_capturing = lambda: False
