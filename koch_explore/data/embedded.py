"""The embedded real photo: ``skimage.data.retina()``, a CC0 healthy fundus inside the scikit-image
wheel, so every postulate runs with no data root at all (beside the phantom generator)."""

from __future__ import annotations

import numpy as np

from .preprocess import prepare_fundus


def retina_photo(size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(image (S, S, 3) float32 in [0, 1], FOV (S, S) bool) of the embedded photo, FOV-cropped, padded
    to a square and resized to ``size`` as every fundus the kit reads."""
    from skimage import data as skdata

    img, fov = prepare_fundus(skdata.retina().astype(np.float32) / 255.0, size)
    return img.astype(np.float32), fov.astype(bool)
