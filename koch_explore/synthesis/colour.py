"""Global colour transfer (the paper's Fig. 10 post-process): match the synthetic fundus's CIE-Lab
mean and standard deviation inside its FOV to a reference photo's (Reinhard et al. 2001)."""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["transfer_colour"]


def _lab(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.clip(image, 0, 1).astype(np.float32), cv2.COLOR_RGB2LAB)


def transfer_colour(image: np.ndarray, fov: np.ndarray, reference: np.ndarray, reference_fov: np.ndarray | None = None) -> np.ndarray:
    """``image`` (H, W, 3) float in [0, 1] with its FOV, recoloured so each Lab channel inside the FOV
    has the reference's mean and standard deviation; black stays black outside the FOV."""
    fov = np.asarray(fov, bool)
    ref_fov = np.asarray(reference_fov, bool) if reference_fov is not None else reference.max(axis=2) > 0.04
    if not fov.any() or not ref_fov.any():
        raise ValueError("colour transfer needs a non-empty FOV in both images")
    src, ref = _lab(image), _lab(reference)
    out = src.copy()
    for c in range(3):
        s, r = src[..., c][fov], ref[..., c][ref_fov]
        out[..., c] = (src[..., c] - s.mean()) * (r.std() / max(s.std(), 1e-6)) + r.mean()
    rgb = cv2.cvtColor(out, cv2.COLOR_LAB2RGB)
    return (np.clip(rgb, 0, 1) * fov[..., None]).astype(np.float32)
