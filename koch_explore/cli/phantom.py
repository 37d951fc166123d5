"""``koch-explore phantom``: write a phantom fundus dataset (see :mod:`koch_explore.data.phantom`)."""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

from ..data.phantom import GRADE_RULE, write_phantom_dataset


def add_cli(sub) -> None:
    p = sub.add_parser(
        "phantom",
        help="write a phantom fundus dataset with exact lesion masks",
        description="Write procedurally drawn fundus photographs with exact vessel/lesion masks and grades.",
        epilog=GRADE_RULE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--count", type=int, default=16, help="number of images (default 16)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--size", type=int, default=512, help="image side in px (default 512)")
    p.add_argument("--grade", type=int, choices=range(5), default=None, help="draw every image at this grade")
    p.set_defaults(func=_cli_phantom)


def _cli_phantom(args: argparse.Namespace) -> int:
    if args.count < 0 or args.seed < 0 or args.size < 64:
        raise ValueError(f"--count {args.count}, --seed {args.seed}, --size {args.size}: "
                         "--count and --seed must be >= 0 and --size >= 64")
    start = time.perf_counter()
    out = write_phantom_dataset(args.out, args.count, args.seed, size=args.size, grades=args.grade)
    elapsed = time.perf_counter() - start
    levels = Counter(int(line.rsplit(",", 1)[1]) for line in (out / "labels.csv").read_text().splitlines()[1:])
    hist = " ".join(f"{g}:{levels.get(g, 0)}" for g in range(5))
    print(f"phantom: wrote {args.count} images ({args.size}px, seed {args.seed}) to {out}"
          f" | grades {hist} | {elapsed:.1f}s")
    return 0

