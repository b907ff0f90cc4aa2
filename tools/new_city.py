#!/usr/bin/env python
"""Write the stage-1/stage-2 recipe pair for a new city (short children of recipes/stage{1,2}_pitts.py).

Example:
    python tools/new_city.py tokyo --data-root ./data/tokyo
    NPROC_PER_NODE=8 xtuner train recipes/stage1_tokyo.py --deepspeed deepspeed_zero2
"""
import argparse
from pathlib import Path

from addressvlm.data.city_recipes import check_city_name, write_city_recipes

# This checkout's recipes: the package may be installed from another clone.
CHECKOUT_RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def city_name(text: str) -> str:
    try:
        return check_city_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("city", type=city_name,
                        help="short lower-case name, used in file and work-dir names (e.g. tokyo)")
    parser.add_argument("--data-root", required=True, help="the city root: locations.csv, images, stage1/, vqa/")
    parser.add_argument("--work-root", default="./work_dirs/llava_phi3_mini", help="parent of the stages' work dirs")
    parser.add_argument("--recipes-dir", default=str(CHECKOUT_RECIPES),
                        help=f"where the reference recipes are and the new ones go (default: {CHECKOUT_RECIPES})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace recipes this tool wrote earlier (never one it did not write, nor one that "
                             "other recipes inherit from)")
    args = parser.parse_args()
    try:
        written = write_city_recipes(args.city, args.data_root, args.recipes_dir, args.work_root, args.overwrite)
    except (FileExistsError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}")
    for path in written:
        print(f"wrote {path.resolve()}")


if __name__ == "__main__":
    main()
