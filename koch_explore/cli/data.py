"""``koch-explore data check | pack``: find and verify the fundus datasets; pack the graded splits into shards."""

from __future__ import annotations

import argparse
import json
import time

from ..data.check import check_all, format_table, require_some_found
from ..data.graded import GradedData
from ..data.roots import resolve_data_root
from .config import add_config_arguments, config_from_args


def _check(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    root = resolve_data_root(args.root)
    statuses = check_all(root, args.dataset, progress=False if args.quiet else None)
    seconds = time.perf_counter() - start
    if args.json:
        report = {"root": None if root is None else str(root), "datasets": {s.name: s.to_json() for s in statuses}}
        print(json.dumps(report, indent=2))
    else:
        print(format_table(root, statuses, seconds))
    # after the table: its rows say where to get each dataset; the one error line says the root is wrong
    require_some_found(root, statuses)
    return 1 if any(s.status == "corrupt" for s in statuses) else 0


def _pack(args: argparse.Namespace) -> int:
    from ..data.packed import pack_graded

    start = time.perf_counter()
    cfg = config_from_args(GradedData, args)
    say = None if args.quiet else (lambda msg: print(f"  {msg}", flush=True))
    # bad input (no data root, a damaged photo, a shard limit below one image) is raised by the
    # library and reported by errors.run_command as one line, exit 2
    index = pack_graded(cfg, args.size, args.out, max_mib=args.max_mib, splits=tuple(args.splits), progress=say)
    counts = ", ".join(f"{k} {v['count']} in {len(v['shards'])} shards" for k, v in index["splits"].items())
    print(f"data pack: {cfg.data} at {args.size} px -> {args.out}: {counts} ({time.perf_counter() - start:.1f}s)")
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``koch-explore data check`` and ``koch-explore data pack``."""
    data = subparsers.add_parser("data", help="find and verify fundus datasets",
                                 description="Find and verify the fundus datasets described in data_manifests/.")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    check = data_sub.add_parser(
        "check",
        help="verify every staged file (exists, size, sha256, decodes) and the counts per role",
        description="Exit code 1 if any dataset is corrupt, 2 if none of those checked is there (a wrong root?), "
                    "0 otherwise (a missing dataset is not an error).",
    )
    check.add_argument("--root", help="data root, or one dataset's folder (default: $KOCH_DATA, ../shared/data, ./data)")
    check.add_argument("--dataset", nargs="+", action="extend", metavar="NAME",
                       help="only these datasets (name, folder or manifest name, any case)")
    check.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    check.add_argument("--quiet", action="store_true", help="no progress bar")
    check.set_defaults(func=_check)
    pack = data_sub.add_parser(
        "pack",
        help="write the graded training/validation splits as uint8 safetensors shards (read by detector train --packed)",
        description="Decode the graded splits once (the same patient-disjoint split as detector train) and write them "
                    "as shards of at most --max-mib MiB with an index.json of their sha256s.",
    )
    pack.add_argument("--out", required=True, help="pack folder (created; an older pack there is replaced)")
    pack.add_argument("--size", type=int, default=256, help="image side in px, the detector preset's input size (default: 256)")
    pack.add_argument("--max-mib", type=float, default=60.0, help="largest shard in MiB (default: 60)")
    pack.add_argument("--splits", nargs="+", default=["train", "val", "aptos_val"], choices=["train", "val", "aptos_val"],
                      help="splits to pack (default: all; aptos_val only where APTOS 2019 is staged)")
    pack.add_argument("--quiet", action="store_true", help="no line per shard")
    add_config_arguments(pack, GradedData)
    pack.set_defaults(func=_pack)
