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

from ..detect.predict import dihedral

__all__ = ["LESION_WINDOW", "c2st_accuracy", "isolated_lesion_windows", "lesion_windows", "placed_centroids"]

LESION_WINDOW = 32
"""Window side in px at the synthesizer's 256 px: a lesion with its immediate surroundings (microaneurysms
and haemorrhages are 2-20 px there)."""


def lesion_windows(images: np.ndarray, centroids: Sequence[Sequence[tuple[float, float]]], size: int = LESION_WINDOW) -> np.ndarray:
    """Square windows of side ``size`` centred on each (x, y) of ``centroids[i]`` in ``images[i]``
    (N, H, W, 3) in [0, 1]; edges are mirrored. Returns float32 (M, size, size, 3)."""
    half = size // 2
    out = []
    for img, points in zip(images, centroids):
        padded = np.pad(np.asarray(img, np.float32), ((half, half), (half, half), (0, 0)), mode="reflect")
        for x, y in points:
            cx, cy = int(round(x)) + half, int(round(y)) + half
            out.append(padded[cy - half:cy - half + size, cx - half:cx - half + size])
    return np.stack(out) if out else np.zeros((0, size, size, 3), np.float32)


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


def _standardise(windows: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(windows, np.float32)).permute(0, 3, 1, 2)
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.std(dim=(2, 3), keepdim=True).clamp_min(1e-3)
    return (x - mean) / std


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
    a = _standardise(np.asarray(real)[np.sort(rng.choice(len(real), n, replace=False))])
    b = _standardise(np.asarray(synthetic)[np.sort(rng.choice(len(synthetic), n, replace=False))])
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
