#!/usr/bin/env python
"""The demo over several seeds and CPU code paths: each metric's mean, min and max per model.

Runs the whole demo (tools/run_demo.py) once per seed and code path, each in its own folder under --root (a seed's
city is shared by its code paths; finished runs are read back, not rerun), and writes spread.json and spread.md
there. A code path sets ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS and ONEDNN_MAX_CPU_ISA together; each run
records the ATen kernels its process loaded and a checksum of one transformer layer's gradients, so the table shows
that the code paths computed differently. Each run takes as long as `make demo` (about 10 minutes on 2 cores).
"""
import argparse
from pathlib import Path

from addressvlm.demo.spread import CODE_PATHS, available_code_paths, run_spread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="work_dirs/demo_spread", help="one folder per run, and the tables")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--code-paths", nargs="+", choices=sorted(CODE_PATHS), default=None,
                        help=f"default: those this CPU has ({', '.join(available_code_paths())})")
    parser.add_argument("--quick", action="store_true", help="each run as tools/run_demo.py --quick (checks the tool)")
    args = parser.parse_args()
    available = available_code_paths()
    paths = args.code_paths or available
    missing = [p for p in paths if p not in available]
    if missing:
        parser.error(f"--code-paths {' '.join(missing)}: this CPU lacks the instructions (it has {', '.join(available)})")
    spread = run_spread(Path(args.root), args.seeds, paths, quick=args.quick)
    print(f"{Path(args.root) / 'spread.md'}: {len(spread['runs'])} runs")


if __name__ == "__main__":
    main()
