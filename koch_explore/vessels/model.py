"""The vessel segmenter itself: config, input normalisation, the SA-UNet, the working-scale
geometry and :class:`VesselSegmenter` (segment any fundus, strict safetensors I/O with the binary
threshold stored beside the weights), and :func:`load_vessels` for shipped or own weights."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.geometry import gaussian_blur, gaussian_kernel1d
from ..core.runtime import resolve_device
from ..core.weights import (
    JsonConfig,
    load_model,
    load_state_strict,
    resolve_weights,
    save_model,
)
from ..data.io import FundusReadError, read_image, write_image
from ..data.preprocess import as_float

FORMAT = "koch-explore/vessels"
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclass
class VesselConfig(JsonConfig):
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

    Same result as :func:`koch_explore.core.geometry.gaussian_blur` (up to float rounding), but a
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
    arr = as_float(image, path)
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
        from ..data.preprocess import fov_box

        top, bottom, left, right = fov_box(fov)
        h, w = bottom - top, right - left
        scale = diameter / max(h, w)
        return cls((top, bottom, left, right), (max(2, round(h * scale)), max(2, round(w * scale))))

    def to_working(self, arr: np.ndarray) -> np.ndarray:
        """Crop to the FOV box and resize (area when shrinking, clipped cubic when enlarging;
        bool masks stay bool)."""
        from ..data.preprocess import resize

        top, bottom, left, right = self.box
        return resize(np.asarray(arr)[top:bottom, left:right], self.size)

    def to_input(self, small: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Resize a working-scale float map back into the FOV box of a zero frame of ``shape``."""
        from ..data.preprocess import resize

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
        from ..data.preprocess import estimate_fov

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
        return save_model(path, self.state_dict(), fmt=FORMAT, version=FORMAT_VERSION, config=self.cfg,
                          header={"threshold": repr(float(self.threshold))}, metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu",
             expect: VesselConfig | None = None) -> "VesselSegmenter":
        """Load weights written by :meth:`save`. Strict: a file that is not vessel weights, an
        architecture other than ``expect``, or any missing/extra/misshapen tensor raises
        :class:`WeightsMismatchError` naming the file (:func:`~koch_explore.core.weights.load_model`)."""
        model, meta = load_model(path, fmt=FORMAT, version=FORMAT_VERSION, what="vessel segmenter",
                                 config_cls=VesselConfig, build=cls, expect=expect)
        model.metadata = {k: v for k, v in meta.items() if k != "config"}
        return model.to(map_location).eval()

    def load_state_strict(self, tensors: dict[str, torch.Tensor], source: str | os.PathLike = "<state>") -> None:
        load_state_strict(self, tensors, source, "vessel segmenter")


def load_vessels(name_or_path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> VesselSegmenter:
    """A shipped segmenter by name (None: the default, ``"drive"``, trained on the 20 DRIVE
    training images) or one's own weights file, loaded strictly onto ``device`` ("auto": CUDA when
    available) in eval mode."""
    path = resolve_weights("vessels", name_or_path)
    return VesselSegmenter.load(path, map_location=resolve_device(device) if isinstance(device, str) else device)


def segment_file(model: VesselSegmenter, path: str | os.PathLike, out: str | os.PathLike, *, tta: int = 8) -> tuple[Path, Path]:
    """Segment the photo at ``path`` and write ``<stem>_vessels.png`` (binary) and
    ``<stem>_vessels_prob.png`` (probability) into the folder ``out`` (created); returns both paths.
    An unreadable photo raises :class:`FundusReadError` before anything is written."""
    prob, binary = model.segment(read_image(path), path=path, tta=tta)
    out, stem = Path(out), Path(path).stem
    binary_path, prob_path = out / f"{stem}_vessels.png", out / f"{stem}_vessels_prob.png"
    write_image(binary_path, binary)
    write_image(prob_path, prob)
    return binary_path, prob_path
