"""Postulate 3, local mode: lesions grown inside a real healthy photo, the rest of the photo untouched.

The whole-fundus generator (:mod:`.generator`) must draw a disc, texture and vessels before it draws a
lesion; a real healthy photo already has them. Here a small U-Net redraws only a window around each
placed descriptor:

* **input** per placement, a ``window`` x ``window`` crop (grown when a lesion needs more) centred on it:
  the host photo, the same window with the descriptor's own lesion transplanted into it (its
  ``norm_patch``, the source eye's high-pass as the detector saw it, at the host's contrast: see
  :mod:`.transplant`), the placement mask and the blending weight (0 outside the photo's FOV);
* **output** a correction to the transplanted window (its last conv starts at zero, so an untrained
  network *is* the transplant): lesion colour, texture and edges that belong in this photo;
* **composite**: ``host + alpha * (drawn - host)``, where ``alpha`` is 1 on the lesion and falls off
  over a feathered, slightly dilated ring; beyond ``region`` (the mask grown by :attr:`LocalConfig.reach`
  px) ``alpha`` is exactly 0 and the result is the host photo, pixel for pixel.

Training (:mod:`.local_train`): a patch discriminator against windows around real lesions of graded
training eyes, the pathological (Gram) loss at the placements, the severity term and a context/seam term.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.weights import JsonConfig
from .base import Synthesizer

__all__ = ["LocalConfig", "LocalGenerator", "LocalSynthesizer", "blend_weights", "placement_region"]

IN_CHANNELS = 8
"""host RGB, transplanted RGB, placement mask, blending weight."""


@dataclass
class LocalConfig(JsonConfig):
    size: int = 256
    """Side of the square photo the placements live on (the detector's input size)."""
    window: int = 64
    """Side of the window redrawn around a placement (a multiple of 2**depth; grown for larger lesions)."""
    ngf: int = 32
    """Width of the U-Net's first level."""
    depth: int = 3
    """Stride-2 levels (3: 64 -> 8 px at the bottom)."""
    dilate: int = 2
    """Pixels the placement mask grows before its edge is feathered (the lesion's halo, redrawn too)."""
    feather: float = 1.0
    """Gaussian sigma (px) of the blending weight's edge."""

    @property
    def reach(self) -> int:
        """How far (px, square neighbourhood) beyond the placement mask a pixel can change."""
        return self.dilate + math.ceil(3 * self.feather)


def blend_weights(mask: np.ndarray, cfg: LocalConfig) -> np.ndarray:
    """float32 weight of the redrawn pixels: 1 on ``mask``, a feathered ring around it, exactly 0
    beyond :func:`placement_region` (a square dilation then a Gaussian cut at 3 sigma cannot reach further)."""
    m = np.asarray(mask, np.uint8)
    grown = cv2.dilate(m, np.ones((2 * cfg.dilate + 1,) * 2, np.uint8)).astype(np.float32)
    k = math.ceil(3 * cfg.feather)
    soft = cv2.GaussianBlur(grown, (2 * k + 1, 2 * k + 1), cfg.feather, borderType=cv2.BORDER_CONSTANT)
    return np.maximum(soft, m.astype(np.float32))


def placement_region(mask: np.ndarray, cfg: LocalConfig) -> np.ndarray:
    """bool: the pixels local inoculation may change for a placement ``mask`` (the mask grown by ``reach``)."""
    r = cfg.reach
    return cv2.dilate(np.asarray(mask, np.uint8), np.ones((2 * r + 1,) * 2, np.uint8)).astype(bool)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.GroupNorm(8, cout), nn.LeakyReLU(0.2, inplace=True))


class LocalGenerator(nn.Module):
    """``forward(x)`` (B, 8, w, w) -> a correction (B, 3, w, w) to the transplanted window, in [-0.5, 0.5].

    A U-Net: ``depth`` levels of two 3x3 convs (GroupNorm: batch statistics of a few windows are noise)
    and a stride-2 average pool; nearest upsampling back with skips. ``w`` any multiple of 2**depth."""

    def __init__(self, cfg: LocalConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or LocalConfig()
        widths = [cfg.ngf * 2**i for i in range(cfg.depth + 1)]
        self.down = nn.ModuleList()
        cin = IN_CHANNELS
        for w in widths[:-1]:
            self.down.append(nn.Sequential(_block(cin, w), _block(w, w)))
            cin = w
        self.bottom = nn.Sequential(_block(cin, widths[-1]), _block(widths[-1], widths[-1]))
        self.up = nn.ModuleList()
        cin = widths[-1]
        for w in reversed(widths[:-1]):
            self.up.append(nn.Sequential(_block(cin + w, w), _block(w, w)))
            cin = w
        self.to_rgb = nn.Conv2d(cin, 3, 3, 1, 1)
        nn.init.zeros_(self.to_rgb.weight)  # an untrained network returns the transplant unchanged
        nn.init.zeros_(self.to_rgb.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        for down in self.down:
            h = down(h)
            skips.append(h)
            h = F.avg_pool2d(h, 2)
        h = self.bottom(h)
        for up, skip in zip(self.up, reversed(skips)):
            h = up(torch.cat([F.interpolate(h, scale_factor=2, mode="nearest"), skip], dim=1))
        return 0.5 * torch.tanh(self.to_rgb(h))


@dataclass
class Window:
    """One placement's window: where it lies in the photo and what the generator gets and gives back."""

    x0: int
    y0: int
    side: int
    inputs: torch.Tensor
    """(8, side, side): host, transplanted, mask, weight."""
    weight: torch.Tensor
    """(1, side, side) blending weight (0 beyond the placement's region)."""


def placement_windows(host: np.ndarray, transplanted: np.ndarray, layout, cfg: LocalConfig, fov: np.ndarray | None = None) -> list[Window]:
    """The windows of each placed descriptor of ``layout`` on ``host`` (H, W, 3) in [0, 1]; ``transplanted``:
    the host with every placed lesion pasted (:func:`~koch_explore.synthesis.transplant.transplant`). With
    ``fov``, nothing outside the field of view is redrawn (the black frame stays black)."""
    h, w = host.shape[:2]
    mult = 2**cfg.depth
    out = []
    for d in layout:
        x0, y0, x1, y1 = d.bbox
        need = max(x1 - x0, y1 - y0) + 2 * cfg.reach + 2
        side = min(max(cfg.window, -(-need // mult) * mult), (min(h, w) // mult) * mult)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        wx = int(np.clip(round(cx - side / 2), 0, w - side))
        wy = int(np.clip(round(cy - side / 2), 0, h - side))
        mask = np.zeros((side, side), np.uint8)
        # the descriptor's mask inside this window (its box lies inside the photo)
        bx0, by0 = x0 - wx, y0 - wy
        sx0, sy0 = max(0, -bx0), max(0, -by0)
        sx1, sy1 = min(x1 - x0, side - bx0), min(y1 - y0, side - by0)
        if sx1 > sx0 and sy1 > sy0:
            mask[by0 + sy0 : by0 + sy1, bx0 + sx0 : bx0 + sx1] = d.mask[sy0:sy1, sx0:sx1]
        weight = blend_weights(mask, cfg)
        sl = (slice(wy, wy + side), slice(wx, wx + side))
        if fov is not None:
            weight = weight * np.asarray(fov, bool)[sl]
        inputs = np.concatenate([host[sl].transpose(2, 0, 1), transplanted[sl].transpose(2, 0, 1),
                                 mask[None].astype(np.float32), weight[None]], axis=0)
        out.append(Window(wx, wy, side, torch.from_numpy(np.ascontiguousarray(inputs, np.float32)),
                          torch.from_numpy(weight[None])))
    return out


def composite(host: torch.Tensor, windows: list[Window], drawn: list[torch.Tensor]) -> torch.Tensor:
    """``host`` (3, H, W) with each window's ``drawn`` (3, s, s) blended in by its weight: where windows
    overlap their drawings are averaged by weight; where every weight is 0 the host stays exactly."""
    _, h, w = host.shape
    num = torch.zeros_like(host)
    den = torch.zeros_like(host[:1])
    for win, img in zip(windows, drawn):
        pad = (win.x0, w - win.x0 - win.side, win.y0, h - win.y0 - win.side)
        wt = win.weight.to(host)
        num = num + F.pad(wt * img, pad)
        den = den + F.pad(wt, pad)
    alpha = den.clamp(max=1.0)
    # host + alpha * (mean drawing - host): exactly host where alpha == 0
    return host + alpha * (num / den.clamp_min(1e-6) - host)


class LocalSynthesizer(Synthesizer):
    """A trained :class:`LocalGenerator`: inoculate a real photo with placed descriptors.

    ::

        synth = load_synthesizer("local")
        image, fov = prepare_fundus(read_image("healthy.jpg"), synth.size)
        sick = synth.inoculate(image, fov, random_layout(load_bank("local"), 8, fov))
    """

    FORMAT = "koch-explore/local-synthesizer"
    FORMAT_VERSION = 1
    KIND = "local lesion synthesizer"
    CONFIG = LocalConfig
    NETWORK = LocalGenerator
    mode = "local"

    def _check(self, image: np.ndarray, fov: np.ndarray, layout):
        from ..core.images import as_unit_float
        from ..culture.bank import BankMismatchError, DescriptorBank

        s = self.size
        img = np.asarray(as_unit_float(image, "photo"), np.float32)
        if img.shape != (s, s, 3) or np.asarray(fov).shape != (s, s):
            raise ValueError(f"photo {img.shape} and fov {np.asarray(fov).shape} must be ({s}, {s}, 3) and ({s}, {s}) "
                             f"for this synthesizer (prepare_fundus(photo, {s}))")
        if layout is not None and not isinstance(layout, DescriptorBank):
            raise ValueError(f"local inoculation places a DescriptorBank layout, not {type(layout).__name__}")
        if layout is not None and self.detector_hash and layout.detector_hash and layout.detector_hash != self.detector_hash:
            raise BankMismatchError("the descriptors were cut with other detector weights than this synthesizer was trained with")
        missing = [] if layout is None else sorted({str(d.source) for d in layout if d.norm_patch is None})
        if missing:
            raise ValueError(f"descriptors from {missing[:3]} carry no norm_patch (a bank saved before norm patches existed): "
                             "re-isolate them for local inoculation")
        return img

    @torch.no_grad()
    def inoculate(self, image: np.ndarray, fov: np.ndarray, layout=None, seed: int = 0) -> np.ndarray:
        """``image`` (S, S, 3) in [0, 1] (or uint8) with the lesions of ``layout`` (a placed DescriptorBank, or
        None: the photo itself) grown into it; pixels beyond every placement's :func:`placement_region` are
        the photo's own. ``seed`` is unused (the result is determined)."""
        from .transplant import transplant

        img = self._check(image, fov, layout)
        if layout is None or not len(layout):
            return img.copy()
        pasted = transplant(None, img, layout)
        wins = placement_windows(img, pasted, layout, self.cfg, fov)
        dev = self.device
        drawn = [(w.inputs[3:6].to(dev) + self.generator(w.inputs[None].to(dev))[0]).clamp(0, 1) for w in wins]
        host = torch.from_numpy(img.transpose(2, 0, 1).copy()).to(dev)
        out = composite(host, wins, drawn)
        return out.permute(1, 2, 0).float().cpu().numpy()

    def synthesize_host(self, host: dict, layout=None, seed: int = 0) -> np.ndarray:
        """The Koch test's call: ``host`` {"image", "fov", ...}; ``seed`` is unused (the result is determined)."""
        if "image" not in host:
            raise ValueError(f"host {host.get('name', '?')!r} has no photo: local inoculation needs a real healthy photo "
                             "(use --mode whole for a vessel tree)")
        return self.inoculate(host["image"], host["fov"], layout)
