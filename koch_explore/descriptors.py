"""Postulate 2 ("culture"): lesions cut out of the evidence map as reusable *pathological descriptors*.

Read top to bottom:

1. **Evidence** — :func:`explain` / :func:`evidence_maps` (from :mod:`koch_explore.evidence`) turn
   a batch of fundus images into one non-negative map per image, by guided Grad-CAM (the default:
   the method that passes the sanity checks), the paper's deconvnet, or any other listed there.
2. **Isolation** — :func:`segment` follows the paper's widget: Gaussian blur (sigma ~ 10 px at 512,
   scaled with the side) -> divide by the maximum inside the field of view -> threshold (a fixed
   fraction, default 0.1, or Otsu on the FOV pixels) -> 8-connected components -> drop the small
   ones.
   :func:`isolate` turns each component into a :class:`Descriptor`.
3. **Descriptor** — bbox, mask, evidence, the detector's feature patches and the projection's
   activation patches at an early (1/2) and a mid (1/8) layer, Gram matrices of the masked
   feature patches (the AAAI "style" of the lesion), the detector's normalised input under the box
   (the lesion as conv1 saw it), its share of the severity, provenance.
   All arrays are numpy (the synthesizer wraps them with ``torch.from_numpy`` at no cost).
4. **Bank** — :class:`DescriptorBank`: select, place (relocate / rotate / scale / count),
   :meth:`~DescriptorBank.render` to per-layer canvases for the synthesizer, save / load.

Geometry conventions, used everywhere below: boxes are ``(x0, y0, x1, y1)`` half-open pixel
indices; points are ``(x, y)`` in *index coordinates* (pixel centres at integers, as
``cv2.connectedComponentsWithStats`` reports centroids). A layer whose grid is ``s`` times the
image's (1/2 for conv2, 1/8 for conv5) has cell ``j`` covering image pixels ``[j/s, (j+1)/s)``;
a descriptor's *layer box* is the set of cells holding the centres of its bbox's pixels, and its
*layer mask* the cells holding the centres of its mask pixels. Layer boxes and masks are always
derived from the image-level bbox and mask, never stored, so they cannot drift apart.

Why displacements snap to 8 px (the paper's widget does this): the coarsest stored layer is on an
8-px grid, so a shift by a multiple of 8 moves every layer patch by whole cells — the patches are
copied, not resampled, and stay exactly what the detector computed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import cv2
import numpy as np

from .evidence import DEFAULT_METHOD, METHODS, Evidence, evidence_map, evidence_maps, explain, used_start

FORMAT = "koch-explore/descriptor-bank"
SCHEMA_VERSION = 1
Box = tuple[int, int, int, int]
DEFAULT_THRESHOLD = 0.1
"""Default cut, as a fraction of the blurred map's maximum inside the FOV. Chosen on phantoms with
the phantom-trained detector and the deconvnet (seeds 0 and 1, 48 images each: recall 0.87-0.88 at
precision 1.00 with the two filters of :func:`isolate`; Otsu's cut kept recall at 0.68) and kept for
guided Grad-CAM, whose geometric-mean map it cuts alike (seeds 0-3: recall 0.90-0.97 at precision
0.91-1.00): a low cut keeps the weaker lesions' evidence, and the filters, not the cut, reject what
is not evidence of disease."""
DEFAULT_MIN_SHARE = 0.0

__all__ = [
    "BankFormatError",
    "BankMismatchError",
    "Descriptor",
    "DescriptorBank",
    "Evidence",
    "METHODS",
    "RenderedLayout",
    "Segmentation",
    "default_blur_sigma",
    "default_feature_layers",
    "default_min_area",
    "evidence_map",
    "evidence_maps",
    "explain",
    "isolate",
    "segment",
]


class BankMismatchError(ValueError):
    """A bank cut with other detector weights than the ones it is being used with."""


class BankFormatError(ValueError):
    """A bank file (tensors or JSON sidecar) that is missing, unreadable or inconsistent."""


# ---------------------------------------------------------------------------------------------
# 1. Evidence maps
# ---------------------------------------------------------------------------------------------


def _device(detector):
    return next(detector.parameters()).device if detector is not None else "cpu"


def _as_image_tensor(images):
    """(B, 3, H, W) float32 tensor from a tensor, or a numpy (B, H, W, 3) / (B, 3, H, W) batch
    (uint8 or float in [0, 1]); one image without the batch axis is accepted too."""
    import torch

    if isinstance(images, torch.Tensor):
        x = images.detach().float()
    else:
        arr = np.asarray(images)
        arr = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim == 4 and arr.shape[-1] == 3 and arr.shape[1] != 3:
            arr = arr.transpose(0, 3, 1, 2)
        x = torch.from_numpy(np.ascontiguousarray(arr))
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W) or (B, H, W, 3), got {tuple(x.shape)}")
    return x


# ---------------------------------------------------------------------------------------------
# 2. Isolation
# ---------------------------------------------------------------------------------------------


def default_blur_sigma(image_size: int | tuple[int, int]) -> float:
    """sigma 10 px at 512 (the papers' value), scaled with the image side."""
    side = max(image_size) if isinstance(image_size, tuple) else image_size
    return 10.0 * side / 512.0


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


def segment(evidence, fov=None, threshold: str | float = DEFAULT_THRESHOLD, blur_sigma: float | None = None, min_area: int | None = None) -> Segmentation:
    """Blur -> normalise -> threshold -> 8-connected components -> drop those under ``min_area``."""
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


def default_feature_layers(detector) -> tuple[str, str]:
    """The last conv on the 1/2 grid and the last on the 1/8 grid (``conv2``, ``conv5`` in both
    presets), found from the detector's strides, so another layer plan gets the right ones."""
    from .detector import conv_strides

    last = {stride: name for name, stride in conv_strides(detector).items()}  # the last conv wins
    if 2 not in last or 8 not in last:
        raise ValueError(f"detector has no conv on the 1/2 and 1/8 grids (grids: {sorted(last)})")
    return last[2], last[8]


def _layers_from_maps(maps: Mapping[str, Any], image_hw: tuple[int, int]) -> tuple[str, ...]:
    """Without a detector: the same choice as :func:`default_feature_layers`, read off the
    shapes of a projection's conv maps."""
    convs = sorted((n for n in maps if n.startswith("conv") and n[4:].isdigit()), key=lambda n: int(n[4:]))
    last = {}
    for n in convs:
        last[round(image_hw[0] / maps[n].shape[-2])] = n
    return tuple(last[r] for r in (2, 8) if r in last)


def isolate(
    projection_or_map,
    images=None,
    detector=None,
    threshold: str | float = DEFAULT_THRESHOLD,
    blur_sigma: float | None = None,
    min_area: int | None = None,
    fov=None,
    feature_layers: Sequence[str] | None = None,
    activation_layers: Sequence[str] | None = None,
    image_ids: Sequence[str] | None = None,
    measure_share: bool = True,
    min_share: float | None = DEFAULT_MIN_SHARE,
    require_disease: bool = True,
) -> list[list["Descriptor"]]:
    """Cut every evidence component out as a :class:`Descriptor`; one list per image.

    ``projection_or_map``: a deconvnet ``Projection`` (its |input map| is the evidence and its
    ``maps`` give the activation patches) or evidence maps (B, H, W) / (H, W) from any method.
    ``images`` + ``detector`` add the feature patches, their Gram matrices, the normalised input
    patch (``norm_patch``) and the severity share;
    without them descriptors carry geometry and evidence only. ``feature_layers`` defaults to
    :func:`default_feature_layers`; ``activation_layers`` to the same layers (read off the
    projection when there is no detector). ``fov`` (B, H, W) or (H, W) bool defaults to the
    images' bright region (the threshold the detector's own normalisation uses), else everything.

    The severity share of a component is ``severity(image) - severity(image with the component
    replaced by its local background)``: the component (dilated 2 px) is filled with a normalised
    Gaussian average of the FOV pixels around it (sigma = the component's equivalent radius), so
    no lesion colour survives in the fill and no black hole appears. One batched forward pass per
    image covers all its components. Positive = the lesion raises the predicted severity.
    """
    is_projection = hasattr(projection_or_map, "input") and hasattr(projection_or_map, "maps")
    if is_projection:
        ev = evidence_map(projection_or_map)
    else:
        src = projection_or_map
        ev = np.asarray(src.detach().cpu().numpy() if hasattr(src, "detach") else src, dtype=np.float32)
        ev = ev[None] if ev.ndim == 2 else ev
    if ev.ndim != 3:
        raise ValueError(f"evidence maps must be (B, H, W), got shape {ev.shape}")
    b, h, w = ev.shape
    x = None
    if images is not None:
        x = _as_image_tensor(images)
        if x.shape[0] != b or tuple(x.shape[-2:]) != (h, w):
            raise ValueError(f"images {tuple(x.shape)} do not match the evidence maps {ev.shape}")
    fovs = _fov_batch(fov, x, b, (h, w))
    ids = [str(i) for i in range(b)] if image_ids is None else [str(i) for i in image_ids]
    if len(ids) != b:
        raise ValueError(f"{len(ids)} image ids for {b} images")
    segs = [segment(ev[i], fovs[i], threshold, blur_sigma, min_area) for i in range(b)]
    if detector is None or x is None:
        min_share, require_disease = None, False
    if getattr(detector, "thresholds", None) is None:
        require_disease = False  # a model without grade cuts (not a Detector) has no "grade 0"
    if min_share is not None and math.isnan(min_share):
        min_share = None

    features: dict[str, np.ndarray] = {}
    normed = None
    severity = None
    if detector is not None and x is not None:
        import torch

        layers = tuple(feature_layers) if feature_layers is not None else default_feature_layers(detector)
        was_training = detector.training
        detector.eval()
        try:
            with torch.no_grad():
                sev, acts = detector.forward_features(x.to(_device(detector)), keep={*layers, "norm"})
        finally:
            detector.train(was_training)
        missing = [n for n in layers if n not in acts]
        if missing:
            raise ValueError(f"feature layers {missing} are not detector layers; choose from {detector.layer_names}")
        features = {n: acts[n].float().cpu().numpy() for n in layers}
        normed = acts["norm"].float().cpu().numpy() if "norm" in acts else None
        severity = sev.float().cpu().numpy()
        if activation_layers is None:
            activation_layers = layers

    activations: dict[str, np.ndarray] = {}
    if is_projection:
        maps = projection_or_map.maps
        if activation_layers is None:
            activation_layers = _layers_from_maps(maps, (h, w))
        missing = [n for n in activation_layers if n not in maps]
        if missing:
            raise ValueError(f"activation layers {missing} are not below the projection's start {projection_or_map.start!r}")
        activations = {n: maps[n].detach().float().cpu().numpy() for n in activation_layers}

    layer_sizes = {n: tuple(a.shape[-2:]) for n, a in {**features, **activations}.items()}
    out: list[list[Descriptor]] = []
    for i, seg in enumerate(segs):
        if require_disease and float(severity[i]) < float(detector.thresholds[0]):
            out.append([])
            continue
        shares = (
            _severity_shares(detector, x[i], seg, float(severity[i]))
            if severity is not None and (measure_share or min_share is not None) and seg.boxes
            else [float("nan")] * len(seg.boxes)
        )
        descs = []
        for k, (box, area, cen) in enumerate(zip(seg.boxes, seg.areas, seg.centroids)):
            if min_share is not None and not shares[k] >= min_share:
                continue
            x0, y0, x1, y1 = box
            mask = seg.labels[y0:y1, x0:x1] == k + 1
            feat = {n: _crop(a[i], _layer_box(box, (h, w), a.shape[-2:])) for n, a in features.items()}
            act = {n: _crop(a[i], _layer_box(box, (h, w), a.shape[-2:])) for n, a in activations.items()}
            d = Descriptor(
                bbox=box,
                centroid=cen,
                area=area,
                mask=mask,
                evidence=np.ascontiguousarray(ev[i, y0:y1, x0:x1]),
                image_size=(h, w),
                features=feat,
                activations=act,
                layer_sizes=dict(layer_sizes),
                source=ids[i],
                score=float(seg.blurred[y0:y1, x0:x1][mask].mean()),
                severity_share=float(shares[k]),
                norm_patch=None if normed is None else np.ascontiguousarray(normed[i, :, y0:y1, x0:x1]),
            )
            descs.append(d.with_grams())
        out.append(descs)
    return out


def _fov_batch(fov, x, b: int, hw: tuple[int, int]) -> np.ndarray:
    if fov is not None:
        f = np.asarray(fov.detach().cpu().numpy() if hasattr(fov, "detach") else fov).astype(bool)
        f = np.broadcast_to(f, (b, *hw)) if f.ndim == 2 else f
        if f.shape != (b, *hw):
            raise ValueError(f"FOV masks {f.shape} do not match the maps {(b, *hw)}")
        return f
    if x is not None:
        # The threshold FundusNorm uses to find the FOV: the detector sees exactly this disc.
        return (x.amax(dim=1) > 0.04).cpu().numpy()
    return np.ones((b, *hw), bool)


def _severity_shares(detector, image, seg: Segmentation, severity: float, chunk: int = 16) -> list[float]:
    import torch

    img = image.permute(1, 2, 0).cpu().numpy()  # (H, W, 3): cv2 does the background fill
    h, w = seg.labels.shape
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    copies = []
    for k, (box, area) in enumerate(zip(seg.boxes, seg.areas)):
        sigma = max(2.0, math.sqrt(area / math.pi))
        pad = int(math.ceil(3 * sigma)) + 3
        x0, y0, x1, y1 = max(0, box[0] - pad), max(0, box[1] - pad), min(w, box[2] + pad), min(h, box[3] + pad)
        region = cv2.dilate((seg.labels[y0:y1, x0:x1] == k + 1).astype(np.uint8), kernel).astype(bool)
        weight = (~region & seg.fov[y0:y1, x0:x1]).astype(np.float32)
        crop = img[y0:y1, x0:x1]
        num = cv2.GaussianBlur(crop * weight[..., None], (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
        den = cv2.GaussianBlur(weight, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
        out = img.copy()
        out[y0:y1, x0:x1][region] = (num / np.maximum(den, 1e-6)[..., None])[region]
        copies.append(out)
    batch = torch.from_numpy(np.stack(copies)).permute(0, 3, 1, 2).contiguous().to(_device(detector))
    was_training = detector.training
    detector.eval()
    try:
        with torch.no_grad():
            sev = torch.cat([detector(batch[s : s + chunk]) for s in range(0, len(batch), chunk)])
    finally:
        detector.train(was_training)
    return (severity - sev.float().cpu().numpy()).tolist()


# ---------------------------------------------------------------------------------------------
# 3. Descriptor and its geometry
# ---------------------------------------------------------------------------------------------


def _layer_box(bbox: Box, image_hw, layer_hw) -> Box:
    """Cells of a layer grid holding the centres of the bbox's pixels (see the module docstring)."""
    x0, y0, x1, y1 = bbox
    sy, sx = layer_hw[0] / image_hw[0], layer_hw[1] / image_hw[1]
    lx0, ly0 = math.floor((x0 + 0.5) * sx), math.floor((y0 + 0.5) * sy)
    lx1, ly1 = math.floor((x1 - 0.5) * sx) + 1, math.floor((y1 - 0.5) * sy) + 1
    lx0, ly0 = min(max(lx0, 0), layer_hw[1] - 1), min(max(ly0, 0), layer_hw[0] - 1)
    return lx0, ly0, max(lx0 + 1, min(lx1, layer_hw[1])), max(ly0 + 1, min(ly1, layer_hw[0]))


def _crop(a: np.ndarray, box: Box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.ascontiguousarray(a[..., y0:y1, x0:x1], dtype=np.float32)


def _grid(sy: float, sx: float) -> np.ndarray:
    """Index coordinates of an image -> those of a grid ``s`` times as fine (3x3 homogeneous)."""
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]], dtype=np.float64)


def _shift(dx: float, dy: float) -> np.ndarray:
    return np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1]], dtype=np.float64)


def _warp(patch: np.ndarray, m: np.ndarray, out_hw: tuple[int, int], nearest_border: bool = True) -> np.ndarray:
    """Warp a (H, W) or (C, H, W) patch by ``m`` (3x3: source patch index -> destination patch
    index). Whole-pixel shifts are copied exactly; anything else is bilinear (cv2)."""
    oh, ow = out_hw
    lead = patch.shape[:-2]
    out = np.zeros((*lead, oh, ow), np.float32)
    if np.allclose(m[:2, :2], np.eye(2), atol=1e-9) and np.allclose(m[:2, 2], np.round(m[:2, 2]), atol=1e-6):
        dx, dy = int(round(m[0, 2])), int(round(m[1, 2]))
        sh, sw = patch.shape[-2:]
        ys0, xs0 = max(0, -dy), max(0, -dx)
        ys1, xs1 = min(sh, oh - dy), min(sw, ow - dx)
        if ys1 > ys0 and xs1 > xs0:
            out[..., ys0 + dy : ys1 + dy, xs0 + dx : xs1 + dx] = patch[..., ys0:ys1, xs0:xs1]
        return out
    # Values (features, evidence) replicate their border, so masked-in cells near the patch edge
    # are not darkened by zeros from outside; masks use a zero border.
    border = cv2.BORDER_REPLICATE if nearest_border else cv2.BORDER_CONSTANT
    src = patch.reshape(-1, *patch.shape[-2:]).astype(np.float32).transpose(1, 2, 0)
    res = []
    for c in range(0, src.shape[2], 256):  # cv2 handles at most 512 channels per call
        part = cv2.warpAffine(np.ascontiguousarray(src[:, :, c : c + 256]), m[:2].astype(np.float64), (ow, oh), flags=cv2.INTER_LINEAR, borderMode=border, borderValue=0)
        res.append(part.reshape(oh, ow, -1))
    return np.concatenate(res, axis=2).transpose(2, 0, 1).reshape(*lead, oh, ow)


def _local(t: np.ndarray, src_origin, dst_origin) -> np.ndarray:
    """A global map ``t`` as a map between patch indices (patches anchored at the origins)."""
    return _shift(-dst_origin[0], -dst_origin[1]) @ t @ _shift(src_origin[0], src_origin[1])


def _snapped(d: float, snap: int) -> int:
    return int(round(d / snap) * snap) if snap and snap > 1 else int(round(d))


def _inside_shift(box: Box, image_hw, snap: int) -> tuple[int, int]:
    """The whole-pixel shift (a multiple of ``snap`` when that fits) that brings ``box`` inside."""

    def axis(lo: int, hi: int, n: int) -> int:
        if hi - lo > n:
            raise ValueError(f"a descriptor {hi - lo} px across does not fit a {n} px image")
        d = -lo if lo < 0 else (n - hi if hi > n else 0)
        if d and snap and snap > 1:
            ds = int(math.copysign(math.ceil(abs(d) / snap) * snap, d))
            if lo + ds >= 0 and hi + ds <= n:
                d = ds
        return d

    return axis(box[0], box[2], image_hw[1]), axis(box[1], box[3], image_hw[0])


def _gram(patch: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """C x C Gram matrix of the feature vectors under the layer mask, divided by their number."""
    f = patch[:, mask].astype(np.float64)
    n = max(1, f.shape[1])
    return (f @ f.T / n).astype(np.float32)


@dataclass(frozen=True, eq=False)
class Descriptor:
    """One isolated lesion. Frozen: placement returns new descriptors and leaves this one be.

    Patches are bbox-sized crops, *not* masked (``mask`` / :meth:`layer_mask` say what belongs
    to the lesion); layer patches are cut at :meth:`layer_box` of each layer's grid.
    """

    bbox: Box
    centroid: tuple[float, float]
    area: int
    mask: np.ndarray
    """bool (y1-y0, x1-x0)."""
    evidence: np.ndarray
    """float32 (y1-y0, x1-x0): the unblurred evidence map under the bbox."""
    image_size: tuple[int, int]
    """(H, W) of the image the bbox refers to."""
    features: dict[str, np.ndarray] = field(default_factory=dict)
    """layer -> float32 (C, h, w) detector activation (forward pass) under the layer box."""
    activations: dict[str, np.ndarray] = field(default_factory=dict)
    """layer -> float32 (C, h, w) deconvnet map at that layer under the layer box."""
    grams: dict[str, np.ndarray] = field(default_factory=dict)
    """layer -> float32 (C, C) Gram matrix of the masked feature patch."""
    layer_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    """layer -> (h, w) of that layer's full grid for ``image_size``."""
    source: str = ""
    type: str | None = None
    score: float = float("nan")
    """Mean of the normalised blurred evidence (in [0, 1]) inside the mask."""
    severity_share: float = float("nan")
    """Severity drop when the lesion is replaced by its local background (see :func:`isolate`)."""
    norm_patch: np.ndarray | None = None
    """float32 (3, y1-y0, x1-x0): the detector's normalised input (its ``norm`` layer: the photo's
    high-pass divided by its per-channel RMS, what ``conv1`` sees) under the bbox, or None when
    isolated without the detector and images. It is the lesion as the detector saw it, free of the
    source camera's colours: the Koch test's transplant control pastes it into a host."""

    def __post_init__(self) -> None:
        x0, y0, x1, y1 = self.bbox
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"empty bbox {self.bbox}")
        for name, arr in (("mask", self.mask), ("evidence", self.evidence)):
            if arr.shape != (y1 - y0, x1 - x0):
                raise ValueError(f"{name} patch {arr.shape} does not match bbox {self.bbox}")
        if self.norm_patch is not None and self.norm_patch.shape[-2:] != (y1 - y0, x1 - x0):
            raise ValueError(f"norm patch {self.norm_patch.shape} does not match bbox {self.bbox}")
        for kind, patches in (("feature", self.features), ("activation", self.activations)):
            for n, p in patches.items():
                lx0, ly0, lx1, ly1 = self.layer_box(n)
                if p.shape[-2:] != (ly1 - ly0, lx1 - lx0):
                    raise ValueError(f"{kind} patch {n} {p.shape} does not match its layer box {(lx0, ly0, lx1, ly1)}")

    def __repr__(self) -> str:
        layers = ",".join(sorted(set(self.features) | set(self.activations)))
        return (f"Descriptor(source={self.source!r}, bbox={self.bbox}, area={self.area}, type={self.type}, "
                f"score={self.score:.3f}, severity_share={self.severity_share:.3f}, layers=[{layers}])")

    @property
    def scale(self) -> float:
        """sqrt(area): the lesion's linear size (the paper's "scale")."""
        return math.sqrt(self.area)

    @property
    def layers(self) -> list[str]:
        return sorted(set(self.features) | set(self.activations))

    def layer_box(self, layer: str) -> Box:
        if layer not in self.layer_sizes:
            raise KeyError(f"descriptor has no layer {layer!r}; it has {sorted(self.layer_sizes)}")
        return _layer_box(self.bbox, self.image_size, self.layer_sizes[layer])

    def layer_mask(self, layer: str) -> np.ndarray:
        """bool (h, w) over :meth:`layer_box`: cells holding the centre of a mask pixel."""
        lx0, ly0, lx1, ly1 = self.layer_box(layer)
        lh, lw = self.layer_sizes[layer]
        sy, sx = lh / self.image_size[0], lw / self.image_size[1]
        ys, xs = np.nonzero(self.mask)
        cy = np.floor((ys + self.bbox[1] + 0.5) * sy).astype(int) - ly0
        cx = np.floor((xs + self.bbox[0] + 0.5) * sx).astype(int) - lx0
        out = np.zeros((ly1 - ly0, lx1 - lx0), bool)
        ok = (cy >= 0) & (cy < out.shape[0]) & (cx >= 0) & (cx < out.shape[1])
        out[cy[ok], cx[ok]] = True
        return out

    def with_grams(self) -> "Descriptor":
        """This descriptor with its Gram matrices computed from the masked feature patches."""
        return replace(self, grams={n: _gram(p, self.layer_mask(n)) for n, p in self.features.items()})

    # -- placement -------------------------------------------------------------------------

    def warped(self, t: np.ndarray, image_size: tuple[int, int] | None = None, snap: int = 1) -> "Descriptor":
        """Apply the affine map ``t`` (3x3 or 2x3, image index coordinates) to every patch.

        The new bbox is the tight box of the warped mask (bilinear, cut at 0.5); if it leaves the
        image it is shifted back inside (by a multiple of ``snap`` when possible). Layer patches
        are warped by the same map expressed on each layer's grid; ``image_size`` (a different
        canvas) rescales the layer grids with it. Gram matrices are recomputed.
        """
        t = np.asarray(t, np.float64)
        t = np.vstack([t, [0, 0, 1]]) if t.shape == (2, 3) else t
        h0, w0 = self.image_size
        h1, w1 = image_size or self.image_size
        x0, y0, x1, y1 = self.bbox
        corners = np.array([[x0 - 0.5, y0 - 0.5, 1], [x1 - 0.5, y0 - 0.5, 1], [x0 - 0.5, y1 - 0.5, 1], [x1 - 0.5, y1 - 0.5, 1]]) @ t.T
        gx0, gy0 = math.floor(corners[:, 0].min()) - 1, math.floor(corners[:, 1].min()) - 1
        gx1, gy1 = math.ceil(corners[:, 0].max()) + 2, math.ceil(corners[:, 1].max()) + 2
        soft = _warp(self.mask.astype(np.float32), _local(t, (x0, y0), (gx0, gy0)), (gy1 - gy0, gx1 - gx0), nearest_border=False)
        m = soft >= 0.5
        if not m.any():  # a 1-px lesion can fall between pixels: keep its strongest pixel
            if soft.max() <= 0:
                raise ValueError(f"descriptor {self.bbox} vanished under the warp")
            m = soft == soft.max()
        ys, xs = np.nonzero(m)
        mask = m[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        box = (gx0 + int(xs.min()), gy0 + int(ys.min()), gx0 + int(xs.max()) + 1, gy0 + int(ys.max()) + 1)
        dx, dy = _inside_shift(box, (h1, w1), snap)
        box = (box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy)
        t = _shift(dx, dy) @ t

        def layer_patches(patches: dict[str, np.ndarray], sizes: dict[str, tuple[int, int]]) -> dict[str, np.ndarray]:
            out = {}
            for n, p in patches.items():
                (lh, lw), (nh, nw) = self.layer_sizes[n], sizes[n]
                tl = _grid(nh / h1, nw / w1) @ t @ np.linalg.inv(_grid(lh / h0, lw / w0))
                src, dst = self.layer_box(n), _layer_box(box, (h1, w1), (nh, nw))
                out[n] = _warp(p, _local(tl, src[:2], dst[:2]), (dst[3] - dst[1], dst[2] - dst[0]))
            return out

        if (h1, w1) == (h0, w0):
            sizes = dict(self.layer_sizes)
        else:
            sizes = {n: (max(1, round(lh * h1 / h0)), max(1, round(lw * w1 / w0))) for n, (lh, lw) in self.layer_sizes.items()}
        ys, xs = np.nonzero(mask)
        return replace(
            self,
            bbox=box,
            centroid=(float(xs.mean()) + box[0], float(ys.mean()) + box[1]),
            area=int(mask.sum()),
            mask=mask,
            evidence=_warp(self.evidence, _local(t, (x0, y0), box[:2]), mask.shape),
            norm_patch=None if self.norm_patch is None else _warp(self.norm_patch, _local(t, (x0, y0), box[:2]), mask.shape),
            image_size=(h1, w1),
            features=layer_patches(self.features, sizes),
            activations=layer_patches(self.activations, sizes),
            layer_sizes=sizes,
        ).with_grams()

    def relocated(self, to: tuple[float, float], snap: int = 8) -> "Descriptor":
        """Move the centroid to ``to``, the displacement rounded to a multiple of ``snap``
        (the centroid lands within snap/2 of ``to``; layer patches move by whole cells)."""
        dx, dy = _snapped(to[0] - self.centroid[0], snap), _snapped(to[1] - self.centroid[1], snap)
        return self.warped(_shift(dx, dy), snap=snap)

    def rotated(self, degrees: float) -> "Descriptor":
        """Rotate about the centroid; positive = counter-clockwise on screen (cv2's convention)."""
        a = math.radians(degrees)
        lin = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
        return self.warped(self._about_centroid(lin))

    def scaled(self, factor: float) -> "Descriptor":
        """Scale about the centroid by a *linear* ``factor`` (area x factor**2, scale x factor)."""
        if factor <= 0:
            raise ValueError(f"scale factor must be positive, got {factor}")
        return self.warped(self._about_centroid(np.eye(2) * factor))

    def _about_centroid(self, lin: np.ndarray) -> np.ndarray:
        c = np.asarray(self.centroid, np.float64)
        t = np.eye(3)
        t[:2, :2] = lin
        t[:2, 2] = c - lin @ c
        return t


# ---------------------------------------------------------------------------------------------
# 4. The bank
# ---------------------------------------------------------------------------------------------


@dataclass
class RenderedLayout:
    """A bank drawn onto an empty canvas: what the synthesizer consumes.

    ``features`` / ``activations``: layer -> float32 (C, h, w) at that layer's grid for a canvas of
    ``size``, zero except under the placed layer masks (a later descriptor overwrites an earlier
    one where they overlap). ``layer_masks``: layer -> bool (h, w). ``mask``: bool (H, W) union of
    placed masks; ``evidence``: float32 (H, W); ``boxes``, ``sources``, ``types``: per placement.
    """

    size: tuple[int, int]
    mask: np.ndarray
    evidence: np.ndarray
    features: dict[str, np.ndarray]
    activations: dict[str, np.ndarray]
    layer_masks: dict[str, np.ndarray]
    boxes: list[Box]
    sources: list[str]
    types: list[str | None]


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _disc_fov(hw: tuple[int, int], radius: float = 0.47) -> np.ndarray:
    # prepare_fundus crops to the FOV's box, so the FOV is about the inscribed disc; 0.47 keeps
    # placements off the rim.
    h, w = hw
    yy, xx = np.mgrid[:h, :w]
    return (xx - (w - 1) / 2) ** 2 + (yy - (h - 1) / 2) ** 2 <= (radius * min(h, w)) ** 2


def _indices(i, n: int) -> list[int]:
    if i is None or (isinstance(i, str) and i == "all"):
        return list(range(n))
    idx = [int(i)] if isinstance(i, (int, np.integer)) else [int(j) for j in i]
    bad = [j for j in idx if not -n <= j < n]
    if bad:
        raise IndexError(f"descriptor indices {bad} out of range for a bank of {n}")
    return [j % n for j in idx]


class DescriptorBank:
    """An ordered collection of :class:`Descriptor` cut with one detector.

    ``DescriptorBank(isolate(...), detector_hash=det.weights_hash())`` takes isolate's
    per-image lists as they are. Every operation returns a new bank; descriptors are frozen and
    shared between banks until a placement op replaces one.
    """

    def __init__(self, descriptors: Iterable = (), detector_hash: str | None = None, info: Mapping[str, Any] | None = None):
        self.descriptors: list[Descriptor] = []
        self.detector_hash = detector_hash
        self.info: dict[str, Any] = dict(info or {})
        self.extend(descriptors)

    # -- collection ------------------------------------------------------------------------

    def add(self, descriptor: Descriptor) -> None:
        if not isinstance(descriptor, Descriptor):
            raise TypeError(f"expected a Descriptor, got {type(descriptor).__name__}")
        self.descriptors.append(descriptor)

    def extend(self, items: Iterable) -> None:
        """Add descriptors, isolate's list of lists, or another bank (same detector)."""
        if isinstance(items, DescriptorBank):
            if self.detector_hash and items.detector_hash and items.detector_hash != self.detector_hash:
                raise BankMismatchError(f"cannot merge banks of different detectors ({self.detector_hash} vs {items.detector_hash})")
            self.detector_hash = self.detector_hash or items.detector_hash
        for item in items:
            if isinstance(item, (list, tuple)):
                for d in item:
                    self.add(d)
            else:
                self.add(item)

    def __len__(self) -> int:
        return len(self.descriptors)

    def __iter__(self) -> Iterator[Descriptor]:
        return iter(self.descriptors)

    def __getitem__(self, i: int) -> Descriptor:
        return self.descriptors[i]

    def __repr__(self) -> str:
        return f"DescriptorBank({len(self)} descriptors, layers={self.layers}, detector={str(self.detector_hash)[:12]})"

    @property
    def layers(self) -> list[str]:
        return sorted({n for d in self for n in d.layers})

    def _new(self, descriptors: Iterable[Descriptor]) -> "DescriptorBank":
        return DescriptorBank(list(descriptors), self.detector_hash, self.info)

    def copy(self) -> "DescriptorBank":
        """A deep copy: every array duplicated."""

        def dup(d: Descriptor) -> Descriptor:
            return replace(
                d, mask=d.mask.copy(), evidence=d.evidence.copy(),
                norm_patch=None if d.norm_patch is None else d.norm_patch.copy(),
                features={k: v.copy() for k, v in d.features.items()},
                activations={k: v.copy() for k, v in d.activations.items()},
                grams={k: v.copy() for k, v in d.grams.items()},
                layer_sizes=dict(d.layer_sizes),
            )

        return DescriptorBank([dup(d) for d in self], self.detector_hash, json.loads(json.dumps(self.info)))

    def select(self, min_area=None, max_area=None, min_score=None, types=None, sources=None, indices=None) -> "DescriptorBank":
        """The descriptors meeting every given condition (``types`` / ``sources``: collections)."""
        keep = set(_indices(indices, len(self))) if indices is not None else None
        types = None if types is None else {types} if isinstance(types, str) else set(types)
        sources = None if sources is None else {sources} if isinstance(sources, str) else set(sources)
        out = []
        for j, d in enumerate(self):
            if (keep is not None and j not in keep) or (min_area is not None and d.area < min_area) \
                    or (max_area is not None and d.area > max_area) or (min_score is not None and not d.score >= min_score) \
                    or (types is not None and d.type not in types) or (sources is not None and d.source not in sources):
                continue
            out.append(d)
        return self._new(out)

    # -- placement ---------------------------------------------------------------------------

    def _replace(self, idx: list[int], new: Sequence[Descriptor]) -> "DescriptorBank":
        out = list(self.descriptors)
        for j, d in zip(idx, new):
            out[j] = d
        return self._new(out)

    def relocate(self, i=None, to=(0.0, 0.0), snap: int = 8) -> "DescriptorBank":
        """Move descriptor(s) ``i`` (int, indices, or None = all). ``to``: one (x, y) — for one
        descriptor its new centroid, for several the new mean centroid (the group keeps its
        layout) — or one (x, y) per index. Displacements snap to multiples of ``snap`` px."""
        idx = _indices(i, len(self))
        pts = np.asarray(to, np.float64)
        if pts.ndim == 1:
            mean = np.mean([self[j].centroid for j in idx], axis=0)
            dx, dy = _snapped(pts[0] - mean[0], snap), _snapped(pts[1] - mean[1], snap)
            return self._replace(idx, [self[j].warped(_shift(dx, dy), snap=snap) for j in idx])
        if pts.shape != (len(idx), 2):
            raise ValueError(f"{len(pts)} target points for {len(idx)} descriptors")
        return self._replace(idx, [self[j].relocated(tuple(p), snap) for j, p in zip(idx, pts)])

    def rotate(self, i=None, degrees: float = 0.0) -> "DescriptorBank":
        """Rotate descriptor(s) ``i`` about their own centroids (counter-clockwise on screen)."""
        idx = _indices(i, len(self))
        return self._replace(idx, [self[j].rotated(degrees) for j in idx])

    def scale(self, i=None, factor: float = 1.0) -> "DescriptorBank":
        """Scale descriptor(s) ``i`` about their own centroids by a linear ``factor``."""
        idx = _indices(i, len(self))
        return self._replace(idx, [self[j].scaled(factor) for j in idx])

    def count(self, n: int, seed: int = 0, fov=None, snap: int = 8, tries: int = 200) -> "DescriptorBank":
        """Exactly ``n`` descriptors: a random subset (without replacement, order kept) when
        ``n <= len``; otherwise all of them plus ``n - len`` copies of randomly drawn ones, each
        moved to a random position whose snapped centroid lies inside ``fov`` (bool (H, W); default
        the inscribed disc) and whose box overlaps no other placement, when ``tries`` allow."""
        if n < 0:
            raise ValueError(f"count must be >= 0, got {n}")
        rng = np.random.default_rng(seed)
        if n <= len(self):
            return self.select(indices=sorted(rng.choice(len(self), size=n, replace=False).tolist()))
        if not len(self):
            raise ValueError("cannot repeat descriptors from an empty bank")
        out = list(self.descriptors)
        fovs: dict[tuple[int, int], np.ndarray] = {}
        for j in rng.choice(len(self), size=n - len(self), replace=True):
            d = self[int(j)]
            if d.image_size not in fovs:
                fovs[d.image_size] = _disc_fov(d.image_size) if fov is None else np.asarray(fov, bool)
                if fovs[d.image_size].shape != d.image_size:
                    raise ValueError(f"FOV mask {fovs[d.image_size].shape} does not match the descriptors' image {d.image_size}")
            f = fovs[d.image_size]
            ys, xs = np.nonzero(f)
            placed = fallback = None
            for _ in range(tries):
                k = rng.integers(len(ys))
                cand = d.relocated((float(xs[k]), float(ys[k])), snap)
                cy, cx = int(round(cand.centroid[1])), int(round(cand.centroid[0]))
                if not (0 <= cy < f.shape[0] and 0 <= cx < f.shape[1] and f[cy, cx]):
                    continue
                fallback = fallback or cand
                if not any(_overlaps(cand.bbox, o.bbox) for o in out):
                    placed = cand
                    break
            out.append(placed or fallback or d)
        return self._new(out)

    def render(self, size: int | tuple[int, int] | None = None, layers: Sequence[str] | None = None, fov=None) -> RenderedLayout:
        """Paste every descriptor, masked, onto empty canvases of ``size`` (default: the
        descriptors' image size; another size rescales boxes and layer grids with it)."""
        if size is None:
            if not len(self):
                raise ValueError("render an empty bank with an explicit size")
            size = self[0].image_size
        hw = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
        names = self.layers if layers is None else list(layers)
        unknown = [n for n in names if n not in self.layers]
        if unknown and len(self):
            raise KeyError(f"layers {unknown} are not in the bank; it has {self.layers}")
        mask = np.zeros(hw, bool)
        evidence = np.zeros(hw, np.float32)
        feats: dict[str, np.ndarray] = {}
        acts: dict[str, np.ndarray] = {}
        lmasks: dict[str, np.ndarray] = {}
        boxes, sources, types = [], [], []
        for d in self:
            if d.image_size != hw:
                d = d.warped(_grid(hw[0] / d.image_size[0], hw[1] / d.image_size[1]), image_size=hw)
            x0, y0, x1, y1 = d.bbox
            mask[y0:y1, x0:x1] |= d.mask
            evidence[y0:y1, x0:x1][d.mask] = d.evidence[d.mask]
            for n in names:
                if n not in d.layer_sizes:
                    continue
                lm = d.layer_mask(n)
                lx0, ly0, lx1, ly1 = d.layer_box(n)
                for store, patches in ((feats, d.features), (acts, d.activations)):
                    if n not in patches:
                        continue
                    canvas = store.setdefault(n, np.zeros((patches[n].shape[0], *d.layer_sizes[n]), np.float32))
                    if canvas.shape != (patches[n].shape[0], *d.layer_sizes[n]):
                        raise ValueError(f"layer {n}: descriptor from {d.source!r} has grid {d.layer_sizes[n]}, the canvas {canvas.shape[1:]}")
                    canvas[:, ly0:ly1, lx0:lx1][:, lm] = patches[n][:, lm]
                lmasks.setdefault(n, np.zeros(d.layer_sizes[n], bool))[ly0:ly1, lx0:lx1] |= lm
            boxes.append(d.bbox)
            sources.append(d.source)
            types.append(d.type)
        if fov is not None:
            f = np.asarray(fov, bool)
            if f.shape != hw:
                raise ValueError(f"FOV mask {f.shape} does not match the canvas {hw}")
            mask &= f
            evidence *= f
            for n, lm in lmasks.items():
                fl = cv2.resize(f.astype(np.float32), lm.shape[::-1], interpolation=cv2.INTER_AREA) >= 0.5
                lm &= fl
                for store in (feats, acts):
                    if n in store:
                        store[n] *= fl
        return RenderedLayout(hw, mask, evidence, feats, acts, lmasks, boxes, sources, types)

    # -- files -------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` (safetensors: ``d{i}/mask``, ``d{i}/evidence``, ``d{i}/feature/<layer>``,
        ``d{i}/activation/<layer>``, ``d{i}/gram/<layer>``, ``d{i}/norm_patch`` when present) and ``path.with_suffix('.json')``
        (schema, detector hash, layers, per-descriptor fields, the tensors' sha256), each atomically.
        The sidecar goes last and names the tensors' checksum, so an interrupted save is detected."""
        from safetensors.numpy import save_file

        p, side = _bank_paths(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, np.ndarray] = {}
        records = []
        for i, d in enumerate(self):
            tensors[f"d{i}/mask"] = np.ascontiguousarray(d.mask)
            tensors[f"d{i}/evidence"] = np.ascontiguousarray(d.evidence, dtype=np.float32)
            if d.norm_patch is not None:
                tensors[f"d{i}/norm_patch"] = np.ascontiguousarray(d.norm_patch, dtype=np.float32)
            for kind, patches in (("feature", d.features), ("activation", d.activations), ("gram", d.grams)):
                for n, a in patches.items():
                    tensors[f"d{i}/{kind}/{n}"] = np.ascontiguousarray(a, dtype=np.float32)
            records.append({
                "bbox": list(d.bbox), "centroid": list(d.centroid), "area": d.area, "image_size": list(d.image_size),
                "layer_sizes": {n: list(s) for n, s in d.layer_sizes.items()},
                "features": sorted(d.features), "activations": sorted(d.activations), "grams": sorted(d.grams),
                "source": d.source, "type": d.type, "score": _json_float(d.score), "severity_share": _json_float(d.severity_share),
                "norm_patch": d.norm_patch is not None,
            })
        tmp = p.with_name(p.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "schema_version": str(SCHEMA_VERSION)})
        sidecar = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "detector_hash": self.detector_hash,
            "feature_layers": sorted({n for d in self for n in d.features}),
            "activation_layers": sorted({n for d in self for n in d.activations}),
            "tensors_file": p.name,
            "tensors_sha256": _sha256(tmp),
            "info": self.info,
            "descriptors": records,
        }
        side_tmp = side.with_name(side.name + ".tmp")
        side_tmp.write_text(json.dumps(sidecar, indent=1))
        os.chmod(tmp, side_tmp.stat().st_mode & 0o777)  # safetensors writes 0600; follow the umask like the sidecar
        os.replace(tmp, p)
        os.replace(side_tmp, side)
        return p

    @classmethod
    def load(cls, path: str | os.PathLike, detector=None) -> "DescriptorBank":
        """Read a bank written by :meth:`save`. With ``detector``, its ``weights_hash()`` must be
        the one the bank was cut with (:class:`BankMismatchError` otherwise)."""
        from safetensors import safe_open

        p, side = _bank_paths(path)
        if not side.is_file():
            raise BankFormatError(f"{side}: descriptor bank sidecar is missing (a bank is {p.name} + {side.name})")
        try:
            meta = json.loads(side.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BankFormatError(f"{side}: descriptor bank sidecar is not readable JSON ({exc})") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise BankFormatError(f"{side}: not a descriptor bank sidecar (format={meta.get('format') if isinstance(meta, dict) else None!r})")
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise BankFormatError(f"{side}: schema version {meta.get('schema_version')!r}, this koch-explore reads {SCHEMA_VERSION}")
        if detector is not None and meta.get("detector_hash"):
            have = detector.weights_hash()
            if have != meta["detector_hash"]:
                raise BankMismatchError(
                    f"{p}: descriptors were cut with detector weights {meta['detector_hash']}, "
                    f"but the given detector's weights are {have}; re-isolate with these weights"
                )
        if not p.is_file():
            raise BankFormatError(f"{p}: descriptor bank tensors are missing (sidecar {side.name} is there)")
        if _sha256(p) != meta.get("tensors_sha256"):
            raise BankFormatError(f"{p}: tensors do not match their sidecar {side.name} (checksum differs; interrupted save?)")
        try:
            with safe_open(str(p), framework="numpy") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises several types for a bad file
            raise BankFormatError(f"{p}: not a readable safetensors file ({exc})") from exc
        descs = []
        try:
            for i, r in enumerate(meta["descriptors"]):
                get = lambda k: tensors[f"d{i}/{k}"]  # noqa: E731
                descs.append(Descriptor(
                    bbox=tuple(int(v) for v in r["bbox"]), centroid=tuple(float(v) for v in r["centroid"]), area=int(r["area"]),
                    mask=get("mask").astype(bool), evidence=get("evidence"), image_size=tuple(r["image_size"]),
                    features={n: get(f"feature/{n}") for n in r["features"]},
                    activations={n: get(f"activation/{n}") for n in r["activations"]},
                    grams={n: get(f"gram/{n}") for n in r["grams"]},
                    layer_sizes={n: tuple(s) for n, s in r["layer_sizes"].items()},
                    source=r["source"], type=r["type"],
                    score=_float(r["score"]), severity_share=_float(r["severity_share"]),
                    # banks saved before norm patches existed have no such field: None
                    norm_patch=get("norm_patch") if r.get("norm_patch") else None,
                ))
        except KeyError as exc:
            raise BankFormatError(f"{p}: descriptor {len(descs)} lacks {exc} (tensor or sidecar field)") from exc
        except (TypeError, ValueError) as exc:
            raise BankFormatError(f"{p}: descriptor {len(descs)} is inconsistent ({exc})") from exc
        return cls(descs, meta.get("detector_hash"), meta.get("info"))


def _bank_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix == ".json":
        raise ValueError(f"{p}: give the bank's tensors file; its JSON sidecar sits beside it")
    return p, p.with_suffix(".json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _json_float(v: float):
    return None if v is None or not math.isfinite(v) else float(v)


def _float(v) -> float:
    return float("nan") if v is None else float(v)


# ---------------------------------------------------------------------------------------------
# Command line: koch-explore isolate IMAGE... --out BANK | isolate eval --data ...
# ---------------------------------------------------------------------------------------------


def _threshold_arg(text: str) -> str | float:
    if text == "otsu":
        return text
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"threshold must be 'otsu' or a number in [0, 1], got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {v}")
    return v


_threshold_arg.__name__ = "threshold"  # argparse names the type in its error message


def add_cli(sub) -> None:
    p = sub.add_parser(
        "isolate",
        help="cut lesions out of the detector's evidence maps as pathological descriptors (isolate eval: score them)",
        usage="koch-explore isolate IMAGE... --out BANK [options]\n       koch-explore isolate eval --data phantom|DIR [options] [--json]"
        "\n       koch-explore isolate sanity [--method M] [--json]\n       koch-explore isolate baseline [--data eyepacs|phantom] [--start LAYER]",
        description=f"Explain the detector ({DEFAULT_METHOD} by default), threshold the evidence and save every component as a "
        "descriptor bank (safetensors + JSON sidecar). 'isolate eval' instead scores the isolation against lesion "
        "ground truth: pointing-game recall/precision/F1 and pixel AUC per lesion type.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="fundus photos (or the word 'eval', 'sanity' or 'baseline')")
    p.add_argument("--out", help="bank file to write (safetensors; the sidecar is BANK with .json)")
    p.add_argument("--weights", default=None, help="detector safetensors (default: the shipped EyePACS weights)")
    p.add_argument("--method", choices=METHODS, default=None,
                   help=f"evidence map method (default {DEFAULT_METHOD}; 'sanity' without it compares all of them)")
    p.add_argument("--start", default="dense2", help="deconvnet start layer (default dense2)")
    p.add_argument("--channels", type=int, default=None, help="deconvnet: project only the top-k channels of the start layer")
    p.add_argument("--threshold", type=_threshold_arg, default=DEFAULT_THRESHOLD,
                   help=f"'otsu' or a fraction of the maximum (default {DEFAULT_THRESHOLD})")
    p.add_argument("--blur-sigma", type=float, default=None, help="Gaussian sigma in px (default 10 px at 512, scaled)")
    p.add_argument("--min-area", type=int, default=None, help="smallest component kept, px (default 16 at 256, scaled)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--min-share", type=float, default=DEFAULT_MIN_SHARE,
                   help=f"drop components whose severity share is below this (default {DEFAULT_MIN_SHARE}; 'nan' keeps all)")
    p.add_argument("--require-disease", action=argparse.BooleanOptionalAction, default=True,
                   help="isolate nothing from images the detector grades 0 (default on)")
    g = p.add_argument_group("isolate eval")
    g.add_argument("--data", default=None, help="'phantom' (generated, exact truth) or a lesion folder (IDRiD_lesions or phantom layout); "
                   "sanity: the lesion folder (default IDRiD_lesions, 'none' to skip); baseline: 'eyepacs' (default) or 'phantom'")
    g.add_argument("--count", type=int, default=16, help="phantoms to generate (default 16); sanity: validation eyes (default 100); "
                   "baseline: healthy eyes (default 400)")
    g.add_argument("--root", default=None, help="data root for sanity/baseline (default: KOCH_DATA, ../shared/data, ./data)")
    g.add_argument("--size", type=int, default=None, help="phantom side before preparation (default: the detector's input size)")
    g.add_argument("--seed", type=int, default=0, help="phantom seed (default 0)")
    g.add_argument("--json", action="store_true", help="print one JSON object")
    g.add_argument("--cascade", action="store_true",
                   help="sanity: also the cascading randomisation, 1 to all conv blocks re-initialised with the head")
    p.set_defaults(func=_cli_isolate)


def _cli_isolate(args) -> int:
    if args.images == ["sanity"]:
        from .sanity import cli_sanity

        return cli_sanity(args)
    if args.method is None:
        args.method = DEFAULT_METHOD
    if args.images == ["eval"]:
        from .isolation_eval import cli_eval

        return cli_eval(args)
    if args.images == ["baseline"]:
        from .evidence import cli_baseline

        return cli_baseline(args)
    if args.data is not None:
        print("isolate: --data belongs to 'koch-explore isolate eval'", file=sys.stderr)
        return 2
    if not args.out:
        print("isolate: --out BANK is required (or run 'koch-explore isolate eval --data ...')", file=sys.stderr)
        return 2
    import torch

    from .data.io import FundusReadError, read_image
    from .data.preprocess import prepare_fundus

    try:
        detector = _load_detector(args.weights)
    except (FileNotFoundError, ValueError) as exc:
        print(f"isolate: {exc}", file=sys.stderr)
        return 2
    size = detector.cfg.input_size
    bank = DescriptorBank(detector_hash=detector.weights_hash(), info={
        "method": args.method, "start": used_start(detector, args.method, args.start), "channels": args.channels,
        "threshold": args.threshold, "blur_sigma": args.blur_sigma, "min_area": args.min_area, "weights": args.weights or "default",
        "min_share": args.min_share, "require_disease": args.require_disease,
    })
    paths = [Path(s) for s in args.images]
    for s in range(0, len(paths), args.batch_size):
        chunk = paths[s : s + args.batch_size]
        try:
            prepared = [prepare_fundus(read_image(q), size, path=q) for q in chunk]
        except FundusReadError as exc:
            print(f"isolate: {exc}", file=sys.stderr)
            return 2
        x = torch.from_numpy(np.stack([im for im, _ in prepared])).permute(0, 3, 1, 2).contiguous()
        ev = explain(detector, x, args.method, args.start, args.channels, seed=s)
        bank.extend(isolate(
            ev.projection if ev.projection is not None else ev.maps, images=x, detector=detector,
            threshold=args.threshold, blur_sigma=args.blur_sigma, min_area=args.min_area,
            fov=np.stack([f for _, f in prepared]), image_ids=[q.stem for q in chunk],
            min_share=args.min_share, require_disease=args.require_disease,
        ))
    try:
        out = bank.save(args.out)
    except ValueError as exc:
        print(f"isolate: {exc}", file=sys.stderr)
        return 2
    print(f"isolate: {len(bank)} descriptors from {len(paths)} images -> {out} (+ {out.with_suffix('.json').name})")
    return 0


def _load_detector(weights):
    from .detector import Detector, load_default

    return Detector.load(weights) if weights else load_default()
