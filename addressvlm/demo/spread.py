"""The demo over several seeds and CPU code paths: each metric's mean, min and max per model.

A tiny model's figures move with the float summation order of the CPU's kernels and with the seed
(docs/experiments.md, "Evidence that holds"), so a claim about the demo is a claim about this spread, not about one
run. Each run is a whole `make demo` (``tools/run_demo.py``) in a child process whose environment selects one code
path of ATen's kernels (``ATEN_CPU_CAPABILITY``), of MKL's (``MKL_ENABLE_INSTRUCTIONS``) and of oneDNN's
(``ONEDNN_MAX_CPU_ISA``); a probe run under the same environment records which ATen kernels were loaded and a
checksum of one transformer layer's gradients, so the table shows that the code paths really computed differently.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from addressvlm.core.records import write_atomic
from addressvlm.demo.pipeline import MISSED_TARGETS_EXIT, PAIRED_STAGE3_FILE, read_targets
from addressvlm.demo.report import LABELS
from addressvlm.standins.reading_warmup import read_warmup_result

REPO = Path(__file__).resolve().parents[2]
CODE_PATHS = {
    "default": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "MKL_ENABLE_INSTRUCTIONS": "AVX512",
               "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
}
# The CPU flag each code path needs.
REQUIRED_FLAG = {"default": None, "avx2": "avx2", "avx512": "avx512f"}
MODELS = ("stage2_only", "stage1_stage2", "stage3")
FIGURES = ("A_d_G", "A_d_J", "A_d_M", "A_s_G", "A_s_J", "A_s_M", "A", "A_sd")
SPREAD_FILE = "spread.json"
PROBE = """
import json, torch
torch.manual_seed(0)
layer = torch.nn.TransformerEncoderLayer(96, 4, 192, batch_first=True)
layer(torch.randn(8, 100, 96)).pow(2).mean().backward()
checksum = sum(float(p.grad.double().abs().sum()) for p in layer.parameters())
print(json.dumps({"aten_capability": torch.backends.cpu.get_cpu_capability(), "checksum": repr(checksum)}))
"""


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def available_code_paths() -> list[str]:
    flags = cpu_flags()
    return [name for name, flag in REQUIRED_FLAG.items() if flag is None or flag in flags]


def code_path_env(name: str) -> dict[str, str]:
    return {**os.environ, **CODE_PATHS[name]}


def probe(name: str) -> dict:
    """Which ATen kernels a process under code path ``name`` loads, and the checksum it computes."""
    done = subprocess.run([sys.executable, "-c", PROBE], env=code_path_env(name), capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_folder(root: Path, seed: int, code_path: str) -> Path:
    return root / f"seed{seed}_{code_path}"


def collect(out: Path) -> dict:
    """The figures of one finished demo run in ``out``: each tuned model's metrics, the warm-up's steps and the
    retrievers' R@1 per kind of query, and whether every learning target was met."""
    figures: dict[str, float] = {}
    # A run of the demo before it had stage 3 has neither its metrics nor its pairing: its cells stay empty.
    for model in MODELS:
        if (out / "metrics" / f"{model}.json").is_file():
            metrics = json.loads((out / "metrics" / f"{model}.json").read_text(encoding="utf-8"))
            figures.update({f"{model}/{key}": metrics[key] for key in FIGURES})
    for file, pair in (("paired.json", "AddressVLM - Baseline"), (PAIRED_STAGE3_FILE, "stage 3 - AddressVLM")):
        if not (out / "metrics" / file).is_file():
            continue
        paired = json.loads((out / "metrics" / file).read_text(encoding="utf-8"))
        for key, c in paired.items():
            figures[f"{pair} {key}"] = round(100 * (c["only_first"] - c["only_second"]) / c["questions"], 2)
        figures[f"{pair} differences significant (p < 0.01)"] = sum(c["mcnemar_p"] < 0.01 for c in paired.values())
    retrieved = out / "metrics" / "stage1_stage2.closed_set_retrieved.json"
    if retrieved.is_file():
        ranked = json.loads(retrieved.read_text(encoding="utf-8"))
        figures["AddressVLM street top-1 among retrieved names"] = ranked["restricted"]["street_top1"]
        figures["AddressVLM street top-1 over every name (same questions)"] = ranked["unrestricted"]["street_top1"]
    reading = read_warmup_result(out / "models" / "llava-phi-3-mini-xtuner")
    figures["warm-up steps"] = reading["steps"]
    retrieval = out / "metrics" / "retrieval.json"
    if retrieval.is_file():
        for name, value in json.loads(retrieval.read_text(encoding="utf-8")).items():
            if isinstance(value, dict) and "R@1" in value:
                figures[f"retrieval {name} R@1"] = value["R@1"]
    targets = read_targets(out)
    return {"figures": figures, "targets_met": sum(t["met"] for t in targets), "targets": len(targets),
            "missed": [t["target"] for t in targets if not t["met"]]}


def run_one(root: Path, seed: int, code_path: str, city: Path, quick: bool = False) -> dict:
    """One whole demo run (resumed where an earlier one stopped) under ``code_path``; its figures and times."""
    folder = run_folder(root, seed, code_path)
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(REPO / "tools" / "run_demo.py"), "--seed", str(seed), "--out", str(folder / "out"),
               "--city", str(city), "--work", str(folder / "work")] + (["--quick"] if quick else [])
    start = time.perf_counter()
    with open(folder / "demo.log", "a", encoding="utf-8") as log:
        exit_code = subprocess.run(command, env=code_path_env(code_path), stdout=log, stderr=subprocess.STDOUT,
                                   cwd=REPO).returncode
    seconds = time.perf_counter() - start
    if exit_code not in (0, MISSED_TARGETS_EXIT):
        raise SystemExit(f"{folder / 'demo.log'}: the demo under seed {seed}, code path {code_path} failed "
                         f"(exit {exit_code}); see its last lines")
    return {"seed": seed, "code_path": code_path, "seconds": round(seconds, 1), "probe": probe(code_path),
            **collect(folder / "out")}


def summarise(runs: list[dict]) -> dict[str, dict]:
    """Per figure: mean, min and max over the runs (and how many runs had it)."""
    keys = sorted({key for run in runs for key in run["figures"]}, key=lambda k: (k.split("/")[0], k))
    summary = {}
    for key in keys:
        values = [run["figures"][key] for run in runs if run["figures"].get(key) is not None]
        if values:
            summary[key] = {"mean": round(statistics.fmean(values), 2), "min": min(values), "max": max(values),
                            "runs": len(values)}
    return summary


def write_spread(path: Path, runs: list[dict]) -> None:
    write_atomic(path, json.dumps({"runs": runs, "summary": summarise(runs)}, indent=2) + "\n")


def read_spread(path: Path) -> dict:
    spread = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(spread, dict) or not isinstance(spread.get("runs"), list) or "summary" not in spread:
        raise ValueError(f"{path}: not a spread file (it needs runs and summary)")
    for i, run in enumerate(spread["runs"]):
        missing = {"seed", "code_path", "seconds", "probe", "figures", "targets_met", "targets"} - set(run)
        if missing:
            raise ValueError(f"{path}: run {i} lacks {', '.join(sorted(missing))}")
    return spread


def spread_markdown(spread: dict) -> str:
    """The spread table (per model, each metric's mean / min / max) and one line per run."""
    runs, summary = spread["runs"], spread["summary"]
    lines = [f"{len(runs)} runs: seeds {sorted({r['seed'] for r in runs})} x code paths "
             f"{sorted({r['code_path'] for r in runs})}. Each cell: mean (min - max).", "",
             "| model | " + " | ".join(FIGURES) + " |", "|---|" + "---:|" * len(FIGURES)]
    for model in MODELS:
        cells = []
        for key in FIGURES:
            s = summary.get(f"{model}/{key}")
            cells.append("-" if s is None else f"{s['mean']:.1f} ({s['min']:.1f} - {s['max']:.1f})")
        lines.append(f"| {LABELS[model]} | " + " | ".join(cells) + " |")
    others = [key for key in summary if "/" not in key or key.split("/")[0] not in MODELS]
    if others:
        lines += ["", "| figure | mean | min | max |", "|---|---:|---:|---:|"]
        lines += [f"| {key} | {summary[key]['mean']:.1f} | {summary[key]['min']:.1f} | {summary[key]['max']:.1f} |"
                  for key in others]
    lines += ["", "| seed | code path | ATen kernels | layer-gradient checksum | warm-up steps | targets met | "
              "minutes |", "|---:|---|---|---|---:|---:|---:|"]
    for r in runs:
        lines.append(f"| {r['seed']} | {r['code_path']} | {r['probe']['aten_capability']} | "
                     f"{r['probe']['checksum']} | {r['figures'].get('warm-up steps', '-')} | "
                     f"{r['targets_met']} / {r['targets']} | {r['seconds'] / 60:.1f} |")
    return "\n".join(lines) + "\n"


def run_spread(root: Path, seeds: list[int], code_paths: list[str], quick: bool = False) -> dict:
    """Every (seed, code path) demo run under ``root`` (finished ones are read back, not rerun), then
    ``spread.json`` and ``spread.md`` in ``root``. Each seed's city is built once and shared by its code paths."""
    from tqdm import tqdm

    root.mkdir(parents=True, exist_ok=True)
    runs = []
    pairs = [(seed, path) for seed in seeds for path in code_paths]
    for seed, code_path in tqdm(pairs, desc="demo runs", unit="run"):
        record = run_folder(root, seed, code_path) / "run.json"
        if record.is_file():  # its times and probe as recorded, its figures read again from its files
            run = {**json.loads(record.read_text(encoding="utf-8")),
                   **collect(run_folder(root, seed, code_path) / "out")}
        else:
            run = run_one(root, seed, code_path, root / f"city_seed{seed}", quick)
            write_atomic(record, json.dumps(run, indent=2) + "\n")
        tqdm.write(f"seed {seed}, {code_path}: {run['targets_met']}/{run['targets']} targets met, "
                   f"AddressVLM A {run['figures']['stage1_stage2/A']}, Baseline A {run['figures']['stage2_only/A']}, "
                   f"{run['seconds'] / 60:.1f} min")
        runs.append(run)
    write_spread(root / SPREAD_FILE, runs)
    write_atomic(root / "spread.md", spread_markdown(read_spread(root / SPREAD_FILE)))
    return read_spread(root / SPREAD_FILE)
