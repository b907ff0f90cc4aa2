"""Write what the paper's rows (addressvlm/runs/paper_tables.py) describe: the header of every ablation recipe in
recipes/ablations/ and the table of rows in docs/paper_tables.md. Edit a row there, then run this.

    python tools/write_paper_rows.py            # rewrite the files whose text differs
    python tools/write_paper_rows.py --check    # only list them; exit 1 if any differs
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from addressvlm.core.records import DataError, write_atomic  # noqa: E402
from addressvlm.runs.paper_tables import stale_from_rows  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a file differs")
    args = parser.parse_args(argv)
    try:
        stale = stale_from_rows()
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path, text in stale.items():
        if not args.check:
            write_atomic(path, text)
        print(f"{'differs' if args.check else 'rewrote'}: {path.relative_to(REPO)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
