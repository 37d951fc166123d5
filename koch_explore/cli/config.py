"""Config dataclasses as command-line flags, documented where they are declared.

Every training option is a field of a plain dataclass with its docstring right below it (the
CycleGAN-options style). ``add_config_arguments`` turns the fields into ``--flags`` whose ``--help``
is that docstring, and ``config_from_args`` builds the dataclass back from the parsed namespace, so
a new option needs one line in the dataclass and nothing in the CLI.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import textwrap
from dataclasses import MISSING, fields, is_dataclass
from functools import lru_cache

__all__ = ["add_config_arguments", "config_from_args", "field_docs"]


@lru_cache(maxsize=None)
def field_docs(cls) -> dict[str, str]:
    """{field: its attribute docstring} — the string literal written right after a field."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):  # no source (frozen app, REPL class): flags without help
        return {}
    body = tree.body[0].body
    docs = {}
    for a, b in zip(body, body[1:]):
        if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
                and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)):
            docs[a.target.id] = " ".join(b.value.value.split())
    return docs


def _default(f):
    return f.default_factory() if f.default is MISSING else f.default


def _scalar(type_text: str):
    """The argparse ``type`` for an annotation written as text (``from __future__ import annotations``)."""
    head = type_text.replace("tuple[", "").replace("list[", "").split("|")[0].split(",")[0].strip(" ]")
    return {"int": int, "float": float}.get(head, str)


def add_config_arguments(parser: argparse.ArgumentParser, cls, skip=(), prefix: str = "--", help_default: str = "") -> None:
    """One flag per field of dataclass ``cls`` (``snake_case`` -> ``--snake-case``): bools get
    ``--x/--no-x`` (for ``bool | None``, giving neither leaves None: "decide for me"), tuples take
    several values, ``X | None`` fields take an X. Nested dataclasses and fields named in ``skip`` or
    starting with ``_`` are left out."""
    docs = field_docs(cls)
    for f in fields(cls):
        default = _default(f)
        if f.name in skip or f.name.startswith("_") or is_dataclass(default):
            continue
        flag = prefix + f.name.replace("_", "-")
        text = docs.get(f.name, help_default.format(name=f.name))
        if "default" not in text.lower():
            text = f"{text} (default: {default!r})" if text else f"default: {default!r}"
        text = text.replace("%", "%%")
        kind = str(f.type)
        if kind in ("bool", "bool | None"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        elif isinstance(default, (tuple, list)):
            parser.add_argument(flag, nargs="+", type=_scalar(kind), default=list(default), help=text)
        else:
            parser.add_argument(flag, type=_scalar(kind), default=default, help=text)


def config_from_args(cls, args: argparse.Namespace, prefix: str = "", **overrides):
    """``cls`` built from the namespace attributes ``prefix + field`` that exist (lists back to
    tuples where the field's default is a tuple); ``overrides`` win."""
    kw = {}
    for f in fields(cls):
        name = prefix + f.name
        if f.name in overrides or not hasattr(args, name):
            continue
        value = getattr(args, name)
        kw[f.name] = tuple(value) if isinstance(_default(f), tuple) and value is not None else value
    return cls(**kw, **overrides)
