"""GPU acceptance check: the real-size LLaVA-Phi3-mini architecture, from random weights (no download), trained for a
few steps by `xtuner train --deepspeed deepspeed_zero2` on a city's stage-1 data; prints peak memory and samples/s
next to tools/estimate_memory.py's figure. Run it wherever a GPU is available (README, "What has run on a GPU").
`--backbone minicpmv-tiny` runs the MiniCPM-V recipe's code paths on the GPU instead (the tiny stand-in: preflight in
bf16, then training with AMP and with DeepSpeed ZeRO-2).

    python tools/gpu_check.py --city data/helsinki --tokenizer TOKENIZER_DIR --steps 20 --out gpu_check
    python tools/gpu_check.py --backbone minicpmv-tiny --city data/helsinki --steps 10 --out gpu_check_minicpmv

TOKENIZER_DIR: the Phi-3 tokenizer (the release's folder, or one converted from llama.cpp's ggml-vocab-phi-3.gguf;
docs/real_models.md). Also runs tools/preflight.py on the random release in bf16 on the GPU (AMP path).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

from addressvlm.training.launcher import train as launch

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "stage1_pitts.py"
MINICPMV_RECIPE = REPO / "recipes" / "minicpmv26" / "stage1_pitts.py"


def write_random_release(root: Path, tokenizer_dir: Path) -> Path:
    """A folder in the layout of xtuner/llava-phi-3-mini-xtuner with random bf16 weights of the real shapes."""
    import torch
    from transformers import (AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, Phi3Config,
                              Phi3ForCausalLM)

    from addressvlm.releases.shapes import release_config
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
    from addressvlm.core.records import read_llava_json, write_llava_json

    rows = read_llava_json(city / "stage1" / "train.json")[:records]
    if len(rows) < records:
        raise SystemExit(f"error: {city}/stage1/train.json has {len(rows)} records, {records} needed")
    write_llava_json(out, rows)
    return out


def train(recipe: Path, release: Path, data: Path, city: Path, steps: int, batch: int, work_dir: Path,
          deepspeed: bool = True) -> dict:
    work_dir.mkdir(parents=True)
    start = time.perf_counter()
    try:
        launch(str(recipe), work_dir, str(release), device="gpu", overrides={
            "train_dataloader.dataset.data_path": str(data), "train_dataloader.dataset.image_folder": str(city),
            "train_dataloader.batch_size": batch, "train_dataloader.sampler.per_device_batch_size": batch,
            "optim_wrapper.accumulative_counts": 1, "default_hooks.logger.interval": 1,
            "default_hooks.checkpoint.interval": 10 * steps, "train_dataloader.num_workers": 4,
            "param_scheduler.0.end": 0.1, "param_scheduler.1.begin": 0.1, "randomness.seed": 0},
            log_file=work_dir.parent / f"{work_dir.name}.log", deepspeed="deepspeed_zero2" if deepspeed else None)
    except RuntimeError as error:
        raise SystemExit(f"error: {error}") from None
    wall = time.perf_counter() - start
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
    parser.add_argument("--tokenizer", help="a Phi-3 tokenizer folder (the LLaVA check)")
    parser.add_argument("--backbone", choices=("llava", "minicpmv-tiny"), default="llava")
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
    if args.backbone == "minicpmv-tiny":
        return check_minicpmv_tiny(args, out)
    if not args.tokenizer:
        parser.error("the LLaVA check needs --tokenizer")
    start = time.perf_counter()
    release = write_random_release(out / "llava-phi-3-mini-random", Path(args.tokenizer))
    result = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "release_written_s": time.perf_counter() - start}
    print(f"random release written in {result['release_written_s']:.0f} s", flush=True)

    from addressvlm.checks.memory import estimate
    from addressvlm.checks.preflight import run_preflight
    from addressvlm.training.recipes import load_recipe

    figures = run_preflight(str(RECIPE), str(release), steps=2, device="cuda")
    result["preflight"] = {k: figures[k] for k in ("trainable_params", "frozen_params", "dtypes", "losses",
                                                   "token_lengths")}
    torch.cuda.empty_cache()
    data = sample_data(Path(args.city), args.steps * args.batch, out / "sample.json")
    result["train"] = train(RECIPE, release, data, Path(args.city).resolve(), args.steps, args.batch,
                            out / "work" / "zero2")
    cfg = load_recipe(str(RECIPE))
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


def check_minicpmv_tiny(args, out: Path) -> None:
    """The MiniCPM-V recipe's code on a GPU: remote-code load, bf16 frozen / fp32 trained tensors under AMP, and
    training through AmpOptimWrapper and through DeepSpeed ZeRO-2 (the tiny stand-in: no release weights)."""
    import torch

    from addressvlm.checks.preflight import run_preflight
    from addressvlm.standins.tiny_minicpmv import write_tiny_minicpmv

    release = write_tiny_minicpmv(out / "MiniCPM-V-2_6", hidden=128, vision_hidden=64)
    result = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    figures = run_preflight(str(MINICPMV_RECIPE), str(release), steps=2, device="cuda")
    result["preflight"] = {k: figures[k] for k in ("trainable_params", "frozen_params", "dtypes", "losses")}
    data = sample_data(Path(args.city), args.steps * args.batch, out / "sample.json")
    for name, deepspeed in (("amp", False), ("zero2", True)):
        result[name] = train(MINICPMV_RECIPE, release, data, Path(args.city).resolve(), args.steps, args.batch,
                             out / "work" / name, deepspeed=deepspeed)
    (out / "gpu_check_minicpmv.json").write_text(json.dumps(result, indent=2) + "\n")
    for name in ("amp", "zero2"):
        run = result[name]
        print(f"{result['gpu']}: MiniCPM-V stand-in, {name}: {run['steps']} steps of {args.batch}, peak "
              f"{run['peak_memory_mb']} MB, losses {run['losses'][0]:.3f} -> {run['losses'][-1]:.3f}")


if __name__ == "__main__":
    main()
