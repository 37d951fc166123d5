"""Phantom constants, configuration and result types, and the grade rule.

Everything here is plain data: :mod:`.painter` draws with it and :mod:`.generate` returns it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

#: The four lesion types of the IDRiD / DDR segmentation sets, in drawing order.
LESION_TYPES: tuple[str, ...] = ("MA", "HE", "EX", "SE")
#: All mask types a phantom carries: the four above plus neovascularisation.
ALL_LESION_TYPES: tuple[str, ...] = LESION_TYPES + ("NV",)
#: Overlay colour (RGB in [0, 1]) per lesion type, used by :func:`overlay_lesions`.
LESION_COLOURS: dict[str, tuple[float, float, float]] = {
    "MA": (1.0, 0.0, 0.0),  # red
    "HE": (1.0, 0.0, 1.0),  # magenta
    "EX": (1.0, 1.0, 0.0),  # yellow
    "SE": (0.0, 1.0, 1.0),  # cyan
    "NV": (0.0, 1.0, 0.0),  # green
}
#: Quadrants around the fovea: Superior/Inferior x Temporal/Nasal.
QUADRANTS: tuple[str, ...] = ("ST", "SN", "IT", "IN")

GRADE_RULE = """\
Phantom grade rule (ICDR-like, applied to the lesion instances actually drawn; thresholds are
PhantomConfig fields, defaults in brackets; quadrants are centred on the fovea):
  4 proliferative DR    : any neovascularisation (NV) tuft.
  3 severe NPDR         : no NV, and either at least `severe_he_total` [20] haemorrhages (HE),
                          or at least `severe_he_per_quadrant` [4] HE in each of the 4 quadrants.
  2 moderate NPDR       : not 3 or 4, and any HE, hard exudate (EX) or soft exudate (SE),
                          or more than `mild_ma_max` [15] microaneurysms (MA).
  1 mild NPDR           : MA only, 1 to `mild_ma_max` [15] of them.
  0 no DR               : no lesion at all.
Lesion load grows with the grade (more MA and HE, EX and SE from grade 2, NV at 4), so a
regression CNN can learn severity from the image.
"""


# ---------------------------------------------------------------------------------------------
# Configuration and result types
# ---------------------------------------------------------------------------------------------

Range = tuple[float, float]
IntRange = tuple[int, int]


@dataclass(frozen=True)
class PhantomConfig:
    """Everything tunable about the phantom. Ranges are ``(low, high)``, sampled uniformly.

    Lengths given "in DD" are multiples of the disc diameter, so the anatomy keeps its
    proportions at every image size; lengths "at 512 px" are scaled by ``size / 512``.
    Per-grade tuples are indexed by grade 0..4. Integer ranges are inclusive.
    """

    # --- grade -------------------------------------------------------------------------------
    #: Probability of each grade 0..4 when ``grade`` is not given. Balanced-ish rather than
    #: clinical (where ~75% are grade 0) so that a detector trained on phantoms sees every grade.
    grade_probs: tuple[float, ...] = (0.3, 0.2, 0.2, 0.15, 0.15)
    #: Grade rule: more MA than this (with no other lesion) is already moderate (grade 2).
    mild_ma_max: int = 15
    #: Grade rule: this many HE in total make the image severe (grade 3).
    severe_he_total: int = 20
    #: Grade rule: this many HE in each of the four quadrants also make it severe.
    severe_he_per_quadrant: int = 4

    # --- lesion load per grade (counts of instances; EX counted in clusters) -----------------
    #: Microaneurysms. Grade 4 carries a severe-level load as well as NV, so lesion load never
    #: drops as the grade rises (a regression CNN learns severity from it).
    ma_counts: tuple[IntRange, ...] = ((0, 0), (1, 12), (2, 15), (8, 25), (10, 28))
    #: Haemorrhages. Grade 2 stays below both severe thresholds; grade 3 puts
    #: ``severe_he_per_quadrant`` in every quadrant first, then spreads the rest, and its total
    #: clears ``severe_he_total`` with one to spare (a crowded image may lose a placement).
    he_counts: tuple[IntRange, ...] = ((0, 0), (0, 0), (0, 10), (21, 34), (16, 34))
    #: Hard-exudate clusters (each a clump or ring of ``ex_plaques`` plaques).
    ex_clusters: tuple[IntRange, ...] = ((0, 0), (0, 0), (0, 3), (1, 4), (1, 4))
    #: Plaques per hard-exudate cluster; each plaque is one EX instance.
    ex_plaques: IntRange = (3, 12)
    #: Cotton-wool spots.
    se_counts: tuple[IntRange, ...] = ((0, 0), (0, 0), (0, 3), (1, 5), (2, 6))
    #: Neovascular tufts (only grade 4 has any: NV *is* the grade-4 criterion).
    nv_counts: tuple[IntRange, ...] = ((0, 0), (0, 0), (0, 0), (0, 0), (1, 3))
    #: Fraction of haemorrhages drawn as flame shapes beside a vessel (the rest are dot/blot).
    flame_fraction: float = 0.35

    # --- lesion looks ------------------------------------------------------------------------
    #: Microaneurysm radius, px at 512 (drawn 3-5 px across).
    ma_radius: Range = (1.0, 2.0)
    #: Dot/blot haemorrhage radius, px at 512.
    blot_radius: Range = (2.5, 9.0)
    #: Flame haemorrhage length and width, px at 512.
    flame_length: Range = (10.0, 26.0)
    flame_width: Range = (3.0, 7.0)
    #: Hard-exudate plaque radius, px at 512.
    ex_radius: Range = (1.5, 4.5)
    #: Cotton-wool spot radius, in DD (real ones are about a quarter disc diameter).
    se_radius: Range = (0.12, 0.25)
    #: Neovascular tuft radius, in DD.
    nv_radius: Range = (0.25, 0.45)
    #: Pixels kept free between two lesions and between a lesion and a vessel, at 512.
    lesion_gap: float = 2.0
    #: Placement attempts per lesion before it is given up (its grade is then re-checked).
    placement_tries: int = 40

    # --- anatomy -----------------------------------------------------------------------------
    #: Field-of-view radius as a fraction of the image size.
    fov_radius: Range = (0.44, 0.485)
    #: Disc diameter (DD) as a fraction of the FOV diameter (about 1/7 in a 45-degree photo).
    disc_diameter: Range = (0.12, 0.145)
    #: Disc-to-fovea distance in DD (anatomy: about 2.5).
    disc_fovea_distance: Range = (2.3, 2.7)
    #: Cup-to-disc ratio.
    cup_ratio: Range = (0.25, 0.55)
    #: Radius in DD of the vessel-free zone around the fovea where vessels stop.
    avascular_radius: Range = (0.35, 0.5)
    #: Vein width at the disc, in DD; arteries are ``artery_vein_ratio`` of that.
    vein_width: Range = (0.075, 0.1)
    artery_vein_ratio: Range = (0.7, 0.8)
    #: Branching generations below the main trunks (3 gives ~150 vessel segments).
    branch_depth: int = 3

    # --- photograph --------------------------------------------------------------------------
    #: Overall exposure gain.
    brightness: Range = (0.8, 1.1)
    #: Vignetting depth: illumination at the FOV rim relative to the centre is ~1 - this.
    vignetting: Range = (0.3, 0.6)
    #: Camera blur sigma, px at 512 (soft optics: edges soften in the image, masks stay binary).
    blur_sigma: float = 0.7
    #: Sensor noise standard deviation (image units).
    noise_sigma: float = 0.008

    def __post_init__(self) -> None:
        probs = np.asarray(self.grade_probs, dtype=float)
        if probs.shape != (5,) or (probs < 0).any() or probs.sum() <= 0:
            raise ValueError(f"grade_probs must be 5 non-negative numbers, got {self.grade_probs}")
        for name in ("ma_counts", "he_counts", "ex_clusters", "se_counts", "nv_counts"):
            ranges = getattr(self, name)
            if len(ranges) != 5 or any(lo < 0 or hi < lo for lo, hi in ranges):
                raise ValueError(f"{name} must be 5 (low, high) ranges with 0 <= low <= high")
        # Without these, a requested grade could not be produced by the sampled counts.
        if self.ma_counts[1][0] < 1 or self.ma_counts[1][1] > self.mild_ma_max:
            raise ValueError("ma_counts[1] must lie within 1..mild_ma_max (mild = MA only)")
        he_moderate_max = min(self.severe_he_total, 4 * self.severe_he_per_quadrant) - 1
        if self.he_counts[2][1] > he_moderate_max:
            raise ValueError(f"he_counts[2] must stay below the severe thresholds (<= {he_moderate_max})")
        if self.he_counts[3][0] < 4 * self.severe_he_per_quadrant:
            raise ValueError("he_counts[3] low must be >= 4 * severe_he_per_quadrant")
        if self.nv_counts[4][0] < 1 or any(hi > 0 for _, hi in self.nv_counts[:4]):
            raise ValueError("nv_counts must be zero below grade 4 and at least 1 at grade 4")
        if any(hi > 0 for _, hi in (*self.he_counts[:2], *self.ex_clusters[:2], *self.se_counts[:2])):
            raise ValueError("grades 0 and 1 cannot have HE, EX or SE")
        if self.ma_counts[0] != (0, 0):
            raise ValueError("grade 0 cannot have MA")


@dataclass
class PhantomFundus:
    """One phantom photograph and its exact truth.

    ``instances`` holds one record per lesion, each a connected component (8-connectivity) of
    its type's mask: ``type``, ``bbox`` ``[x0, y0, x1, y1]`` (half-open, numpy-slice style),
    ``centroid`` ``[x, y]``, ``area`` (pixels) and ``quadrant`` around the fovea.
    """

    image: np.ndarray  #: float32 (H, W, 3) RGB in [0, 1]; exactly 0 outside the FOV
    vessels: np.ndarray  #: bool (H, W): the drawn vessel tree
    fov: np.ndarray  #: bool (H, W): the circular field of view
    lesions: dict[str, np.ndarray]  #: type -> bool (H, W), one entry per ALL_LESION_TYPES
    instances: list[dict[str, Any]]
    grade: int
    seed: int
    size: int
    eye: str = "OD"  #: "OD" (disc right of the macula in the image) or "OS"
    disc_center: tuple[float, float] = (0.0, 0.0)  #: (x, y) px
    disc_radius: float = 0.0  #: px
    fovea_center: tuple[float, float] = (0.0, 0.0)  #: (x, y) px
    lesion_counts: dict[str, int] = field(default_factory=dict)  #: instances per type


# ---------------------------------------------------------------------------------------------
# Grade rule
# ---------------------------------------------------------------------------------------------


def grade_from_instances(instances: Iterable[Mapping[str, Any]], config: PhantomConfig | None = None) -> int:
    """Apply :data:`GRADE_RULE` to lesion records (``type`` and, for HE, ``quadrant``)."""
    cfg = config or PhantomConfig()
    instances = list(instances)
    counts = Counter(rec["type"] for rec in instances)
    he_quadrants: Counter = Counter()
    for rec in instances:
        if rec["type"] == "HE":
            he_quadrants[rec["quadrant"]] += 1
    return _grade_from_counts(counts, he_quadrants, cfg)


def _grade_from_counts(counts: Mapping[str, int], he_quadrants: Mapping[str, int], cfg: PhantomConfig) -> int:
    if counts.get("NV", 0) > 0:
        return 4
    n_he = counts.get("HE", 0)
    if n_he >= cfg.severe_he_total or all(he_quadrants.get(q, 0) >= cfg.severe_he_per_quadrant for q in QUADRANTS):
        return 3
    n_ma = counts.get("MA", 0)
    if n_he or counts.get("EX", 0) or counts.get("SE", 0) or n_ma > cfg.mild_ma_max:
        return 2
    return 1 if n_ma > 0 else 0
