"""Does an evidence map land on the lesions? The localisation measures that explanation toolkits compare,
by the definitions of Quantus (Hedström et al., JMLR 2023, ``quantus.metrics.localisation``), one image at a
time, then a mean with a bootstrap CI over images:

* **pointing game** (Zhang et al. 2018): 1 when a pixel of the map's maximum lies on a lesion, else 0 (ties:
  any maximal pixel on a lesion counts, as in Quantus);
* **relevance mass accuracy** (Arras et al. 2022): the map's mass on lesion pixels over its total mass;
* **relevance rank accuracy** (Arras et al. 2022): with K the number of lesion pixels, the share of the map's
  K highest pixels that lie on lesions;
* **top-k intersection** (Theiner et al. 2021): the share of the map's k highest pixels (k = 1000, Quantus's
  default) that lie on lesions;
* **pixel AUC**: the ROC AUC of the map's values, lesion pixels against the rest
  (:func:`~koch_explore.core.stats.roc_auc`, the kit's one AUC).

The map is read as it is, which is what Quantus does since 0.3: its default normalisation
(``normalise_by_max``, the batch divided by its largest magnitude) is one positive scale, which changes none
of these measures. (Quantus 0.1-0.2 normalised positive and negative values apart, which changed the mass of
a signed map; every map of the kit is non-negative, so either reading gives the same figures here.)
Checked against Quantus 0.6.0 itself in a separate environment (``benchmarks/quantus_crosscheck_*.py``,
docs/findings/audit.md#quantus).

One difference, chosen for fundus photographs: given a field-of-view mask, every measure reads only the
pixels inside it. The black frame around the fundus holds no lesion and a zero map; counting it raises the
pixel AUC of any map that is positive on the fundus (by 0.05-0.07 on IDRiD, the shipped detector's maps). Without a FOV (``fov=None``)
each measure is Quantus's, pixel for pixel (``tests/test_localisation.py`` checks both, on hand-computed cases).
Ranks are taken with a stable sort (ties broken by pixel order), so a result never depends on the sort
algorithm; Quantus's ``np.argsort`` leaves ties to quicksort.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from ..core.stats import bootstrap_mean, roc_auc

__all__ = ["LOCALISATION_MEASURES", "TOP_K", "localisation_scores", "localisation_summary"]

LOCALISATION_MEASURES = ("pointing_game", "relevance_mass", "relevance_rank", "top_k_intersection", "pixel_auc")
"""The measures, in the order the audit reports them."""

TOP_K = 1000
"""k of the top-k intersection: Quantus's default (1000 pixels, 2% of a 224 x 224 image; 1.5% of 256 x 256)."""


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest ``values`` (a stable sort: among equal values the later pixels win, as the
    tail of an ascending stable argsort)."""
    return np.argsort(values, kind="stable")[len(values) - k:] if k > 0 else np.zeros(0, np.int64)


def localisation_scores(evidence: np.ndarray, lesions: np.ndarray, fov: np.ndarray | None = None, k: int = TOP_K) -> dict:
    """The five measures (:data:`LOCALISATION_MEASURES`) of one (H, W) map against one (H, W) lesion mask
    (any lesion type: the union), read inside ``fov`` when given. An image without lesion pixels (inside the
    FOV) gives NaN for every measure, as Quantus does for an empty segmentation; ``k`` larger than the pixels
    read is an error."""
    ev = np.asarray(evidence, np.float64)
    les = np.asarray(lesions, bool)
    if ev.shape != les.shape:
        raise ValueError(f"evidence map {ev.shape} and lesion mask {les.shape} differ in shape")
    inside = np.ones(ev.shape, bool) if fov is None else np.asarray(fov, bool)
    if inside.shape != ev.shape:
        raise ValueError(f"FOV mask {inside.shape} does not match the map {ev.shape}")
    a = np.nan_to_num(ev)[inside]
    s = les[inside]
    n_les = int(s.sum())
    if n_les == 0:
        return {m: float("nan") for m in LOCALISATION_MEASURES}
    if k > a.size:
        raise ValueError(f"top-k intersection: k = {k} is larger than the {a.size} pixels read")
    total = float(a.sum())
    return {
        "pointing_game": float(s[a == a.max()].any()),
        "relevance_mass": float(a[s].sum() / total) if total != 0 else float("nan"),
        "relevance_rank": float(s[_top(a, n_les)].sum() / n_les),
        "top_k_intersection": float(s[_top(a, k)].sum() / k),
        "pixel_auc": roc_auc(s, a),
    }


def localisation_summary(per_image: Iterable[Mapping[str, float]], n_boot: int = 1000, seed: int = 0) -> dict:
    """Per measure {"mean", "ci", "n"}: the mean over images and its 95% bootstrap CI over images (images
    without lesions, NaN, left out and not counted in ``n``)."""
    rows = list(per_image)
    return {m: bootstrap_mean([r[m] for r in rows], n_boot=n_boot, seed=seed) for m in LOCALISATION_MEASURES}
