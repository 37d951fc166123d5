"""Pixel metrics of a vessel map inside the field of view: the exact ROC AUC (one sort, no
binning), the F1-optimal threshold, and the figures of ``koch-explore vessels eval``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from ..core.stats import roc_auc, score_groups
from .model import VesselSegmenter, load_vessels


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of ``scores > threshold``, exactly, over every cut between
    two distinct scores (the cut is their midpoint)."""
    labels = np.asarray(labels, bool).ravel()
    values, pos, neg = score_groups(np.asarray(scores, np.float32).ravel(), labels)
    # Cut after group g: predicted positive = groups g+1 ... (scores > values[g]).
    tp = pos.sum() - np.cumsum(pos)
    fp = neg.sum() - np.cumsum(neg)
    fn = pos.sum() - tp
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    g = int(np.argmax(f1[:-1])) if len(values) > 1 else 0
    nxt = values[g + 1] if g + 1 < len(values) else values[g]
    t = float((float(values[g]) + float(nxt)) / 2)
    return min(max(t, 1e-6), 1 - 1e-6), float(f1[g])


class PixelScores:
    """Collects probabilities and truth inside the FOV over many images; reports the figures of
    ``vessels eval`` (AUC threshold-free, the rest at ``threshold``)."""

    def __init__(self):
        self.scores: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.images = 0

    def add(self, prob: np.ndarray, truth: np.ndarray, fov: np.ndarray) -> None:
        m = np.asarray(fov, bool)
        self.scores.append(np.asarray(prob, np.float32)[m])
        self.labels.append(np.asarray(truth, bool)[m])
        self.images += 1

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.labels), np.concatenate(self.scores)

    def report(self, threshold: float) -> dict:
        labels, scores = self.arrays()
        pred = scores > threshold
        tp = int((pred & labels).sum())
        fp = int((pred & ~labels).sum())
        fn = int((~pred & labels).sum())
        tn = int(labels.size - tp - fp - fn)
        ratio = lambda a, b: float(a / b) if b else float("nan")  # noqa: E731
        return {
            "auc": roc_auc(labels, scores),
            "f1": ratio(2 * tp, 2 * tp + fp + fn),
            "accuracy": ratio(tp + tn, labels.size),
            "sensitivity": ratio(tp, tp + fn),
            "specificity": ratio(tn, tn + fp),
            "n": self.images,
            "pixels": int(labels.size),
            "threshold": float(threshold),
        }


def evaluate(model: VesselSegmenter, items, threshold: float | None = None, progress: bool = False, tta: int = 8) -> dict:
    """Segment every item (``{"image", "vessels", "fov"}`` as from ``VesselSegmentation``) in its own
    geometry with its FOV and score all FOV pixels against the manual tree."""
    from tqdm.auto import tqdm

    scores = PixelScores()
    for item in tqdm(items, desc="segment", disable=not progress, leave=False, file=sys.stderr):
        prob, _ = model.segment(item["image"], item["fov"], tta=tta)
        scores.add(prob, item["vessels"], item["fov"])
    return scores.report(float(model.threshold) if threshold is None else threshold)


def dataset_root(dataset: str, root: str | os.PathLike | None) -> Path | None:
    """The data root holding ``dataset``'s folder, given that root or the folder itself (``--root``
    of ``vessels train`` and ``vessels eval``); None stays None (the default roots are searched)."""
    if root is None:
        return None
    from ..data.manifests import get_manifest

    folder = get_manifest(dataset).folder
    p = Path(root).expanduser()
    if (p / folder).is_dir():
        return p
    if p.is_dir() and p.name == folder:
        return p.parent
    raise FileNotFoundError(f"{p}: neither a data root containing {folder}/ nor the {folder} folder itself")


def evaluate_dataset(model: VesselSegmenter | str | os.PathLike | None = None, dataset: str = "DRIVE",
                     split: str | None = None, root: str | os.PathLike | None = None, *, device: str = "cpu",
                     tta: int = 8, progress: bool = False) -> dict:
    """The figures of ``vessels eval``: ``{"dataset", "split", "auc", "f1", "accuracy", "sensitivity",
    "specificity", "n", "pixels", "threshold"}`` of ``model`` on a vessel dataset, at its stored threshold.

    ``model``: a segmenter, or a shipped name / weights file for :func:`load_vessels` (None: the
    shipped default), loaded onto ``device`` ("auto" allowed) once the dataset is found.
    ``split``: "training", "test" or "all"; default DRIVE test (20 images), CHASE_DB1 all 28
    (cross-dataset). ``root``: the data root holding the dataset's folder, or that folder itself
    (default: the usual roots)."""
    from ..data.datasets import VesselSegmentation

    split = split or ("test" if dataset == "DRIVE" else "all")
    ds = VesselSegmentation(dataset, None if split == "all" else split, root=dataset_root(dataset, root))
    if not isinstance(model, VesselSegmenter):
        model = load_vessels(model, device)
    items = (ds[i] for i in range(len(ds)))
    return {"dataset": dataset, "split": split, **evaluate(model, items, progress=progress, tta=tta)}
