"""Parameters by part and per-GPU memory of a recipe at the real releases' sizes, built on the meta device.

    python tools/estimate_memory.py recipes/stage1_pitts.py --json m.json
    python tools/estimate_memory.py recipes/minicpmv26/stage1_pitts.py --gpus 4
    python tools/estimate_memory.py --readme README.md      # regenerate the README's memory section
"""
from addressvlm.memory import main

if __name__ == "__main__":
    main()
