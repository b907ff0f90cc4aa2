"""GPU acceptance check: the real-size LLaVA-Phi3-mini architecture, from random weights (no download), trained for a
few steps by `xtuner train --deepspeed deepspeed_zero2` on a city's stage-1 data; prints peak memory and samples/s
next to tools/estimate_memory.py's figure. Run it wherever a GPU is available (README, "What has run on a GPU").

    python tools/gpu_check.py --city data/helsinki --tokenizer TOKENIZER_DIR --steps 20 --out gpu_check

TOKENIZER_DIR: the Phi-3 tokenizer (the release's folder, or one converted from llama.cpp's ggml-vocab-phi-3.gguf;
docs/real_models.md). Also runs tools/preflight.py on the random release in bf16 on the GPU (AMP path).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "stage1_pitts.py"


def write_random_release(root: Path, tokenizer_dir: Path) -> Path:
    """A folder in the layout of xtuner/llava-phi-3-mini-xtuner with random bf16 weights of the real shapes."""
    import torch
    from transformers import (AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, Phi3Config,
                              Phi3ForCausalLM)

    from addressvlm.memory import release_config
    from xtuner.model.modules import ProjectorConfig, ProjectorModel

    torch.manual_seed(0)
    with torch.device("cuda"):
        llm = Phi3ForCausalLM(Phi3Config(**release_config("phi3_mini_4k"))).to(torch.bfloat16)
        llm.save_pretrained(root, safe_serialization=True)
        del llm
        vision_config = CLIPVisionConfig(**release_config("clip_vit_large_patch14_336"))
        CLIPVisionModel(vision_config).to(torch.bfloat16).save_pretrained(root / "visual_encoder")
        ProjectorModel(ProjectorConfig(visual_hidden_size=vision_config.hidden_size, llm_hidden_size=3072,
                                       depth=2)).save_pretrained(root / "projector")
    torch.cuda.empty_cache()
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(root)
    size = vision_config.image_size
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(
        root / "visual_encoder")
    return root


def sample_data(city: Path, records: int, out: Path) -> Path:
    from addressvlm.records import read_llava_json, write_llava_json

    rows = read_llava_json(city / "stage1" / "train.json")[:records]
    if len(rows) < records:
        raise SystemExit(f"error: {city}/stage1/train.json has {len(rows)} records, {records} needed")
    write_llava_json(out, rows)
    return out


def train(release: Path, data: Path, city: Path, steps: int, batch: int, work_dir: Path) -> dict:
    from mmengine.config import Config

    from addressvlm.runtime import format_option, model_root_options

    options = model_root_options(Config.fromfile(str(RECIPE)), str(release)) + [
        format_option(k, v) for k, v in {
            "train_dataloader.dataset.data_path": str(data), "train_dataloader.dataset.image_folder": str(city),
            "train_dataloader.batch_size": batch, "train_dataloader.sampler.per_device_batch_size": batch,
            "optim_wrapper.accumulative_counts": 1, "default_hooks.logger.interval": 1,
            "default_hooks.checkpoint.interval": 10 * steps, "train_dataloader.num_workers": 4,
            "param_scheduler.0.end": 0.1, "param_scheduler.1.begin": 0.1, "randomness.seed": 0}.items()]
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "29517"}
    command = [sys.executable, "-m", "xtuner.tools.train", str(RECIPE), "--deepspeed", "deepspeed_zero2",
               "--work-dir", str(work_dir), "--cfg-options", *options]
    start = time.perf_counter()
    with open(work_dir.parent / "train.log", "w") as log:
        done = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        tail = (work_dir.parent / "train.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"error: training failed (exit {done.returncode}):\n{tail}")
    rows = [json.loads(line) for path in work_dir.glob("*/vis_data/scalars.json")
            for line in path.read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    times = [r["time"] for r in rows[2:]] or [r["time"] for r in rows]
    return {"steps": len(rows), "losses": [r["loss"] for r in rows], "peak_memory_mb": max(r.get("memory", 0)
            for r in rows), "seconds_per_step": statistics.median(times),
            "samples_per_s": batch / statistics.median(times), "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--city", required=True, help="city root with stage1/train.json and its images")
    parser.add_argument("--tokenizer", required=True, help="a Phi-3 tokenizer folder")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4, help="per-device batch (Table A1: 4)")
    parser.add_argument("--out", required=True, help="folder for the release, the run and gpu_check.json")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("error: no GPU: this check needs one (it does not run in CI)")
    out = Path(args.out)
    shutil.rmtree(out / "work", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    release = write_random_release(out / "llava-phi-3-mini-random", Path(args.tokenizer))
    result = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "release_written_s": time.perf_counter() - start}
    print(f"random release written in {result['release_written_s']:.0f} s", flush=True)

    from addressvlm.memory import estimate
    from addressvlm.preflight import run_preflight
    from mmengine.config import Config

    figures = run_preflight(str(RECIPE), str(release), steps=2, device="cuda")
    result["preflight"] = {k: figures[k] for k in ("trainable_params", "frozen_params", "dtypes", "losses",
                                                   "token_lengths")}
    torch.cuda.empty_cache()
    data = sample_data(Path(args.city), args.steps * args.batch, out / "sample.json")
    (out / "work").mkdir()
    result["train"] = train(release, data, Path(args.city).resolve(), args.steps, args.batch, out / "work")
    cfg = Config.fromfile(str(RECIPE))
    cfg.train_dataloader.batch_size = args.batch
    result["estimate_zero2_1gpu_gb"] = estimate(cfg, gpus=1)["memory"]["zero2"]
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    train_result = result["train"]
    print(f"{result['gpu']}: {train_result['steps']} ZeRO-2 steps of {args.batch}, "
          f"peak {train_result['peak_memory_mb'] / 1024:.1f} GiB allocated (estimate at max_length "
          f"{result['estimate_zero2_1gpu_gb']['total_gb']:.1f} GB, of which activations "
          f"{result['estimate_zero2_1gpu_gb']['activations_estimate_gb']:.1f}), "
          f"{train_result['samples_per_s']:.2f} samples/s, losses {train_result['losses'][0]:.3f} -> "
          f"{train_result['losses'][-1]:.3f}")


if __name__ == "__main__":
    main()
