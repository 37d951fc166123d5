"""Sanity checks for evidence maps: do they depend on the image, and on what the network learned?

``koch-explore isolate sanity`` prints, per method (:mod:`koch_explore.evidence.methods`):

* ``input_dependence`` — mean Pearson r between each validation eye's map and the mean map over all
  of them (>= 100 EyePACS validation eyes). A method that mostly draws the network's fixed spatial
  weighting scores near 1; lower is better.
* ``randomization_similarity`` — mean Spearman rank correlation between each eye's map under the
  trained detector and under the same detector with its dense head and its top conv blocks
  re-initialised (the cascading randomisation of Adebayo et al. 2018). A map that survives losing
  what the network learned explains the architecture, not the diagnosis; lower is better. With
  ``cascade`` also ``randomization_cascade``: the same figure with 1, 2, ... all conv blocks
  re-initialised (the full cascade of the paper; it should fall, and stay low, as blocks go).
* ``pixel_auc_lesions`` — pixel AUC of the map against the IDRiD expert lesion masks inside the FOV,
  per type and for the union, averaged over images.

Maps are compared inside each eye's field of view; all figures use the same images for every method.
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch

from ..core.stats import bootstrap_mean, pearson, roc_auc, spearman
from ..detect.adapter import AdapterError
from .base import DEFAULT_METHOD, METHODS, evidence_maps
from .baseline import HealthyBaseline

__all__ = ["input_dependence", "randomization_similarity", "randomized_copy", "sanity_report"]

RANDOMIZED_BLOCKS = 2
"""Conv blocks (from the top) re-initialised with the dense head by :func:`randomized_copy`."""


def input_dependence(maps: np.ndarray, fovs: np.ndarray, per_image: bool = False):
    """Mean Pearson r of each map with the mean map, over the pixels inside both FOVs (``per_image``: the
    array of each map's r instead of their mean)."""
    norm = np.stack([m / (m[f].mean() + 1e-12) for m, f in zip(maps, fovs)])  # scale-free
    mean = norm.mean(0)
    r = np.array([pearson(m[f], mean[f]) for m, f in zip(norm, fovs)])
    return r if per_image else float(r.mean())


def randomized_copy(detector, blocks: int = RANDOMIZED_BLOCKS, seed: int = 0):
    """A copy of the grader ``detector`` whose head and top ``blocks`` conv blocks
    (``randomization_targets``) are re-initialised, BatchNorm statistics reset too; everything
    below keeps its learned weights."""
    det = copy.deepcopy(detector).eval()
    torch.manual_seed(seed)
    for target in det.randomization_targets(blocks):
        for m in target.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()  # BatchNorm: weight 1, bias 0, running mean 0 / var 1
    return det


def randomization_similarity(maps: np.ndarray, random_maps: np.ndarray, fovs: np.ndarray, per_image: bool = False):
    """Mean Spearman rank correlation of each eye's map with its randomised copy's (``per_image``: the array)."""
    r = np.array([spearman(a[f], b[f]) for a, b, f in zip(maps, random_maps, fovs)])
    return r if per_image else float(r.mean())


def _maps(detector, images: np.ndarray, method: str, start: str, batch: int) -> np.ndarray:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0).contiguous()
    return evidence_maps(detector, x, method, start, batch_size=batch)


def _fovs(images: np.ndarray) -> np.ndarray:
    return images.max(axis=3) > int(0.04 * 255)


def sanity_report(
    detector,
    eyes: np.ndarray,
    lesion_samples: Sequence | None,
    methods: Sequence[str] | None = None,
    start: str | None = None,
    n_random: int = 32,
    batch: int = 16,
    progress: bool = True,
    cascade: bool = False,
) -> dict:
    """The ``isolate sanity --json`` object for ``methods``: ``eyes`` uint8 (N, H, W, 3) validation
    eyes; ``lesion_samples`` :class:`~koch_explore.data.samples.LesionSample` with IDRiD masks."""
    from tqdm.auto import tqdm

    every = methods is None
    methods = list(METHODS) if every else list(methods)
    start = start or detector.default_start
    fovs = _fovs(eyes)
    skipped = {}
    if "deconvnet-excess" in methods:
        try:
            HealthyBaseline.for_detector(detector, start)
        except FileNotFoundError as exc:
            if not every:  # asked for by name: the missing baseline is the answer
                raise
            methods.remove("deconvnet-excess")  # "all methods" means all that this model can run
            skipped["deconvnet-excess"] = str(exc)

    def randomized(blocks: int):
        # The randomised copy subtracts the trained detector's healthy baseline: the method is applied
        # unchanged, only the network under it loses what it learned.
        d = randomized_copy(detector, blocks)
        d.__dict__["_healthy_baselines"] = detector.__dict__.get("_healthy_baselines", {})
        d.source_path = getattr(detector, "source_path", None)
        return d

    rand_det = randomized(RANDOMIZED_BLOCKS)
    cascade_dets = {k: randomized(k) for k in range(1, detector.num_blocks + 1)} if cascade else {}
    out = {}
    for method in tqdm(methods, desc="methods", disable=not progress):
        try:
            maps = _maps(detector, eyes, method, start, batch)
        except AdapterError as exc:  # e.g. guided backprop on a GELU network
            if not every:
                raise
            skipped[method] = str(exc)
            continue
        # CIs: a bootstrap over eyes of the per-eye values (input dependence's mean map is held fixed)
        dep = input_dependence(maps, fovs, per_image=True)
        rec = {"input_dependence": float(dep.mean()), "input_dependence_ci": bootstrap_mean(dep)["ci"]}
        if method == "random":
            rec["randomization_similarity"] = None  # no network to randomise
        else:
            k = min(n_random, len(eyes))
            rmaps = _maps(rand_det, eyes[:k], method, start, batch)
            sim = randomization_similarity(maps[:k], rmaps, fovs[:k], per_image=True)
            rec["randomization_similarity"] = float(sim.mean())
            rec["randomization_similarity_ci"] = bootstrap_mean(sim)["ci"]
            if cascade_dets:
                rec["randomization_cascade"] = {
                    str(b): randomization_similarity(maps[:k], _maps(d, eyes[:k], method, start, batch), fovs[:k])
                    for b, d in cascade_dets.items()}
        if lesion_samples:
            aucs: dict[str, list[float]] = {}
            imgs = np.stack([(s.image * 255 + 0.5).astype(np.uint8) for s in lesion_samples])
            lmaps = _maps(detector, imgs, method, start, batch)
            for s, m in zip(lesion_samples, lmaps):
                union = np.logical_or.reduce(list(s.lesions.values()))
                for t, mask in [("union", union), *s.lesions.items()]:
                    if (mask & s.fov).any() and (~mask & s.fov).any():
                        aucs.setdefault(t, []).append(roc_auc(mask[s.fov], m[s.fov]))
            rec["pixel_auc_lesions"] = {t: float(np.mean(v)) for t, v in aucs.items()}
        out[method] = rec
    rep = {"default": DEFAULT_METHOD, "start": start, "n_eyes": int(len(eyes)), "n_randomized": int(min(n_random, len(eyes))),
           "n_lesion_images": len(lesion_samples or []), "methods": out}
    if skipped:
        rep["skipped"] = skipped
    return rep


def validation_eyes(root: str | None, size: int, count: int, seed: int = 0) -> np.ndarray:
    """``count`` EyePACS validation eyes (the training script's patient-disjoint split), uint8."""
    from ..data.graded import graded_eyes

    val = graded_eyes("val", size, root=root, aptos=False)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(val.grades), size=min(count, len(val.grades)), replace=False))
    return val.images[pick]


def run_sanity(detector, root: str | None = None, count: int = 100, lesions: str | None = None, methods: Sequence[str] | None = None,
               start: str | None = None, batch: int = 16, progress: bool = True, cascade: bool = False) -> dict:
    """:func:`sanity_report` on ``count`` EyePACS validation eyes and the lesion folder ``lesions``
    (None: IDRiD_lesions under the data root; "none": skip the localisation scores)."""
    from ..data.roots import dataset_dir
    from ..data.samples import folder_samples

    size = detector.input_size
    eyes = validation_eyes(root, size, count)
    samples = None
    if lesions != "none":
        samples = list(folder_samples(lesions or dataset_dir("IDRiD_lesions", root), size))
    return sanity_report(detector, eyes, samples, methods, start, batch=batch, progress=progress, cascade=cascade)


def sanity_table(rep: dict) -> str:
    """The ``isolate sanity`` report as a few lines of text."""
    f = lambda v: "   -" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"isolate sanity: {rep['n_eyes']} EyePACS validation eyes ({rep['n_randomized']} for randomisation), "
             f"{rep['n_lesion_images']} IDRiD images; default method {rep['default']}",
             f"{'method':18s} {'input_dep':>9s} {'rand_sim':>9s} {'auc_union':>9s}  " + "  ".join(f"{t:>5s}" for t in ("MA", "HE", "EX", "SE"))]
    for m, r in rep["methods"].items():
        a = r.get("pixel_auc_lesions", {})
        lines.append(f"{m:18s} {f(r['input_dependence']):>9s} {f(r['randomization_similarity']):>9s} {f(a.get('union')):>9s}  "
                     + "  ".join(f"{f(a.get(t)):>5s}" for t in ("MA", "HE", "EX", "SE")))
    for m, why in rep.get("skipped", {}).items():
        lines.append(f"{m:18s} skipped: {why}")
    if any("randomization_cascade" in r for r in rep["methods"].values()):
        lines.append("cascading randomisation (rank correlation with 1, 2, ... conv blocks + head re-initialised):")
        for m, r in rep["methods"].items():
            if "randomization_cascade" in r:
                lines.append(f"{m:18s} " + "  ".join(f"{b}: {v:.3f}" for b, v in r["randomization_cascade"].items()))
    return "\n".join(lines)
