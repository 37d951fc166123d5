"""The drawing code of the phantom: scene geometry, background, macula, disc, vessel tree,
lesion stamps and the photograph (illumination, optics, sensor).

Every function draws from the caller's random generator; the order of the draws is part of the
output, so :func:`~koch_explore.data.phantom.generate_phantom` calls them in a fixed order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .config import ALL_LESION_TYPES, QUADRANTS, IntRange, PhantomConfig, Range

# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------


def _u(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1]))


@dataclass
class Scene:
    """Geometry shared by every drawing step. Coordinates are (x, y) pixels."""

    size: int
    scale: float  # size / 512: converts "px at 512" lengths
    center: np.ndarray  # FOV centre
    radius: float  # FOV radius
    fov: np.ndarray  # bool (H, W)
    side: int  # +1: macula right of the disc (temporal = +x), -1: left
    dd: float  # disc diameter, px
    disc: np.ndarray
    disc_r: float
    fovea: np.ndarray
    faz_r: float  # vessel-free radius around the fovea
    texture: np.ndarray  # float32 (H, W) mid-frequency noise ~N(0,1), reused for lesion texture

    @classmethod
    def sample(cls, rng: np.random.Generator, size: int, cfg: PhantomConfig) -> "Scene":
        c = (size - 1) / 2.0
        center = np.array([c, c])
        radius = _u(rng, cfg.fov_radius) * size
        d = (np.arange(size, dtype=np.float64) - c) ** 2
        fov = d[None, :] + d[:, None] <= radius**2
        side = 1 if rng.random() < 0.5 else -1
        dd = _u(rng, cfg.disc_diameter) * 2 * radius
        # Macula-centred photograph: the fovea sits near the centre, a little temporal, and the
        # disc ~2.5 DD nasal of it, slightly above (the fovea lies ~0.3 DD below the disc).
        fovea = center + np.array([side * rng.uniform(0.0, 0.12) * radius, rng.uniform(-0.06, 0.06) * radius])
        dist = _u(rng, cfg.disc_fovea_distance) * dd
        lift = rng.uniform(0.05, 0.35) * dd
        disc = fovea + np.array([-side * math.sqrt(dist**2 - lift**2), -lift])
        faz_r = _u(rng, cfg.avascular_radius) * dd
        texture = _smooth_noise(rng, size, cells=max(8, size // 10))
        return cls(size, size / 512.0, center, radius, fov, side, dd, disc, dd / 2, fovea, faz_r, texture)

    def quadrant(self, x: float, y: float) -> str:
        """Quadrant around the fovea: S(uperior)/I(nferior) + T(emporal)/N(asal)."""
        return str(self.quadrants(np.array([[x, y]]))[0])

    def quadrants(self, pts: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`quadrant` for (N, 2) points."""
        superior = pts[:, 1] < self.fovea[1]
        temporal = (pts[:, 0] - self.fovea[0]) * self.side >= 0
        return np.array(QUADRANTS)[2 * (~superior) + (~temporal)]  # order: ST, SN, IT, IN


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random field (size, size) of ~unit variance with features ~size/cells px.

    Blurring happens on the small grid and bicubic resizing does the rest: far cheaper than a
    large Gaussian blur at full resolution, and indistinguishable for a texture.
    """
    pad = 2
    grid = rng.standard_normal((cells + 2 * pad, cells + 2 * pad)).astype(np.float32)
    grid = cv2.GaussianBlur(grid, (0, 0), 1.0)
    grid /= grid.std() + 1e-6
    px = size / cells  # output pixels per grid cell
    full = int(round(px * (cells + 2 * pad)))
    big = cv2.resize(grid, (full, full), interpolation=cv2.INTER_CUBIC)
    o = int(round(pad * px))  # drop the border cells, where the blur saw padding
    return np.ascontiguousarray(big[o : o + size, o : o + size])


# ---------------------------------------------------------------------------------------------
# Background, macula, disc
# ---------------------------------------------------------------------------------------------


def background(rng: np.random.Generator, sc: Scene) -> np.ndarray:
    """Fundus reflectance (before illumination): an orange-red base colour with choroidal
    mottling. Broad pigment patches are folded into the low-resolution lighting field."""
    red = rng.uniform(0.68, 0.9)
    green = red * rng.uniform(0.34, 0.5)  # lower ratio: redder, darker-pigmented fundus
    blue = green * rng.uniform(0.25, 0.55)
    m_amp = rng.uniform(0.015, 0.04)
    # Mottling shows most in red (choroid), less in green/blue (absorbed by the RPE pigment).
    planes = [
        np.float32(base) * (1.0 + np.float32(amp) * sc.texture)
        for base, amp in ((red, m_amp), (green, 0.8 * m_amp), (blue, 0.5 * m_amp))
    ]
    return cv2.merge(planes)  # per-plane 2-D maths + one merge: much faster than broadcasting


def paint_macula(rng: np.random.Generator, sc: Scene, refl: np.ndarray) -> None:
    """Darker macula, darker fovea, tiny foveal reflex. Only a crop around the fovea is touched."""
    sigma = rng.uniform(0.5, 0.7) * sc.dd
    depth = rng.uniform(0.15, 0.32)
    r = int(3 * sigma)
    x0, y0, x1, y1 = _crop_box(sc.fovea, r, sc.size)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    d2 = (xx - sc.fovea[0]) ** 2 + (yy - sc.fovea[1]) ** 2
    dark = depth * np.exp(-d2 / (2 * sigma**2)) + 0.12 * np.exp(-d2 / (2 * (0.14 * sc.dd) ** 2))
    # Macular pigment absorbs blue/green more than red: the macula is darker and browner.
    for ch, k in enumerate((0.85, 1.0, 1.1)):
        refl[y0:y1, x0:x1, ch] *= 1.0 - np.minimum(k * dark, 0.8)
    if rng.random() < 0.7:  # foveal light reflex
        reflex = np.exp(-d2 / (2 * (0.02 * sc.dd + 0.6) ** 2)) * rng.uniform(0.15, 0.35)
        crop = refl[y0:y1, x0:x1]
        crop += reflex[:, :, None] * (np.float32(1.0) - crop)


def paint_disc(rng: np.random.Generator, sc: Scene, refl: np.ndarray, cfg: PhantomConfig) -> None:
    """Optic disc: soft-edged vertical ellipse, pink-yellow rim, pale cup slightly temporal."""
    r = sc.disc_r
    x0, y0, x1, y1 = _crop_box(sc.disc, int(1.6 * r), sc.size)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xx - sc.disc[0], yy - sc.disc[1]
    elong = rng.uniform(1.03, 1.15)  # discs are slightly taller than wide
    rho = np.sqrt((dx / r) ** 2 + (dy / (r * elong)) ** 2)
    rim = _smoothstep(1.04, 0.93, rho)  # disc margin: soft, but a margin
    halo = 0.06 * _smoothstep(1.25, 1.0, rho) * (1 - rim)  # faint peripapillary pallor
    cup_r = _u(rng, cfg.cup_ratio) * r
    cdx = dx - sc.side * rng.uniform(0.05, 0.2) * r  # cups sit temporal of the disc centre
    cup = _smoothstep(1.15, 0.6, np.sqrt((cdx / cup_r) ** 2 + (dy / (cup_r * elong)) ** 2))
    rim_col = np.array([0.98, rng.uniform(0.55, 0.68), rng.uniform(0.28, 0.4)], np.float32)
    cup_col = np.array([1.0, 0.92, rng.uniform(0.7, 0.82)], np.float32)
    tex = 1.0 + 0.04 * sc.texture[y0:y1, x0:x1, None]
    colour = (rim_col * (1 - cup[:, :, None]) + cup_col * cup[:, :, None]) * tex
    a = np.clip(rim + halo, 0, 1)[:, :, None]
    crop = refl[y0:y1, x0:x1]
    crop[:] = crop * (1 - a) + colour * a


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return (t * t * (3 - 2 * t)).astype(np.float32)


def _crop_box(center: np.ndarray, r: int, size: int) -> tuple[int, int, int, int]:
    cx, cy = int(round(center[0])), int(round(center[1]))
    return max(cx - r, 0), max(cy - r, 0), min(cx + r + 1, size), min(cy + r + 1, size)


# ---------------------------------------------------------------------------------------------
# Vessel tree
# ---------------------------------------------------------------------------------------------


@dataclass
class _Vessel:
    pts: np.ndarray  # (N, 2) float (x, y), N >= 2, consecutive points ~step apart
    widths: np.ndarray  # (N,) px
    artery: bool
    depth: int  # 0 = trunk from the disc


def grow_vessel_tree(rng: np.random.Generator, sc: Scene, cfg: PhantomConfig) -> list[_Vessel]:
    """Four arcade trunks (artery+vein, superior+inferior), four nasal trunks, small
    papillomacular vessels, then recursive side branches whose widths shrink at every split."""
    step = max(1.5, 3.0 * sc.scale)
    vein_w = _u(rng, cfg.vein_width) * sc.dd
    art_w = vein_w * _u(rng, cfg.artery_vein_ratio)
    # Every trunk leaves from one point near the cup, where the central retinal artery and vein
    # emerge; sharing it makes the whole tree one connected component.
    origin = sc.disc + np.array([-sc.side * rng.uniform(0.0, 0.1), rng.uniform(-0.08, 0.08)]) * sc.dd
    trunks: list[_Vessel] = []
    for sgn in (-1, 1):  # superior (up, -y), inferior
        for artery in (True, False):
            # Temporal arcade: an elliptic arc that leaves the disc vertically, arches over (or
            # under) the macula ~semi_v from the fovea and sweeps on temporally toward the rim.
            semi_u = rng.uniform(1.6, 2.2) * sc.dd
            semi_v = rng.uniform(1.6, 2.1) * sc.dd + (0.25 * sc.dd * rng.uniform(-1, 1) if artery else 0.0)
            semi_v += sgn * (sc.fovea[1] - sc.disc[1])  # arch around the fovea, not the disc level
            # Quarter ellipse from the disc to the top of the arch, then on temporally with a
            # slight random drift (real arcades do not close back toward the raphe).
            phi = np.linspace(math.pi, -math.pi, 900)
            beyond = np.maximum(math.pi / 2 - phi, 0.0)  # distance past the top of the arch
            drift = rng.uniform(-0.05, 0.25) * beyond + rng.uniform(-0.04, 0.06) * beyond**2
            height = np.where(phi >= math.pi / 2, np.sin(phi), 1.0 + drift)
            reach = np.where(phi >= math.pi / 2, 1 + np.cos(phi), 1 + (math.pi / 2 - phi))
            curve = np.stack([origin[0] + sc.side * semi_u * reach, origin[1] + sgn * semi_v * height], axis=1)
            pts = _resample(curve, step)
            pts = _wiggle(rng, pts, amplitude=0.1 * sc.dd, wavelength=1.3 * sc.dd / step)
            w0 = art_w if artery else vein_w
            trunks.append(_finish(sc, pts, w0, artery, 0, 4.5 * sc.dd, allow_disc=True))
            # Nasal trunk: straighter, thinner, radiating up/down-nasally.
            angle = math.radians(rng.uniform(30, 70))
            theta = math.atan2(sgn * math.sin(angle), -sc.side * math.cos(angle))
            pts = _walk(rng, origin, theta, int(2.2 * sc.radius / step), step, 0.035)
            trunks.append(_finish(sc, pts, w0 * rng.uniform(0.65, 0.8), artery, 0, 4 * sc.dd, allow_disc=True))
    for sgn in (-1, 1):  # papillomacular vessels: thin, from the disc toward the fovea
        theta = math.atan2(sc.fovea[1] - origin[1] + sgn * 0.6 * sc.dd, sc.fovea[0] - origin[0])
        pts = _walk(rng, origin, theta, int(3.5 * sc.dd / step), step, 0.05)
        trunks.append(_finish(sc, pts, 0.035 * sc.dd, sgn < 0, 1, 2 * sc.dd, allow_disc=True))

    vessels: list[_Vessel] = []
    queue = [v for v in trunks if v is not None]
    while queue:
        parent = queue.pop(0)
        vessels.append(parent)
        if parent.depth >= cfg.branch_depth:
            continue
        queue.extend(_branches(rng, sc, parent, step))
    return vessels


def _branches(rng: np.random.Generator, sc: Scene, parent: _Vessel, step: float) -> list[_Vessel]:
    """Side branches at irregular spacing; the parent narrows after each (Murray's law)."""
    out = []
    n = len(parent.pts)
    dist_disc = np.hypot(*(parent.pts - sc.disc).T)
    spacing = (rng.uniform(0.5, 1.1) if parent.depth == 0 else rng.uniform(0.6, 1.4)) * sc.dd / step
    i = int(np.argmax(dist_disc > 1.15 * sc.disc_r)) + int(rng.uniform(0.2, 1.0) * spacing)
    while 0 < i < n - 3:
        w_parent = parent.widths[i]
        w0 = w_parent * rng.uniform(0.45, 0.8)
        if w0 >= 0.8 * sc.scale:
            tangent = parent.pts[min(i + 2, n - 1)] - parent.pts[max(i - 2, 0)]
            theta = math.atan2(tangent[1], tangent[0]) + rng.choice([-1, 1]) * math.radians(rng.uniform(25, 70))
            length = w0 * rng.uniform(25, 55) + 0.5 * sc.dd
            pts = _walk(rng, parent.pts[i], theta, max(3, int(length / step)), step, 0.06)
            child = _finish(sc, pts, w0, parent.artery, parent.depth + 1, length, allow_disc=False)
            if child is not None:
                out.append(child)
                parent.widths[i:] *= 0.92
        i += max(2, int(spacing * rng.uniform(0.6, 1.4)))
    return out


def _finish(
    sc: Scene, pts: np.ndarray, w0: float, artery: bool, depth: int, taper: float, allow_disc: bool
) -> _Vessel | None:
    """Cut a path where it leaves the FOV, enters the foveal avascular zone or (for branches)
    re-enters the disc, and give it widths tapering from w0 toward ~40% over `taper` px."""
    rel = pts - sc.center
    bad = rel[:, 0] ** 2 + rel[:, 1] ** 2 > (sc.radius - 2) ** 2
    fov_d = pts - sc.fovea
    bad |= fov_d[:, 0] ** 2 + fov_d[:, 1] ** 2 < sc.faz_r**2
    if not allow_disc:
        disc_d = pts - sc.disc
        bad[1:] |= disc_d[1:, 0] ** 2 + disc_d[1:, 1] ** 2 < (1.05 * sc.disc_r) ** 2
    end = int(np.argmax(bad)) if bad.any() else len(pts)
    if end < 3:
        return None
    pts = pts[:end]
    s = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))])
    widths = w0 * (0.4 + 0.6 * np.exp(-s / taper))
    return _Vessel(pts, widths, artery, depth)


def _walk(rng: np.random.Generator, start: np.ndarray, theta0: float, n: int, step: float, turn: float) -> np.ndarray:
    """Smoothly curving path: the heading integrates low-pass-filtered noise (no kinks)."""
    k = 4
    noise = rng.standard_normal(n + 2 * k)
    kernel = np.hanning(2 * k + 3)[1:-1]
    curvature = np.convolve(noise, kernel / kernel.sum(), mode="valid")[:n] * turn * math.sqrt(k)
    heading = theta0 + np.cumsum(curvature)
    d = np.stack([np.cos(heading), np.sin(heading)], axis=1) * step
    return np.vstack([start[None, :], start[None, :] + np.cumsum(d, axis=0)])


def _resample(curve: np.ndarray, step: float) -> np.ndarray:
    s = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(curve, axis=0).T))])
    t = np.arange(0.0, s[-1], step)
    return np.stack([np.interp(t, s, curve[:, 0]), np.interp(t, s, curve[:, 1])], axis=1)


def _wiggle(rng: np.random.Generator, pts: np.ndarray, amplitude: float, wavelength: float) -> np.ndarray:
    """Add gentle tortuosity: a smooth sideways offset that is zero at the start (the disc)."""
    n = len(pts)
    cells = max(2, int(n / max(wavelength, 1.0)) + 2)
    knots = rng.standard_normal(cells)
    offset = np.interp(np.linspace(0, cells - 1, n), np.arange(cells), knots) * amplitude
    offset *= np.minimum(1.0, np.arange(n) / max(wavelength, 1.0))
    tangent = np.gradient(pts, axis=0)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-9
    return pts + normal * offset[:, None]


def paint_vessels(rng: np.random.Generator, sc: Scene, refl: np.ndarray, vessels: list[_Vessel]) -> np.ndarray:
    """Draw the tree into one coded canvas, tint the reflectance, return the vessel mask.

    Canvas codes: 1..127 artery, 129..255 vein, the offset inside the range being the opacity
    (thin vessels are fainter: partial-volume blur). Veins are drawn last, so at a crossing the
    vein lies on top. A lookup table turns codes into per-channel multiplicative tints in one
    pass. The mask is exactly the set of drawn pixels inside the FOV.
    """
    canvas = np.zeros((sc.size, sc.size), np.uint8)
    shift = 2  # sub-pixel coordinates: smoother thin lines
    for v in sorted(vessels, key=lambda v: not v.artery):  # stable: arteries first
        base = 0 if v.artery else 128
        thick = np.maximum(1, np.rint(v.widths)).astype(np.int32)
        pts = np.rint(v.pts * (1 << shift)).astype(np.int32)
        bounds = np.flatnonzero(np.diff(thick)) + 1
        for a, b in zip(np.r_[0, bounds], np.r_[bounds, len(thick)]):
            t = int(thick[a])
            run = pts[a : min(b + 1, len(pts))]
            if len(run) < 2:
                continue
            opacity = min(1.0, 0.35 + 0.22 * v.widths[a] / sc.scale)
            code = base + max(1, int(127 * opacity))
            cv2.polylines(canvas, [run], False, code, thickness=t, lineType=cv2.LINE_8, shift=shift)
            if v.artery and t >= 4:  # arterial light reflex along the centre line
                reflex = base + max(1, int(70 * opacity))
                cv2.polylines(canvas, [run], False, reflex, thickness=max(1, t // 4), shift=shift)
    vein_tint = np.array([rng.uniform(0.5, 0.62), rng.uniform(0.22, 0.32), rng.uniform(0.3, 0.45)], np.float32)
    art_tint = np.array([rng.uniform(0.78, 0.88), rng.uniform(0.45, 0.58), rng.uniform(0.55, 0.7)], np.float32)
    opacity = (np.arange(256) % 128).astype(np.float32)[:, None] / 127.0
    tint = np.where(np.arange(256)[:, None] < 128, art_tint, vein_tint)
    lut = (1.0 - opacity * (1.0 - tint)).astype(np.float32)  # code 0 -> factor 1
    refl *= cv2.LUT(cv2.merge([canvas, canvas, canvas]), lut.reshape(1, 256, 3))
    return (canvas > 0) & sc.fov


# ---------------------------------------------------------------------------------------------
# Lesions
# ---------------------------------------------------------------------------------------------


def sample_counts(rng: np.random.Generator, grade: int, cfg: PhantomConfig) -> dict[str, Any]:
    """Lesion counts for a target grade. HE come with a quadrant plan (None = anywhere)."""

    def pick(ranges: tuple[IntRange, ...], g: int) -> int:
        lo, hi = ranges[g]
        return int(rng.integers(lo, hi + 1))

    counts = {
        "MA": pick(cfg.ma_counts, grade),
        "HE": pick(cfg.he_counts, grade),
        "EX": pick(cfg.ex_clusters, grade),
        "SE": pick(cfg.se_counts, grade),
        "NV": pick(cfg.nv_counts, grade),
    }
    if grade == 2 and counts["HE"] + counts["EX"] + counts["SE"] == 0:
        counts[("HE", "EX", "SE")[int(rng.integers(3))]] = 1  # moderate needs more than MA
    he_plan: list[str | None] = [None] * counts["HE"]
    if grade == 3:  # severe by the 4-quadrant criterion, whatever the total
        he_plan = [q for q in QUADRANTS for _ in range(cfg.severe_he_per_quadrant)]
        he_plan += [None] * (counts["HE"] - len(he_plan))
    counts["HE_plan"] = he_plan
    return counts


class _Reject(Exception):
    """A candidate stamp does not fit (off the image, on something, or in pieces): try another."""


class LesionPainter:
    """Places lesion stamps without overlap and remembers how to composite them.

    A stamp is a small binary mask crop plus an opacity crop at (x0, y0). ``blocked`` marks
    where a new lesion may not put a pixel: outside the (eroded) FOV, the disc, the vessels and
    every accepted lesion, each dilated by the lesion gap. That one map is what guarantees the
    masks are exact: no lesion hides a vessel, and distinct lesions never merge.
    """

    def __init__(self, rng, sc: Scene, cfg: PhantomConfig, vessel_mask: np.ndarray, vessels: list[_Vessel]):
        self.rng, self.sc, self.cfg, self.texture = rng, sc, cfg, sc.texture
        self.gap = max(1, int(round(cfg.lesion_gap * sc.scale)))
        k = 2 * self.gap + 1
        kernel = np.ones((k, k), np.uint8)
        self.kernel = kernel
        blocked = cv2.dilate(vessel_mask.astype(np.uint8), kernel)
        cv2.circle(blocked, _ipt(sc.disc), int(1.25 * sc.disc_r) + self.gap, 1, -1)
        inner = np.zeros_like(blocked)
        cv2.circle(inner, _ipt(sc.center), int(sc.radius - 4 * sc.scale - self.gap), 1, -1)
        blocked |= 1 - inner
        self.blocked = blocked
        self.masks = {t: np.zeros((sc.size, sc.size), np.uint8) for t in ALL_LESION_TYPES}
        self.stamps: list[tuple[str, int, int, np.ndarray, np.ndarray]] = []
        # Vessel points usable as anchors for flame haemorrhages, cotton-wool spots and NV.
        anchors = [
            np.column_stack([v.pts, np.gradient(v.pts, axis=0), v.widths]) for v in vessels if v.depth <= 1
        ]
        self.anchors = np.vstack(anchors)
        ad = self.anchors[:, :2] - sc.disc
        self.anchor_disc_dist = np.hypot(ad[:, 0], ad[:, 1])
        self.anchor_quadrant = sc.quadrants(self.anchors[:, :2])

    # --- orchestration -------------------------------------------------------------------------

    def draw(self, counts: dict[str, Any]) -> None:
        # Big, picky lesions first (they need room), tiny MA last.
        for _ in range(counts["NV"]):
            self._try(self._nv_candidate, "NV")
        for _ in range(counts["SE"]):
            self._try(self._se_candidate, "SE")
        for _ in range(counts["EX"]):
            self._ex_cluster()
        for quadrant in counts["HE_plan"]:
            flame = self.rng.random() < self.cfg.flame_fraction
            self._try(lambda q=quadrant, f=flame: self._he_candidate(q, f), "HE")
        for _ in range(counts["MA"]):
            self._try(self._ma_candidate, "MA")

    def _try(self, make, kind: str) -> bool:
        for _ in range(self.cfg.placement_tries):
            try:
                stamp = make()
            except _Reject:
                continue
            self._commit(kind, *stamp)
            return True
        return False

    def _check(self, x0: int, y0: int, mask: np.ndarray) -> None:
        """Raise _Reject unless the drawn stamp touches nothing blocked and is one piece."""
        h, w = mask.shape
        if (self.blocked[y0 : y0 + h, x0 : x0 + w] & mask).any():
            raise _Reject
        # The stamp's own border must be empty, or its gap would be cut off at the crop edge.
        g = self.gap + 1
        if mask[:g].any() or mask[-g:].any() or mask[:, :g].any() or mask[:, -g:].any():
            raise _Reject
        # One lesion must be one 8-connected component, or instances would not be exact.
        if cv2.connectedComponents(mask, connectivity=8)[0] != 2:
            raise _Reject

    def _commit(self, kind: str, x0: int, y0: int, mask: np.ndarray, alpha: np.ndarray) -> None:
        h, w = mask.shape
        self.masks[kind][y0 : y0 + h, x0 : x0 + w] |= mask
        # Stamps carry an empty border of >= gap px, so the dilation stays inside the crop.
        self.blocked[y0 : y0 + h, x0 : x0 + w] |= cv2.dilate(mask, self.kernel)
        self.stamps.append((kind, x0, y0, mask, alpha))

    def instances(self) -> list[dict[str, Any]]:
        """One record per stamp. Stamps never touch (the gap) and each is one component, so
        these are exactly the connected components of the type masks, at a fraction of the
        cost of labelling five full-size masks."""
        records = []
        for kind, x0, y0, mask, _alpha in self.stamps:
            ys, xs = np.nonzero(mask)
            cx, cy = float(xs.mean()) + x0, float(ys.mean()) + y0
            records.append(
                {
                    "type": kind,
                    "bbox": [int(xs.min()) + x0, int(ys.min()) + y0, int(xs.max()) + x0 + 1, int(ys.max()) + y0 + 1],
                    "centroid": [round(cx, 3), round(cy, 3)],
                    "area": int(xs.size),
                    "quadrant": self.sc.quadrant(cx, cy),
                }
            )
        order = {t: i for i, t in enumerate(ALL_LESION_TYPES)}
        records.sort(key=lambda r: (order[r["type"]], r["bbox"][1], r["bbox"][0]))
        return records

    def composite(self, reflectance: np.ndarray) -> np.ndarray:
        """Paint every accepted stamp onto a copy of the reflectance (stamps never overlap)."""
        out = reflectance.copy()
        dark = {  # multiplicative tints: haemoglobin absorbs green most
            "MA": np.array([0.42, 0.12, 0.18], np.float32),
            "HE": np.array([0.5, 0.17, 0.22], np.float32),
            "NV": np.array([0.6, 0.28, 0.35], np.float32),
        }
        bright = {  # exudate colours (reflectance)
            "EX": np.array([1.0, 0.86, 0.32], np.float32),
            "SE": np.array([0.94, 0.87, 0.74], np.float32),
        }
        for kind, x0, y0, mask, alpha in self.stamps:
            h, w = mask.shape
            crop = out[y0 : y0 + h, x0 : x0 + w]
            a = alpha[:, :, None]
            if kind in dark:
                crop *= 1.0 - a * (1.0 - dark[kind])
            else:
                crop[:] = crop * (1.0 - a) + bright[kind] * a
        return out

    # --- locations -----------------------------------------------------------------------------

    def _posterior_point(self, quadrant: str | None = None) -> np.ndarray:
        """A point weighted toward the posterior pole (around and between fovea and disc)."""
        sc, rng = self.sc, self.rng
        if quadrant is None:
            c = sc.fovea + 0.25 * (sc.disc - sc.fovea)
            r = abs(rng.normal(0.0, 2.3 * sc.dd))
            t = rng.uniform(0, 2 * math.pi)
            return c + r * np.array([math.cos(t), math.sin(t)])
        r = rng.uniform(0.5, 4.0) * sc.dd
        dx = sc.side * (1 if quadrant[1] == "T" else -1) * abs(math.cos(t := rng.uniform(0.05, 1.52)))
        dy = (-1 if quadrant[0] == "S" else 1) * abs(math.sin(t))
        return sc.fovea + r * np.array([dx, dy])

    def _anchor(self, near_disc: tuple[float, float], quadrant: str | None = None):
        """(point, unit tangent, width) on a trunk or first branch, between near_disc DD from
        the disc centre and, if given, in that quadrant around the fovea."""
        lo, hi = near_disc[0] * self.sc.dd, near_disc[1] * self.sc.dd
        ok = (self.anchor_disc_dist > lo) & (self.anchor_disc_dist < hi)
        if quadrant is not None:
            ok &= self.anchor_quadrant == quadrant
        idx = np.flatnonzero(ok)
        if idx.size == 0:
            idx = np.arange(len(self.anchors))
        row = self.anchors[idx[int(self.rng.integers(idx.size))]]
        tangent = row[2:4] / (np.hypot(row[2], row[3]) + 1e-9)
        return row[:2], tangent, float(row[4])

    # --- shapes --------------------------------------------------------------------------------

    def _ma_candidate(self):
        r = max(1.0, _u(self.rng, self.cfg.ma_radius) * self.sc.scale)
        c = self._posterior_point()
        mask, x0, y0, sub = self._canvas(c, r)
        cv2.circle(mask, sub, int(round(r * 16)), 1, -1, lineType=cv2.LINE_8, shift=4)
        self._check(x0, y0, mask)
        return x0, y0, mask, mask * np.float32(self.rng.uniform(0.8, 1.0))

    def _he_candidate(self, quadrant: str | None, flame: bool):
        rng, sc = self.rng, self.sc
        if flame:  # flame: nerve-fibre-layer bleed running beside a vessel, blunt end to the disc
            p, t, w = self._anchor((0.8, 5.0), quadrant)
            length = _u(rng, self.cfg.flame_length) * sc.scale
            width = _u(rng, self.cfg.flame_width) * sc.scale
            normal = np.array([-t[1], t[0]]) * rng.choice([-1, 1])
            c = p + normal * (w / 2 + width / 2 + self.gap + 1.5)
            if quadrant is not None and sc.quadrant(*c) != quadrant:
                raise _Reject
            u = np.linspace(0, 1, 12)
            half = width / 2 * np.sin(np.pi * u**0.6) * rng.uniform(0.8, 1.2, 12)
            along = (u - 0.5) * length
            away = 1 if np.dot(c - sc.disc, t) >= 0 else -1  # point the tail away from the disc
            spine = c + np.outer(along * away, t)
            poly = np.vstack([spine + np.outer(half, normal), (spine - np.outer(half, normal))[::-1]])
            mask, x0, y0, sub = self._canvas(c, max(length / 2, width) + 2)
            cv2.fillPoly(mask, [np.rint((poly - (x0, y0)) * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
        else:  # dot or blot: an irregular roundish patch
            c = self._posterior_point(quadrant)
            r = _u(rng, self.cfg.blot_radius) * sc.scale
            elong = rng.uniform(1.0, 1.5)
            mask, x0, y0, sub = self._canvas(c, _blob_extent(r, elong) + 1)
            poly = _blob(rng, c - (x0, y0), r, roughness=0.18, elong=elong)
            cv2.fillPoly(mask, [np.rint(poly * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
        self._check(x0, y0, mask)
        alpha = _soft_alpha(mask, edge=1.5 * sc.scale) * np.float32(rng.uniform(0.75, 0.95))
        alpha *= 0.85 + 0.15 * np.clip(self.texture[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]], -1, 1)
        return x0, y0, mask, alpha

    def _ex_cluster(self) -> None:
        """A clump or a partial circinate ring of plaques around a point near the macula."""
        rng, sc = self.rng, self.sc
        n = int(rng.integers(self.cfg.ex_plaques[0], self.cfg.ex_plaques[1] + 1))
        t = rng.uniform(0, 2 * math.pi)
        centre = sc.fovea + rng.uniform(0.3, 2.0) * sc.dd * np.array([math.cos(t), math.sin(t)])
        ring = rng.random() < 0.4
        ring_r = rng.uniform(0.3, 0.7) * sc.dd
        arc0, arc = rng.uniform(0, 2 * math.pi), rng.uniform(math.pi, 2 * math.pi)
        spread = rng.uniform(0.12, 0.35) * sc.dd

        def position(k: int) -> np.ndarray:
            if ring:  # circinate: plaques along an arc around a leaking centre
                phi = arc0 + arc * (k + rng.uniform(-0.3, 0.3)) / n
                return centre + ring_r * rng.uniform(0.85, 1.15) * np.array([math.cos(phi), math.sin(phi)])
            return centre + rng.normal(0.0, spread, 2)  # clump

        for k in range(n):
            self._try(lambda k=k: self._ex_candidate(position(k)), "EX")

    def _ex_candidate(self, c: np.ndarray):
        rng, sc = self.rng, self.sc
        r = max(1.0, _u(rng, self.cfg.ex_radius) * sc.scale)
        elong = rng.uniform(1.0, 1.8)
        mask, x0, y0, sub = self._canvas(c, max(_blob_extent(r, elong), 2.1 * r) + 1)
        poly = _blob(rng, c - (x0, y0), r, roughness=0.3, elong=elong, vertices=9)
        cv2.fillPoly(mask, [np.rint(poly * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
        if rng.random() < 0.4:  # a second lobe (extent <= 2.1 r); a detached one fails _check
            lobe = c + rng.uniform(-0.8, 0.8, 2) * r
            cv2.circle(mask, _ipt((lobe - (x0, y0)) * 16), int(r * rng.uniform(0.5, 0.9) * 16), 1, -1, shift=4)
        self._check(x0, y0, mask)
        return x0, y0, mask, mask * np.float32(rng.uniform(0.8, 0.97))

    def _se_candidate(self):
        rng, sc = self.rng, self.sc
        p, t, w = self._anchor((0.7, 3.5))
        r = _u(rng, self.cfg.se_radius) * sc.dd
        elong = rng.uniform(1.0, 1.6)
        normal = np.array([-t[1], t[0]]) * rng.choice([-1, 1])
        c = p + normal * (w / 2 + r * elong * rng.uniform(0.5, 1.2) + self.gap + 1)
        mask, x0, y0, sub = self._canvas(c, _blob_extent(r, elong) + 1)
        angle = math.atan2(t[1], t[0])  # cotton-wool spots lie along the nerve fibres / vessels
        poly = _blob(rng, c - (x0, y0), r, roughness=0.2, elong=elong, angle=angle, vertices=18)
        cv2.fillPoly(mask, [np.rint(poly * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
        self._check(x0, y0, mask)
        # Fluffy: a blurred copy of the shape, re-zeroed at the mask edge, so the opacity fades
        # smoothly to nothing at the boundary (a distance ramp would show a star-like ridge).
        blur = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 0.4 * r)
        alpha = _smoothstep(0.4, 0.95, blur) * mask * np.float32(rng.uniform(0.5, 0.75))
        tex = self.texture[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]]
        alpha *= 0.8 + 0.2 * np.clip(tex * 1.5, -1, 1)
        return x0, y0, mask, alpha

    def _nv_candidate(self):
        """A tuft of fine tortuous new vessels sprouting from one root (so it is one component)."""
        rng, sc = self.rng, self.sc
        radius = _u(rng, self.cfg.nv_radius) * sc.dd
        # The tuft stays within `radius` of its root; keep that clear of the disc or the vessel
        # it grows beside, which would otherwise reject most candidates.
        clearance = radius + self.gap + 1.5
        if rng.random() < 0.5:  # NVD: at the disc margin
            t = rng.uniform(0, 2 * math.pi)
            root = sc.disc + (1.25 * sc.disc_r + clearance) * np.array([math.cos(t), math.sin(t)])
        else:  # NVE: beside an arcade
            p, tan, w = self._anchor((1.5, 5.0))
            root = p + np.array([-tan[1], tan[0]]) * rng.choice([-1, 1]) * (w / 2 + clearance)
        mask, x0, y0, sub = self._canvas(root, radius + 2)
        local = root - (x0, y0)
        step = max(1.0, 1.5 * sc.scale)
        for _ in range(int(rng.integers(4, 9))):
            n_steps = int(radius * rng.uniform(1.0, 2.0) / step)
            path = _walk(rng, local, rng.uniform(0, 2 * math.pi), n_steps, step, turn=0.45)
            # Keep the loops inside the tuft: reflect overshooting points back toward the root.
            rel = path - local
            d = np.hypot(rel[:, 0], rel[:, 1])
            over = d > radius
            path[over] = local + rel[over] * ((2 * radius - d[over]) / d[over]).clip(0.2)[:, None]
            cv2.polylines(mask, [np.rint(path * 4).astype(np.int32)], False, 1, 1, cv2.LINE_8, shift=2)
        self._check(x0, y0, mask)
        return x0, y0, mask, mask * np.float32(rng.uniform(0.7, 0.9))

    def _canvas(self, c: np.ndarray, r: float):
        """An empty stamp around centre c large enough for radius r plus the gap border."""
        half = int(math.ceil(r + 0.5)) + self.gap + 1  # +0.5: c is not on the pixel grid
        cx, cy = int(round(c[0])), int(round(c[1]))
        x0, y0 = cx - half, cy - half
        if x0 < 0 or y0 < 0 or x0 + 2 * half + 1 > self.sc.size or y0 + 2 * half + 1 > self.sc.size:
            raise _Reject
        if self.blocked[cy, cx]:  # cheap early out: the centre is already taken
            raise _Reject
        sub = (int(round((c[0] - x0) * 16)), int(round((c[1] - y0) * 16)))
        return np.zeros((2 * half + 1, 2 * half + 1), np.uint8), x0, y0, sub


def _blob(rng, c, r, roughness: float, elong: float = 1.0, angle: float | None = None, vertices: int = 14):
    """Irregular closed polygon around c: a radius perturbed by a few random low harmonics,
    stretched by sqrt(elong) along `angle` and squeezed across it (area kept)."""
    phi = np.linspace(0, 2 * math.pi, vertices, endpoint=False)
    radius = np.ones(vertices)
    for k in (2, 3, 5):
        radius += roughness / k**0.5 * rng.normal() * np.cos(k * phi + rng.uniform(0, 2 * math.pi))
    radius = r * np.clip(radius, 0.5, 1.6)
    angle = rng.uniform(0, math.pi) if angle is None else angle
    x, y = radius * np.cos(phi) * elong**0.5, radius * np.sin(phi) / elong**0.5
    ca, sa = math.cos(angle), math.sin(angle)
    return np.stack([c[0] + ca * x - sa * y, c[1] + sa * x + ca * y], axis=1)


def _blob_extent(r: float, elong: float) -> float:
    """Farthest a :func:`_blob` vertex can lie from its centre (radius clip 1.6 r, stretch)."""
    return 1.6 * r * math.sqrt(elong)


def _soft_alpha(mask: np.ndarray, edge: float) -> np.ndarray:
    """Opacity 0 at the mask boundary rising to 1 over `edge` px inside (blurred edges that
    still stay within the mask)."""
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
    return _smoothstep(0.0, max(edge, 0.5), dist) * mask


def _ipt(p) -> tuple[int, int]:
    return int(round(p[0])), int(round(p[1]))


# ---------------------------------------------------------------------------------------------
# The photograph (illumination, optics, sensor)
# ---------------------------------------------------------------------------------------------


def photograph(rng: np.random.Generator, sc: Scene, refl: np.ndarray, cfg: PhantomConfig) -> np.ndarray:
    """Light the reflectance unevenly, blur with the camera optics, add noise, black the outside."""
    # cv2's element-wise maths on merged planes runs several times faster than numpy
    # broadcasting on (H, W, 3) float32, which matters for the 50 ms budget.
    light = _lighting(rng, sc, cfg)
    img = cv2.multiply(refl, cv2.merge([light, light, light]))
    sigma = cfg.blur_sigma * sc.scale
    if sigma > 0.2:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    if cfg.noise_sigma > 0:
        # Uniform noise with the configured std: the shape of the distribution is invisible and
        # it draws ~4x faster than normal samples. Blue is the darkest channel: scale it down.
        noise = rng.random((sc.size, sc.size), dtype=np.float32) - np.float32(0.5)
        noise *= np.float32(cfg.noise_sigma * math.sqrt(12.0))
        img = cv2.add(img, cv2.merge([noise, noise * np.float32(0.8), noise * np.float32(0.6)]))
    fov = sc.fov.astype(np.float32)
    img = cv2.multiply(img, cv2.merge([fov, fov, fov]))  # exactly black outside the field of view
    np.clip(img, 0.0, 1.0, out=img)
    return img


def _lighting(rng: np.random.Generator, sc: Scene, cfg: PhantomConfig) -> np.ndarray:
    """Everything smooth that multiplies the image: exposure, off-centre vignetting, uneven
    illumination, broad pigment patches and the dark FOV rim. Built on a 128 px grid and
    resized (bilinear is plenty for a field this smooth)."""
    low = min(128, sc.size)
    gain = _u(rng, cfg.brightness)
    k = _u(rng, cfg.vignetting)
    p = rng.uniform(1.8, 3.0)
    # Off-centre illumination: the flash spot is rarely exactly on the optical axis.
    offset = rng.uniform(-0.15, 0.15, 2) * sc.radius
    coords = (np.arange(low, dtype=np.float32) + 0.5) * np.float32(sc.size / low) - 0.5  # low-res px centres
    gx = (coords - sc.center[0]) / np.float32(sc.radius)
    gy = (coords - sc.center[1]) / np.float32(sc.radius)
    rho = np.sqrt(gx[None, :] ** 2 + gy[:, None] ** 2)
    ox, oy = offset / sc.radius
    rho_ill = np.sqrt((gx[None, :] - ox) ** 2 + (gy[:, None] - oy) ** 2)
    field = 1.0 - k * np.minimum(rho_ill, 1.3) ** p
    field *= 1.0 + 0.08 * _smooth_noise(rng, low, cells=4)  # uneven illumination
    field *= 1.0 + 0.045 * _smooth_noise(rng, low, cells=6)  # pigment patches
    # The rim of the FOV darkens quickly (the pupil edge cuts the light).
    field *= 0.55 + 0.45 * _smoothstep(1.0, 0.93, rho)
    field *= np.float32(gain)
    return cv2.resize(field.astype(np.float32), (sc.size, sc.size), interpolation=cv2.INTER_LINEAR)
