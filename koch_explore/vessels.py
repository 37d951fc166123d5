"""Vessel segmentation: the binary vessel map the synthesizer (GAN) draws a fundus from.

Read top to bottom:

* ``VesselConfig`` - the architecture and its input preprocessing, as data (saved with the weights);
* ``LocalContrastNorm`` - the CLAHE-like input normalisation, *inside* the model so it is applied
  identically at training and inference (and is differentiable, so a GAN loss can pass through);
* ``DropBlock2d``, ``SpatialAttention``, ``UNet`` - a compact SA-UNet (Guo et al., ICPR 2020):
  conv 3x3 -> DropBlock -> BatchNorm -> ReLU blocks, spatial attention at the bottleneck;
* geometry - any fundus is cropped to its field of view (FOV) and rescaled so the FOV diameter is
  DRIVE's (540 px), where the network was trained; maps go back to the input geometry;
* ``VesselSegmenter`` - ``segment(image, fov)`` -> (probability, binary), strict safetensors I/O
  with the binary threshold stored beside the weights;
* pixel metrics (exact ROC AUC over millions of pixels, F1-optimal threshold);
* training: patches biased toward vessels, flips/rotations/scale and brightness/contrast/gamma,
  BCE + Dice inside the FOV, AdamW + cosine, EMA, atomic checkpoints, resume, time budget;
  the threshold is fit on training images held out from the optimisation, never on DRIVE test;
* ``koch-explore vessels train | segment | eval``.

Why the FOV-diameter scale: vessel calibre in pixels is what a small convolutional network
learns. Cameras differ in resolution (DRIVE 565x584, CHASE_DB1 999x960, EyePACS up to 4k), but
after cropping to the FOV and matching its diameter the vessels are roughly DRIVE-sized (exactly
so for cameras with the same field angle; CHASE_DB1's 30 degree field makes its vessels ~1.5x
thicker at that scale, which the scale augmentation partly covers).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config_cli import add_config_arguments, config_from_args
from .data.io import FundusReadError
from .detector import gaussian_blur, gaussian_kernel1d
from .weights_io import WeightsMismatchError, check_config, load_state_strict, read_weights, save_weights

FORMAT = "koch-explore/vessels"
FORMAT_VERSION = 1
DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "vessels_drive.safetensors"

__all__ = [
    "DEFAULT_WEIGHTS",
    "LocalContrastNorm",
    "PixelScores",
    "UNet",
    "VesselConfig",
    "VesselSegmenter",
    "VesselTrainConfig",
    "WeightsMismatchError",
    "add_cli",
    "evaluate",
    "load_default",
    "pixel_auc",
    "train",
]


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclass
class VesselConfig:
    """Architecture and input preprocessing of one segmenter. Saved with the weights; loading
    rebuilds exactly this network, and ``load(..., expect=cfg)`` checks it field by field."""

    channels: str = "green"
    """Input channels after normalisation: "green" (the vessel-contrast channel; robust to the colour
    differences between cameras and synthetic images) or "rgb" (each channel normalised)."""
    base: int = 16
    """Channels of the first level; level i has base * 2**i (SA-UNet uses 16)."""
    depth: int = 3
    """Number of 2x poolings: the U-Net has depth + 1 resolution levels and inputs are padded to a
    multiple of 2**depth."""
    norm: str = "batch"
    """Normalisation after each conv: "batch" (fast, foldable) or "group" (batch-size independent)."""
    dropblock: float = 0.1
    """DropBlock drop probability once fully ramped up (training only; 0 disables it)."""
    dropblock_size: int = 7
    """DropBlock square side in pixels of the level it acts on (odd; SA-UNet uses 7)."""
    attention: bool = True
    """Spatial attention (SA-UNet) between the two convs of the bottleneck."""
    attention_kernel: int = 7
    """Kernel of the spatial-attention conv over [mean, max] of the channels."""
    lcn_sigma: float = 8.0
    """Gaussian sigma (px at the working scale) of the local mean subtracted from the input: wider than
    the widest vessel (~12 px at DRIVE scale) so vessel centres stay dark, narrow enough to remove the
    disc, macula and illumination gradients."""
    lcn_std_sigma: float = 16.0
    """Gaussian sigma (px) of the local standard deviation the high-pass is divided by (the local
    contrast equalisation, like CLAHE's tiles but smooth and differentiable)."""
    lcn_floor: float = 0.02
    """Contrast floor added (in quadrature) to the local standard deviation, in [0, 1] intensity units:
    flat, noisy regions are not amplified beyond 1/floor (CLAHE's clip limit plays this role)."""
    lcn_clip: float = 5.0
    """Normalised values are clipped to +-lcn_clip (specular reflections, dust)."""
    fov_diameter: int = 540
    """Working scale: the FOV's bounding-box long side, in px, that every image is resized to (DRIVE's
    FOV is 535-541 px). Training images get exactly the same crop-and-resize as inference inputs."""

    def __post_init__(self):
        if self.channels not in ("green", "rgb"):
            raise ValueError(f"channels must be 'green' or 'rgb', not {self.channels!r}")
        if self.norm not in ("batch", "group"):
            raise ValueError(f"norm must be 'batch' or 'group', not {self.norm!r}")
        if self.dropblock_size % 2 != 1:
            raise ValueError(f"dropblock_size must be odd, not {self.dropblock_size}")
        if self.depth < 1 or self.base < 1:
            raise ValueError("depth and base must be >= 1")

    @property
    def in_channels(self) -> int:
        return 1 if self.channels == "green" else 3

    @property
    def pad_multiple(self) -> int:
        return 2**self.depth

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "VesselConfig":
        return cls(**json.loads(text))


# ---------------------------------------------------------------------------------------------
# Input normalisation
# ---------------------------------------------------------------------------------------------


def fov_from_pixels(x: torch.Tensor, threshold: float = 0.04) -> torch.Tensor:
    """(B, 1, H, W) float mask of pixels brighter than ``threshold`` in any channel: the FOV of a
    fundus whose surround is black, for callers (a GAN loss) that have no FOV mask."""
    return (x.amax(dim=1, keepdim=True) > threshold).to(x.dtype)


_BANDS: dict[tuple, torch.Tensor] = {}


def _band(n: int, sigma: float, device, dtype) -> torch.Tensor:
    """(n, n) matrix M with (x @ M) = x blurred along its last axis by a truncated Gaussian, zero
    beyond the edges: a symmetric banded Toeplitz matrix, cached per size."""
    key = (n, sigma, str(device), dtype)
    if key not in _BANDS:
        k = gaussian_kernel1d(sigma, dtype=torch.float64)
        r = k.numel() // 2
        d = torch.arange(n)[:, None] - torch.arange(n)[None, :]
        band = torch.where(d.abs() <= r, k[(d + r).clamp(0, 2 * r)], torch.zeros((), dtype=torch.float64))
        if len(_BANDS) > 64:
            _BANDS.clear()
        _BANDS[key] = band.to(device=device, dtype=dtype)
    return _BANDS[key]


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W), zero outside the image, as two matrix products.

    Same result as :func:`koch_explore.detector.gaussian_blur` (up to float rounding), but a
    97-tap depthwise convolution is one of the slowest CPU paths in torch, and a banded matmul is
    BLAS: at a 240 px training crop it is ~10x faster, which halves the time of a training step.
    Images over 1024 px (never the working scale) use the convolution to bound memory.
    """
    h, w = x.shape[-2:]
    if max(h, w) > 1024:
        return gaussian_blur(x, sigma)
    return _band(h, sigma, x.device, x.dtype) @ (x @ _band(w, sigma, x.device, x.dtype))


class LocalContrastNorm(nn.Module):
    """CLAHE-like local contrast normalisation inside the FOV, as a differentiable module.

    ``y = (x - m) / sqrt(s^2 + floor^2)``, clipped, zero outside the FOV, where ``m`` is the local
    mean (Gaussian ``lcn_sigma``) and ``s^2`` the local variance of ``x - m`` (Gaussian
    ``lcn_std_sigma``). Both are *normalised* convolutions (blur(x * fov) / blur(fov)), so the black
    surround adds no bright ring at the FOV rim and an image edge behaves like the FOV edge.

    Each output pixel depends on inputs within :attr:`margin` px only (kernels are truncated at
    3 sigma). Training normalises context crops grown by that margin and keeps their centre, which
    reproduces the full-image result exactly: one preprocessing for training and inference.
    """

    def __init__(self, cfg: VesselConfig):
        super().__init__()
        self.channels = cfg.channels
        self.sigma, self.std_sigma = cfg.lcn_sigma, cfg.lcn_std_sigma
        self.floor, self.clip = cfg.lcn_floor, cfg.lcn_clip

    @property
    def margin(self) -> int:
        radius = lambda s: gaussian_kernel1d(s).numel() // 2  # noqa: E731 - same truncation as the blur
        return radius(self.sigma) + radius(self.std_sigma)

    def forward(self, x: torch.Tensor, fov: torch.Tensor) -> torch.Tensor:
        # float32 always: the statistics are what the whole network sees.
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            if self.channels == "green":
                x = x[:, 1:2]
            m = fov.float()
            den = blur(m, self.sigma).clamp_min(1e-3)
            hp = (x - blur(x * m, self.sigma) / den) * m
            den2 = blur(m, self.std_sigma).clamp_min(1e-3)
            var = blur(hp * hp, self.std_sigma) / den2
            y = hp / torch.sqrt(var + self.floor**2)
            return y.clamp(-self.clip, self.clip) * m


# ---------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------


class DropBlock2d(nn.Module):
    """DropBlock (Ghiasi et al., NeurIPS 2018): drops square blocks of a feature map.

    Plain dropout barely regularises convs (neighbouring activations carry the same information);
    dropping contiguous blocks does, which is what lets SA-UNet train on 20 images without
    overfitting. ``p`` is set by the trainer (ramped up from 0, as the paper recommends).
    """

    def __init__(self, p: float, block: int):
        super().__init__()
        self.p, self.block = p, block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p <= 0:
            return x
        h, w = x.shape[-2:]
        b = min(self.block, h, w)
        b -= 1 - b % 2  # keep it odd so the block is centred on its seed
        # Seed rate such that about a fraction p of the units ends up dropped.
        gamma = self.p / (b * b) * (h * w) / ((h - b + 1) * (w - b + 1))
        seeds = (torch.rand(x.shape[0], 1, h, w, device=x.device) < gamma).to(x.dtype)
        keep = 1.0 - F.max_pool2d(seeds, b, stride=1, padding=b // 2)
        return x * keep * (keep.numel() / keep.sum().clamp_min(1.0))


class SpatialAttention(nn.Module):
    """SA-UNet's spatial attention: a sigmoid map from a conv over channel-mean and channel-max."""

    def __init__(self, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(a))


def _norm_layer(kind: str, c: int) -> nn.Module:
    return nn.BatchNorm2d(c) if kind == "batch" else nn.GroupNorm(math.gcd(8, c), c)


def _conv_unit(cin: int, cout: int, cfg: VesselConfig) -> nn.Sequential:
    """conv 3x3 -> DropBlock -> norm -> ReLU (SA-UNet's order)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        DropBlock2d(cfg.dropblock, cfg.dropblock_size),
        _norm_layer(cfg.norm, cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """Encoder of ``depth`` levels (two conv units, then 2x2 max-pool), a bottleneck with spatial
    attention between its two conv units, and a decoder of 2x2 transposed convs, skip
    concatenation and two conv units; a 1x1 conv gives vessel logits. Fully convolutional: any
    input size works, it is padded (bottom/right, zeros) to a multiple of 2**depth and cropped back.
    """

    def __init__(self, cfg: VesselConfig):
        super().__init__()
        self.multiple = cfg.pad_multiple
        widths = [cfg.base * 2**i for i in range(cfg.depth + 1)]
        cin = cfg.in_channels
        self.down = nn.ModuleList()
        for c in widths[:-1]:
            self.down.append(nn.Sequential(_conv_unit(cin, c, cfg), _conv_unit(c, c, cfg)))
            cin = c
        bottom = widths[-1]
        attention = SpatialAttention(cfg.attention_kernel) if cfg.attention else nn.Identity()
        self.bottom = nn.Sequential(_conv_unit(cin, bottom, cfg), attention, _conv_unit(bottom, bottom, cfg))
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for c in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(c * 2, c, 2, stride=2))
            self.dec.append(nn.Sequential(_conv_unit(c * 2, c, cfg), _conv_unit(c, c, cfg)))
        self.head = nn.Conv2d(widths[0], 1, 1)
        # Start at the vessel prior (~12% of FOV pixels): the first steps learn shapes, not the bias.
        nn.init.constant_(self.head.bias, math.log(0.12 / 0.88))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (-w) % self.multiple, 0, (-h) % self.multiple))
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)[..., :h, :w]


# ---------------------------------------------------------------------------------------------
# Geometry: any fundus <-> the working scale
# ---------------------------------------------------------------------------------------------


def as_rgb(image: np.ndarray, path: str | os.PathLike | None = None) -> np.ndarray:
    """float32 (H, W, 3) in [0, 1] from uint8/uint16/float/bool, gray or RGB(A)."""
    from .data.preprocess import _as_float

    arr = _as_float(image, path)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3], dtype=np.float32)


@dataclass(frozen=True)
class WorkingGeometry:
    """Where the working-scale crop sits in the input frame: the FOV box and its resized size."""

    box: tuple[int, int, int, int]  # top, bottom, left, right in the input frame
    size: tuple[int, int]  # (height, width) at the working scale

    @classmethod
    def of(cls, fov: np.ndarray, diameter: int) -> "WorkingGeometry":
        from .data.preprocess import fov_box

        top, bottom, left, right = fov_box(fov)
        h, w = bottom - top, right - left
        scale = diameter / max(h, w)
        return cls((top, bottom, left, right), (max(2, round(h * scale)), max(2, round(w * scale))))

    def to_working(self, arr: np.ndarray) -> np.ndarray:
        """Crop to the FOV box and resize (area when shrinking, clipped cubic when enlarging;
        bool masks stay bool)."""
        from .data.preprocess import resize

        top, bottom, left, right = self.box
        return resize(np.asarray(arr)[top:bottom, left:right], self.size)

    def to_input(self, small: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Resize a working-scale float map back into the FOV box of a zero frame of ``shape``."""
        from .data.preprocess import resize

        top, bottom, left, right = self.box
        out = np.zeros(shape, np.float32)
        out[top:bottom, left:right] = resize(small.astype(np.float32), (bottom - top, right - left))
        return out


def check_fov(fov: np.ndarray, image: np.ndarray, path=None) -> np.ndarray:
    m = np.asarray(fov)
    if m.shape != image.shape[:2]:
        where = path if path is not None else f"<array {'x'.join(map(str, image.shape))}>"
        raise FundusReadError(where, f"FOV mask of shape {m.shape} does not match the image's {image.shape[:2]}")
    m = m.astype(bool, copy=False)
    if not m.any():
        raise FundusReadError(path if path is not None else "<fov>", "field-of-view mask is empty")
    return m


# ---------------------------------------------------------------------------------------------
# The segmenter
# ---------------------------------------------------------------------------------------------


def _dihedral(k: int, transpose: bool):
    """(forward, inverse) pair for one symmetry of the square on (B, C, H, W) tensors."""
    def fwd(t):
        t = t.transpose(2, 3) if transpose else t
        return torch.rot90(t, k, (2, 3))

    def inv(t):
        t = torch.rot90(t, -k, (2, 3))
        return t.transpose(2, 3) if transpose else t

    return fwd, inv


_DIHEDRAL = [_dihedral(k, tr) for tr in (False, True) for k in range(4)]
# Subsets chosen so that 2 and 4 already average opposite orientations.
_TTA_TRANSFORMS = {1: _DIHEDRAL[:1], 2: [_DIHEDRAL[0], _DIHEDRAL[2]], 4: _DIHEDRAL[:4], 8: _DIHEDRAL}


class VesselSegmenter(nn.Module):
    """Local contrast normalisation + U-Net + a binary threshold (a buffer, saved with the weights).

    ``forward(x, fov)`` works on tensors at the working scale: RGB in [0, 1] (B, 3, H, W) and a
    (B, 1, H, W) FOV (estimated from the black surround when omitted) -> vessel logits (B, 1, H, W).
    :meth:`segment` takes any fundus photo and returns maps in its own geometry.
    """

    def __init__(self, cfg: VesselConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else VesselConfig()
        self.lcn = LocalContrastNorm(self.cfg)
        self.unet = UNet(self.cfg)
        self.register_buffer("threshold", torch.tensor(0.5))
        self.metadata: dict[str, str] = {}

    def forward(self, x: torch.Tensor, fov: torch.Tensor | None = None) -> torch.Tensor:
        if fov is None:
            fov = fov_from_pixels(x)
        return self.unet(self.lcn(x, fov))

    def set_threshold(self, value: float) -> None:
        """Set the probability above which a pixel is a vessel (kept strictly inside (0, 1) so the
        binary map is always empty outside the FOV)."""
        if not 0.0 < float(value) < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {value}")
        self.threshold.fill_(float(value))

    def set_dropblock(self, p: float) -> None:
        for m in self.modules():
            if isinstance(m, DropBlock2d):
                m.p = p

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def probability_working(self, image: np.ndarray, fov: np.ndarray, tta: int = 1) -> np.ndarray:
        """Vessel probability of a working-scale image (H, W, 3) with its FOV (H, W), float32.

        ``tta`` = 1, 2, 4 or 8 averages the probabilities over that many symmetries of the square
        (identity, transpose, flips): vessels have no preferred orientation, so the symmetric average
        removes orientation-dependent errors of a single pass."""
        if tta not in _TTA_TRANSFORMS:
            raise ValueError(f"tta must be one of {sorted(_TTA_TRANSFORMS)}, got {tta}")
        was_training = self.training
        self.eval()
        try:
            x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].to(self.device)
            m = torch.from_numpy(fov.astype(np.float32))[None, None].to(self.device)
            prob = torch.zeros_like(m[0, 0])
            for fwd, inv in _TTA_TRANSFORMS[tta]:
                prob += inv(torch.sigmoid(self(fwd(x), fwd(m)).float()))[0, 0]
            prob = prob / tta * m[0, 0]
        finally:
            self.train(was_training)
        return prob.cpu().numpy()

    def segment(self, image: np.ndarray, fov: np.ndarray | None = None, *, path=None, tta: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """Vessel maps of one fundus photo of any size: ``(probability float32 (H, W), binary bool (H, W))``.

        The FOV is estimated when not given. The image is cropped to the FOV, resized so the FOV
        diameter is ``cfg.fov_diameter``, segmented in one fully convolutional pass, and the
        probability is resized back into the input frame; both maps are zero outside the FOV, and
        ``binary = probability > threshold`` with the threshold stored in the weights. ``tta``: see
        :meth:`probability_working` (8 by default; 1 is a single pass, 8x faster).
        """
        from .data.preprocess import estimate_fov

        img = as_rgb(image, path)
        fov = estimate_fov(img, path=path) if fov is None else check_fov(fov, img, path)
        geo = WorkingGeometry.of(fov, self.cfg.fov_diameter)
        small_fov = geo.to_working(fov)
        small = geo.to_working(img) * small_fov[:, :, None]
        prob = geo.to_input(self.probability_working(small, small_fov, tta), fov.shape)
        prob = np.clip(prob, 0.0, 1.0) * fov
        return prob.astype(np.float32), prob > float(self.threshold)

    # -- weights -------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike, metadata: dict | None = None) -> Path:
        """Write the weights (float32) as safetensors, atomically, with the config, the threshold
        and ``metadata`` (values JSON-encoded unless strings) in the header."""
        header = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "config": self.cfg.to_json(),
                  "threshold": repr(float(self.threshold))}
        return save_weights(path, self.state_dict(), header, metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu",
             expect: VesselConfig | None = None) -> "VesselSegmenter":
        """Load weights written by :meth:`save`. Strict: a file that is not vessel weights, an
        architecture other than ``expect``, or any missing/extra/misshapen tensor raises
        :class:`WeightsMismatchError` naming the file."""
        tensors, meta = read_weights(path, FORMAT, FORMAT_VERSION, "vessel segmenter")
        try:
            cfg = VesselConfig.from_json(meta["config"])
        except (TypeError, ValueError) as exc:
            raise WeightsMismatchError(f"{path}: unreadable vessel config in the header ({exc})") from exc
        check_config(path, cfg, expect)
        model = cls(cfg)
        model.load_state_strict(tensors, source=path)
        model.metadata = {k: v for k, v in meta.items() if k != "config"}
        return model.to(map_location).eval()

    @classmethod
    def load_default(cls, map_location: str | torch.device = "cpu") -> "VesselSegmenter":
        """The shipped DRIVE-trained segmenter (``koch_explore/weights/vessels_drive.safetensors``)."""
        if not DEFAULT_WEIGHTS.is_file():
            raise FileNotFoundError(
                f"{DEFAULT_WEIGHTS}: no shipped vessel weights yet; train them with "
                f"`koch-explore vessels train --max-minutes 40 --export {DEFAULT_WEIGHTS}`")
        return cls.load(DEFAULT_WEIGHTS, map_location)

    def load_state_strict(self, tensors: dict[str, torch.Tensor], source: str | os.PathLike = "<state>") -> None:
        load_state_strict(self, tensors, source, "vessel segmenter")


def load_default(device: str | torch.device = "cpu") -> VesselSegmenter:
    """The shipped DRIVE-trained vessel segmenter."""
    return VesselSegmenter.load_default(device)


# ---------------------------------------------------------------------------------------------
# Pixel metrics
# ---------------------------------------------------------------------------------------------


def _sorted_groups(scores: np.ndarray, labels: np.ndarray):
    """Distinct score values ascending with (positives, negatives) per value."""
    order = np.argsort(scores, kind="stable")
    s, lab = scores[order], labels[order]
    starts = np.r_[0, np.flatnonzero(s[1:] != s[:-1]) + 1]
    pos = np.add.reduceat(lab.astype(np.int64), starts)
    neg = np.diff(np.r_[starts, s.size]) - pos
    return s[starts], pos, neg


def pixel_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC (ties count one half) by one sort: ~2 s for 20M pixels, no binning error.

    Binned AUCs are not good enough here: a trained segmenter puts most background *and* the missed
    capillaries within 1e-4 of zero, and a 10k-bin histogram would score all those pairs as ties.
    """
    labels = np.asarray(labels, bool).ravel()
    scores = np.asarray(scores, np.float32).ravel()
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, pos, neg = _sorted_groups(scores, labels)
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (float(n_pos) * float(n_neg)))


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of ``scores > threshold``, exactly, over every cut between
    two distinct scores (the cut is their midpoint)."""
    labels = np.asarray(labels, bool).ravel()
    values, pos, neg = _sorted_groups(np.asarray(scores, np.float32).ravel(), labels)
    # Cut after group g: predicted positive = groups g+1 ... (scores > values[g]).
    tp = pos.sum() - np.cumsum(pos)
    fp = neg.sum() - np.cumsum(neg)
    fn = pos.sum() - tp
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    g = int(np.argmax(f1[:-1])) if len(values) > 1 else 0
    nxt = values[g + 1] if g + 1 < len(values) else values[g]
    t = float((float(values[g]) + float(nxt)) / 2)
    return min(max(t, 1e-6), 1 - 1e-6), float(f1[g])


class PixelScores:
    """Collects probabilities and truth inside the FOV over many images; reports the figures of
    ``vessels eval`` (AUC threshold-free, the rest at ``threshold``)."""

    def __init__(self):
        self.scores: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.images = 0

    def add(self, prob: np.ndarray, truth: np.ndarray, fov: np.ndarray) -> None:
        m = np.asarray(fov, bool)
        self.scores.append(np.asarray(prob, np.float32)[m])
        self.labels.append(np.asarray(truth, bool)[m])
        self.images += 1

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.labels), np.concatenate(self.scores)

    def report(self, threshold: float) -> dict:
        labels, scores = self.arrays()
        pred = scores > threshold
        tp = int((pred & labels).sum())
        fp = int((pred & ~labels).sum())
        fn = int((~pred & labels).sum())
        tn = int(labels.size - tp - fp - fn)
        ratio = lambda a, b: float(a / b) if b else float("nan")  # noqa: E731
        return {
            "auc": pixel_auc(labels, scores),
            "f1": ratio(2 * tp, 2 * tp + fp + fn),
            "accuracy": ratio(tp + tn, labels.size),
            "sensitivity": ratio(tp, tp + fn),
            "specificity": ratio(tn, tn + fp),
            "n": self.images,
            "pixels": int(labels.size),
            "threshold": float(threshold),
        }


def evaluate(model: VesselSegmenter, items, threshold: float | None = None, progress: bool = False, tta: int = 8) -> dict:
    """Segment every item (``{"image", "vessels", "fov"}`` as from ``VesselSegmentation``) in its own
    geometry with its FOV and score all FOV pixels against the manual tree."""
    from tqdm.auto import tqdm

    scores = PixelScores()
    for item in tqdm(items, desc="segment", disable=not progress, leave=False, file=sys.stderr):
        prob, _ = model.segment(item["image"], item["fov"], tta=tta)
        scores.add(prob, item["vessels"], item["fov"])
    return scores.report(float(model.threshold) if threshold is None else threshold)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


@dataclass
class VesselTrainConfig:
    """One training run. ``steps`` and ``max_minutes`` both bound the schedule: the cosine learning
    rate (and the DropBlock ramp) follow ``progress = max(step / steps, minutes / max_minutes)``,
    so a time-boxed run still anneals fully and ends with a low learning rate."""

    dataset: str = "DRIVE"
    """Training set: "DRIVE" (its FOV masks) or "CHASE_DB1" (estimated FOV); its ``training`` split."""
    root: str | None = None
    """Data root holding DRIVE/ (or the dataset folder itself); default: KOCH_DATA, ../shared/data, ./data."""
    out: str = "runs/vessels"
    """Run folder: last.pt (resumable), best.safetensors (EMA weights + threshold), history.json."""
    val_images: int = 4
    """Training images held out (the last ones by id; DRIVE: 37-40) to choose the threshold and the
    checkpoint. DRIVE test is never seen by training."""
    steps: int = 10000
    """Optimisation steps at most (~0.2 s each on two free CPU cores)."""
    max_minutes: float | None = None
    """Wall-clock budget of the whole run (validation included, summed over resumes)."""
    eval_every: int = 250
    """Validate the EMA weights on the held-out images (and checkpoint) every this many steps."""
    checkpoint_minutes: float = 5.0
    """Also write last.pt at least this often."""
    batch_size: int = 16
    """Patches per step."""
    patch: int = 96
    """Patch side in px at the working scale (a multiple of 2**depth)."""
    vessel_fraction: float = 0.5
    """Share of patch centres drawn on vessel pixels; the rest anywhere in the FOV (rim included)."""
    rotate_degrees: float = 20.0
    """Small rotation, uniform in +-this, on top of a random 90-degree rotation and flip."""
    scale: float = 1.25
    """Zoom, log-uniform in [1/scale, scale] (vessel calibre differs between cameras)."""
    gamma: float = 1.4
    """Gamma, log-uniform in [1/gamma, gamma], applied to the [0, 1] image before normalisation."""
    contrast: float = 0.25
    """Contrast factor uniform in 1 +- this, about the FOV mean."""
    brightness: float = 0.08
    """Brightness offset uniform in +- this."""
    dice_weight: float = 1.0
    """Loss = BCE + dice_weight * soft Dice, both over FOV pixels only."""
    lr: float = 2e-3
    """AdamW peak learning rate (cosine decay to 2% of it)."""
    weight_decay: float = 1e-4
    """AdamW decoupled weight decay."""
    warmup_steps: int = 100
    """Linear learning-rate warm-up."""
    dropblock_ramp: float = 0.3
    """DropBlock probability rises linearly to its configured value over this share of the schedule."""
    ema_decay: float = 0.995
    """EMA of the weights (BN statistics included): what is validated and exported."""
    amp: bool | None = None
    """bf16 autocast for the network (not the normalisation or the loss). Default (unset): on where bf16
    is native (CUDA, CPUs with AVX512-BF16/AMX), off on other CPUs, where emulated bf16 is far slower."""
    seed: int = 0
    """Seeds the initial weights and, with the step number, every batch (resume draws the same patches)."""
    device: str = "auto"
    """"auto" (CUDA when available), "cpu", "cuda", "cuda:1" ..."""
    num_threads: int | None = None
    """torch CPU threads for this run (restored afterwards); default: torch's own choice."""
    model: VesselConfig = field(default_factory=VesselConfig)
    """Architecture (the CLI exposes its fields as flags too)."""


def split_items(items: list[dict], val_images: int) -> dict[str, list[dict]]:
    """{"train", "val"}: the last ``val_images`` by name are held out."""
    items = sorted(items, key=lambda it: it["name"])
    if not 0 <= val_images < len(items):
        raise ValueError(f"val_images={val_images} leaves no training image out of {len(items)}")
    cut = len(items) - val_images
    return {"train": items[:cut], "val": items[cut:]}


def load_training_data(cfg: VesselTrainConfig) -> dict[str, list[dict]]:
    from .data.datasets import VesselSegmentation

    ds = VesselSegmentation(cfg.dataset, "training", root=_dataset_root(cfg.dataset, cfg.root))
    return split_items([ds[i] for i in range(len(ds))], cfg.val_images)


class PatchSampler:
    """Augmented context crops from training images held at the working scale.

    Each sample is one ``grid_sample`` of (RGB, FOV, vessels) through a random affine map: a
    90-degree rotation and flip, a small rotation and a zoom, centred on a FOV or vessel pixel.
    Crops are ``patch + 2 * margin`` wide; the margin feeds the local contrast normalisation, and
    the trainer keeps the central ``patch`` (see :class:`LocalContrastNorm`). Photometric changes
    (gamma, contrast, brightness) are applied inside the FOV before the normalisation, as a
    different camera would make them.
    """

    def __init__(self, items: list[dict], cfg: VesselTrainConfig, margin: int):
        self.cfg = cfg
        self.crop = cfg.patch + 2 * margin
        self.images: list[torch.Tensor] = []
        self.centres: list[tuple[np.ndarray, np.ndarray, int]] = []
        for it in items:
            geo = WorkingGeometry.of(it["fov"], cfg.model.fov_diameter)
            fov = geo.to_working(it["fov"])
            img = geo.to_working(as_rgb(it["image"])) * fov[:, :, None]
            ves = geo.to_working(it["vessels"]) & fov
            stack = np.concatenate([img, fov[:, :, None], ves[:, :, None]], axis=2).astype(np.float32)
            self.images.append(torch.from_numpy(np.ascontiguousarray(stack.transpose(2, 0, 1)))[None])
            w = fov.shape[1]
            self.centres.append((np.flatnonzero(fov), np.flatnonzero(ves), w))
        if not self.images:
            raise ValueError("no training images")

    def affine(self, rng: np.random.Generator, shape: tuple[int, int], centre: tuple[float, float],
               identity: bool = False) -> torch.Tensor:
        """``theta`` for ``F.affine_grid`` mapping the crop onto the source image around ``centre``
        (x, y in source pixels); output pixel j sits at centre + A (j - (crop - 1) / 2)."""
        c = self.cfg
        if identity:
            a = np.eye(2)
        else:
            angle = rng.integers(4) * (math.pi / 2) + math.radians(rng.uniform(-c.rotate_degrees, c.rotate_degrees))
            zoom = math.exp(rng.uniform(-math.log(c.scale), math.log(c.scale)))
            flip = np.diag([-1.0 if rng.random() < 0.5 else 1.0, 1.0])
            rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
            a = rot @ flip / zoom
        h, w = shape
        size = np.array([w, h], dtype=np.float64)
        theta = np.zeros((2, 3))
        theta[:, :2] = a * (self.crop / size)[:, None]
        theta[:, 2] = (2 * np.asarray(centre) + 1) / size - 1
        return torch.tensor(theta, dtype=torch.float32)[None]

    def sample(self, rng: np.random.Generator, index: int, identity: bool = False,
               top_left: tuple[int, int] | None = None) -> torch.Tensor:
        """One (5, crop, crop) crop of image ``index``: RGB, FOV, vessels (soft, bilinear)."""
        src = self.images[index]
        h, w = src.shape[-2:]
        if top_left is not None:
            cy, cx = top_left[0] + (self.crop - 1) / 2, top_left[1] + (self.crop - 1) / 2
        else:
            fov_idx, ves_idx, width = self.centres[index]
            pool = ves_idx if (ves_idx.size and rng.random() < self.cfg.vessel_fraction) else fov_idx
            flat = int(pool[rng.integers(pool.size)])
            cy, cx = flat // width + rng.uniform(-0.5, 0.5), flat % width + rng.uniform(-0.5, 0.5)
        theta = self.affine(rng, (h, w), (cx, cy), identity)
        grid = F.affine_grid(theta, [1, 5, self.crop, self.crop], align_corners=False)
        return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]

    def photometric(self, rng: np.random.Generator, x: torch.Tensor, fov: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        b = x.shape[0]
        gamma = torch.tensor(np.exp(rng.uniform(-math.log(c.gamma), math.log(c.gamma), (b, 1, 1, 1))), dtype=torch.float32)
        contrast = torch.tensor(1 + rng.uniform(-c.contrast, c.contrast, (b, 1, 1, 1)), dtype=torch.float32)
        bright = torch.tensor(rng.uniform(-c.brightness, c.brightness, (b, 1, 1, 1)), dtype=torch.float32)
        x = x.clamp_min(0).pow(gamma)
        mean = (x * fov).sum(dim=(2, 3), keepdim=True) / fov.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
        return (((x - mean) * contrast + mean + bright).clamp(0, 1)) * fov

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(RGB (B, 3, C, C), FOV (B, 1, C, C), vessels (B, 1, C, C)), deterministic in (seed, step)
        so a resumed run draws the same patches."""
        rng = np.random.default_rng([self.cfg.seed, step])
        crops = torch.stack([self.sample(rng, int(rng.integers(len(self.images)))) for _ in range(self.cfg.batch_size)])
        fov = (crops[:, 3:4] > 0.5).float()
        return self.photometric(rng, crops[:, :3], fov), fov, crops[:, 4:5] * fov


def vessel_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, dice_weight: float) -> torch.Tensor:
    """BCE + soft Dice over FOV pixels only: BCE for calibrated probabilities, Dice because a vessel
    tree is ~12% of the FOV and Dice does not let the background dominate thin capillaries."""
    logits = logits.float()
    n = mask.sum().clamp_min(1.0)
    bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * mask).sum() / n
    p = torch.sigmoid(logits) * mask
    t = target * mask
    dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    return bce + dice_weight * dice


def _lr(progress: float, step: int, cfg: VesselTrainConfig) -> float:
    warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    return cfg.lr * warm * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _progress(step: int, minutes: float, cfg: VesselTrainConfig) -> float:
    by_time = minutes / cfg.max_minutes if cfg.max_minutes else 0.0
    return max(step / max(1, cfg.steps), by_time)


def _jsonable(cfg: VesselTrainConfig) -> dict:
    return json.loads(json.dumps(asdict(cfg)))


def train(cfg: VesselTrainConfig, data: dict[str, list[dict]] | None = None, resume: bool = False,
          progress_bar: bool = True) -> dict:
    """Train (or resume) a segmenter; returns ``{"best": ..., "history": [...], "losses": [...]}``.

    ``data`` ({"train", "val"} lists of items like ``VesselSegmentation``'s) defaults to the
    dataset's training split minus the held-out images. The best EMA weights by held-out AUC, with
    the F1-optimal held-out threshold, are in ``out/best.safetensors``.
    """
    threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _train(cfg, data, resume, progress_bar)
    finally:
        torch.set_num_threads(threads)  # a notebook or test session keeps its own setting


def _train(cfg: VesselTrainConfig, data, resume: bool, progress_bar: bool) -> dict:
    from tqdm.auto import tqdm

    from .detector_train import EMA, atomic_torch_save, resolve_amp, resolve_device

    device = resolve_device(cfg.device)
    cfg = replace(cfg, amp=resolve_amp(cfg.amp, device))  # the effective switch is what gets recorded
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = load_training_data(cfg)
    if not data.get("val"):
        raise ValueError("training needs held-out images (val_images >= 1) to choose the threshold")

    model = VesselSegmenter(cfg.model).to(device)
    margin = model.lcn.margin
    if cfg.patch % cfg.model.pad_multiple:
        raise ValueError(f"patch {cfg.patch} is not a multiple of 2**depth = {cfg.model.pad_multiple}")
    sampler = PatchSampler(data["train"], cfg, margin)
    ema = EMA(model, cfg.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, minutes_before, history, losses = 0, 0.0, [], []
    best: dict = {"auc": -1.0}

    ckpt_path = out / "last.pt"
    if resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"{ckpt_path}: no checkpoint to resume from")
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if ck["model_config"] != cfg.model.to_json():
            raise ValueError(f"{ckpt_path}: checkpoint architecture {ck['model_config']} differs from {cfg.model.to_json()}")
        model.load_state_dict(ck["model"])
        ema.state = {k: v.to(device) for k, v in ck["ema"].items()}
        opt.load_state_dict(ck["opt"])
        step, minutes_before = int(ck["step"]), float(ck["minutes"])
        history, best, losses = json.loads(ck["history"]), json.loads(ck["best"]), json.loads(ck["losses"])
        print(f"resumed from {ckpt_path}: step {step}, {minutes_before:.1f} min", flush=True)

    t_start = time.time()
    minutes = lambda: minutes_before + (time.time() - t_start) / 60  # noqa: E731
    last_ckpt = time.time()

    def checkpoint():
        atomic_torch_save({
            "model": model.state_dict(), "ema": ema.state, "opt": opt.state_dict(), "step": step,
            "minutes": minutes(), "history": json.dumps(history), "best": json.dumps(best),
            "losses": json.dumps(losses), "model_config": cfg.model.to_json(), "config": json.dumps(_jsonable(cfg)),
        }, ckpt_path)

    def validate():
        nonlocal best
        ema_model = VesselSegmenter(cfg.model).to(device)
        ema_model.load_state_dict(ema.state)
        scores = PixelScores()
        for it in data["val"]:
            prob, _ = ema_model.segment(it["image"], it["fov"], tta=1)  # cheap; checkpoint choice only
            scores.add(prob, it["vessels"], it["fov"])
        labels, values = scores.arrays()
        t, f1 = best_f1_threshold(labels, values)
        ema_model.set_threshold(t)
        rep = scores.report(t)
        recent = losses[-cfg.eval_every:]
        rec = {"step": step, "minutes": round(minutes(), 2), "train_loss": float(np.mean(recent)) if recent else None,
               "val_auc": rep["auc"], "val_f1": f1, "threshold": t}
        history.append(rec)
        msg = f"step {step}: loss {rec['train_loss'] or float('nan'):.4f} held-out auc {rep['auc']:.4f} f1 {f1:.4f} @ {t:.3f}"
        if rep["auc"] > best["auc"]:
            best = {"auc": rep["auc"], "f1": f1, "threshold": t, "step": step,
                    "held_out": [it["name"] for it in data["val"]]}
            ema_model.save(out / "best.safetensors", metadata={
                "train_config": _jsonable(cfg), "held_out": best["held_out"], "best_step": step,
                "held_out_auc": rep["auc"], "held_out_f1": f1, "held_out_accuracy": rep["accuracy"],
            })
            msg += "  * best"
        print(msg, flush=True)
        tmp = out / "history.json.tmp"
        tmp.write_text(json.dumps(history, indent=1))
        os.replace(tmp, out / "history.json")

    bar = tqdm(total=cfg.steps, initial=step, desc="vessels", disable=not progress_bar, mininterval=5, file=sys.stderr)
    validated_at = history[-1]["step"] if history else -1
    while (progress := _progress(step, minutes(), cfg)) < 1.0:
        model.train()
        for g in opt.param_groups:
            g["lr"] = _lr(progress, step, cfg)
        model.set_dropblock(cfg.model.dropblock * min(1.0, progress / max(cfg.dropblock_ramp, 1e-9)))
        x, fov, target = (t.to(device) for t in sampler.batch(step))
        z = model.lcn(x, fov)
        inner = slice(margin, margin + cfg.patch)
        z, fov, target = z[..., inner, inner], fov[..., inner, inner], target[..., inner, inner]
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.amp):
            logits = model.unet(z)
        loss = vessel_loss(logits, target, fov, cfg.dice_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        # Early on the EMA follows the weights closely, later it averages ~1/(1-decay) steps.
        ema.update(model, min(cfg.ema_decay, (1 + step) / (10 + step)))
        step += 1
        losses.append(float(loss.item()))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", done=f"{min(1.0, _progress(step, minutes(), cfg)):.0%}")
        if step % cfg.eval_every == 0:
            validate()
            validated_at = step
            checkpoint()
            last_ckpt = time.time()
        elif time.time() - last_ckpt > cfg.checkpoint_minutes * 60:
            checkpoint()
            last_ckpt = time.time()
    bar.close()
    if validated_at != step:
        validate()
    checkpoint()
    return {"best": best, "history": history, "losses": losses}


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def add_cli(sub) -> None:
    p = sub.add_parser("vessels", help="train, run and evaluate the vessel segmenter (the GAN's input)")
    vsub = p.add_subparsers(dest="vessels_command", metavar="ACTION")

    t = vsub.add_parser("train", help="train on DRIVE training (threshold fit on held-out training images); resumable")
    # Flat flags: training and architecture fields share one namespace (argparse rejects a collision).
    add_config_arguments(t, VesselTrainConfig)
    add_config_arguments(t, VesselConfig)
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    t.add_argument("--export", default=None, help="copy the best weights here when done (safetensors)")
    t.set_defaults(func=_cli_train)

    s = vsub.add_parser("segment", help="write <stem>_vessels.png (binary) and <stem>_vessels_prob.png per image")
    s.add_argument("images", nargs="+")
    s.add_argument("--out", required=True, help="output folder (created)")
    s.add_argument("--weights", default=None, help="vessel safetensors (default: shipped DRIVE weights)")
    s.add_argument("--device", default="auto")
    s.add_argument("--tta", type=int, default=8, choices=[1, 2, 4, 8],
                   help="average over this many flips/rotations (default 8; 1 = single pass)")
    s.set_defaults(func=_cli_segment)

    e = vsub.add_parser("eval", help="pixel AUC/F1/accuracy/sensitivity/specificity inside the FOV")
    e.add_argument("--root", default=None, help="data root containing DRIVE/ (or CHASE_DB1/), or that folder itself")
    e.add_argument("--dataset", default="DRIVE", choices=["DRIVE", "CHASE_DB1"])
    e.add_argument("--split", default=None, choices=["training", "test", "all"],
                   help="default: DRIVE test (20 images), CHASE_DB1 all 28 (cross-dataset)")
    e.add_argument("--weights", default=None)
    e.add_argument("--device", default="auto")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--tta", type=int, default=8, choices=[1, 2, 4, 8],
                   help="average over this many flips/rotations (default 8; 1 = single pass)")
    e.set_defaults(func=_cli_eval)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _cli_train(args) -> int:
    cfg = config_from_args(VesselTrainConfig, args, model=config_from_args(VesselConfig, args))
    result = train(cfg, resume=args.resume)
    best_path = Path(cfg.out) / "best.safetensors"
    if args.export and best_path.is_file():
        dest = Path(args.export)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.copyfile(best_path, tmp)
        os.replace(tmp, dest)
        print(f"exported {best_path} -> {dest}", flush=True)
    print(json.dumps(result["best"]))
    return 0


def _load_model(weights, device) -> VesselSegmenter:
    from .detector_train import resolve_device

    dev = resolve_device(device)
    return VesselSegmenter.load(weights, map_location=dev) if weights else VesselSegmenter.load_default(dev)


def _cli_segment(args) -> int:
    from .data.io import read_image, write_image

    try:
        model = _load_model(args.weights, args.device)
    except (FileNotFoundError, WeightsMismatchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    failed = 0
    for name in args.images:
        try:
            prob, binary = model.segment(read_image(name), path=name, tta=args.tta)
        except FundusReadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        stem = Path(name).stem
        write_image(out / f"{stem}_vessels.png", binary)
        write_image(out / f"{stem}_vessels_prob.png", prob)
        print(f"{name}\t{out / f'{stem}_vessels.png'}\t{out / f'{stem}_vessels_prob.png'}")
    return 1 if failed else 0


def _dataset_root(dataset: str, root: str | None) -> Path | None:
    """``--root`` is the data root (holding ``DRIVE/``) or the dataset folder itself."""
    if root is None:
        return None
    from .data.manifests import get_manifest

    folder = get_manifest(dataset).folder
    p = Path(root).expanduser()
    if (p / folder).is_dir():
        return p
    if p.is_dir() and p.name == folder:
        return p.parent
    raise FileNotFoundError(f"{p}: neither a data root containing {folder}/ nor the {folder} folder itself")


def _cli_eval(args) -> int:
    from .data.datasets import VesselSegmentation

    split = args.split or ("test" if args.dataset == "DRIVE" else "all")
    try:
        ds = VesselSegmentation(args.dataset, None if split == "all" else split, root=_dataset_root(args.dataset, args.root))
        model = _load_model(args.weights, args.device)
        items = (ds[i] for i in range(len(ds)))
        rep = evaluate(model, items, progress=not args.json, tta=args.tta)
    except (FileNotFoundError, WeightsMismatchError, FundusReadError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rep = {"dataset": args.dataset, "split": split, **rep}
    if args.json:
        print(json.dumps(rep))
    else:
        print(f"{args.dataset} {split}: n={rep['n']} pixels={rep['pixels']} auc={rep['auc']:.4f} f1={rep['f1']:.4f} "
              f"accuracy={rep['accuracy']:.4f} sensitivity={rep['sensitivity']:.4f} "
              f"specificity={rep['specificity']:.4f} (threshold {rep['threshold']:.3f})")
    return 0
