"""The training launcher: one run of a recipe through ``python -m xtuner.tools.train`` (one process, or torchrun
on several GPUs) with this machine's ``--cfg-options`` (``training.recipes.local_run_options``), and the record that
tells a finished run from one trained otherwise.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from addressvlm.core.records import (
    DataError, as_recorded, file_digest, read_run_record, settings_changes, settings_path,
)
from addressvlm.training.checkpoints import weights_identity
from addressvlm.training.recipes import local_run_options


ITERATION_LINE = re.compile(r"Iter\(train\) \[\s*(\d+)/(\d+)\].*?loss: ([-\d.e]+)")


# What torchrun would set: DeepSpeed initialises torch.distributed even for a run of one process.
ONE_PROCESS_GROUP = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                     "MASTER_PORT": "29517"}


def train(config: str, work_dir: str, model_root: str | None = None, device: str = "cpu",
          overrides: dict[str, Any] | None = None, resume: str | None = None, log_file: str | None = None,
          progress: bool = False, name: str = "training", threads: int | None = None, bar_row: int = 0,
          gpus: int = 1, deepspeed: str | None = None, in_process: bool = False) -> Path:
    """Run ``python -m xtuner.tools.train`` (not ``xtuner train``, which exits 0 on failure) and return ``work_dir``;
    a failed run raises with the end of its log. The whole output goes to the log file; with ``progress`` a bar
    named ``name`` on console row ``bar_row`` follows mmengine's iteration lines (iterations, loss, time left).
    ``threads`` caps the run's CPU threads (two runs side by side on a small machine). ``gpus`` > 1 starts one
    process per GPU through torchrun, as ``NPROC_PER_NODE=N xtuner train`` does; ``deepspeed`` names XTuner's
    DeepSpeed config (``deepspeed_zero2``) or a JSON file. ``in_process`` calls XTuner's train entry point in this
    process instead, output unredirected (many one-iteration runs cost less than as many fresh interpreters)."""
    import os

    import xtuner.tools.train as xtuner_train
    from tqdm import tqdm

    arguments = [config, "--work-dir", str(work_dir)]
    if deepspeed:
        arguments += ["--deepspeed", deepspeed]
    if resume:
        arguments += ["--resume", str(resume)]
    arguments += ["--cfg-options", *local_run_options(config, model_root, device, overrides)]
    if in_process:
        saved, sys.argv = sys.argv, ["xtuner-train", *arguments]
        try:
            xtuner_train.main()
        finally:
            sys.argv = saved
        return Path(work_dir)
    if gpus > 1:
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={gpus}", xtuner_train.__file__,
                   "--launcher", "pytorch", *arguments]
    else:
        command = [sys.executable, "-m", "xtuner.tools.train", *arguments]
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    log_path = Path(log_file or Path(work_dir) / "train_stdout.log")
    env = {**(ONE_PROCESS_GROUP if deepspeed and gpus == 1 else {}), **os.environ,
           **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    with open(log_path, "w") as log, tqdm(desc=f"  {name}", unit="it", disable=not progress, leave=False,
                                          position=bar_row) as bar:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 errors="replace", env=env)
        for line in child.stdout:
            log.write(line)
            match = ITERATION_LINE.search(line)
            if match:
                bar.total = int(match.group(2))
                bar.update(int(match.group(1)) - bar.n)
                bar.set_postfix(loss=match.group(3), refresh=False)
        done = child.wait()
    if done != 0:
        tail = log_path.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"training {config} failed (exit {done}); log {log_path}:\n{tail}")
    return Path(work_dir)


def has_finished(work_dir: str | Path) -> bool:
    """A run that saved its final checkpoint (mmengine's ``last_checkpoint`` pointer)."""
    return (Path(work_dir) / "last_checkpoint").is_file()


def run_inputs(city: str | Path, data_file: str, image_folder: str | Path, continues: str | Path | None) -> dict:
    """What a run trains on, by identity rather than by name, for its record: the city's resolved path, the content
    digest of its data file (data tools rewrite it byte-identical), the resolved image folder, and the weights of
    the run it continues (None: from the release, or a run not finished yet)."""
    data = Path(city) / data_file
    return {"city": str(Path(city).resolve()), "data": file_digest(data) if data.is_file() else None,
            "images": str(Path(image_folder).resolve()),
            "continues": weights_identity(continues) if continues and has_finished(continues) else None}


def finished_run(work_dir: str | Path, settings: dict) -> float | None:
    """The training seconds of the finished run in ``work_dir`` when its record beside it holds ``settings``; None
    when no run finished there; a ``DataError`` naming what changed when it was trained otherwise (reusing it would
    score another model under this one's name)."""
    if not has_finished(work_dir):
        return None
    record = read_run_record(work_dir)
    if record is None:
        raise DataError(work_dir, None, f"a finished run without {settings_path(work_dir).name} saying how it was "
                                        "trained: give another --work, or delete it to train it again")
    if record["settings"] != as_recorded(settings):
        raise DataError(work_dir, None, "a finished run trained with other settings ("
                        + settings_changes(record["settings"], as_recorded(settings))
                        + "): give another --work, or delete it to train it again")
    return float(record["seconds"])


def read_losses(work_dir: str | Path) -> dict[int, float]:
    """``iteration -> loss`` from mmengine's scalar logs of every run in ``work_dir``."""
    losses = {}
    for scalars in sorted(Path(work_dir).glob("*/vis_data/scalars.json")):
        for line in scalars.read_text().splitlines():
            record = json.loads(line)
            if "loss" in record and "iter" in record:
                losses[int(record["iter"])] = float(record["loss"])
    return losses
