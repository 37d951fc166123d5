"""``koch-explore data check``: find and verify the fundus datasets."""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..data.check import check_all, format_table
from ..data.roots import resolve_data_root


def _check(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    try:
        root = resolve_data_root(args.root)
        statuses = check_all(root, args.dataset, progress=False if args.quiet else None)
    except (FileNotFoundError, KeyError) as exc:
        print(f"koch-explore data check: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    if args.json:
        report = {"root": None if root is None else str(root), "datasets": {s.name: s.to_json() for s in statuses}}
        print(json.dumps(report, indent=2))
    else:
        print(format_table(root, statuses, seconds))
    return 1 if any(s.status == "corrupt" for s in statuses) else 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``koch-explore data check``."""
    data = subparsers.add_parser("data", help="find and verify fundus datasets",
                                 description="Find and verify the fundus datasets described in data_manifests/.")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    check = data_sub.add_parser(
        "check",
        help="verify every staged file (exists, size, sha256, decodes) and the counts per role",
        description="Exit code 1 if any dataset is corrupt, 0 otherwise (a missing dataset is not an error).",
    )
    check.add_argument("--root", help="data root, or one dataset's folder (default: $KOCH_DATA, ../shared/data, ./data)")
    check.add_argument("--dataset", nargs="+", action="extend", metavar="NAME",
                       help="only these datasets (name, folder or manifest name, any case)")
    check.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    check.add_argument("--quiet", action="store_true", help="no progress bar")
    check.set_defaults(func=_check)
