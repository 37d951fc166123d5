"""Realism of synthesized lesions without the detector: a classifier two-sample test on lesion windows.

A small CNN learns to tell windows around *real* isolated lesions (the default evidence method's
components in diseased eyes) from windows around *placed* ones (in syntheses, transplants, a user's
images) at the same scale; its accuracy on held-out windows (k-fold) is the figure: 0.5 = the two
cannot be told apart, 1.0 = every window gives itself away. Unlike the Fréchet distance in the
detector's ``dense1`` space, no network the synthesizer was trained against reads these windows.

Each window is standardised per channel (its own mean and contrast removed) before the classifier
sees it, so the test judges the lesion's structure against its surroundings, not the host's overall
colour or exposure (a whole-fundus generator's colour is measured elsewhere: ``fd``, the stripes and
the disc). The two sets are balanced by subsampling the larger, so chance is exactly 0.5; the 95%
interval is Wilson's for the held-out accuracy over all windows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..detect.predict import dihedral

__all__ = ["LESION_WINDOW", "c2st_accuracy", "crop_windows", "isolated_lesion_windows", "lesion_windows", "placed_centroids",
           "standardise"]

LESION_WINDOW = 32
"""Window side in px at the synthesizer's 256 px: a lesion with its immediate surroundings (microaneurysms
and haemorrhages are 2-20 px there)."""


def crop_windows(images: torch.Tensor, centres: Sequence[tuple[int, float, float]], side: int) -> torch.Tensor:
    """(N, C, side, side) windows of ``images`` (B, C, H, W) centred at each (image index, x, y), mirrored
    at the edges; differentiable (the local trainer's discriminator reads the generator's windows so)."""
    half = side // 2
    padded: dict[int, torch.Tensor] = {}
    out = []
    for i, x, y in centres:
        if i not in padded:
            padded[i] = F.pad(images[i : i + 1], (half, half, half, half), mode="reflect")[0]
        cx, cy = int(round(x)) + half, int(round(y)) + half
        out.append(padded[i][:, cy - half : cy - half + side, cx - half : cx - half + side])
    return torch.stack(out) if out else images.new_zeros((0, images.shape[1], side, side))


def lesion_windows(images: np.ndarray, centroids: Sequence[Sequence[tuple[float, float]]], size: int = LESION_WINDOW) -> np.ndarray:
    """Square windows of side ``size`` centred on each (x, y) of ``centroids[i]`` in ``images[i]``
    (N, H, W, 3) in [0, 1]; edges are mirrored (:func:`crop_windows`). Returns float32 (M, size, size, 3)."""
    stack = torch.from_numpy(np.asarray(images, np.float32)).permute(0, 3, 1, 2)
    centres = [(i, x, y) for i, points in enumerate(centroids) for x, y in points]
    return crop_windows(stack, centres, size).permute(0, 2, 3, 1).numpy()


def placed_centroids(layout) -> list[tuple[float, float]]:
    """(x, y) of each descriptor placed in ``layout`` (a DescriptorBank; None: none)."""
    return [] if layout is None else [tuple(d.centroid) for d in layout]


def isolated_lesion_windows(detector, images: np.ndarray, names: Sequence[str], method: str | None = None,
                            size: int = LESION_WINDOW) -> np.ndarray:
    """Windows around the lesions ``detector`` isolates in ``images`` (diseased eyes at its input size,
    the default evidence method unless ``method``): the real side of the test."""
    from ..culture.build import bank_from_images

    bank = bank_from_images(detector, images, names, method)
    row = {n: i for i, n in enumerate(names)}
    centroids: list[list[tuple[float, float]]] = [[] for _ in names]
    for d in bank:
        centroids[row[d.source]].append(tuple(d.centroid))
    return lesion_windows(np.asarray(images, np.float32) / (255.0 if np.asarray(images).dtype == np.uint8 else 1.0),
                          centroids, size)


def standardise(windows: torch.Tensor) -> torch.Tensor:
    """Each window (N, 3, w, w) with its own per-channel mean removed and contrast divided out."""
    mean = windows.mean(dim=(2, 3), keepdim=True)
    std = windows.std(dim=(2, 3), keepdim=True).clamp_min(1e-3)
    return (windows - mean) / std


def _classifier() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 1),
    )


def _wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def c2st_accuracy(real: np.ndarray, synthetic: np.ndarray, folds: int = 5, epochs: int = 40, seed: int = 0) -> dict:
    """Held-out accuracy of a small CNN telling ``real`` from ``synthetic`` windows ((N, S, S, 3) in
    [0, 1], see :func:`lesion_windows`): ``{"accuracy", "ci", "n"}`` (n = windows per side after
    balancing). Needs at least ``folds`` windows on each side. Deterministic for a seed on CPU."""
    n = min(len(real), len(synthetic))
    if n < folds:
        raise ValueError(f"a two-sample test needs at least {folds} windows on each side, got {len(real)} real and "
                         f"{len(synthetic)} synthetic")
    rng = np.random.default_rng(seed)
    a = standardise(torch.from_numpy(np.asarray(real, np.float32)[np.sort(rng.choice(len(real), n, replace=False))]).permute(0, 3, 1, 2))
    b = standardise(torch.from_numpy(np.asarray(synthetic, np.float32)[np.sort(rng.choice(len(synthetic), n, replace=False))]).permute(0, 3, 1, 2))
    x = torch.cat([a, b])
    y = torch.cat([torch.zeros(n), torch.ones(n)])
    fold_of = np.concatenate([rng.permutation(n) % folds, rng.permutation(n) % folds])  # stratified folds
    correct = 0
    for f in range(folds):
        train, test = torch.from_numpy(fold_of != f), torch.from_numpy(fold_of == f)
        torch.manual_seed(seed * 1009 + f)
        net = _classifier()
        opt = torch.optim.Adam(net.parameters(), lr=2e-3, weight_decay=1e-4)
        xt, yt = x[train], y[train]
        gen = torch.Generator().manual_seed(seed * 7 + f)
        for epoch in range(epochs):
            order = torch.randperm(len(xt), generator=gen)
            for s in range(0, len(xt), 32):
                idx = order[s:s + 32]
                # lesions have no orientation: every batch is shown in one of the 8 flips/rotations
                xb = dihedral(xt[idx], int(torch.randint(8, (1,), generator=gen)))
                loss = nn.functional.binary_cross_entropy_with_logits(net(xb).squeeze(1), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            net.eval()
            logits = torch.stack([net(dihedral(x[test], k)).squeeze(1) for k in range(8)]).mean(0)
        correct += int(((logits > 0).float() == y[test]).sum())
    total = 2 * n
    return {"accuracy": correct / total, "ci": list(_wilson(correct, total)), "n": n}
