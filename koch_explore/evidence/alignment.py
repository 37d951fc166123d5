"""Our evidence methods beside captum's: the views that line the two up, shared by the cross-check test
(``tests/test_captum_crosscheck.py``) and its timing (``benchmarks/bench_captum.py``). Captum itself is not
imported here; where its definitions differ from ours, docs/findings/audit.md#captum says how and why.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..detect.model import ConvBlock, DenseMaxout

__all__ = ["LeakyAsReLU", "ModuleRectifier", "after_norm", "captum_view", "pearson_per_image"]


class LeakyAsReLU(nn.ReLU):
    """The detector's leaky ReLU as a module captum hooks (captum rewrites ``nn.ReLU`` instances only);
    forward and plain gradient are exactly ``F.leaky_relu(x, slope)``."""

    def __init__(self, slope: float):
        super().__init__()
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.slope)


class ModuleRectifier:
    """A ``rectifier`` (see :func:`koch_explore.detect.model.leaky_rectify`) that runs the block's activation
    module instead of a custom autograd Function: the same forward values."""

    def __init__(self, module: nn.Module):
        self.module = module

    def apply(self, x: torch.Tensor, slope: float) -> torch.Tensor:
        return self.module(x)


def captum_view(model: nn.Module) -> nn.Module:
    """The model as captum's ReLU-rewriting methods can see it: a copy whose functional leaky ReLUs (the
    detector's :class:`ConvBlock` and :class:`DenseMaxout`) run as :class:`LeakyAsReLU` modules, the same
    function; a model without them as it is."""
    if not any(isinstance(m, (ConvBlock, DenseMaxout)) for m in model.modules()):
        return model
    view = copy.deepcopy(model).eval()
    for block in view.modules():
        if isinstance(block, (ConvBlock, DenseMaxout)):
            block.act = LeakyAsReLU(block.leak)
            block.rectifier = ModuleRectifier(block.act)
    return view


def after_norm(model: nn.Module) -> nn.Module:
    """A copy of the grader that takes its normalised input ``model.norm(x)`` (the norm replaced by the
    identity): captum's InputXGradient on it multiplies by what conv1 sees, as ours does."""
    tail = copy.deepcopy(model).eval()
    tail.norm = nn.Identity()
    return tail


def pearson_per_image(ours, theirs) -> list[float]:
    """Pearson r per image of two (B, H, W) maps, each first divided by its own maximum (a constant or empty
    map is refused: it has no correlation)."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    if ours.shape != theirs.shape:
        raise ValueError(f"maps of shapes {ours.shape} and {theirs.shape}")
    rs = []
    for a, b in zip(ours, theirs, strict=True):
        if not (a.max() > 0 and b.max() > 0 and a.std() > 0 and b.std() > 0):
            raise ValueError("a constant or empty map")
        rs.append(float(np.corrcoef((a / a.max()).ravel(), (b / b.max()).ravel())[0, 1]))
    return rs
