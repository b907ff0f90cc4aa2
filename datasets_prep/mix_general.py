#!/usr/bin/env python
"""Mix general instruction data (e.g. LLaVA's llava_v1_5_mix665k.json) into a city's stage-2 training JSON:
--general-per-address N general records for each address record, drawn without replacement, seeded.

The paper's Table 6 mixes at "5:1" and "1:1", general:address (its text: the 1:1 mix has more address data and
scores higher): --general-per-address 5 and 1. At Pitts-VQA's size (177,840 training images, Table B2) 5 needs
889,200 general records, more than llava_v1_5_mix665k's 665K: it is refused with the counts, nothing is repeated or
capped (docs/data.md).

Both image sets must resolve from one image folder: give each a prefix relative to it.

Example (image folder data/, holding pitts/ and llava/):
    python datasets_prep/mix_general.py --address data/pitts/vqa/train.json --address-prefix pitts \\
        --general data/llava/llava_v1_5_mix665k.json --general-prefix llava --general-per-address 1 \\
        --out data/pitts/vqa_mix_general1/train.json
"""
import argparse
import sys

from addressvlm.core.records import DataError
from addressvlm.data.vqa import mix_general


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", required=True, help="the city's stage-2 train.json")
    parser.add_argument("--general", required=True, help="a general LLaVA JSON")
    parser.add_argument("--out", required=True, help="mixed train.json to write")
    parser.add_argument("--general-per-address", type=float, required=True, metavar="N",
                        help="general records per address record: 5 and 1 are Table 6's 5:1 and 1:1 "
                             "(general:address); 0.2 is one general record per five address records")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--address-prefix", default="", help="prepended to the address records' image paths")
    parser.add_argument("--general-prefix", default="", help="prepended to the general records' image paths")
    args = parser.parse_args()
    try:
        stats = mix_general(args.address, args.general, args.out, general_per_address=args.general_per_address,
                            seed=args.seed, address_prefix=args.address_prefix, general_prefix=args.general_prefix)
    except (DataError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    print(f"{args.out}: {stats['address_records']} address + {stats['general_records']} general records")


if __name__ == "__main__":
    main()
