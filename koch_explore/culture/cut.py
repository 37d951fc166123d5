"""Postulate 2, the cut: an evidence map -> blurred, normalised, thresholded -> components.

:func:`segment` follows the paper's widget: Gaussian blur (sigma ~ 10 px at 512, scaled with the
side) -> divide by the maximum inside the field of view -> threshold (a fixed fraction, each rule's
default, or Otsu on the FOV pixels) -> components (one per local peak by default, or the paper's
8-connected components of one global cut) -> drop the small ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..core.geometry import Box
from ..evidence.base import default_blur_sigma

RULES = ("global", "peaks")
"""How components are cut from the blurred map: one global cut, or one component per local peak."""

DEFAULT_RULE = "peaks"
"""One component per local peak: chosen on a measure fair to box size (instance recall and precision with the
share of the FOV the boxes cover, docs/findings/evidence.md#default-rule). The paper's global cut grows one box
around every cluster of lesions (on phantoms it covered 0.92 of the fundus): its hit rate is mostly chance."""

RULE_THRESHOLDS = {"global": 0.1, "peaks": 0.3}
"""Each rule's default cut, as a fraction of the blurred map's maximum inside the FOV. "global": 0.1, chosen
on phantoms (docs/findings/evidence.md#default-threshold; a low cut keeps the weaker lesions' evidence, and
the filters of :func:`~koch_explore.culture.isolation.isolate` reject what is not evidence of disease).
"peaks": the floor a local peak must reach, chosen on development phantoms and held-out EyePACS hosts of
development seeds (docs/findings/evidence.md#default-rule)."""

DEFAULT_THRESHOLD = RULE_THRESHOLDS[DEFAULT_RULE]
"""The default rule's cut."""


def default_threshold(rule: str = DEFAULT_RULE) -> float:
    """The default cut of ``rule`` (:data:`RULE_THRESHOLDS`)."""
    if rule not in RULE_THRESHOLDS:
        raise ValueError(f"isolation rule {rule!r}: one of {RULES}")
    return RULE_THRESHOLDS[rule]

PEAK_FRACTION = 0.3
"""A peak's component: the pixels of its watershed basin at or above this fraction of its own height."""

MAX_BOX_SHARE = 0.15
"""The largest box a peak's component may have, as a share of the FOV's area. A faint peak on a wide, low map
reaches 0.3 of its own height almost everywhere in its basin: the quickstart's EyePACS detector on phantoms drew
boxes of up to 0.49 of the FOV. A component whose box is larger is cut at a level nearer its peak until its box
fits. The smallest of 0.05 / 0.08 / 0.10 / 0.12 / 0.15 that kept instance recall at 0.80 on development phantom
seeds (docs/findings/evidence.md#box-cap)."""


def parse_threshold(text: str) -> str | float:
    """A threshold from text: "otsu" or a fraction in [0, 1] (a clear error otherwise)."""
    if text == "otsu":
        return text
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"threshold must be 'otsu' or a number in [0, 1], got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {v}")
    return v


parse_threshold.__name__ = "threshold"  # argparse names the type in its error message


def default_min_area(image_size: int | tuple[int, int]) -> int:
    """16 px at 256 (a 4x4 patch), scaled with the image area: smaller components are
    threshold crumbs of the blurred map, not lesions."""
    side = max(image_size) if isinstance(image_size, tuple) else image_size
    return max(4, int(round(16 * (side / 256.0) ** 2)))


@dataclass
class Segmentation:
    """One image's isolation steps (what :func:`~koch_explore.plotting.isolation_steps` draws)."""

    evidence: np.ndarray
    """(H, W) the input map as given."""
    blurred: np.ndarray
    """(H, W) blurred, divided by its maximum inside the FOV, zero outside: in [0, 1]."""
    threshold: float
    """The cut applied to ``blurred`` (Otsu's or the given fraction)."""
    mask: np.ndarray
    """(H, W) bool: the kept components."""
    labels: np.ndarray
    """(H, W) int32: 0 background, 1..K the kept components in ``boxes`` order."""
    boxes: list[Box]
    areas: list[int]
    centroids: list[tuple[float, float]]
    fov: np.ndarray


def segment(evidence, fov=None, threshold: str | float | None = None, blur_sigma: float | None = None, min_area: int | None = None,
            rule: str = DEFAULT_RULE) -> Segmentation:
    """Blur -> normalise -> threshold -> 8-connected components -> drop those under ``min_area``.

    ``rule`` "peaks" (the default) grows one component per local maximum above the cut
    (:func:`peak_components`), so clustered lesions get a box each; "global" keeps everything above the cut
    (the paper's). ``threshold`` None: the rule's default (:data:`RULE_THRESHOLDS`)."""
    if rule not in RULES:
        raise ValueError(f"isolation rule {rule!r}: one of {RULES}")
    if threshold is None:
        threshold = default_threshold(rule)
    ev = np.asarray(evidence, dtype=np.float32)
    if ev.ndim != 2:
        raise ValueError(f"segment takes one (H, W) map, got shape {ev.shape}")
    h, w = ev.shape
    fov = np.ones((h, w), bool) if fov is None else np.asarray(fov, bool)
    if fov.shape != (h, w):
        raise ValueError(f"FOV mask {fov.shape} does not match the map {(h, w)}")
    sigma = default_blur_sigma((h, w)) if blur_sigma is None else float(blur_sigma)
    min_area = default_min_area((h, w)) if min_area is None else int(min_area)
    # A normalised blur, blur(map * fov) / blur(fov): nothing bleeds in from the black frame and
    # the rim is not darkened, so evidence near the FOV edge is not cut by the threshold.
    src = np.where(fov, np.nan_to_num(ev, nan=0.0), 0.0).astype(np.float32)
    if sigma > 0:
        weight = cv2.GaussianBlur(fov.astype(np.float32), (0, 0), sigma)
        blurred = cv2.GaussianBlur(src, (0, 0), sigma) / np.maximum(weight, 1e-6)
    else:
        blurred = src.copy()
    peak = float(blurred[fov].max()) if fov.any() else 0.0
    blurred = np.where(fov, blurred / peak, 0.0).astype(np.float32) if peak > 0 else np.zeros_like(blurred)

    if isinstance(threshold, str):
        if threshold != "otsu":
            raise ValueError(f"threshold must be 'otsu' or a number in [0, 1], got {threshold!r}")
        values = np.round(blurred[fov] * 255).astype(np.uint8).reshape(1, -1)
        t = cv2.threshold(values, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)[0] if values.size else 255.0
        cut = (t + 0.5) / 255.0  # cv2 keeps the 8-bit values above t
    else:
        cut = float(threshold)
        if not 0.0 <= cut <= 1.0:
            raise ValueError(f"a fixed threshold is a fraction of the maximum in [0, 1], got {cut}")
    if rule == "peaks":
        return peak_components(blurred, fov, cut, min_area, evidence=ev, min_distance=max(2, int(round(sigma))))
    return cut_components(blurred, fov, cut, min_area, evidence=ev)


def cut_components(blurred: np.ndarray, fov: np.ndarray, cut: float, min_area: int, evidence: np.ndarray | None = None) -> Segmentation:
    """The second half of :func:`segment` on an already blurred, normalised map: keep
    ``blurred > cut`` inside the FOV, 8-connected components of at least ``min_area`` pixels.
    Widgets call it alone when only the threshold moves."""
    binary = ((blurred > cut) & fov).astype(np.uint8)
    n, labels, stats, cents = cv2.connectedComponentsWithStats(binary, connectivity=8)
    keep = [k for k in range(1, n) if stats[k, cv2.CC_STAT_AREA] >= min_area]
    relabel = np.zeros(n, np.int32)
    relabel[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
    labels = relabel[labels]
    boxes, areas, centroids = [], [], []
    for k in keep:
        x, y, bw, bh, area = (int(v) for v in stats[k])
        boxes.append((x, y, x + bw, y + bh))
        areas.append(area)
        centroids.append((float(cents[k, 0]), float(cents[k, 1])))
    ev = blurred if evidence is None else evidence
    return Segmentation(ev, blurred, float(cut), labels > 0, labels, boxes, areas, centroids, fov)


def peak_components(blurred: np.ndarray, fov: np.ndarray, floor: float, min_area: int, evidence: np.ndarray | None = None,
                    min_distance: int = 4, fraction: float | None = None, max_box_share: float | None = None) -> Segmentation:
    """One component per local maximum of ``blurred`` at or above ``floor`` (peaks at least
    ``min_distance`` px apart): the pixels of the peak's watershed basin that reach ``fraction`` of the
    peak's own height and connect to it. A component's extent follows its own peak, not the map's
    strongest one, so a faint lesion beside a strong one keeps its own small box. A component whose box
    covers more than ``max_box_share`` of the FOV (None: :data:`MAX_BOX_SHARE`; 1: no limit) is cut at
    levels nearer its peak (a tenth of the way at a time) until its box fits, or nine tenths of the way."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    fraction = PEAK_FRACTION if fraction is None else fraction
    max_box = (MAX_BOX_SHARE if max_box_share is None else max_box_share) * float(fov.sum())
    b = np.where(fov, blurred, 0.0).astype(np.float32)
    local_max = ndi.maximum_filter(b, size=2 * min_distance + 1, mode="constant")
    # a plateau (a flat map, a saturated top) is one peak, not one per pixel: each connected set of maxima
    # is represented by its first pixel in raster order (an isolated maximum is its own set)
    tops, _ = ndi.label((b == local_max) & (b >= floor) & (b > 0) & fov, structure=np.ones((3, 3), bool))
    where = np.flatnonzero(tops)
    _, first = np.unique(tops.ravel()[where], return_index=True)
    peaks = np.column_stack(np.unravel_index(where[first], b.shape)) if len(where) else np.zeros((0, 2), np.int64)
    h, w = b.shape
    markers = np.zeros((h, w), np.int32)
    for k, (y, x) in enumerate(peaks):
        markers[y, x] = k + 1
    basins = watershed(-b, markers, mask=(b >= floor * fraction) & fov) if len(peaks) else markers
    labels = np.zeros((h, w), np.int32)
    boxes, areas, centroids = [], [], []
    windows = ndi.find_objects(basins, max_label=len(peaks))
    for k, (y, x) in enumerate(peaks):
        rows, cols = windows[k]  # the basin's bounding window: the component never leaves it
        basin, height = basins[rows, cols] == k + 1, b[y, x]
        py, px = y - rows.start, x - cols.start
        for step in range(10):
            level = height * (fraction + (1.0 - fraction) * step / 10)
            parts, _ = ndi.label(basin & (b[rows, cols] >= level), structure=np.ones((3, 3), bool))
            ys, xs = np.nonzero(parts == parts[py, px])
            if (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1) <= max_box:
                break
        ys, xs = ys + rows.start, xs + cols.start
        if len(ys) < min_area or labels[ys, xs].any():
            continue
        labels[ys, xs] = len(boxes) + 1
        boxes.append((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
        areas.append(len(ys))
        centroids.append((float(xs.mean()), float(ys.mean())))
    ev = blurred if evidence is None else evidence
    return Segmentation(ev, blurred, float(floor), labels > 0, labels, boxes, areas, centroids, fov)
