"""Boxes and Gaussian blur: the geometry shared by isolation, scoring and synthesis.

A box is ``(x0, y0, x1, y1)`` in pixel indices, ``x1``/``y1`` exclusive (pixels ``x0..x1-1``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

Box = tuple[int, int, int, int]


def boxes_overlap(a: Box, b: Box, margin: int = 0) -> bool:
    """Whether ``a`` and ``b`` share a pixel once ``b`` is grown by ``margin`` on every side."""
    return a[0] < b[2] + margin and b[0] - margin < a[2] and a[1] < b[3] + margin and b[1] - margin < a[3]


def box_contains(box: Box, point: tuple[float, float]) -> bool:
    """Whether the point ``(x, y)`` lies inside ``box``."""
    # Pixel i spans [i - 0.5, i + 0.5) in index coordinates; the box spans pixels x0..x1-1.
    return box[0] - 0.5 <= point[0] < box[2] - 0.5 and box[1] - 0.5 <= point[1] < box[3] - 0.5


def in_mask(mask: np.ndarray, point: tuple[float, float]) -> bool:
    """Whether ``point`` (x, y), rounded to the nearest pixel, lies on a True pixel of ``mask`` (H, W)."""
    x, y = int(round(point[0])), int(round(point[1]))
    return 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1] and bool(mask[y, x])


def as_box(x) -> Box:
    """A box from anything that is one or has a ``bbox`` (a descriptor, a lesion record)."""
    return tuple(int(v) for v in (x.bbox if hasattr(x, "bbox") else x))


def disc_fov(hw: tuple[int, int], radius: float = 0.47) -> np.ndarray:
    """The inscribed disc of an image of shape ``hw`` as a bool FOV (``radius`` x the short side)."""
    # prepare_fundus crops to the FOV's box, so the FOV is about the inscribed disc; 0.47 keeps
    # placements off the rim.
    h, w = hw
    yy, xx = np.mgrid[:h, :w]
    return (xx - (w - 1) / 2) ** 2 + (yy - (h - 1) / 2) ** 2 <= (radius * min(h, w)) ** 2


def gaussian_kernel1d(sigma: float, device=None, dtype=torch.float32, truncate: float = 3.0) -> torch.Tensor:
    """Normalised 1-D Gaussian, radius ``ceil(truncate * sigma)`` (cv2 uses 4 sigma for float images)."""
    radius = max(1, int(math.ceil(truncate * sigma)))
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 3.0, border: str = "zeros") -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) (differentiable). ``border``: "zeros" outside the
    image, or "reflect" (cv2's default border, BORDER_REFLECT_101)."""
    if border not in ("zeros", "reflect"):
        raise ValueError(f"border {border!r}: 'zeros' or 'reflect'")
    k = gaussian_kernel1d(sigma, x.device, x.dtype, truncate)
    c = x.shape[1]
    r = k.numel() // 2
    if border == "reflect":
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, r), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(r, 0), groups=c)


def masked_fill_blur(x: torch.Tensor, fov: torch.Tensor, sigma: float) -> torch.Tensor:
    """blur(x * fov) / blur(fov): each pixel's surroundings inside the FOV, no black bleeding in."""
    return gaussian_blur(x * fov, sigma) / gaussian_blur(fov, sigma).clamp_min(1e-3)
