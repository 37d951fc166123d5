"""Postulate 3, the discriminator: is this a plausible fundus *for this vessel tree*?

``cat(rgb, vessels)`` -> 5 stride-2 4x4 convs (``ndf`` x 1 ... 16, leaky 0.2, BatchNorm from the
second) -> one linear score per image (the papers' layout). Conditioning on the tree keeps the
generator from drawing a realistic fundus that ignores its input.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .generator import GeneratorConfig, down_block

__all__ = ["Discriminator"]


class Discriminator(nn.Module):
    """``forward(rgb, vessels)`` -> one realism score per image (B,)."""

    def __init__(self, cfg: GeneratorConfig | None = None):
        super().__init__()
        cfg = cfg or GeneratorConfig()
        widths = [cfg.ndf * m for m in (1, 2, 4, 8, 16)]
        layers, cin = [], 4
        for i, w in enumerate(widths):
            layers.append(down_block(cin, w, norm=i > 0))
            cin = w
        self.features = nn.Sequential(*layers)
        side = cfg.size // 32
        self.score = nn.Linear(cin * side * side, 1)

    def forward(self, rgb: torch.Tensor, vessels: torch.Tensor) -> torch.Tensor:
        h = self.features(torch.cat([rgb, vessels], dim=1))
        return self.score(h.flatten(1)).squeeze(1)
