"""Postulate 2, the descriptor: one isolated lesion and its geometry (move, rotate, scale).

Geometry conventions, used everywhere below: boxes are ``(x0, y0, x1, y1)`` half-open pixel
indices; points are ``(x, y)`` in *index coordinates* (pixel centres at integers, as
``cv2.connectedComponentsWithStats`` reports centroids). A layer whose grid is ``s`` times the
image's (1/2 for conv2, 1/8 for conv5) has cell ``j`` covering image pixels ``[j/s, (j+1)/s)``;
a descriptor's *layer box* is the set of cells holding the centres of its bbox's pixels, and its
*layer mask* the cells holding the centres of its mask pixels. Layer boxes and masks are always
derived from the image-level bbox and mask, never stored, so they cannot drift apart.

Why displacements snap to 8 px (the paper's widget does this): the coarsest stored layer is on an
8-px grid, so a shift by a multiple of 8 moves every layer patch by whole cells - the patches are
copied, not resampled, and stay exactly what the detector computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from ..core.geometry import Box

# ---------------------------------------------------------------------------------------------
# 3. Descriptor and its geometry
# ---------------------------------------------------------------------------------------------


def layer_box(bbox: Box, image_hw, layer_hw) -> Box:
    """Cells of a layer grid holding the centres of the bbox's pixels (see the module docstring)."""
    x0, y0, x1, y1 = bbox
    sy, sx = layer_hw[0] / image_hw[0], layer_hw[1] / image_hw[1]
    lx0, ly0 = math.floor((x0 + 0.5) * sx), math.floor((y0 + 0.5) * sy)
    lx1, ly1 = math.floor((x1 - 0.5) * sx) + 1, math.floor((y1 - 0.5) * sy) + 1
    lx0, ly0 = min(max(lx0, 0), layer_hw[1] - 1), min(max(ly0, 0), layer_hw[0] - 1)
    return lx0, ly0, max(lx0 + 1, min(lx1, layer_hw[1])), max(ly0 + 1, min(ly1, layer_hw[0]))


def crop_patch(a: np.ndarray, box: Box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.ascontiguousarray(a[..., y0:y1, x0:x1], dtype=np.float32)


def grid_transform(sy: float, sx: float) -> np.ndarray:
    """Index coordinates of an image -> those of a grid ``s`` times as fine (3x3 homogeneous)."""
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]], dtype=np.float64)


def shift_transform(dx: float, dy: float) -> np.ndarray:
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
    return shift_transform(-dst_origin[0], -dst_origin[1]) @ t @ shift_transform(src_origin[0], src_origin[1])


def snapped(d: float, snap: int) -> int:
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
    peak: float = float("nan")
    """Largest normalised blurred evidence inside the mask (1 for the component holding the map's maximum)."""
    severity_share: float = float("nan")
    """Severity drop when the lesion is replaced by its local background (see :func:`isolate`)."""
    norm_patch: np.ndarray | None = None
    """float32 (3, y1-y0, x1-x0): the detector's normalised input (its ``norm`` layer: the photo's
    high-pass divided by its per-channel RMS, what ``conv1`` sees) under the bbox, or None when
    isolated without the detector and images. It is the lesion as the detector saw it, free of the
    source camera's colours: the Koch test's transplant control pastes it into a host."""


    @property
    def integrated(self) -> float:
        """The evidence the component holds: its normalised blurred evidence summed over the mask
        (``score * area``); ranks a strong small lesion and a faint large one on one scale."""
        return float(self.score * self.area)
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
        return layer_box(self.bbox, self.image_size, self.layer_sizes[layer])

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
        t = shift_transform(dx, dy) @ t

        def layer_patches(patches: dict[str, np.ndarray], sizes: dict[str, tuple[int, int]]) -> dict[str, np.ndarray]:
            out = {}
            for n, p in patches.items():
                (lh, lw), (nh, nw) = self.layer_sizes[n], sizes[n]
                tl = grid_transform(nh / h1, nw / w1) @ t @ np.linalg.inv(grid_transform(lh / h0, lw / w0))
                src, dst = self.layer_box(n), layer_box(box, (h1, w1), (nh, nw))
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
        (the centroid lands within snap/2 of ``to``; layer patches move by whole cells). A target
        outside the image is an error (a box near the edge is shifted back inside, a centroid off the
        image has nowhere to go)."""
        h, w = self.image_size
        if not (all(map(math.isfinite, to)) and 0 <= to[0] < w and 0 <= to[1] < h):
            raise ValueError(f"relocate to ({to[0]}, {to[1]}): outside the {w}x{h} px image")
        dx, dy = snapped(to[0] - self.centroid[0], snap), snapped(to[1] - self.centroid[1], snap)
        return self.warped(shift_transform(dx, dy), snap=snap)

    def rotated(self, degrees: float) -> "Descriptor":
        """Rotate about the centroid; positive = counter-clockwise on screen (cv2's convention). Any angle
        is taken modulo one turn (3,600,045 degrees is 45), so a widget's spun dial gives the same lesion."""
        if not math.isfinite(degrees):
            raise ValueError(f"rotation must be a finite number of degrees, got {degrees}")
        a = math.radians(math.fmod(degrees, 360.0))
        lin = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
        return self.warped(self._about_centroid(lin))

    def scaled(self, factor: float) -> "Descriptor":
        """Scale about the centroid by a *linear* ``factor`` (area x factor**2, scale x factor)."""
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"scale factor must be a positive number, got {factor}")
        return self.warped(self._about_centroid(np.eye(2) * factor))

    def _about_centroid(self, lin: np.ndarray) -> np.ndarray:
        c = np.asarray(self.centroid, np.float64)
        t = np.eye(3)
        t[:2, :2] = lin
        t[:2, 2] = c - lin @ c
        return t
