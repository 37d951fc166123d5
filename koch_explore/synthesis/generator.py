"""Postulate 3, the generator: a U-Net that draws a fundus around a vessel tree, conditioned on the
placed lesion descriptors (after the AAAI/JBHI papers, see ../shared/docs/METHOD.md):

* encoder on the vessel tree + FOV mask (+ the optic disc's map with ``disc_channel``, see :mod:`.disc`):
  ``depth`` stride-2 4x4 convs (widths ``ngf`` x 1, 2, 4, 8,
  8, 8), BatchNorm, leaky ReLU 0.2;
* the descriptor canvases of :meth:`~koch_explore.culture.DescriptorBank.render` (the detector's
  feature patches pasted where lesions are placed, plus the placement mask) are concatenated to the
  encoder features of the same grid — ``conv2`` at 1/2, ``conv5`` at 1/8 for the detector presets;
* noise ``z`` (``z_dim``, 400 in the papers) -> linear -> a 64-channel map at the bottleneck;
* decoder: nearest upsample x2 + 3x3 conv + BatchNorm + ReLU per level with U-Net skips (the
  injected canvases ride along the skips), a 3x3 conv to RGB and tanh; the output is mapped to
  [0, 1] and blacked out outside the FOV, like a fundus photo.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..core.weights import JsonConfig

__all__ = ["Generator", "GeneratorConfig", "canvas_tensors", "with_disc_input"]


@dataclass
class GeneratorConfig(JsonConfig):
    size: int = 256
    """Square side of the synthesized fundus."""
    ngf: int = 32
    """Encoder width of the first level (the papers use 64 at 512 px)."""
    depth: int = 6
    """Stride-2 levels (6: a 4x4 bottleneck at 256 px)."""
    z_dim: int = 400
    """Noise dimension (the papers' 400)."""
    z_channels: int = 64
    """Channels of the noise map at the bottleneck."""
    canvas_channels: dict[str, int] = field(default_factory=lambda: {"conv2": 32, "conv5": 64})
    """Descriptor canvases injected: detector layer -> channels (placement mask added to each)."""
    canvas_scales: dict[str, int] = field(default_factory=lambda: {"conv2": 2, "conv5": 8})
    """Detector layer -> downsampling factor of its grid (1/2 -> 2, 1/8 -> 8)."""
    ndf: int = 32
    """Discriminator width of the first conv."""
    disc_channel: bool = False
    """A third input: the optic disc's map (:func:`~koch_explore.synthesis.disc.disc_map`), so the generator
    knows where to draw the disc (the first shipped generator, without it, drew none)."""

    def widths(self) -> list[int]:
        mult = [1, 2, 4, 8, 8, 8, 8, 8]
        return [self.ngf * mult[i] for i in range(self.depth)]

    def level_of(self, layer: str) -> int:
        """Encoder level whose output grid matches ``layer``'s (level i is at 1 / 2**(i+1))."""
        scale = self.canvas_scales[layer]
        level = scale.bit_length() - 2
        if 2 ** (level + 1) != scale or not 0 <= level < self.depth:
            raise ValueError(f"canvas {layer}: scale 1/{scale} is not an encoder level (1/2 ... 1/{2 ** self.depth})")
        return level


def down_block(cin: int, cout: int, norm: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 4, 2, 1, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Generator(nn.Module):
    """``forward(vessels, fov, z, canvases)`` -> RGB (B, 3, S, S) in [0, 1], black outside the FOV.

    ``vessels``, ``fov``: (B, 1, S, S) in [0, 1]; ``z``: (B, z_dim); ``canvases``: layer ->
    (B, C + 1, S / scale, S / scale) = feature canvas and placement mask (:func:`canvas_tensors`);
    a missing layer counts as "no lesion placed" (zeros).
    """

    def __init__(self, cfg: GeneratorConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or GeneratorConfig()
        if cfg.size % (2**cfg.depth):
            raise ValueError(f"size {cfg.size} is not a multiple of 2**depth = {2 ** cfg.depth}")
        w = cfg.widths()
        self.inject = {cfg.level_of(n): (n, c + 1) for n, c in cfg.canvas_channels.items()}
        skip_ch = [w[i] + (self.inject[i][1] if i in self.inject else 0) for i in range(cfg.depth)]
        self.down = nn.ModuleList()
        self.inputs = 3 if cfg.disc_channel else 2
        cin = self.inputs
        for i in range(cfg.depth):
            self.down.append(down_block(cin, w[i], norm=i > 0))
            cin = skip_ch[i]  # the next level sees the injected canvases too
        self.bottleneck = cfg.size // (2**cfg.depth)
        self.z_fc = nn.Linear(cfg.z_dim, cfg.z_channels * self.bottleneck**2)
        self.up = nn.ModuleList()
        cin = skip_ch[-1] + cfg.z_channels
        for i in reversed(range(cfg.depth)):
            cout = w[i - 1] if i > 0 else cfg.ngf
            self.up.append(_up(cin, cout))
            cin = cout + (skip_ch[i - 1] if i > 0 else 0)
        self.to_rgb = nn.Conv2d(cin + self.inputs, 3, 3, 1, 1)  # + the inputs at full resolution

    def forward(self, vessels: torch.Tensor, fov: torch.Tensor, z: torch.Tensor, canvases: dict[str, torch.Tensor] | None = None,
                disc: torch.Tensor | None = None) -> torch.Tensor:
        canvases = canvases or {}
        b = vessels.shape[0]
        if self.cfg.disc_channel and disc is None:
            raise ValueError("this generator draws the optic disc where it is told: give disc (B, 1, S, S), see synthesis.disc")
        inp = torch.cat([vessels, fov] + ([disc.to(vessels.dtype)] if self.cfg.disc_channel else []), dim=1)
        h, skips = inp, []
        for i, down in enumerate(self.down):
            h = down(h)
            if i in self.inject:
                name, ch = self.inject[i]
                c = canvases.get(name)
                if c is None:
                    c = h.new_zeros(b, ch, *h.shape[-2:])
                elif c.shape[1] != ch or c.shape[-2:] != h.shape[-2:]:
                    raise ValueError(f"canvas {name}: expected (B, {ch}, {h.shape[-2]}, {h.shape[-1]}), got {tuple(c.shape)}")
                h = torch.cat([h, c.to(h.dtype)], dim=1)
            skips.append(h)
        zmap = self.z_fc(z).view(b, self.cfg.z_channels, self.bottleneck, self.bottleneck)
        h = torch.cat([skips[-1], zmap], dim=1)
        for k, up in enumerate(self.up):
            h = up(h)
            i = self.cfg.depth - 1 - k
            if i > 0:
                h = torch.cat([h, skips[i - 1]], dim=1)
        rgb = torch.tanh(self.to_rgb(torch.cat([h, inp], dim=1)))
        return (rgb + 1) / 2 * fov


def canvas_tensors(layout, cfg: GeneratorConfig, device=None) -> dict[str, torch.Tensor]:
    """The generator's canvases (1, C + 1, h, w) from a :class:`~koch_explore.culture.RenderedLayout`
    (feature canvas + layer placement mask; zeros for a layer the layout lacks)."""
    out = {}
    for name, ch in cfg.canvas_channels.items():
        side = cfg.size // cfg.canvas_scales[name]
        feat = layout.features.get(name) if layout is not None else None
        mask = layout.layer_masks.get(name) if layout is not None else None
        t = torch.zeros(1, ch + 1, side, side)
        if feat is not None:
            f = torch.from_numpy(feat)
            if f.shape != (ch, side, side):
                raise ValueError(f"layout canvas {name} is {tuple(f.shape)}, the generator expects {(ch, side, side)}")
            t[0, :ch] = f
        if mask is not None:
            t[0, ch] = torch.from_numpy(mask.astype("float32"))
        out[name] = t.to(device) if device is not None else t
    return out


def with_disc_input(state: dict[str, torch.Tensor], generator: Generator) -> dict[str, torch.Tensor]:
    """A state dict of a generator without the disc input, widened for ``generator`` (which has it): the
    new input's weights start at zero, so the widened generator draws exactly what the old one drew until
    training teaches it the disc (fine-tuning the shipped generator)."""
    own = generator.state_dict()
    out = dict(state)
    for name in ("down.0.0.weight", "to_rgb.weight"):
        old, new = state[name], own[name]
        if old.shape == new.shape:
            continue
        wide = torch.zeros_like(new)
        wide[:, : old.shape[1]] = old
        out[name] = wide
    return out
