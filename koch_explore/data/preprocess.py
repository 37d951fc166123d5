"""Fundus geometry: find the field of view (FOV), crop to it, square it, resize it.

The datasets disagree on framing: DRIVE ships a FOV mask, CHASE_DB1 does not, EyePACS and APTOS
were cropped to the FOV bounding box by their stagers, IDRiD originals are 4288x2848 with wide
black margins. A CNN trained on one framing learns the black margin as a feature, so every image
goes through the same crop -> pad -> resize before it meets the detector. All functions take and
return float32 arrays (H, W[, C]) in [0, 1]; masks stay bool.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from ..core.images import ImageValueError, as_unit_float
from .io import FundusReadError

# FOV estimation runs on a copy whose long side is at most this. The FOV is a large smooth disc:
# one working pixel (8 px of a 4k photo) is within the blur of the camera's own rim, and the work
# drops ~70-fold.
FOV_WORK_SIZE = 512
# Below this bright level the frame holds no fundus (failed capture, broken export).
BLACK_LEVEL = 4.0 / 255.0
# The largest bright component must cover at least this fraction of the frame to be a FOV.
MIN_FOV_FRACTION = 0.01

Size = int | tuple[int, int]


def _name(img: np.ndarray, path: str | os.PathLike | None) -> str | os.PathLike:
    """What an error names: the file when known, else a description of the array."""
    if path is not None:
        return path
    return f"<array {'x'.join(str(s) for s in img.shape)} {img.dtype}>"


def as_float(img: np.ndarray, path: str | os.PathLike | None = None) -> np.ndarray:
    """float32 [0, 1] (H, W[, C]) from uint8/uint16/bool/float (H, W), (H, W, 1|3|4) or (1|3, H, W) arrays or
    tensors, pixel values read by
    :func:`~koch_explore.core.images.as_unit_float` (a float image outside [0, 1] is refused); a bad array
    raises :class:`FundusReadError` naming ``path`` when known. Every fundus the kit reads passes through it."""
    arr = img.detach().cpu().numpy() if hasattr(img, "detach") else np.asarray(img)  # a torch tensor too
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)  # channels first (C, H, W), as torch lays an image out
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise FundusReadError(_name(arr, path), f"expected an (H, W) or (H, W, 1|3|4) image, got shape {arr.shape}")
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise FundusReadError(_name(arr, path), f"image of shape {arr.shape} is too small")
    try:
        return as_unit_float(arr, str(_name(arr, path)))
    except ImageValueError as exc:  # one error type for every bad fundus array or file
        raise FundusReadError(_name(arr, path), exc.problem) from exc


def _convex_hull(mask: np.ndarray) -> np.ndarray:
    """The camera's FOV is convex (a disc, clipped by the sensor frame or squashed to an ellipse)."""
    points = cv2.findNonZero(mask.astype(np.uint8))
    out = np.zeros(mask.shape, np.uint8)
    if points is not None:
        cv2.fillConvexPoly(out, cv2.convexHull(points), 1)
    return out.astype(bool)


def _main_components(mask: np.ndarray, fraction: float = 0.2) -> np.ndarray:
    """Components at least ``fraction`` of the largest one's area.

    Usually that is the disc alone; but a dark vessel or shadow band can cut the disc in two,
    and both halves must stay, while specks and burnt-in labels are far smaller.
    """
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros_like(mask, dtype=bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.flatnonzero(areas >= fraction * areas.max()) + 1
    return np.isin(labels, keep)


def estimate_fov(
    img: np.ndarray, threshold: float = 0.1, *, path: str | os.PathLike | None = None
) -> np.ndarray:
    """Boolean mask of the camera's circular field of view, same height and width as ``img``.

    The FOV is where the image is brighter than ``threshold`` of the way from the surround to the
    fundus' bright level (99th percentile of the per-pixel channel maximum, so a few saturated
    reflections do not set it). The surround level is read from the four corners, which are outside
    the FOV in every fundus framing we meet (circle, clipped circle, squashed ellipse); when the
    corners are as bright as the fundus (a natural photo or a tight crop) there is no surround and
    the level is taken as zero. The channel maximum rather than red alone keeps colour-enhanced
    EyePACS and grayscale inputs working. Only the large bright components are kept and their
    convex hull is returned (the camera's FOV is convex), so specks and burnt-in text outside the
    disc add no islands, and dark vessels, lesions or an underexposed rim punch no holes.

    Works on a <=512 px copy and upsamples the mask, so a 4k x 3k photo costs milliseconds.
    Raises :class:`FundusReadError` naming ``path`` (or the array) for a black or constant frame.
    """
    arr = as_float(img, path)
    h, w = arr.shape[:2]
    scale = min(1.0, FOV_WORK_SIZE / max(h, w))
    small = arr if scale == 1.0 else cv2.resize(
        arr, (max(2, round(w * scale)), max(2, round(h * scale))), interpolation=cv2.INTER_AREA
    )
    bright = small[:, :, :3].max(axis=2) if small.ndim == 3 else small
    if not np.isfinite(bright).all():
        raise FundusReadError(_name(arr, path), "image contains NaN or infinite values")
    level = float(np.percentile(bright, 99))
    if level < BLACK_LEVEL:
        raise FundusReadError(_name(arr, path), "no field of view found: the frame is black")
    if float(bright.max() - bright.min()) < 1.0 / 255.0:
        raise FundusReadError(_name(arr, path), "no field of view found: the frame is constant")
    sh, sw = bright.shape
    ch, cw = max(1, sh // 20), max(1, sw // 20)
    corners = np.concatenate([
        bright[:ch, :cw].ravel(), bright[:ch, -cw:].ravel(), bright[-ch:, :cw].ravel(), bright[-ch:, -cw:].ravel()
    ])
    surround = float(np.median(corners))
    if surround >= 0.5 * level:
        surround = 0.0
    mask = bright > surround + threshold * (level - surround)
    # Opening removes JPEG speckle in the black margin that could bridge to burnt-in labels.
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, kernel).astype(bool)
    mask = _convex_hull(_main_components(mask))
    if mask.mean() < MIN_FOV_FRACTION:
        raise FundusReadError(
            _name(arr, path), f"no field of view found: the largest bright region covers {100 * mask.mean():.2f}% of the frame"
        )
    if scale == 1.0:
        return mask
    up = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return up >= 0.5


def _check_mask(mask: np.ndarray, img: np.ndarray, path: str | os.PathLike | None) -> np.ndarray:
    m = np.asarray(mask)
    if m.shape[:2] != img.shape[:2] or m.ndim != 2:
        raise FundusReadError(_name(img, path), f"FOV mask of shape {m.shape} does not match image of shape {img.shape}")
    m = m.astype(bool, copy=False)
    if not m.any():
        raise FundusReadError(_name(img, path), "field-of-view mask is empty")
    return m


def fov_box(fov: np.ndarray, margin: int = 0) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the FOV's bounding box grown by ``margin``, clipped to the frame."""
    rows = np.flatnonzero(fov.any(axis=1))
    cols = np.flatnonzero(fov.any(axis=0))
    if rows.size == 0:
        raise ValueError("field-of-view mask is empty")
    h, w = fov.shape[:2]
    return (
        max(0, int(rows[0]) - margin),
        min(h, int(rows[-1]) + 1 + margin),
        max(0, int(cols[0]) - margin),
        min(w, int(cols[-1]) + 1 + margin),
    )


def crop_to_fov(
    img: np.ndarray, fov: np.ndarray, margin: int = 0, *, path: str | os.PathLike | None = None
) -> np.ndarray:
    """Crop ``img`` (an image or any mask of the same frame) to the FOV's bounding box plus ``margin`` px.

    Returns a view, not a copy: cropping a 4k photo should not cost a 4k allocation.
    """
    fov = _check_mask(fov, np.asarray(img), path)
    top, bottom, left, right = fov_box(fov, margin)
    return np.asarray(img)[top:bottom, left:right]


def _square_pads(h: int, w: int) -> tuple[tuple[int, int], tuple[int, int]]:
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    return (top, side - h - top), (left, side - w - left)


def pad_to_square(img: np.ndarray, value: float | bool = 0) -> np.ndarray:
    """Pad equally on both sides of the short axis to a square; keeps dtype (bool masks stay bool)."""
    arr = np.asarray(img)
    rows, cols = _square_pads(arr.shape[0], arr.shape[1])
    pads = (rows, cols) + ((0, 0),) * (arr.ndim - 2)
    return np.pad(arr, pads, mode="constant", constant_values=np.asarray(value).astype(arr.dtype))


def _target(size: Size) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, (int, np.integer)) else size
    if int(h) < 1 or int(w) < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return int(h), int(w)


def resize(img: np.ndarray, size: Size, interpolation: int | None = None) -> np.ndarray:
    """Resize to ``size`` (int for a square, or (height, width)).

    Default interpolation: area averaging when shrinking (no aliasing of vessel edges), bicubic
    when enlarging, with the result clipped to the input's range because bicubic overshoots.
    Bool masks are resampled as coverage and thresholded at 0.5, which keeps their area unbiased.
    """
    arr = np.asarray(img)
    th, tw = _target(size)
    h, w = arr.shape[:2]
    if interpolation is None:
        interpolation = cv2.INTER_AREA if th * tw <= h * w else cv2.INTER_CUBIC
    is_mask = arr.dtype == bool
    src = as_float(arr)
    if (th, tw) == (h, w):
        out = src.copy()
    else:
        out = cv2.resize(src, (tw, th), interpolation=interpolation)
        if src.ndim == 3 and out.ndim == 2:  # cv2 drops a single channel axis
            out = out[:, :, None]
        if interpolation in (cv2.INTER_CUBIC, cv2.INTER_LANCZOS4) and not is_mask:
            out = np.clip(out, float(src.min()), float(src.max()))
    if is_mask:
        return out >= 0.5
    return np.ascontiguousarray(out, dtype=np.float32)


def _fit_square(arr: np.ndarray, size: int) -> np.ndarray:
    """Resize the long side to ``size`` keeping the aspect ratio, then pad to ``size`` x ``size``.

    Same geometry as pad-then-resize, but never allocates the padded full-resolution square
    (192 MB for a 4000 px float photo).
    """
    h, w = arr.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
    out = resize(arr, (nh, nw))
    rows, cols = ((size - nh) // 2, size - nh - (size - nh) // 2), ((size - nw) // 2, size - nw - (size - nw) // 2)
    pads = (rows, cols) + ((0, 0),) * (out.ndim - 2)
    return np.pad(out, pads, mode="constant")


def prepare_fundus(
    img: np.ndarray,
    size: int,
    fov: np.ndarray | None = None,
    *,
    margin: int = 0,
    path: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Crop to the FOV, pad to a square, resize to ``size``: returns (float32 image, bool FOV).

    ``fov`` is estimated when not given (CHASE_DB1, EyePACS, APTOS ship none). Apply the same
    geometry to a vessel or lesion mask of the same photo with :func:`prepare_mask`.
    """
    arr = as_float(img, path)
    fov = estimate_fov(arr, path=path) if fov is None else _check_mask(fov, arr, path)
    cropped = crop_to_fov(arr, fov, margin, path=path)
    cropped_fov = crop_to_fov(fov, fov, margin, path=path)
    return _fit_square(cropped, size), _fit_square(cropped_fov, size)


def prepare_mask(mask: np.ndarray, fov: np.ndarray, size: int, *, margin: int = 0) -> np.ndarray:
    """Give a vessel/lesion mask the geometry :func:`prepare_fundus` gave its image (same ``fov``, ``margin``)."""
    m = np.asarray(mask).astype(bool, copy=False)
    return _fit_square(crop_to_fov(m, fov, margin), size)
