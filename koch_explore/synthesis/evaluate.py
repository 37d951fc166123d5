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
* ``stripe_energy_ratio`` — the horizontal stripes a whole-fundus generator can draw, measured without
  any network: :func:`stripe_energy` of each healthy synthesis over that of its host's real photo
  (mean over hosts; 1 = as striped as a photo, i.e. not at all).
* ``lesion_c2st_accuracy`` (with ``real_lesions``) — :mod:`.c2st`: a small CNN's held-out accuracy at
  telling windows around real isolated lesions from windows around the lesions placed with 4
  descriptors per host (0.5 = indistinguishable), with a 95% interval; the same for the baseline
  generator and for the transplant control (the real lesions pasted at the same places).
* ``disc_contrast_ratio`` — the optic disc: :func:`disc_contrast` of each healthy synthesis, at the
  place where its host's photo has its disc, over the photo's (1 = as bright a disc as the photo's).
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.images import as_image_batch, model_device
from ..core.runtime import eval_mode
from .disc import LUMA, find_disc

__all__ = ["disc_contrast", "embedding_features", "evaluate_synthesizer", "find_disc", "frechet_distance",
           "paired_frechet_gap", "stripe_energy"]

COUNTS = (0, 1, 2, 4, 8, 16)
STRIPE_PERIODS = (2.0, 8.0)
"""Periods (px at 256 px) whose power counts as stripes: the shipped generator's streaks are 1-3 px
thick rows a few px apart; the fundus's own shading varies over tens of px."""
C2ST_COUNT = 4
"""Descriptors placed per host for the lesion two-sample test (few enough that they rarely overlap)."""
C2ST_MIN_WINDOWS = 10
"""Fewest windows per side for which the two-sample accuracy is reported (2 per held-out fold)."""


def _green_row_profile(image: np.ndarray, fov: np.ndarray, min_run: float = 0.25) -> np.ndarray:
    """Mean green value of each row inside the FOV, over the rows where the FOV spans at least
    ``min_run`` of its widest row (the rim rows average too few pixels)."""
    fov = np.asarray(fov, bool)
    n = fov.sum(axis=1)
    keep = n >= min_run * n.max()
    return ((image[..., 1].astype(np.float64) * fov).sum(axis=1) / np.maximum(n, 1))[keep]


def _band_power(profile: np.ndarray, periods: tuple[float, float]) -> float:
    """Mean power of ``profile`` (detrended, Hann-windowed) at periods in [lo, hi] px."""
    if len(profile) < 4 * periods[1]:
        return float("nan")
    x = profile - np.convolve(profile, np.ones(9) / 9, mode="same")  # the slow shading is not stripes
    x = x[4:-4] * np.hanning(len(x) - 8)
    power = np.abs(np.fft.rfft(x)) ** 2 / len(x)
    freq = np.fft.rfftfreq(len(x))
    band = (freq >= 1 / periods[1]) & (freq <= 1 / periods[0])
    return float(power[band].mean())


def stripe_energy(image: np.ndarray, fov: np.ndarray, periods: tuple[float, float] = STRIPE_PERIODS) -> float:
    """Horizontal-stripe energy of an RGB image in [0, 1]: the power, at periods of ``periods`` px, of
    the green channel's row-mean profile inside the FOV (stripes are whole rows brighter or darker than
    their neighbours, so they survive the mean over a row while texture and vessels average out)."""
    return _band_power(_green_row_profile(image, fov), periods)


def disc_contrast(image: np.ndarray, fov: np.ndarray, disc: tuple[float, float, float]) -> float:
    """Mean luminance inside the disc ``(x, y, radius)`` over the mean luminance of the FOV, minus 1:
    0 = no disc, a real photo's disc ~0.3-1."""
    fov = np.asarray(fov, bool)
    lum = image.astype(np.float64) @ np.array(LUMA)
    yy, xx = np.mgrid[: fov.shape[0], : fov.shape[1]]
    inside = ((xx - disc[0]) ** 2 + (yy - disc[1]) ** 2 <= disc[2] ** 2) & fov
    return float(lum[inside].mean() / max(lum[fov].mean(), 1e-6) - 1.0)


def anatomy_figures(real: np.ndarray, synthetic: np.ndarray, fovs: np.ndarray) -> dict:
    """Stripe energy and disc contrast of ``synthetic`` images against the ``real`` photos they were
    drawn for (same hosts, same order): per-image figures and their ratios (mean synthetic over mean
    real), the disc measured in each synthesis where its host photo has its disc."""
    s_real = np.array([stripe_energy(r, f) for r, f in zip(real, fovs)])
    s_syn = np.array([stripe_energy(s, f) for s, f in zip(synthetic, fovs)])
    discs = [find_disc(r, f) for r, f in zip(real, fovs)]
    c_real = np.array([disc_contrast(r, f, d) for r, f, d in zip(real, fovs, discs)])
    c_syn = np.array([disc_contrast(s, f, d) for s, f, d in zip(synthetic, fovs, discs)])
    return {"stripe_energy": float(np.nanmean(s_syn)), "stripe_energy_real": float(np.nanmean(s_real)),
            "stripe_energy_ratio": float(np.nanmean(s_syn) / np.nanmean(s_real)),
            "disc_contrast": float(c_syn.mean()), "disc_contrast_real": float(c_real.mean()),
            "disc_contrast_ratio": float(c_syn.mean() / c_real.mean())}


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
    layer = detector.embedding_layer
    with eval_mode(detector):
        for s in range(0, len(images), batch):
            x = as_image_batch(images[s : s + batch]).to(model_device(detector))
            out, acts = detector.forward_features(x, keep={layer})
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
                         counts=COUNTS, seed: int = 0, progress: bool = True, check_detector=None,
                         real_lesions: np.ndarray | None = None, diseased: np.ndarray | None = None) -> dict:
    """The ``synth eval --json`` object. ``hosts``: healthy {"image", "vessels", "fov"} at the
    synthesizer's size (the real side of the Fréchet distance and the trees to draw from).

    ``check_detector``: a second network of the detector's family whose ``dense1`` space gives the
    same Fréchet figures under ``fdcheck_*``. The generator's losses read ``detector`` (its severity
    term reads the very head ``dense1`` feeds), so a distance in a space no loss has seen — e.g. the
    phantom-trained detector — checks that the gain is not only the generator learning that network.

    ``real_lesions``: windows around real isolated lesions (:func:`.c2st.isolated_lesion_windows`) for
    the lesion two-sample test; None leaves its figures out.

    A local-mode synthesizer (``synth.mode == "local"``) leaves the healthy photo untouched, so the
    figures of a healthy synthesis (vessels, anatomy, its Fréchet distance to the photos) are left out;
    with ``diseased`` (real DR eyes, e.g. the lesion eyes) ``fd_ours`` is then the Fréchet distance of the
    photos inoculated with 4 lesions to those eyes, beside ``fd_host`` (the same photos before) and
    ``fd_transplant`` (the real lesions pasted instead): whether the lesions move a photo toward DR eyes."""
    if getattr(synth, "mode", "whole") == "local":
        return _evaluate_local(synth, detector, hosts, bank, baseline, counts, seed, progress, real_lesions, diseased)
    from tqdm.auto import tqdm

    if vessel_model is None:
        from ..vessels import load_vessels

        vessel_model = load_vessels()
    real = np.stack([h["image"] for h in hosts])
    healthy = []
    dice, frangi_fake, frangi_real = [], [], []
    for i, h in enumerate(tqdm(hosts, desc="healthy synthesis", disable=not progress, leave=False)):
        img = synth.synthesize_host(h, None, seed=seed + i)
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
        base = np.stack([baseline.synthesize_host(h, None, seed=seed + i) for i, h in enumerate(hosts)])
    rep = {"vessel_dice": float(np.mean(dice)), "vessel_dice_frangi": float(np.mean(frangi_fake)),
           "vessel_dice_frangi_real": float(np.mean(frangi_real)), "n_hosts": len(hosts)}
    fovs = np.stack([h["fov"] for h in hosts])
    rep.update(anatomy_figures(real, healthy, fovs))
    if base is not None:
        rep.update({f"{k}_baseline": v for k, v in anatomy_figures(real, base, fovs).items() if not k.endswith("_real")})
    rep.update(_realism(detector, real, healthy, base, seed, "fd"))
    if check_detector is not None:
        rep.update(_realism(check_detector, real, healthy, base, seed, "fdcheck"))
    if real_lesions is not None and C2ST_COUNT not in counts:
        raise ValueError(f"the lesion two-sample test places {C2ST_COUNT} descriptors per host: keep {C2ST_COUNT} in counts")
    sev_by, placed = _severity_series(synth, detector, hosts, bank, counts, seed, progress)
    rep["severity_by_count"] = sev_by
    vals = [sev_by[str(n)] for n in counts]
    rep["severity_monotonic"] = bool(all(b > a for a, b in zip(vals, vals[1:])))
    if real_lesions is not None:
        rep.update(_lesion_realism(real_lesions, placed, healthy, hosts, detector, baseline, seed))
    return rep


def _severity_series(synth, detector, hosts, bank, counts, seed: int, progress: bool):
    """({count: mean severity}, the count-``C2ST_COUNT`` images and layouts or None): every host
    inoculated with each count of descriptors (layouts drawn per host and count with ``seed``)."""
    from tqdm.auto import tqdm

    from .synthesizer import random_layout

    sev_by, placed = {}, None
    for n in tqdm(counts, desc="severity by count", disable=not progress, leave=False):
        imgs, layouts = [], []
        for i, h in enumerate(hosts):
            lay = random_layout(bank, n, h["fov"], seed=seed * 1000 + i) if n else None
            imgs.append(synth.synthesize_host(h, lay, seed=seed + i))
            layouts.append(lay)
        _, sev = embedding_features(detector, np.stack(imgs))
        sev_by[str(n)] = float(sev.mean())
        if n == C2ST_COUNT:
            placed = (np.stack(imgs), layouts)
    return sev_by, placed


def _evaluate_local(synth, detector, hosts, bank, baseline, counts, seed, progress, real_lesions, diseased) -> dict:
    """:func:`evaluate_synthesizer` for a local-mode synthesizer (see there)."""
    if (real_lesions is not None or diseased is not None) and C2ST_COUNT not in counts:
        raise ValueError(f"the lesion figures place {C2ST_COUNT} descriptors per host: keep {C2ST_COUNT} in counts")
    missing = [h.get("name", i) for i, h in enumerate(hosts) if "image" not in h]
    if missing:
        raise ValueError(f"hosts {missing[:3]} have no photo: local inoculation needs real healthy photos")
    photos = np.stack([h["image"] for h in hosts]).astype(np.float32)
    rep: dict = {"mode": "local", "n_hosts": len(hosts)}
    sev_by, placed = _severity_series(synth, detector, hosts, bank, counts, seed, progress)
    rep["severity_by_count"] = sev_by
    vals = [sev_by[str(n)] for n in counts]
    rep["severity_monotonic"] = bool(all(b > a for a, b in zip(vals, vals[1:])))
    if diseased is not None and placed is not None:
        from .transplant import transplant

        images, layouts = placed
        pasted = np.stack([transplant(detector, p, lay) if lay is not None and len(lay) else p for p, lay in zip(photos, layouts)])
        df, _ = embedding_features(detector, np.asarray(diseased, np.float32))
        for key, imgs in (("fd_ours", images), ("fd_host", photos), ("fd_transplant", pasted)):
            f, _ = embedding_features(detector, imgs)
            fd, ci = frechet_with_ci(f, df, seed=seed)
            rep.update({key: fd, f"{key}_ci": list(ci)})
    if real_lesions is not None:
        rep.update(_lesion_realism(real_lesions, placed, photos, hosts, detector, baseline, seed))
    return rep


def _lesion_realism(real_lesions, placed, healthy, hosts, detector, baseline, seed: int) -> dict:
    """``lesion_c2st_accuracy`` (+ ``_ci``, ``_n``) of the synthesizer, the baseline and the transplant control."""
    from .c2st import c2st_accuracy, lesion_windows, placed_centroids
    from .transplant import transplant

    images, layouts = placed
    centroids = [placed_centroids(lay) for lay in layouts]
    sides = {"": lesion_windows(images, centroids)}
    if baseline is not None:
        base = np.stack([baseline.synthesize_host(h, lay, seed=seed + i) for i, (h, lay) in enumerate(zip(hosts, layouts))])
        sides["_baseline"] = lesion_windows(base, centroids)
    if all(d.norm_patch is not None for lay in layouts if lay is not None for d in lay):
        pasted = np.stack([transplant(detector, img, lay) if lay is not None and len(lay) else img
                           for img, lay in zip(healthy, layouts)])
        sides["_transplant"] = lesion_windows(pasted, centroids)
    rep = {}
    for suffix, windows in sides.items():
        n = min(len(real_lesions), len(windows))
        # too few windows for 5 folds (a handful of hosts or eyes): no figure rather than a noisy one
        res = c2st_accuracy(real_lesions, windows, seed=seed) if n >= C2ST_MIN_WINDOWS else {"accuracy": None, "ci": None, "n": n}
        rep.update({f"lesion_c2st_accuracy{suffix}": res["accuracy"], f"lesion_c2st_accuracy{suffix}_ci": res["ci"],
                    f"lesion_c2st_n{suffix}": res["n"]})
    return rep
