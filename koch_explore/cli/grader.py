"""``--model package.module:factory --weights FILE`` and the adapter's flags, shared by the commands
that audit a model (``detector eval``, ``isolate ...``, ``koch-test``, ``report``)."""

from __future__ import annotations

import argparse

from ..detect.adapter import AdapterConfig
from .config import add_config_arguments, config_from_args


def model_options() -> argparse.ArgumentParser:
    """A parent parser: ``--model`` and the :class:`AdapterConfig` fields (``--weights`` stays the command's own)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("your own model (instead of the o_O detector)")
    g.add_argument("--model", default=None, metavar="MODULE:FACTORY",
                   help="audit your PyTorch model: 'package.module:factory' (importable from the working folder) or "
                        "'path/file.py:factory', a function returning the nn.Module; --weights is then its safetensors state dict")
    add_config_arguments(g, AdapterConfig)
    return p


def load_model_from_args(args, weights: str | None, device="cpu"):
    """The o_O detector ``weights``, or the ``--model`` factory with ``weights`` adapted by the flags."""
    from ..detect.adapter import load_grader

    return load_grader(weights, getattr(args, "model", None), device, config_from_args(AdapterConfig, args))
