"""Check a recipe against the release you downloaded before training on a cluster (README, "Before the cluster").

    python tools/preflight.py recipes/stage1_pitts.py --weights ./models/llava-phi-3-mini-xtuner
    python tools/preflight.py recipes/minicpmv26/stage1_pitts.py --weights ./models/MiniCPM-V-2_6 --steps 2
"""
from addressvlm.preflight import main

if __name__ == "__main__":
    main()
