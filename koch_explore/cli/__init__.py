"""``koch-explore`` command line: one subcommand per stage, one module per subcommand.

Each module here only wires argparse to library calls: it exposes ``add_cli(subparsers)``, which
declares its subcommand and sets ``func`` to a handler that calls the library, prints, and returns an
exit code. Bad input is raised by the library and reported by :func:`.errors.run_command` as one line
naming the file and the problem, exit 2, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Order here is the order in --help.
STAGE_MODULES = [
    "koch_explore.cli.data",
    "koch_explore.cli.phantom",
    "koch_explore.cli.detector",
    "koch_explore.cli.isolate",
    "koch_explore.cli.vessels",
    "koch_explore.cli.synth",
    "koch_explore.cli.koch",
    "koch_explore.cli.audit",
]


class OneLineParser(argparse.ArgumentParser):
    """A wrong flag or value is one line too (``koch-explore detector predict: the following arguments are
    required: IMAGE (see --help)``), not argparse's usage block; its exit status stays 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="koch-explore",
        description="Ask a diabetic-retinopathy CNN why it diagnoses (isolate, culture, inoculate, re-isolate).",
    )
    from importlib.metadata import PackageNotFoundError, version

    try:
        __version__ = version("koch-explore")
    except PackageNotFoundError:  # a source checkout that was never installed
        __version__ = "unknown"
    parser.add_argument("--version", action="version", version=f"koch-explore {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in STAGE_MODULES:
        importlib.import_module(name).add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .errors import run_command

    return run_command(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
