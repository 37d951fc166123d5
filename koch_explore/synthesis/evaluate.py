"""How good is a synthesizer? Vessel preservation, realism, and severity that follows the lesion count.

* ``vessel_dice`` — the shipped vessel segmenter run on each synthetic fundus (no lesions placed) vs
  the tree it was drawn from, Dice inside the FOV: the generator must keep the host's anatomy.
  The trainer's vessel-consistency term uses the same segmenter, so ``vessel_dice_frangi`` checks
  it independently: a classical Frangi vesselness map of the green channel, cut at the tree's own
  vessel fraction, Dice with the tree — for the synthetic images and, as the reference, for the
  hosts' real photos (``vessel_dice_frangi_real``).
* ``fd`` — Fréchet distance between the detector's ``dense1`` features of synthetic and real healthy
  fundus photos (an FID with the DR detector in place of Inception, which cannot be shipped here),
  with a bootstrap 95% interval over images; beside a baseline generator also ``fd_gap`` = ours -
  baseline with a *paired* bootstrap interval (the same resampled hosts for both) and
  ``fd_ours_closer``, the share of resamples in which ours is closer; with a second detector
  (``--check-detector``, one no training loss reads) the same figures as ``fdcheck_*``.
* ``severity_by_count`` — mean detector severity over the hosts when 0, 1, 2, 4, 8, 16 descriptors
  are placed (the paper's Fig. 8): it must rise with the count.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["frechet_distance", "embedding_features", "evaluate_synthesizer", "paired_frechet_gap"]

COUNTS = (0, 1, 2, 4, 8, 16)


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """||mu_x - mu_y||^2 + tr(Sx + Sy - 2 (Sx^1/2 Sy Sx^1/2)^1/2) of two feature sets (N, D)."""
    mx, my = x.mean(0), y.mean(0)
    sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    r = _sqrtm_psd(sx)
    cross = _sqrtm_psd(r @ sy @ r)
    return float(((mx - my) ** 2).sum() + np.trace(sx) + np.trace(sy) - 2 * np.trace(cross))


def paired_frechet_gap(a: np.ndarray, b: np.ndarray, real: np.ndarray, n_boot: int = 200, seed: int = 0) -> tuple[float, tuple[float, float], float]:
    """FD(a, real) - FD(b, real) with a bootstrap 95% interval that resamples *hosts*: row i of ``a``,
    ``b`` and ``real`` come from host i, so each resample keeps the same hosts for both generators
    (the two separate intervals overlap far more than their difference varies). Also returns the
    share of resamples in which ``a`` is closer."""
    if not len(a) == len(b) == len(real):
        raise ValueError(f"paired Frechet gap needs one row per host in each set, got {len(a)}, {len(b)}, {len(real)}")
    rng = np.random.default_rng(seed)
    gaps = []
    for _ in range(n_boot):
        i = rng.integers(0, len(a), len(a))
        gaps.append(frechet_distance(a[i], real[i]) - frechet_distance(b[i], real[i]))
    gaps = np.asarray(gaps)
    ci = (float(np.percentile(gaps, 2.5)), float(np.percentile(gaps, 97.5)))
    return frechet_distance(a, real) - frechet_distance(b, real), ci, float((gaps < 0).mean())


def frechet_with_ci(x: np.ndarray, y: np.ndarray, n_boot: int = 200, seed: int = 0) -> tuple[float, tuple[float, float]]:
    rng = np.random.default_rng(seed)
    boots = [frechet_distance(x[rng.integers(0, len(x), len(x))], y[rng.integers(0, len(y), len(y))]) for _ in range(n_boot)]
    return frechet_distance(x, y), (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5)))


@torch.no_grad()
def embedding_features(detector, images: np.ndarray, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, D), severity (N,)) of float images (N, S, S, 3) in [0, 1]: the grader's
    ``embedding_layer`` (``dense1`` of the o_O detector, 512 values; an adapted model's Grad-CAM
    block averaged over positions), what the Fréchet distance compares."""
    feats, sev = [], []
    detector.eval()
    layer = detector.embedding_layer
    for s in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[s : s + batch])).permute(0, 3, 1, 2).float()
        out, acts = detector.forward_features(x.to(next(detector.parameters()).device), keep={layer})
        a = acts[layer].float()
        feats.append((a.mean(dim=(2, 3)) if a.dim() == 4 else a.flatten(1)).cpu().numpy())
        sev.append(out.float().cpu().numpy())
    return np.concatenate(feats), np.concatenate(sev)


def frangi_tree(image: np.ndarray, fov: np.ndarray, fraction: float) -> np.ndarray:
    """The ``fraction`` of FOV pixels with the highest Frangi vesselness (dark ridges of the green
    channel): a segmenter that shares nothing with ours, for an independent vessel check."""
    from skimage.filters import frangi

    v = np.where(fov, frangi(np.asarray(image, np.float32)[..., 1], sigmas=(1, 1.5, 2, 3), black_ridges=True), 0.0)
    k = max(1, int(round(fraction * fov.sum())))
    cut = np.partition(v[fov], -k)[-k]
    return (v >= cut) & fov


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    inter = (a & b).sum()
    return float(2 * inter / max(1, a.sum() + b.sum()))


def _realism(extractor, real: np.ndarray, ours: np.ndarray, base: np.ndarray | None, seed: int, prefix: str) -> dict:
    """The Fréchet figures of ``ours`` (and ``base``) against ``real`` in ``extractor``'s dense1 space."""
    rf, _ = embedding_features(extractor, real)
    of, _ = embedding_features(extractor, ours)
    fd, ci = frechet_with_ci(of, rf, seed=seed)
    rep = {f"{prefix}_ours": fd, f"{prefix}_ours_ci": list(ci)}
    if base is None:
        return {**rep, f"{prefix}_baseline": None, f"{prefix}_baseline_ci": None, f"{prefix}_gap": None,
                f"{prefix}_gap_ci": None, f"{prefix}_ours_closer": None}
    bf, _ = embedding_features(extractor, base)
    fdb, ci_b = frechet_with_ci(bf, rf, seed=seed)
    gap, gap_ci, wins = paired_frechet_gap(of, bf, rf, seed=seed)
    return {**rep, f"{prefix}_baseline": fdb, f"{prefix}_baseline_ci": list(ci_b), f"{prefix}_gap": gap,
            f"{prefix}_gap_ci": list(gap_ci), f"{prefix}_ours_closer": wins}


def evaluate_synthesizer(synth, detector, hosts: list[dict], bank, baseline=None, vessel_model=None,
                         counts=COUNTS, seed: int = 0, progress: bool = True, check_detector=None) -> dict:
    """The ``synth eval --json`` object. ``hosts``: healthy {"image", "vessels", "fov"} at the
    synthesizer's size (the real side of the Fréchet distance and the trees to draw from).

    ``check_detector``: a second network of the detector's family whose ``dense1`` space gives the
    same Fréchet figures under ``fdcheck_*``. The generator's losses read ``detector`` (its severity
    term reads the very head ``dense1`` feeds), so a distance in a space no loss has seen — e.g. the
    phantom-trained detector — checks that the gain is not only the generator learning that network."""
    from tqdm.auto import tqdm

    from .synthesizer import random_layout

    if vessel_model is None:
        from ..vessels import load_vessels

        vessel_model = load_vessels()
    real = np.stack([h["image"] for h in hosts])
    healthy = []
    dice, frangi_fake, frangi_real = [], [], []
    for i, h in enumerate(tqdm(hosts, desc="healthy synthesis", disable=not progress, leave=False)):
        img = synth.synthesize(h["vessels"], h["fov"], None, seed=seed + i)
        healthy.append(img)
        truth = (h["vessels"] > 0.5) & h["fov"]
        _, binary = vessel_model.segment(img, h["fov"], tta=1)
        dice.append(_dice(binary & h["fov"], truth))
        frac = truth.sum() / max(1, h["fov"].sum())
        frangi_fake.append(_dice(frangi_tree(img, h["fov"], frac), truth))
        frangi_real.append(_dice(frangi_tree(h["image"], h["fov"], frac), truth))
    healthy = np.stack(healthy)
    base = None
    if baseline is not None:
        base = np.stack([baseline.synthesize(h["vessels"], h["fov"], None, seed=seed + i) for i, h in enumerate(hosts)])
    rep = {"vessel_dice": float(np.mean(dice)), "vessel_dice_frangi": float(np.mean(frangi_fake)),
           "vessel_dice_frangi_real": float(np.mean(frangi_real)), "n_hosts": len(hosts)}
    rep.update(_realism(detector, real, healthy, base, seed, "fd"))
    if check_detector is not None:
        rep.update(_realism(check_detector, real, healthy, base, seed, "fdcheck"))
    sev_by = {}
    for n in tqdm(counts, desc="severity by count", disable=not progress, leave=False):
        imgs = []
        for i, h in enumerate(hosts):
            lay = random_layout(bank, n, h["fov"], seed=seed * 1000 + i) if n else None
            imgs.append(synth.synthesize(h["vessels"], h["fov"], lay, seed=seed + i))
        _, sev = embedding_features(detector, np.stack(imgs))
        sev_by[str(n)] = float(sev.mean())
    rep["severity_by_count"] = sev_by
    vals = [sev_by[str(n)] for n in counts]
    rep["severity_monotonic"] = bool(all(b > a for a, b in zip(vals, vals[1:])))
    return rep
