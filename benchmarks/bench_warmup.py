"""Steps/s of the tiny LLM's reading warm-up (addressvlm/standins/reading_warmup.py): two data-parallel workers of
one thread each, against one process on two threads (how it ran before), on the demo's model shape (96 wide, 4
layers, 4 heads of 32, 64-token passages) built here, nothing downloaded.

    python benchmarks/bench_warmup.py                  # about 2 minutes on a quiet 2-core machine
The last line is `ratio: X` (workers / one process, steps/s). Both runs take the same steps on the same batch size;
only their summation order differs, so their losses are alike but not equal.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from addressvlm.standins.reading_warmup import CityNames, ReadingWarmup, warm_up_reading
from addressvlm.standins.tiny import TinySize, make_tiny_llava

STREETS = tuple(f"{word}{kind}" for kind in ("katu", "tie", "kuja") for word in
                ("Mannerheimin", "Aleksanterin", "Bulevardin", "Runebergin", "Fredrikin", "Albertin", "Annan"))
DISTRICTS = ("Kamppi", "Kluuvi", "Punavuori", "Ullanlinna", "Kruununhaka", "Etu-Töölö")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150, help="warm-up steps of each run")
    parser.add_argument("--workers", type=int, default=2, help="data-parallel workers, one thread each")
    parser.add_argument("--threads", type=int, default=2, help="threads of the one-process run")
    args = parser.parse_args(argv)

    names = CityNames(STREETS, DISTRICTS)
    corpus = [f"Is this image taken on {s}, Yes or No? It is {s}, {d}." for s in STREETS for d in DISTRICTS]
    # A target no run reaches, checked once at the end: every run takes exactly --steps steps.
    settings = ReadingWarmup(max_steps=args.steps, target=101.0, check_every=args.steps, probe_per_kind=20)
    with tempfile.TemporaryDirectory() as tmp:
        base = make_tiny_llava(Path(tmp) / "base", TinySize(hidden=96, layers=4, heads=4, head_dim=32,
                                                           intermediate=192),
                               corpus, seed=0)
        rates = {}
        for label, processes in (("one process", 1), ("workers", args.workers)):
            folder = Path(tmp) / label.replace(" ", "_")
            shutil.copytree(base, folder)
            torch.set_num_threads(args.threads)
            start = time.perf_counter()
            result = warm_up_reading(folder, names, replace(settings, processes=processes), eval_per_kind=20,
                                     progress=False)
            seconds = time.perf_counter() - start
            rates[label] = args.steps / seconds
            threads = args.threads if processes == 1 else 1
            print(f"{label}: {processes} process(es) x {threads} thread(s): {rates[label]:.2f} steps/s "
                  f"({seconds:.1f} s, loss {result['final_loss']:.3f})", flush=True)
    print(f"ratio: {rates['workers'] / rates['one process']:.2f}")


if __name__ == "__main__":
    main()
