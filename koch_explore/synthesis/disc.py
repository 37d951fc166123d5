"""The optic disc for the whole-fundus generator: where it is, and the map the generator is given.

A vessel tree says where the disc is only faintly (the big vessels converge on it), and a U-Net whose
receptive field is a fraction of the fundus cannot read that from the tree: the first shipped generator
drew no disc at all. So the disc's place is an input (:attr:`~.generator.GeneratorConfig.disc_channel`):
taken from the host's photo when there is one (:func:`find_disc`, the brightest disc-sized spot), else
from the tree (:func:`disc_from_vessels`, where the thick vessels are densest), or given by the user.
"""

from __future__ import annotations

import cv2
import numpy as np

LUMA = (0.299, 0.587, 0.114)
"""Rec. 601 luma weights of R, G, B: the luminance every measure of the disc and the stripes reads."""

__all__ = ["DISC_RADIUS", "disc_from_vessels", "disc_map", "find_disc", "host_disc"]

DISC_RADIUS = 0.14
"""Optic disc radius as a share of the FOV radius (a 1.8 mm disc in a 45-degree, ~12 mm field)."""


def _fov_radius(fov: np.ndarray) -> float:
    ys, xs = np.nonzero(fov)
    if not len(xs):
        raise ValueError("the field of view is empty: no disc to find")
    return 0.5 * max(np.ptp(xs), np.ptp(ys)) + 0.5


def _inner(fov: np.ndarray, radius: float) -> np.ndarray:
    """The FOV eroded by the disc's radius: where a disc's centre can lie."""
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (int(2 * radius) | 1,) * 2)
    return cv2.erode(fov.astype(np.uint8), k) > 0


def find_disc(image: np.ndarray, fov: np.ndarray) -> tuple[float, float, float]:
    """(x, y, radius) of the optic disc of a fundus photo: the brightest disc-sized spot of the blurred
    luminance inside the eroded FOV (the disc is the brightest structure of a fundus)."""
    fov = np.asarray(fov, bool)
    radius = DISC_RADIUS * _fov_radius(fov)
    lum = image.astype(np.float32) @ np.array(LUMA, np.float32)
    blurred = cv2.GaussianBlur(lum * fov, (0, 0), radius / 2) / np.maximum(cv2.GaussianBlur(fov.astype(np.float32), (0, 0), radius / 2), 1e-3)
    y, x = np.unravel_index(np.argmax(np.where(_inner(fov, radius), blurred, -np.inf)), blurred.shape)
    return float(x), float(y), float(radius)


def disc_from_vessels(vessels: np.ndarray, fov: np.ndarray) -> tuple[float, float, float]:
    """(x, y, radius) of the disc from a vessel tree alone: where the *wide* vessels converge — each
    vessel pixel weighted by its squared distance to the vessel's edge (the arcades are widest at the
    disc), blurred at the disc's radius, the peak inside the eroded FOV. On the 68 DRIVE + CHASE_DB1
    manual trees at 256 px it lands within 2 disc radii of the photo's disc in 67 (docs/findings/synthesizer.md#disc)."""
    fov = np.asarray(fov, bool)
    radius = DISC_RADIUS * _fov_radius(fov)
    tree = ((np.asarray(vessels) > 0.5) & fov).astype(np.uint8)
    width = cv2.distanceTransform(tree, cv2.DIST_L2, 3)
    density = cv2.GaussianBlur(width**2, (0, 0), radius)
    y, x = np.unravel_index(np.argmax(np.where(_inner(fov, radius), density, -np.inf)), density.shape)
    return float(x), float(y), float(radius)


def host_disc(host: dict) -> tuple[float, float, float]:
    """A host's disc: its own ``"disc"`` (x, y, radius) when given, else found in its photo, else from its tree."""
    if host.get("disc") is not None:
        return tuple(float(v) for v in host["disc"])
    if host.get("image") is not None:
        return find_disc(np.asarray(host["image"], np.float32), host["fov"])
    return disc_from_vessels(host["vessels"], host["fov"])


def disc_map(shape: tuple[int, int], disc: tuple[float, float, float]) -> np.ndarray:
    """float32 (H, W): a Gaussian bump of the disc's radius at its centre (1 at the centre), what the
    generator is given."""
    x, y, r = disc
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * max(r, 1.0) ** 2)).astype(np.float32)
