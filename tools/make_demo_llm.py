#!/usr/bin/env python
"""Make the demo's warmed-up tiny LLM: what addressvlm/demo/pretrained_llm holds and `make demo` starts from.

Builds the demo city of --seed (its training conversations train the tokenizer), makes the tiny Phi-3 LLM of the
demo's shape and warms it up on reading the city's street and district names until every question kind reaches
its target (addressvlm/standins/reading_warmup.py): 8 to 15 minutes on 2 cores. The warm-up's plateau before it
learns to choose among options lasts longer or shorter with the seed and the CPU's kernels, which is why the demo
ships one LLM rather than making its own (docs/experiments.md, "A released tiny LLM").

Example (the shipped one; its README.md says on which machine and commit):
    ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 \\
        python tools/make_demo_llm.py --out addressvlm/demo/pretrained_llm --replace
"""
import argparse
import sys
from dataclasses import replace
from pathlib import Path

from addressvlm.core.records import DataError, refuse_output_over_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for the LLM, its tokenizer and reading_warmup.json")
    parser.add_argument("--seed", type=int, default=0, help="seed of the city, the tokenizer's corpus and the warm-up")
    parser.add_argument("--city", default=None,
                        help="where the seed's demo city is built or kept (default work_dirs/demo_llm/city_seed<N>)")
    parser.add_argument("--quick", action="store_true",
                        help="the quick demo's city and model, 20 warm-up steps (checks the tool; falls short of the "
                             "target, so it leaves --out as it was)")
    parser.add_argument("--replace", action="store_true",
                        help="replace an existing --out once the new LLM is finished (until then it stays as it was)")
    args = parser.parse_args()
    out = Path(args.out)
    city = Path(args.city or f"work_dirs/demo_llm/{'quick_' if args.quick else ''}city_seed{args.seed}")
    try:
        refuse_output_over_inputs(out, [("--city", city)], "--out")
    except DataError as error:
        parser.error(str(error))
    if out.exists() and any(out.iterdir()) and not args.replace:
        parser.error(f"--out {out}: not empty; pass --replace to replace it once the new LLM is finished")

    # After the checks above: they answer at once, these imports take seconds.
    from addressvlm.demo.pipeline import held_alone, make_demo_llm, staging_folder
    from addressvlm.runs.engine import DemoSettings, Paths

    settings = replace(DemoSettings.quick() if args.quick else DemoSettings(), seed=args.seed, pretrained_llm=False)
    paths = Paths(out=city.parent, city=city, work=city.parent)  # the data steps use the city alone
    with held_alone([city]):  # a second run on this city, or a demo in it, is refused
        result = make_demo_llm(paths, settings, out)
    if not result["reached_target"]:
        sys.exit(f"{staging_folder(out)}: the warm-up stopped after {result['steps']} steps short "
                 f"of its target ({result['accuracy']}); {out} is left as it was")
    print(f"{out}: the warm-up reached its target after {result['steps']} steps; held-out accuracy per kind "
          f"{result['accuracy']}")


if __name__ == "__main__":
    main()
