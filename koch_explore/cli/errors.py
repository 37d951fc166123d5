"""How every ``koch-explore`` command reports bad input: one line, ``koch-explore <command>: <file>: <problem>``,
exit status 2, no traceback; what was already saved stays (banks, checkpoints, shards, packs and
cards are written through a temporary file and a rename).

The library raises ``ValueError`` subclasses (``FundusReadError``, ``WeightsMismatchError``,
``BankFormatError``, ...) whose message starts with the file it is about, ``FileNotFoundError`` /
``OSError`` for files that cannot be opened, and ``KeyError`` for unknown names; :func:`run_command`
turns any of them into that line. Anything else is a bug in the kit: it is reported as one line too,
and ``KOCH_DEBUG=1`` shows its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

USER_ERRORS = (ValueError, KeyError, OSError)
"""What bad input raises in the library (files that do not exist or do not fit, values out of range)."""

BAD_INPUT_EXIT = 2
INTERRUPTED_EXIT = 130


def command_name(args: argparse.Namespace) -> str:
    """``koch-explore detector eval``: the program and the subcommand words the user typed."""
    words = ["koch-explore"]
    if getattr(args, "command", None):
        words.append(args.command)
        action = getattr(args, f"{args.command.replace('-', '_')}_command", None)
        if action:
            words.append(action)
    return " ".join(words)


def message(exc: BaseException) -> str:
    """The exception's message on one line (a KeyError's without the quotes str() adds)."""
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:  # "[Errno 2] ...: 'x'" -> "x: ..."
        text = f"{exc.filename}: {exc.strerror}"
    return " ".join(str(text).split()) or type(exc).__name__


def report(args: argparse.Namespace, exc: BaseException) -> int:
    """Print ``exc`` as the command's one error line on stderr; returns the exit status for bad input."""
    print(f"{command_name(args)}: {message(exc)}", file=sys.stderr)
    return BAD_INPUT_EXIT


def run_command(args: argparse.Namespace) -> int:
    """Call the parsed command's handler; bad input becomes one line and exit 2, Ctrl-C exit 130, a bug
    one line and exit 1 (its traceback with ``KOCH_DEBUG=1``)."""
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        if os.environ.get("KOCH_DEBUG"):
            raise
        return report(args, exc)
    except KeyboardInterrupt:
        print(f"{command_name(args)}: interrupted; what was saved stays (checkpoints, finished shards)", file=sys.stderr)
        return INTERRUPTED_EXIT
    except Exception as exc:  # a bug, not bad input: still one line, the traceback on request
        if os.environ.get("KOCH_DEBUG"):
            raise
        print(f"{command_name(args)}: internal error {type(exc).__name__}: {message(exc)} "
              f"(KOCH_DEBUG=1 shows the traceback; please report it)", file=sys.stderr)
        return 1
