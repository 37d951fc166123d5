"""``koch-explore`` command line: one subcommand per stage.

Each stage module exposes ``add_cli(subparsers)`` that declares its subcommand and sets
``func`` to its handler. Handlers return an exit code. Modules keep heavy imports (torch) inside
handlers so ``koch-explore --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Order here is the order in --help.
STAGE_MODULES = [
    "koch_explore.data.check",
    "koch_explore.phantom",
    "koch_explore.detector_cli",
    "koch_explore.descriptors",
    "koch_explore.vessels",
    "koch_explore.synthesis.cli",
    "koch_explore.koch",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="koch-explore",
        description="Ask a diabetic-retinopathy CNN why it diagnoses (isolate, culture, inoculate, re-isolate).",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"koch-explore {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in STAGE_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency must surface, not hide a command
                raise
            continue
        module.add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
