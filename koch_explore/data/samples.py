"""Fundus images with lesion truth, prepared like the detector's input: phantoms (exact masks) and
IDRiD-style folders (expert masks). Isolation is scored on them and the sanity checks read them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np


@dataclass
class LesionSample:
    image: np.ndarray  # float32 (S, S, 3)
    fov: np.ndarray  # bool (S, S)
    lesions: dict[str, np.ndarray]  # type -> bool (S, S)
    name: str


def phantom_samples(count: int, size: int, input_size: int, seed: int = 0) -> Iterator[LesionSample]:
    """``count`` phantoms (seeds from ``phantom_seed(seed, i)``), drawn at ``size`` and prepared to
    ``input_size``; all five lesion types (NV included: the detector may point at them too)."""
    from .phantom import ALL_LESION_TYPES, generate_phantom, phantom_name, phantom_seed
    from .preprocess import prepare_fundus, prepare_mask

    for i in range(count):
        ph = generate_phantom(phantom_seed(seed, i), size=size)
        image, fov = prepare_fundus(ph.image, input_size, ph.fov)
        lesions = {t: prepare_mask(ph.lesions[t], ph.fov, input_size) for t in ALL_LESION_TYPES}
        yield LesionSample(image, fov, lesions, phantom_name(i))


def folder_samples(folder, input_size: int) -> Iterator[LesionSample]:
    """IDRiD_lesions or a phantom folder through :class:`LesionSegmentation` (MA, HE, EX, SE)."""
    from .datasets import LesionSegmentation
    from .preprocess import estimate_fov

    ds = LesionSegmentation(folder, size=input_size)
    for i in range(len(ds)):
        item = ds[i]
        # The prepared image is the FOV padded to a square on black: its FOV is re-estimated.
        yield LesionSample(item["image"], estimate_fov(item["image"]), item["lesions"], item["name"])
