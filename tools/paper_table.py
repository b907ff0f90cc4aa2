"""One command per table of the paper: build the data variants a table needs, train its rows (reusing a finished run
only when it was trained with the same settings, and refusing one trained otherwise), answer, score, and write the
table in the paper's columns beside the paper's own numbers.

On the demo city, on a CPU (after `make demo`; every run at the demo's scale, two side by side):
    python tools/paper_table.py --table 4 --city data/helsinki
    python tools/paper_table.py --table 4 --city data/helsinki --quick          # a few steps of each row
    python tools/paper_table.py --table 9 --city data/helsinki --rows table9_d03_stage2,stage2_pitts
On a cluster, the recipes as written (their models and Table A1's settings) through xtuner train on 8 GPUs:
    python tools/paper_table.py --table 4 --city data/pitts --device gpu --gpus 8

Tables: 1, 2, 3, 4, 5, 6, 8, 9 and fig7 (docs/paper_tables.md lists every row's recipe). Stage-1 variants (Table 1's
layouts, Tables 3/9's delta and unlabelled crops) and Fig. 7's densities are built here; their alignment reasons
come from --label-backend: `rule` is the demo's stand-in, which the paper's section 3.2 rejects; give `openai` with
--base-url and --model for an LVLM (the server is asked once before any work). Files built by other tools (Table 5's
merged cities, Table 6's mix) are named in docs/paper_tables.md and must exist.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from addressvlm.runs.paper_tables import TABLES, DemoScale, RecipeScale, default_folder, fill_table  # noqa: E402
from addressvlm.core.records import DataError  # noqa: E402
from addressvlm.demo.pipeline import make_model  # noqa: E402
from addressvlm.runs.engine import DemoSettings  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", required=True, choices=sorted(TABLES), help="the paper's table (or fig7)")
    parser.add_argument("--city", required=True, type=Path, help="city root with locations.csv, vqa/ and stage1/")
    parser.add_argument("--merged-city", type=Path,
                        help="Table 5: the merged city root merge_cities.py wrote (its runs train there; every row is "
                             "scored on --city's test questions)")
    parser.add_argument("--rows", help="comma-separated row names (the stage-2 recipe names; zero_shot); default all")
    parser.add_argument("--out", type=Path,
                        help="where the table and answers go (default paper_tables/<city>-<hash of its path>[_quick])")
    parser.add_argument("--work", type=Path,
                        help="training runs (default work_dirs/paper_tables/<city>-<hash of its path>[_quick]); a "
                             "finished run is reused only when it was trained with the same settings")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                        help="cpu: the demo's scale with the tiny model; gpu: the recipes as written")
    parser.add_argument("--quick", action="store_true", help="cpu: a few steps of every row (the test's scale)")
    parser.add_argument("--model-root", type=Path,
                        help="cpu: the tiny model (default: the one make demo made for data/helsinki, else built "
                             "under --work)")
    parser.add_argument("--gpus", type=int, default=8, help="gpu: processes per run (default 8)")
    parser.add_argument("--deepspeed", default="deepspeed_zero2", help="gpu: XTuner DeepSpeed config")
    parser.add_argument("--label-backend", choices=("rule", "openai", "hf"), default="rule",
                        help="alignment reasons of stage-1 variants: rule is the demo's stand-in (default)")
    parser.add_argument("--base-url", help="openai backend: the server")
    parser.add_argument("--model", help="openai/hf backend (needed there): the LVLM")
    return parser


def main(argv=None) -> int:
    from addressvlm.data.label_backends import BackendUnavailable, check_backend

    parser = build_parser()
    args = parser.parse_args(argv)
    city = args.city
    if not (city / "locations.csv").is_file():
        print(f"error: {city / 'locations.csv'}: not found (a city root; make demo builds data/helsinki)",
              file=sys.stderr)
        return 2
    options = {k: v for k, v in (("base_url", args.base_url), ("model", args.model)) if v}
    try:  # before any work: the labels of stage-1 variants come after minutes of crops and grafts
        check_backend(args.label_backend, options)
    except ValueError as exc:
        parser.error(f"--label-backend {args.label_backend}: {exc}")
    except BackendUnavailable as exc:
        print(f"error: --label-backend {args.label_backend}: {exc}", file=sys.stderr)
        return 2
    tag = default_folder(city, args.quick)
    out = args.out or REPO / "paper_tables" / tag
    work = args.work or REPO / "work_dirs" / "paper_tables" / tag
    if args.device == "gpu":
        runner = RecipeScale(city, out, work, gpus=args.gpus, deepspeed=args.deepspeed)
    else:
        demo_model = REPO / "demo_output" / "models" / "llava-phi-3-mini-xtuner"
        model_root, demo_work = args.model_root, None
        if model_root is None and not args.quick and city.resolve() == (REPO / "data" / "helsinki").resolve() \
                and demo_model.is_dir():
            # The demo's model, and its runs of the paper's own recipes (linked where their records show the same
            # training as these runs would have).
            model_root, demo_work = demo_model, REPO / "work_dirs" / "demo_helsinki"
        settings = DemoSettings.quick() if args.quick else DemoSettings()
        runner = DemoScale(city, out, work, settings, model_root or work / "models" / "llava-phi-3-mini-xtuner",
                           demo_work)
        if not (runner.paths.models / "projector" / "config.json").is_file():
            print(f"tiny model -> {runner.paths.models}", flush=True)
            make_model(runner.paths, settings)
    if args.label_backend == "rule":
        print("note: stage-1 variants get rule-backend reasons, the demo's stand-in; the paper writes them with an "
              "LVLM (--label-backend openai)", file=sys.stderr)
    try:
        report = fill_table(TABLES[args.table], city, out, runner, args.rows.split(",") if args.rows else None,
                            args.label_backend, options, merged_city=args.merged_city)
    except (DataError, ValueError, BackendUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.read_text())
    print(f"table: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
