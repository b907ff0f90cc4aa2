"""Print the --cfg-options that run a GPU recipe on this machine (a CPU, or a local model folder):

    python -m xtuner.tools.train recipes/stage1_pitts.py --cfg-options $(python tools/run_options.py \\
        recipes/stage1_pitts.py --model-root tiny_models/llava-phi-3-mini-xtuner)
"""
from __future__ import annotations

import argparse

from addressvlm.training.recipes import local_run_options


def main() -> None:
    parser = argparse.ArgumentParser(description="Print the --cfg-options that run a GPU recipe on this machine.")
    parser.add_argument("config")
    parser.add_argument("--model-root", help="local model folder (e.g. a tiny one) replacing the recipe's llava_root "
                        "or model_root")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    args = parser.parse_args()
    print(" ".join(local_run_options(args.config, args.model_root, args.device)))


if __name__ == "__main__":
    main()
